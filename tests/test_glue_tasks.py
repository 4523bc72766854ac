"""QQP, MNLI, STS-B and WNLI: their real TSV layouts, regression (metrics, loss, labels),
MNLI's second dev set, chunked tokenization, and short two-seed runs on STS-B and MNLI.

The TSV files are written here, in each task's real GLUE layout (header, column count, label
column), from real RTE sentences out of ../shared/glue; the real QQP, MNLI and STS-B files are
too large for the shared folder.
"""
import json
import logging
import os

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxstab.config import config_lib
from jaxstab.data import dataset, metrics, tasks
from jaxstab.engine import inputs, train as train_lib
from jaxstab.infra.errors import ConfigError
from jaxstab.study import experiment

MNLI_TRAIN = ("index promptID pairID genre sentence1_binary_parse sentence2_binary_parse "
              "sentence1_parse sentence2_parse sentence1 sentence2 label1 gold_label").split()
MNLI_DEV = MNLI_TRAIN[:11] + ["label2", "label3", "label4", "label5", "gold_label"]
STSB = "index genre filename year old_index source1 source2 sentence1 sentence2 score".split()
QQP = "id qid1 qid2 question1 question2 is_duplicate".split()
WNLI = "index sentence1 sentence2 label".split()
NLI = ("entailment", "neutral", "contradiction")


@pytest.fixture(scope="module")
def pairs(glue_dir):
  """Real sentence pairs (RTE train) to fill the files with."""
  rte = dataset.load_split(tasks.get_task("rte"), "train", "tsv", glue_dir)
  return list(zip(rte.text_a, rte.text_b))


def _write(folder, name, header, rows):
  os.makedirs(folder, exist_ok=True)
  lines = ["\t".join(header)] + ["\t".join(map(str, r)) for r in rows]
  with open(os.path.join(folder, name), "w", encoding="utf-8", newline="") as f:
    f.write("\n".join(lines) + "\n")


def _parse(s):
  return "( " + " ".join(s.split()[:4]) + " )", "(ROOT (S " + " ".join(s.split()[:4]) + "))"


def write_mnli(root, pairs, n_train=64, n_dev=24):
  """MNLI/train.tsv (12 columns), dev_matched.tsv and dev_mismatched.tsv (16 columns)."""
  folder = os.path.join(root, "MNLI")
  rows, gold = [], {}
  for i, (a, b) in enumerate(pairs[:n_train]):
    label = NLI[i % 3]
    rows.append([i, 1000 + i, f"{1000 + i}e", "fiction", *_parse(a)[:1], *_parse(b)[:1],
                 _parse(a)[1], _parse(b)[1], a, b, label, label])
  _write(folder, "train.tsv", MNLI_TRAIN, rows)
  gold["train"] = [NLI[i % 3] for i in range(n_train)]
  for name, offset, genre in (("dev_matched", n_train, "fiction"),
                              ("dev_mismatched", n_train + n_dev, "letters")):
    rows, labels = [], []
    for i, (a, b) in enumerate(pairs[offset:offset + n_dev]):
      label = NLI[(i * 7) % 3]
      votes = [NLI[(i + 1) % 3], label, label, label, label]  # label1 is not the gold label
      rows.append([i, 2000 + i, f"{2000 + i}n", genre, *_parse(a)[:1], *_parse(b)[:1],
                   _parse(a)[1], _parse(b)[1], a, b, *votes, label])
      labels.append(label)
    _write(folder, f"{name}.tsv", MNLI_DEV, rows)
    gold[name] = labels
  return gold


def write_stsb(root, pairs, n_train=64, n_dev=32):
  """STS-B/{train,dev}.tsv (10 columns, score last, floats in [0, 5])."""
  rng = np.random.default_rng(0)
  scores = {}
  for split, offset, n in (("train", 0, n_train), ("dev", n_train, n_dev)):
    s = np.round(rng.uniform(0, 5, n), 3)
    rows = [[i, "main-captions", "MSRvid", "2012test", f"{i:04d}", "none", "none", a, b,
             f"{v:.3f}"] for i, ((a, b), v) in enumerate(zip(pairs[offset:offset + n], s))]
    _write(os.path.join(root, "STS-B"), f"{split}.tsv", STSB, rows)
    scores[split] = s
  return scores


def write_qqp(root, pairs, n=40):
  """QQP/{train,dev}.tsv; train has one question holding a newline, which cuts its row in two
  short rows (as in the real file)."""
  rows = [[100 + i, 2 * i, 2 * i + 1, a, b, i % 2] for i, (a, b) in enumerate(pairs[:n])]
  lines = ["\t".join(QQP)] + ["\t".join(map(str, r)) for r in rows]
  lines.insert(5, "999\t998\t997\tWhat is a question that spans")  # 4 columns
  lines.insert(6, "two lines?\tIs it skipped?\t0")                 # 3 columns
  folder = os.path.join(root, "QQP")
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "train.tsv"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  _write(folder, "dev.tsv", QQP, rows[:16])
  return rows


def _cfg(task, root, **overrides):
  cfg = config_lib.task_config(task, "model=tiny-bert,fidelity=corrected")
  cfg.data.dir = str(root)
  cfg.model.tiny.vocab_size = 300
  cfg.train.max_seq_length = 16
  cfg.train.batch_size = 16
  cfg.train.max_steps = 4
  cfg.train.evals_per_epoch = 1
  cfg.probe.every = 2
  cfg.seeds = "1-2"
  cfg.optim.lr = 1e-3
  for k, v in overrides.items():
    config_lib.set_path(cfg, k.replace("__", "."), v)
  return cfg


# ------------------------------------------------------------------ the task table


def test_task_table():
  mnli, stsb = tasks.get_task("MNLI"), tasks.get_task("STS-B")
  assert mnli.num_labels == 3 and mnli.labels == NLI and mnli.metric == "accuracy"
  assert mnli.file_name("dev") == "dev_matched" and mnli.extra_dev == ("dev_mismatched",)
  assert mnli.hub_split("dev") == "validation_matched"
  assert mnli.hub_split("dev_mismatched") == "validation_mismatched"
  assert mnli.hf_text == ("premise", "hypothesis") and mnli.tfds_name == "glue/mnli"
  assert stsb.regression and stsb.num_labels == 1 and stsb.labels == ()
  assert stsb.metric == "pearson_spearman" and stsb.hub_split("dev") == "validation"
  assert (stsb.text_a, stsb.text_b, stsb.label) == (7, 8, 9)
  qqp = tasks.get_task("qqp")
  assert qqp.metric == "acc_and_f1" and qqp.hf_text == ("question1", "question2")
  assert qqp.skip_malformed and not tasks.get_task("rte").skip_malformed
  assert tasks.get_task("wnli").labels == ("0", "1") and tasks.get_task("wnli").hf_name == "wnli"
  for t in tasks.TASKS.values():
    assert t.hub_split("train") == "train"


# ------------------------------------------------------------------ reading the real layouts


def test_mnli_reads_train_and_both_dev_sets(tmp_path, pairs):
  gold = write_mnli(tmp_path, pairs)
  task = tasks.get_task("mnli")
  for split, name in (("train", "train"), ("dev", "dev_matched"),
                      ("dev_mismatched", "dev_mismatched")):
    s = dataset.load_split(task, split, "tsv", str(tmp_path))
    assert s.labels.dtype == np.int32
    assert [NLI[i] for i in s.labels] == gold[name], split
  dev = dataset.load_split(task, "dev", "tsv", str(tmp_path))
  off = 64
  assert dev.text_a == [a for a, _ in pairs[off:off + 24]]
  assert dev.text_b == [b for _, b in pairs[off:off + 24]]
  with pytest.raises(ConfigError, match="unknown split 'dev_mm' of task 'mnli'"):
    dataset.load_split(task, "dev_mm", "tsv", str(tmp_path))
  os.remove(tmp_path / "MNLI" / "dev_mismatched.tsv")
  with pytest.raises(ConfigError) as e:
    dataset.load_split(task, "dev_mismatched", "tsv", str(tmp_path))
  assert "dev_mismatched.tsv" in str(e.value) and "dev_matched.tsv" in str(e.value)


def test_stsb_float_scores_and_bad_score(tmp_path, pairs):
  scores = write_stsb(tmp_path, pairs)
  task = tasks.get_task("stsb")
  for split in ("train", "dev"):
    s = dataset.load_split(task, split, "tsv", str(tmp_path))
    assert s.labels.dtype == np.float32
    np.testing.assert_array_equal(s.labels, scores[split].astype(np.float32))
  path = tmp_path / "STS-B" / "dev.tsv"
  lines = path.read_text(encoding="utf-8").split("\n")
  lines[3] = lines[3].rsplit("\t", 1)[0] + "\tn/a"
  path.write_text("\n".join(lines), encoding="utf-8")
  with pytest.raises(ConfigError) as e:
    dataset.load_split(task, "dev", "tsv", str(tmp_path))
  assert str(e.value) == (f"{path}:4: label 'n/a' is not a number (task 'stsb' is a regression: "
                          "each label is a real-valued score)")


def test_qqp_skips_and_counts_malformed_rows(tmp_path, pairs, caplog):
  rows = write_qqp(tmp_path, pairs)
  with caplog.at_level(logging.WARNING):
    s = dataset.load_split(tasks.get_task("qqp"), "train", "tsv", str(tmp_path))
  assert s.text_a == [r[3] for r in rows] and s.labels.tolist() == [r[5] for r in rows]
  path = tmp_path / "QQP" / "train.tsv"
  assert f"{path}: skipped 2 malformed row(s) (too few columns or a bad label; lines 6, 7)" in (
      caplog.text)
  # the same damage in a task without skip_malformed is an error naming the line
  wnli = tmp_path / "WNLI"
  _write(wnli, "train.tsv", WNLI, [[0, "a", "b", 1], [1, "c", 0]])
  with pytest.raises(ConfigError, match=f"{wnli / 'train.tsv'}:3: malformed row"):
    dataset.load_split(tasks.get_task("wnli"), "train", "tsv", str(tmp_path))


def test_wnli_layout(tmp_path, pairs):
  rows = [[i, a, b, i % 2] for i, (a, b) in enumerate(pairs[:10])]
  _write(tmp_path / "WNLI", "dev.tsv", WNLI, rows)
  s = dataset.load_split(tasks.get_task("wnli"), "dev", "tsv", str(tmp_path))
  assert s.text_b == [r[2] for r in rows] and s.labels.tolist() == [r[3] for r in rows]


def test_inputs_load_and_tokenize_the_extra_dev_set(tmp_path, pairs):
  write_mnli(tmp_path, pairs)
  cfg = _cfg("mnli", tmp_path)
  loaded = inputs.load(cfg)
  assert set(loaded.extra_dev_splits) == {"dev_mismatched"} and loaded.model.config.num_labels == 3
  arrays = inputs.tokenize(cfg, loaded, str(tmp_path / "cache"))
  mm = arrays.extra_dev["dev_mismatched"]
  assert mm["input_ids"].shape == (24, 16)
  np.testing.assert_array_equal(mm["labels"], loaded.extra_dev_splits["dev_mismatched"].labels)
  assert len(list((tmp_path / "cache").glob("mnli-dev_mismatched-*.npz"))) == 1
  stsb = _cfg("stsb", tmp_path)
  write_stsb(tmp_path, pairs)
  loaded = inputs.load(stsb)
  assert loaded.extra_dev_splits == {} and loaded.model.config.num_labels == 1
  arrays = inputs.tokenize(stsb, loaded, None)
  assert arrays.extra_dev == {} and arrays.train["labels"].dtype == np.float32
  sub = dataset.subsample(arrays.train, 10, 0)
  assert sub["labels"].dtype == np.float32
  batches = dataset.eval_batches(arrays.dev, 12)
  assert batches["labels"].dtype == np.float32 and batches["labels"].shape == (3, 12)


# ------------------------------------------------------------------ regression metrics and loss


@pytest.mark.parametrize("seed", range(4))
def test_correlations_against_scipy(seed):
  stats = pytest.importorskip("scipy.stats")
  rng = np.random.default_rng(seed)
  y = rng.uniform(0, 5, 300)
  p = y + rng.normal(0, 1.5, 300)
  tied_y = np.round(y)                   # many ties (6 values) in the labels
  tied_p = np.round(p * 2) / 2           # and in the predictions
  for a, b in ((p, y), (tied_p, tied_y), (tied_p, y)):
    # measured max |diff| to scipy over the 4 seeds: pearson 3.3e-16, spearman 1.1e-16
    assert abs(metrics.pearson(a, b) - stats.pearsonr(a, b)[0]) < 1e-12
    assert abs(metrics.spearman(a, b) - stats.spearmanr(a, b)[0]) < 1e-12
  np.testing.assert_array_equal(metrics.ranks(tied_y), stats.rankdata(tied_y))
  out = metrics.compute("pearson_spearman", p, y)
  assert out["pearson_spearman"] == (out["pearson"] + out["spearman"]) / 2
  assert out["mse"] == pytest.approx(np.mean((p - y) ** 2), rel=1e-12)  # measured rel 0


def test_score_and_majority():
  y = np.array([0.0, 1.0, 4.0, 2.5])
  logits = np.array([[0.1], [0.9], [3.0], [2.0]], np.float32)
  assert metrics.score("pearson_spearman", logits, y) == metrics.compute(
      "pearson_spearman", logits[:, 0], y)
  cls = np.array([[0.1, 0.9], [2.0, -1.0], [0.0, 0.5]])
  assert metrics.score("accuracy", cls, [1, 0, 0]) == {"accuracy": pytest.approx(2 / 3)}
  maj = metrics.majority("pearson_spearman", y)
  # the constant predictor: no correlation by definition, mse = the dev variance
  assert maj["pearson"] == maj["spearman"] == maj["pearson_spearman"] == 0.0
  assert maj["mse"] == pytest.approx(np.var(y), rel=1e-12)  # measured rel 0
  assert metrics.is_failed(0.0, maj["pearson_spearman"])
  assert metrics.is_failed(-0.1, 0.0) and not metrics.is_failed(0.01, 0.0)
  assert metrics.pearson([2, 2, 2], [1, 2, 3]) == 0.0


def test_task_loss_mse_for_one_output_xent_otherwise():
  rng = np.random.default_rng(0)
  logits1 = rng.normal(size=(6, 1)).astype(np.float32)
  y = rng.uniform(0, 5, 6).astype(np.float32)
  w = np.array([1, 1, 1, 1, 0, 0], np.float32)
  want = np.sum((logits1[:4, 0] - y[:4]) ** 2) / 4
  # measured relative error 0.0 (float32 sums of 4 terms); 1e-5 allows a reordered sum
  assert float(train_lib.task_loss(jnp.asarray(logits1), jnp.asarray(y), jnp.asarray(w))) == (
      pytest.approx(want, rel=1e-5))
  logits3 = rng.normal(size=(6, 3)).astype(np.float32)
  c = np.array([0, 2, 1, 1, 0, 2])
  ce = optax.softmax_cross_entropy_with_integer_labels(logits3[:4], c[:4])
  assert float(train_lib.task_loss(jnp.asarray(logits3), jnp.asarray(c), jnp.asarray(w))) == (
      pytest.approx(float(np.mean(ce)), rel=1e-6))  # measured relative error 0.0


# ------------------------------------------------------------------ chunked tokenization


def test_chunked_tokenization_equals_one_call(pairs, minilm_dir):
  from transformers import BertTokenizerFast  # pylint: disable=import-outside-toplevel
  tok = BertTokenizerFast.from_pretrained(minilm_dir)
  a, b = [p[0] for p in pairs[:53]], [p[1] for p in pairs[:53]]
  for text_b, labels in ((b, np.arange(53) % 3), (None, np.linspace(0, 5, 53))):
    split = dataset.Split(a, text_b, np.asarray(labels, np.float32 if text_b is None else np.int32))
    one = tok(a, text_b, max_length=48, truncation=True, padding="max_length",
              return_token_type_ids=True, return_tensors="np")
    chunked = dataset.tokenize(split, tok, 48, chunk=7)  # 8 chunks, the last one of 4
    for k in ("input_ids", "attention_mask", "token_type_ids"):
      assert chunked[k].dtype == np.int32
      np.testing.assert_array_equal(chunked[k], one[k])
    assert chunked["labels"].dtype == split.labels.dtype
    np.testing.assert_array_equal(chunked["labels"], split.labels)
    whole = dataset.tokenize(split, tok, 48, chunk=10_000)
    for k in whole:
      np.testing.assert_array_equal(whole[k], chunked[k])


# ------------------------------------------------------------------ two seeds end to end


def test_stsb_two_seeds(tmp_path, pairs):
  write_stsb(tmp_path, pairs)
  summary = experiment.run_setting(_cfg("stsb", tmp_path), str(tmp_path / "wd"))
  assert summary["metric"] == "pearson_spearman"
  assert summary["majority"]["pearson_spearman"] == 0.0
  assert [r["seed"] for r in summary["runs"]] == [1, 2]
  for r in summary["runs"]:
    final = r["final"]
    assert set(final) >= {"pearson_spearman", "pearson", "spearman", "mse"}
    assert -1.0 <= final["pearson_spearman"] <= 1.0 and np.isfinite(r["final_train_loss"])
    assert r["failed"] == (final["pearson_spearman"] <= 0.0)
  assert summary["failed_runs"] == sum(r["failed"] for r in summary["runs"])
  # scored from the single output, not its argmax (which is constant: correlation exactly 0)
  assert all(r["final"]["pearson"] != 0.0 for r in summary["runs"])


def test_mnli_two_seeds_score_both_dev_sets(tmp_path, pairs):
  write_mnli(tmp_path, pairs)
  workdir = tmp_path / "wd"
  summary = experiment.run_setting(_cfg("mnli", tmp_path), str(workdir))
  assert summary["metric"] == "accuracy"
  lines = (workdir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
  records = [json.loads(x) for x in lines]
  dev = [r for r in records if r.get("kind") == "dev"]
  assert dev and all("dev_mismatched_accuracy" in r and "accuracy" in r for r in dev)
  assert all(0.0 <= r["dev_mismatched_accuracy"] <= 1.0 for r in dev)


def test_hub_sources_name_mnli_splits_and_keep_stsb_scores(monkeypatch, require):
  """HF and tfds: MNLI's dev sets are validation_matched / validation_mismatched, its texts
  premise / hypothesis; STS-B's float scores stay floats (no network: stand-ins record the
  calls)."""
  import sys  # pylint: disable=import-outside-toplevel
  import types  # pylint: disable=import-outside-toplevel
  datasets = require("datasets")
  calls = []
  rows = {"mnli": {"premise": ["p1", "p2"], "hypothesis": ["h1", "h2"], "label": [2, 0]},
          "stsb": {"sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": [4.25, 0.5]}}

  def fake_load(path, name, split, cache_dir=None):
    calls.append((path, name, split))
    return datasets.Dataset.from_dict(rows[name])
  monkeypatch.setattr(datasets, "load_dataset", fake_load)
  mm = dataset.load_split(tasks.get_task("mnli"), "dev_mismatched", "hf", "")
  matched = dataset.load_split(tasks.get_task("mnli"), "dev", "hf", "")
  sts = dataset.load_split(tasks.get_task("stsb"), "train", "hf", "")
  assert calls == [("nyu-mll/glue", "mnli", "validation_mismatched"),
                   ("nyu-mll/glue", "mnli", "validation_matched"), ("nyu-mll/glue", "stsb", "train")]
  assert mm.text_a == ["p1", "p2"] and mm.text_b == ["h1", "h2"] and mm.labels.tolist() == [2, 0]
  assert matched.labels.dtype == np.int32
  assert sts.labels.dtype == np.float32 and sts.labels.tolist() == [4.25, 0.5]
  tf_calls = []
  fake = types.ModuleType("tensorflow_datasets")
  fake.load = lambda name, split, data_dir: tf_calls.append((name, split)) or name
  fake.as_numpy = lambda ds: iter([{"premise": b"p", "hypothesis": b"h", "label": 1}])
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
  got = dataset.load_split(tasks.get_task("mnli"), "dev_mismatched", "tfds", "")
  assert tf_calls == [("glue/mnli", "validation_mismatched")]
  assert got.text_a == ["p"] and got.text_b == ["h"] and got.labels.tolist() == [1]
