"""The user's own data (data.source=csv|jsonl): reading, label inference and order, the metric,
every error (with its file and line), and runs end to end: a two-seed study in-process on real
RTE text written as CSV (summary, table, compare, report), and the command line on
examples/custom, the README's worked example.

The CSV and JSON-lines files are written here from ../shared/glue (RTE pairs, CoLA sentences);
examples/custom holds only self-written text (examples/custom/make_data.py).
"""
import csv
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from jaxstab.config import config_lib
from jaxstab.data import custom_data, dataset, metrics, tasks
from jaxstab.engine import inputs
from jaxstab.infra.errors import ConfigError
from jaxstab.report import compare
from jaxstab.study import studies, validate
from tests.cli_runs import run_cli

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "custom"
CONFIG = REPO / "configs" / "custom.py"


# ------------------------------------------------------------------ files written by the tests


def _glue(glue_dir, task, split, n):
  s = dataset.load_split(tasks.get_task(task), split, "tsv", glue_dir)
  labels = [tasks.get_task(task).labels[i] for i in s.labels[:n]]
  return s.text_a[:n], (s.text_b[:n] if s.text_b else None), labels, s.labels[:n]


def write_csv(path, header, rows, delimiter=","):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8", newline="") as f:
    w = csv.writer(f, delimiter=delimiter, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
  return str(path)


def write_jsonl(path, objects):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write("".join(json.dumps(o) + "\n" for o in objects))
  return str(path)


@pytest.fixture
def rte_csv(tmp_path, glue_dir):
  """tmp/rte/{train,dev}.csv: 64 and 32 real RTE pairs, labels as words, an extra column."""
  folder = tmp_path / "rte"
  for split, n in (("train", 64), ("dev", 32)):
    a, b, y, _ = _glue(glue_dir, "rte", split, n)
    write_csv(folder / f"{split}.csv", ["idx", "premise", "hypothesis", "label"],
              [(i, ta, tb, lab) for i, (ta, tb, lab) in enumerate(zip(a, b, y))])
  return folder


@pytest.fixture
def cola_jsonl(tmp_path, glue_dir):
  """tmp/cola/{train,dev}.jsonl: 64 and 32 real CoLA sentences, integer labels."""
  folder = tmp_path / "cola"
  for split, n in (("train", 64), ("dev", 32)):
    a, _, _, ids = _glue(glue_dir, "cola", split, n)
    write_jsonl(folder / f"{split}.jsonl",
                [{"sentence": t, "acceptable": int(i)} for t, i in zip(a, ids)])
  return folder


def own(source="csv", task="custom", **keys):
  """A config reading one's own files (tiny BERT); keys: data.<key>=value."""
  cfg = config_lib.task_config(task, "model=tiny-bert,fidelity=corrected", data__source=source)
  for k, v in keys.items():
    config_lib.set_path(cfg, f"data.{k}", v)
  return cfg


def rte_cfg(folder, **keys):
  cols = dict(path=str(folder), text_a="premise", text_b="hypothesis", label="label")
  return own(**dict(cols, **keys))


def error_of(cfg) -> str:
  with pytest.raises(ConfigError) as e:
    custom_data.load(cfg)
  return str(e.value)


# ------------------------------------------------------------------ reading and labels


def test_csv_of_real_pairs_reads_texts_and_infers_sorted_labels(rte_csv, glue_dir):
  task, train, dev = custom_data.load(rte_cfg(rte_csv))
  assert task.name == "custom" and task.labels == ("entailment", "not_entailment")
  assert task.num_labels == 2 and task.metric == "accuracy"
  for split, got, n in (("train", train, 64), ("dev", dev, 32)):
    a, b, _, ids = _glue(glue_dir, "rte", split, n)
    assert got.text_a == a and got.text_b == b   # commas, quotes: the csv module round-trips
    np.testing.assert_array_equal(got.labels, ids)  # same order as GLUE's own table
    assert got.labels.dtype == np.int32


def test_jsonl_of_real_sentences_single_text(cola_jsonl, glue_dir):
  cfg = own("jsonl", path=str(cola_jsonl), text_a="sentence", label="acceptable", metric="mcc")
  task, train, dev = custom_data.load(cfg)
  assert task.labels == ("0", "1") and task.metric == "mcc" and task.text_b is None
  assert train.text_b is None and dev.text_b is None
  a, _, _, ids = _glue(glue_dir, "cola", "dev", 32)
  assert dev.text_a == a
  np.testing.assert_array_equal(dev.labels, ids)


def test_numbers_sort_by_value_booleans_false_first(tmp_path):
  rows = [("a b", "10"), ("c d", "2"), ("e f", "10"), ("g h", "02")]  # '02' is the class 2
  train = write_csv(tmp_path / "n" / "train.csv", ["t", "y"], rows)
  dev = write_csv(tmp_path / "n" / "dev.csv", ["t", "y"], rows[:2])
  task, split, _ = custom_data.load(own(train_file=train, dev_file=dev, text_a="t", label="y"))
  assert task.labels == ("2", "10")
  assert split.labels.tolist() == [1, 0, 1, 0]
  objs = [{"t": "x", "y": True}, {"t": "z", "y": False}]
  write_jsonl(tmp_path / "b" / "train.jsonl", objs)
  write_jsonl(tmp_path / "b" / "dev.jsonl", objs)
  task, split, _ = custom_data.load(own("jsonl", path=str(tmp_path / "b"), text_a="t", label="y"))
  assert task.labels == ("false", "true") and split.labels.tolist() == [1, 0]


def test_labels_given_fix_the_class_order(rte_csv, glue_dir):
  task, train, dev = custom_data.load(rte_cfg(rte_csv, labels="not_entailment,entailment"))
  assert task.labels == ("not_entailment", "entailment")
  np.testing.assert_array_equal(train.labels, 1 - _glue(glue_dir, "rte", "train", 64)[3])
  np.testing.assert_array_equal(dev.labels, 1 - _glue(glue_dir, "rte", "dev", 32)[3])


def test_tsv_file_in_the_folder_is_tab_separated_with_literal_quotes(tmp_path):
  (tmp_path / "t").mkdir()
  for split in ("train", "dev"):  # quotes are literal in a .tsv, as in GLUE's files
    (tmp_path / "t" / f"{split}.tsv").write_text('s\ty\n"No," he said, "twice"\t0\n'
                                                 "It's fine\t1\n", encoding="utf-8")
  _, train, _ = custom_data.load(own(path=str(tmp_path / "t"), text_a="s", label="y"))
  assert train.text_a == ['"No," he said, "twice"', "It's fine"]


# ------------------------------------------------------------------ the metric


def test_metric_by_name_and_positive_class(rte_csv):
  for name in custom_data.CLASSIFICATION:
    task, _, dev = custom_data.load(rte_cfg(rte_csv, metric=name))
    assert task.metric == name
    scores = metrics.compute(name, dev.labels, dev.labels)
    assert scores[name] == pytest.approx(1.0)
    assert name in metrics.majority(name, dev.labels)
  assert custom_data.load(rte_cfg(rte_csv))[0].metric == "accuracy"  # '' = accuracy
  # f1 is class 1's: the second label (not_entailment here, entailment when data.labels flips it)
  preds, labels = np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0])
  assert metrics.compute("f1", preds, labels)["f1"] == pytest.approx(2 / 3)
  assert metrics.compute("f1", 1 - preds, 1 - labels)["f1"] == pytest.approx(0.8)


def test_regression_csv_and_jsonl(tmp_path):
  """data.metric=pearson_spearman: real-valued labels, float32, one output; the task's name is
  free (even 'regression')."""
  write_csv(tmp_path / "c" / "train.csv", ["s", "score"], [("a", "0.5"), ("b", " 4.25"), ("c", "1")])
  write_csv(tmp_path / "c" / "dev.csv", ["s", "score"], [("a", "3e-1"), ("b", "2")])
  cfg = own(path=str(tmp_path / "c"), text_a="s", label="score", metric="pearson_spearman")
  cfg.task = "regression"
  task, train, dev = custom_data.load(cfg)
  assert task.regression and task.num_labels == 1 and task.metric == "pearson_spearman"
  assert train.labels.dtype == np.float32 and train.labels.tolist() == [0.5, 4.25, 1.0]
  assert dev.labels.tolist() == pytest.approx([0.3, 2.0], rel=1e-7)  # float32 of 0.3: measured rel 4.0e-8
  write_jsonl(tmp_path / "j" / "train.jsonl", [{"s": "a", "y": 1}, {"s": "b", "y": 2.5}])
  write_jsonl(tmp_path / "j" / "dev.jsonl", [{"s": "a", "y": 0}, {"s": "b", "y": 5}])
  task, train, _ = custom_data.load(own("jsonl", path=str(tmp_path / "j"), text_a="s", label="y",
                                        metric="spearman"))
  assert task.metric == "spearman" and train.labels.tolist() == [1.0, 2.5]


def test_regression_errors_name_file_line_and_column(tmp_path):
  train = write_csv(tmp_path / "train.csv", ["s", "score"], [("a", "0.5"), ("b", "high")])
  dev = write_csv(tmp_path / "dev.csv", ["s", "score"], [("a", "1"), ("b", "2")])
  cfg = own(train_file=train, dev_file=dev, text_a="s", label="score", metric="pearson_spearman")
  assert error_of(cfg) == (f"{train}:3: label 'high' in column 'score' (data.label) is not a "
                           "number; data.metric=pearson_spearman makes this a regression task, "
                           "whose labels are real-valued scores")
  write_csv(tmp_path / "train.csv", ["s", "score"], [("a", "0.5"), ("b", "nan")])
  assert error_of(cfg).startswith(f"{train}:3: label 'nan' in column 'score'")
  write_csv(tmp_path / "train.csv", ["s", "score"], [("a", "2"), ("b", "2.0")])
  assert error_of(cfg) == (f"{train}: every label is 2.0; a correlation "
                           "(data.metric=pearson_spearman) needs labels that vary")
  jtrain = write_jsonl(tmp_path / "j" / "train.jsonl", [{"s": "a", "y": 1}, {"s": "b", "y": True}])
  write_jsonl(tmp_path / "j" / "dev.jsonl", [{"s": "a", "y": 1}, {"s": "b", "y": 2}])
  assert error_of(own("jsonl", path=str(tmp_path / "j"), text_a="s", label="y",
                      metric="pearson")) == (
      f"{jtrain}:2: label true in column 'y' (data.label) is not a number; data.metric=pearson "
      "makes this a regression task, whose labels are real-valued scores")


def test_binary_metric_needs_two_classes(tmp_path):
  rows = [("a", "x"), ("b", "y"), ("c", "z")]
  train = write_csv(tmp_path / "train.csv", ["t", "y"], rows)
  dev = write_csv(tmp_path / "dev.csv", ["t", "y"], rows)
  cfg = own(train_file=train, dev_file=dev, text_a="t", label="y")
  assert custom_data.load(cfg)[0].labels == ("x", "y", "z")  # accuracy: any number of classes
  cfg.data.metric = "f1"
  msg = error_of(cfg)
  assert "data.metric=f1 needs exactly two classes" in msg and train in msg and "x, y, z" in msg
  cfg.data.labels = "x,y,z"
  cfg.data.metric = "mcc"
  with pytest.raises(ConfigError, match="data.metric=mcc needs exactly two classes"):
    validate.check_config(cfg)  # known without reading a file


# ------------------------------------------------------------------ errors naming file and line


def test_missing_column_names_the_file_and_the_columns_found(rte_csv):
  msg = error_of(rte_cfg(rte_csv, text_b="hypothesis2"))
  assert msg == (f"{rte_csv / 'train.csv'}: no column 'hypothesis2' (data.text_b); the header "
                 "(line 1) has columns: 'idx', 'premise', 'hypothesis', 'label'. The first line "
                 "must name the columns")


def test_missing_field_in_jsonl_names_file_line_and_fields(cola_jsonl):
  path = cola_jsonl / "dev.jsonl"
  lines = path.read_text(encoding="utf-8").splitlines()
  lines[4] = json.dumps({"text": "A sentence.", "acceptable": 1})
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  msg = error_of(own("jsonl", path=str(cola_jsonl), text_a="sentence", label="acceptable"))
  assert msg == f"{path}:5: no field 'sentence' (data.text_a); this line has fields: 'text', 'acceptable'"


def test_dev_label_never_seen_in_train(rte_csv):
  path = rte_csv / "dev.csv"
  text = path.read_text(encoding="utf-8").splitlines()
  text[3] = text[3].rsplit(",", 1)[0] + ",contradiction"
  path.write_text("\n".join(text) + "\n", encoding="utf-8")
  msg = error_of(rte_cfg(rte_csv))
  assert msg.startswith(f"{path}:4: label 'contradiction' never occurs in the training file "
                        f"{rte_csv / 'train.csv'}, whose labels are: entailment, not_entailment")


def test_label_not_in_data_labels(rte_csv):
  msg = error_of(rte_cfg(rte_csv, labels="entailment,neutral"))
  train = (rte_csv / "train.csv").read_text(encoding="utf-8").splitlines()
  line = 1 + next(i for i, l in enumerate(train[1:], 1) if l.endswith(",not_entailment"))
  assert msg == (f"{rte_csv / 'train.csv'}:{line}: label 'not_entailment' is not in data.labels "
                 "(entailment, neutral)")


@pytest.mark.parametrize("content,expected", [
    ("", "empty file (expected a header line naming the columns"),
    ("\n\n", "empty file (expected a header line naming the columns"),
    ("t,y\n", "empty file: a header but no examples"),
])
def test_empty_csv(tmp_path, content, expected):
  train = write_csv(tmp_path / "train.csv", ["t", "y"], [("a", "0"), ("b", "1")])
  dev = tmp_path / "dev.csv"
  dev.write_text(content, encoding="utf-8")
  msg = error_of(own(train_file=train, dev_file=str(dev), text_a="t", label="y"))
  assert msg.startswith(f"{dev}: {expected}")


def test_empty_jsonl(tmp_path):
  write_jsonl(tmp_path / "train.jsonl", [{"t": "a", "y": 0}, {"t": "b", "y": 1}])
  (tmp_path / "dev.jsonl").write_text("\n  \n", encoding="utf-8")
  msg = error_of(own("jsonl", path=str(tmp_path), text_a="t", label="y"))
  assert msg == f"{tmp_path / 'dev.jsonl'}: empty file: no JSON objects (one example per line)"


def test_mixed_types_in_a_jsonl_label_column(tmp_path):
  write_jsonl(tmp_path / "train.jsonl", [{"t": "a", "y": 1}, {"t": "b", "y": 0},
                                         {"t": "c", "y": "yes"}])
  write_jsonl(tmp_path / "dev.jsonl", [{"t": "a", "y": 1}])
  msg = error_of(own("jsonl", path=str(tmp_path), text_a="t", label="y"))
  train = tmp_path / "train.jsonl"
  assert msg == (f"{train}:3: mixed types in the label column: 'yes' is a JSON string, but the "
                 f"first label ({train}:1) '1' is a number; every label must be of one type "
                 "(all class names or all integer class ids)")
  # across the two files too: a dev label "1" (a string) is not the training files' 1
  write_jsonl(tmp_path / "train.jsonl", [{"t": "a", "y": 1}, {"t": "b", "y": 0}])
  write_jsonl(tmp_path / "dev.jsonl", [{"t": "a", "y": 0}, {"t": "b", "y": "1"}])
  assert error_of(own("jsonl", path=str(tmp_path), text_a="t", label="y")).startswith(
      f"{tmp_path / 'dev.jsonl'}:2: mixed types in the label column: '1' is a JSON string")


def test_mixed_types_in_a_csv_label_column(tmp_path):
  """In CSV every value is text: "mixed" is some labels numbers (class ids), some not."""
  train = write_csv(tmp_path / "train.csv", ["t", "y"], [("a", "1"), ("b", "0"), ("c", "yes")])
  dev = write_csv(tmp_path / "dev.csv", ["t", "y"], [("a", "1")])
  msg = error_of(own(train_file=train, dev_file=dev, text_a="t", label="y"))
  assert msg.startswith(f"{train}:4: mixed types in the label column: 'yes' is not a number, but "
                        f"the first label ({train}:2) '1' is a number")


def test_malformed_json_line(cola_jsonl):
  path = cola_jsonl / "train.jsonl"
  lines = path.read_text(encoding="utf-8").splitlines()
  lines[9] = lines[9][:-1]  # the closing brace lost
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  msg = error_of(own("jsonl", path=str(cola_jsonl), text_a="sentence", label="acceptable"))
  assert msg.startswith(f"{path}:10: not valid JSON (")
  path.write_text('["a list", 1]\n', encoding="utf-8")
  msg = error_of(own("jsonl", path=str(cola_jsonl), text_a="sentence", label="acceptable"))
  assert msg == f"{path}:1: expected a JSON object {{...}}, found a list"


def test_missing_and_ambiguous_files(rte_csv, tmp_path):
  os.remove(rte_csv / "dev.csv")
  assert error_of(rte_cfg(rte_csv)) == (
      f"no dev file in {rte_csv} (data.path, data.source=csv): looked for dev.csv and dev.tsv; "
      "or name the file with data.dev_file")
  nowhere = tmp_path / "nowhere"
  assert error_of(rte_cfg(nowhere)).startswith(f"no train file in {nowhere} (no such folder)")
  cfg = rte_cfg(rte_csv, dev_file=str(tmp_path / "dev_missing.csv"))
  assert error_of(cfg) == f"data.dev_file='{tmp_path / 'dev_missing.csv'}': no such file"
  write_csv(rte_csv / "train.tsv", ["premise"], [("x",)], delimiter="\t")
  assert error_of(rte_cfg(rte_csv)).startswith(
      f"both {rte_csv / 'train.csv'} and {rte_csv / 'train.tsv'} exist (data.path)")


def test_bad_rows_and_values(tmp_path):
  train = tmp_path / "train.csv"
  dev = write_csv(tmp_path / "dev.csv", ["t", "y"], [("a", "0"), ("b", "1")])
  cfg = own(train_file=str(train), dev_file=dev, text_a="t", label="y")
  train.write_text("t,y\na,0\nan unquoted, comma,1\n", encoding="utf-8")
  assert error_of(cfg) == (f"{train}:3: 3 fields, but the header has 2 (a text holding a comma "
                           "must be in double quotes)")
  train.write_text('t,y\n"a text\nover two lines",0\nb,\n', encoding="utf-8")
  assert error_of(cfg) == f"{train}:4: empty label"  # line numbers count a quoted newline
  train.write_text("t,y\na,0\nb,0\n", encoding="utf-8")
  assert error_of(cfg) == (f"{train}: every label is '0'; classification needs at least two "
                           "classes in the training file")
  train.write_text("t,y\na,0.37\nb,1\n", encoding="utf-8")
  msg = error_of(cfg)
  assert msg == (f"{train}:2: label '0.37' is not a whole number; a class id must be a whole "
                 "number; for real-valued labels (regression) set data.metric=pearson_spearman")
  write_jsonl(tmp_path / "j" / "train.jsonl", [{"t": 5, "y": 0}])
  write_jsonl(tmp_path / "j" / "dev.jsonl", [{"t": "a", "y": 0}])
  assert error_of(own("jsonl", path=str(tmp_path / "j"), text_a="t", label="y")) == (
      f"{tmp_path / 'j' / 'train.jsonl'}:1: field 't' (data.text_a) is a number, not a string")


# ------------------------------------------------------------------ config checks (no file read)


@pytest.mark.parametrize("keys,expected", [
    (dict(text_a="s", label="y"), "data.source=csv needs data.path (a folder holding train.csv "
     "and dev.csv) or both data.train_file and data.dev_file; data.train_file and "
     "data.dev_file are not set"),
    (dict(train_file="t.csv", text_a="s", label="y"), "data.dev_file is not set"),
    (dict(path="d", label="y"), "data.text_a is empty: with data.source=csv name the column of "
     "the first text (a CSV header's name or a JSON field)"),
    (dict(path="d", text_a="s", label="s"), "data.label='s' is also a text column"),
    (dict(path="d", text_a="s", label="y", metric="auc"), "data.metric='auc' is not allowed; "
     "choose one of: accuracy, f1, mcc, acc_and_f1, pearson_spearman, pearson, spearman ('' = "
     "accuracy; the last three: regression)"),
    (dict(path="d", text_a="s", label="y", metric="pearson_spearman", labels="a,b"),
     "data.labels='a,b' lists classes, but data.metric=pearson_spearman makes a regression task "
     "(real-valued labels): leave data.labels empty"),
    (dict(path="d", text_a="s", label="y", labels="a,b,a"), "data.labels='a,b,a' lists a twice"),
    (dict(path="d", text_a="s", label="y", labels="a"), "classification needs at least two"),
])
def test_validate_checks_the_keys(keys, expected):
  with pytest.raises(ConfigError) as e:
    validate.check_config(own(**keys))
  assert expected in str(e.value)


def test_validate_task_names_and_sources():
  ok = dict(path="no/such/folder", text_a="s", label="y")
  validate.check_config(own(**ok))  # the files are read by inputs.load, not here
  validate.check_config(own("jsonl", task="my_reviews-2", **ok))
  validate.check_config(own(task="regression", metric="pearson_spearman", **ok))
  with pytest.raises(ConfigError, match="task='rte' is a built-in task, but data.source=csv"):
    validate.check_config(own(task="rte", **ok))
  with pytest.raises(ConfigError, match="letters, digits"):
    validate.check_config(own(task="my data", **ok))
  cfg = config_lib.task_config("rte", "")
  cfg.data.path = "examples/custom"  # data.source=csv forgotten: never train on RTE instead
  with pytest.raises(ConfigError) as e:
    validate.check_config(cfg)
  assert str(e.value) == ("data.path='examples/custom' is read only with data.source=csv or "
                          "jsonl (your own files), but data.source='tsv': set "
                          "--config.data.source=csv (or jsonl), or leave data.path empty")
  with pytest.raises(ConfigError, match="custom_data.load"):
    dataset.load_split(tasks.get_task("rte"), "train", "csv", "")


def test_a_bad_file_is_refused_before_the_workdir_exists(rte_csv, tmp_path):
  cfg = rte_cfg(rte_csv, label="gold")
  workdir = tmp_path / "never_made"
  with pytest.raises(ConfigError, match="no column 'gold' .data.label."):
    studies.run(cfg, str(workdir))
  assert not workdir.exists()


# ------------------------------------------------------------------ end to end


def test_study_on_a_csv_of_real_pairs(rte_csv, tmp_path):
  """Two seeds of a tiny BERT on the RTE pairs as one's own CSV: the same summary, table,
  comparison and report as a GLUE task."""
  cfg = rte_cfg(rte_csv)
  cfg.task = "rte_own"
  cfg.seeds = "1-2"
  cfg.model.tiny.vocab_size = 300
  cfg.train.max_seq_length = 16
  cfg.train.batch_size = 16
  cfg.train.max_steps = 4
  cfg.train.evals_per_epoch = 1
  cfg.probe.every = 2
  workdir = tmp_path / "wd"
  result = studies.run(cfg, str(workdir))
  summary = json.loads((workdir / "summary.json").read_text(encoding="utf-8"))
  assert summary["task"] == "rte_own" and summary["metric"] == "accuracy"
  loaded = inputs.load(cfg)
  dev = loaded.dev_split.labels
  assert summary["majority"] == metrics.majority("accuracy", dev)
  assert [r["seed"] for r in summary["runs"]] == [1, 2]
  for r in summary["runs"]:
    assert r["failed"] == metrics.is_failed(r["final"]["accuracy"],
                                            summary["majority"]["accuracy"])
  assert result["failed_runs"] == sum(r["failed"] for r in summary["runs"])
  table = (workdir / "table.md").read_text(encoding="utf-8")
  assert "| setting | RTE_OWN |" in table and "/2 failed)" in table
  assert (workdir / "probe.npz").is_file() and (workdir / "summary.csv").is_file()
  assert "RTE_OWN" in compare.markdown(compare.gather([str(workdir)]))
  from jaxstab.report import builder  # pylint: disable=import-outside-toplevel
  builder.build(str(workdir))
  assert (workdir / "report" / "index.html").is_file()


def _example_module():
  spec = importlib.util.spec_from_file_location("make_data", EXAMPLE / "make_data.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_example_files_are_what_make_data_writes():
  make_data = _example_module()
  for split in ("train", "dev"):
    assert (EXAMPLE / f"{split}.csv").read_text(encoding="utf-8") == make_data.csv_text(split)
  cfg = config_lib.load_file(f"{CONFIG}:path={EXAMPLE},"
                             "text_a=review,label=sentiment,model=tiny-bert")
  task, train, dev = custom_data.load(cfg)
  assert task.labels == ("negative", "positive") and len(train) == len(dev) == 40
  assert sorted(np.bincount(dev.labels)) == [20, 20]


def test_custom_config_file_arguments():
  cfg = config_lib.load_file(f"{CONFIG}:path=d,text_a=a,text_b=b,label=y,labels=n,p,"
                             "metric=f1,data=jsonl,task=reviews,settings=devlin+ours,seeds=1-3")
  assert (cfg.task, cfg.data.source, cfg.data.labels, cfg.data.metric) == (
      "reviews", "jsonl", "n,p", "f1")
  assert cfg.fidelity == "corrected" and config_lib.parse_seeds(cfg) == [1, 2, 3]
  assert dict(cfg.settings) == {"reviews_devlin": "setting=devlin", "reviews_ours": "setting=ours"}
  for name, sub in studies.expand(cfg):
    assert sub.fidelity == "corrected" and sub.data.path == "d", name  # after ours' presets too
  assert studies.expand(cfg)[1][1].select == "best"
  assert config_lib.load_file(f"{CONFIG}:fidelity=reference").fidelity == "reference"
  with pytest.raises(ConfigError, match="unknown setting 'best'"):
    config_lib.load_file(f"{CONFIG}:settings=best")


def test_cli_on_the_readme_example(cli_root):
  """README's worked example, cut to 2 steps of 2 seeds (cli_root: the CLI tests' shared
  compilation cache)."""
  workdir = cli_root / "custom_example"
  proc = run_cli(
      ["--config=configs/custom.py:path=examples/custom,text_a=review,label=sentiment,"
       "model=tiny-bert,seeds=1-2,lr=1e-3",
       "--config.train.max_steps=2", "--config.train.max_seq_length=32"], workdir)
  assert proc.returncode == 0, proc.stderr[-4000:]
  summary = json.loads((workdir / "summary.json").read_text(encoding="utf-8"))
  assert summary["task"] == "custom" and summary["majority"] == {"accuracy": 0.5}
  assert len(summary["runs"]) == 2
  assert "| setting | CUSTOM |" in (workdir / "table.md").read_text(encoding="utf-8")
  assert json.loads((workdir / "config.json").read_text(encoding="utf-8"))["data"]["path"] == \
      "examples/custom"
