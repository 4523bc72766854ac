"""End to end: the command line, on CPU, kept small: `python -m jaxstab.main` itself in a
subprocess for the demo (and where the environment differs), in-process for the rest
(tests/cli_runs.py).

Successful runs: the offline demo (2 seeds, 2 epochs) and 12 steps of a tiny BERT on each of
RTE, MRPC and CoLA (real GLUE files), plus one repeat of the RTE run for determinism. Failing
runs must exit non-zero with one `jaxstab: error: ...` line naming the culprit and must not leave
a summary.json behind.
"""
import json
import math
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from jaxstab.data import metrics
from tests import guards
from tests.cli_runs import assert_ok, error_line, run_cli
from tests.test_predictions import check_instability

REPO = Path(__file__).resolve().parents[1]


def read_jsonl(path):
  with open(path, encoding="utf-8") as f:
    lines = [l for l in f.read().splitlines() if l.strip()]
  return [json.loads(l) for l in lines]  # every line must parse


def load_npz(path):
  with np.load(path) as z:
    return {k: z[k] for k in z.files}


def read_tensorboard(folder) -> dict:
  """{(tag, step): value} of every scalar in the event files of `folder` (TFRecord framing:
  length, its CRC, the Event proto, its CRC)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  out = {}
  for path in sorted(Path(folder).glob("events.out.tfevents*")):
    raw, pos = path.read_bytes(), 0
    while pos < len(raw):
      (n,) = struct.unpack("<Q", raw[pos:pos + 8])
      event = event_pb2.Event.FromString(raw[pos + 12:pos + 12 + n])
      pos += 12 + n + 4
      for v in event.summary.value:
        assert (v.tag, event.step) not in out, (v.tag, event.step)
        out[v.tag, event.step] = v.simple_value
  return out


# ====================================================================== the demo, end to end

DEMO_ARGS = ["--config=configs/demo.py", "--config.train.epochs=2", "--config.seeds=1-2"]
DEMO_SEEDS = [1, 2]
TINY_GROUPS = ["embeddings", "layer_0", "layer_1", "pooler", "classifier"]


@pytest.fixture(scope="module")
def demo_run(cli_root):
  workdir = cli_root / "demo"
  proc = run_cli(DEMO_ARGS, workdir, subprocess_=True)  # the one run of `python -m jaxstab.main`
  assert_ok(proc)
  (cli_root / "demo.stderr").write_text(proc.stderr)  # its log, for the progress-line test
  return workdir


@pytest.fixture(scope="module")
def demo_expected():
  """Independent of the run: sizes and labels of the demo task, and the demo config's values."""
  from jaxstab.data import demo_task  # pylint: disable=import-outside-toplevel
  _, _, dev_labels = demo_task.generate(demo_task.SIZES["dev"], demo_task.SEEDS["dev"])
  dev_labels = np.asarray(dev_labels)
  majority_acc = np.bincount(dev_labels).max() / len(dev_labels)
  batch, every, epochs = 32, 5, 2  # configs/demo.py: batch_size 32, probe.every 5; epochs=2 above
  total = epochs * math.ceil(demo_task.SIZES["train"] / batch)
  return {"total": total, "every": every, "majority": float(majority_acc)}


def test_demo_writes_every_output_file(demo_run):
  for name in ("config.json", "metrics.jsonl", "probe.npz", "predictions.npz", "summary.json"):
    assert (demo_run / name).is_file(), name
  assert sorted(p.name for p in (demo_run / "runs").iterdir()) == sorted(
      f"{kind}_{s}.{ext}" for s in DEMO_SEEDS for kind, ext in (
          ("seed", "json"), ("probe_seed", "npz"), ("metrics_seed", "jsonl"),
          ("logits_seed", "npz"), ("reps_seed", "npy")))
  assert sorted(p.name for p in (demo_run / "tensorboard").iterdir()) == [
      f"seed_{s}" for s in DEMO_SEEDS]


def test_demo_progress_lines_read_cleanly(demo_run, demo_expected):
  """The log a user watches: `HH:MM:SS message` with no absl prefix (`I1206 21:48:46.117400
  139867690331008 experiment.py:105]`), no ETA at step 0 (the step call has not compiled yet:
  an estimate then counted the compilation), an ETA in minutes and seconds afterwards, and a
  last line with the spread in the table's own numbers."""
  log = (demo_run.parent / "demo.stderr").read_text().splitlines()
  progress = [l for l in log if re.match(r"^\d\d:\d\d:\d\d seeds \[1, 2\]: step ", l)]
  assert not [l for l in log if re.match(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ ", l)]
  assert progress[0].split(": ", 1)[1].startswith(
      f"step 0/{demo_expected['total']}, ETA after the first steps (compiling), dev accuracy ")
  for line in progress[1:]:
    assert re.search(r"step \d+/\d+, [\d.]+ examples/s, ETA (\d+m)?\d+s, dev accuracy ", line), line
  assert re.search(r"ETA 0s, dev accuracy", progress[-1])
  assert [l for l in log if re.search(r"2 failed runs|/2 failed runs; accuracy \(final\) std / "
                                      r"mean / median / max x100: [\d.]+ / [\d.]+ / ", l)]


def test_demo_tensorboard_scalars_are_the_metrics_records(demo_run):
  """Every number of every metrics.jsonl record, and nothing else, is a TensorBoard scalar
  `<kind>/<key>` at its step in its seed's folder (stored as float32)."""
  records = read_jsonl(demo_run / "metrics.jsonl")
  for seed in DEMO_SEEDS:
    want = {(f"{r['kind']}/{k}", r["step"]): v for r in records if r["seed"] == seed
            for k, v in r.items() if k not in ("kind", "seed", "step")
            and isinstance(v, (int, float)) and not isinstance(v, bool)}
    got = read_tensorboard(demo_run / "tensorboard" / f"seed_{seed}")
    assert {t for t, _ in want} >= {"dev/accuracy", "dev/lr", "dev/train_loss"}
    assert sorted(got) == sorted(want), seed
    for key, value in want.items():
      assert got[key] == np.float32(value), (seed, key, got[key], value)


def test_demo_config_json_records_the_overrides(demo_run):
  cfg = json.loads((demo_run / "config.json").read_text())
  assert cfg["task"] == "demo"
  assert cfg["train"]["epochs"] == 2.0
  assert cfg["seeds"] == "1-2"
  assert cfg["data"]["source"] == "synthetic"
  assert cfg["model"]["name_or_path"] == "tiny-bert"


def test_demo_metrics_jsonl(demo_run, demo_expected):
  records = read_jsonl(demo_run / "metrics.jsonl")
  dev = [r for r in records if r.get("kind") == "dev"]
  total = demo_expected["total"]
  for seed in DEMO_SEEDS:
    steps = [r["step"] for r in dev if r["seed"] == seed]
    assert 0 in steps and total in steps, (seed, steps)
    assert steps == sorted(steps) and max(steps) == total
  start = [r for r in dev if r["step"] == 0]
  assert sorted(r["seed"] for r in start) == DEMO_SEEDS
  for r in start:
    assert r["lr"] == 0.0, "warmup starts at 0"
    assert 0.0 <= r["accuracy"] <= 1.0
  assert any(r["lr"] > 0 for r in dev if r["step"] > 0)


def test_demo_probe_npz(demo_run, demo_expected):
  p = load_npz(demo_run / "probe.npz")
  total, every = demo_expected["total"], demo_expected["every"]
  expected_steps = np.arange(0, total, every)  # one record per `every` updates, steps < total
  t, s, g = len(expected_steps), len(DEMO_SEEDS), len(TINY_GROUPS)
  np.testing.assert_array_equal(p["step"], expected_steps)
  assert list(p["groups"]) == TINY_GROUPS
  assert p["grad_norm"].shape == (s, t, g)
  for key in ("total_grad_norm", "loss", "lr"):
    assert p[key].shape == (s, t), key
  assert list(p["seeds"]) == DEMO_SEEDS
  assert np.all(np.isfinite(p["grad_norm"])) and np.all(p["grad_norm"] > 0)
  np.testing.assert_array_equal(p["lr"][:, 0], 0.0)  # warmup starts at 0
  assert np.all(p["lr"][:, 1:] > 0)
  # the groups cover every parameter of a BERT, so their norms add up to the global norm (a
  # shared guard at float32 rounding: tests/test_planted_bugs.py drops a layer from the probe)
  guards.check_probe_sums_to_total(p["grad_norm"], p["total_grad_norm"])
  # two seeds are two different runs
  assert not np.array_equal(p["grad_norm"][0], p["grad_norm"][1])


def test_demo_summary(demo_run, demo_expected):
  summary = json.loads((demo_run / "summary.json").read_text())
  assert summary["task"] == "demo"
  assert summary["metric"] == "accuracy"
  metric = summary["metric"]
  assert summary["majority"][metric] == demo_expected["majority"]  # the same count / n
  runs = summary["runs"]
  assert [r["seed"] for r in runs] == DEMO_SEEDS
  dev = [r for r in read_jsonl(demo_run / "metrics.jsonl") if r.get("kind") == "dev"]
  for r in runs:
    assert r["final"]["step"] == demo_expected["total"]
    assert "step" in r["best"]
    assert isinstance(r["failed"], bool)
    assert r["failed"] == (r["final"][metric] <= summary["majority"][metric])
    history = [d for d in dev if d["seed"] == r["seed"]]
    assert r["final"][metric] == history[-1][metric]  # the same records: exact
    assert r["best"][metric] == max(d[metric] for d in history)
    assert r["best"]["step"] in [d["step"] for d in history if d[metric] == r["best"][metric]]
  assert summary["failed_runs"] == sum(r["failed"] for r in runs)


def check_predictions(workdir, n_dev: int, classes: int) -> dict:
  """predictions.npz holds the logits each run's final metrics were scored from: [seeds, dev
  examples, outputs] float32, re-scored here to the summary's final metrics exactly; each row
  is that run's runs/logits_seed_N.npz; the instability block is their recomputation."""
  summary = json.loads((workdir / "summary.json").read_text())
  z = load_npz(workdir / "predictions.npz")
  runs = summary["runs"]
  assert z["logits"].shape == (len(runs), n_dev, classes) and z["logits"].dtype == np.float32
  assert z["labels"].shape == (n_dev,) and z["seeds"].tolist() == [r["seed"] for r in runs]
  for i, r in enumerate(runs):
    # the dev metrics of the final evaluation, computed again from the stored logits: equal
    # to the last bit (the same float32 logits through the same scorer)
    assert metrics.score(summary["metric"], z["logits"][i], z["labels"]) == {
        k: v for k, v in r["final"].items() if k != "step"}, r["seed"]
    row = load_npz(workdir / "runs" / f"logits_seed_{r['seed']}.npz")["logits"]
    np.testing.assert_array_equal(row, z["logits"][i])
  check_instability(summary, z, workdir=workdir)
  return z


def test_demo_predictions_npz(demo_run, demo_expected):
  from jaxstab.data import demo_task  # pylint: disable=import-outside-toplevel
  z = check_predictions(demo_run, demo_task.SIZES["dev"], 2)
  _, _, dev_labels = demo_task.generate(demo_task.SIZES["dev"], demo_task.SEEDS["dev"])
  np.testing.assert_array_equal(z["labels"], dev_labels)
  assert not np.array_equal(z["logits"][0], z["logits"][1])  # two seeds, two models


# ====================================================================== real GLUE tasks, tiny model

# Majority-class dev baselines: tests.guards.GLUE_MAJORITY (../shared/glue/README.md's counts).
TASK_METRIC = {"rte": "accuracy", "mrpc": "acc_and_f1", "cola": "mcc"}
TASK_STEPS, TASK_EVERY = 12, 4
GLUE_DEV = {"rte": 277, "mrpc": 408, "cola": 1043}  # dev examples (../shared/glue/README.md)


def task_args(task, glue_dir):
  return [f"--config=configs/{task}.py:model=tiny-bert", f"--config.data.dir={glue_dir}",
          f"--config.train.max_steps={TASK_STEPS}", "--config.train.max_seq_length=32",
          "--config.train.batch_size=8", "--config.train.eval_batch_size=64",
          f"--config.probe.every={TASK_EVERY}"]


@pytest.fixture(scope="module")
def task_run(cli_root, glue_dir):
  """task -> workdir of a finished run (each task trained once per module)."""
  done = {}

  def get(task):
    if task not in done:
      workdir = cli_root / task
      assert_ok(run_cli(task_args(task, glue_dir), workdir))
      done[task] = workdir
    return done[task]

  return get


@pytest.mark.parametrize("task", ["rte", "mrpc", "cola"])
def test_tiny_model_on_a_glue_task(task, task_run, glue_dir):
  workdir = task_run(task)
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["task"] == task
  assert summary["metric"] == TASK_METRIC[task]
  guards.check_majority(summary)  # exact; tests/test_planted_bugs.py computes it on train
  assert summary["total_steps"] == TASK_STEPS
  (run,) = summary["runs"]
  assert run["seed"] == 1
  assert run["final"]["step"] == TASK_STEPS
  assert run["failed"] == (run["final"][summary["metric"]] <= summary["majority"][summary["metric"]])
  p = load_npz(workdir / "probe.npz")
  np.testing.assert_array_equal(p["step"], np.arange(0, TASK_STEPS, TASK_EVERY))
  assert list(p["groups"]) == TINY_GROUPS
  assert p["grad_norm"].shape == (1, TASK_STEPS // TASK_EVERY, len(TINY_GROUPS))
  check_predictions(workdir, GLUE_DEV[task], 2)  # every metric re-scored: acc_and_f1, mcc too
  cfg = json.loads((workdir / "config.json").read_text())
  assert cfg["data"]["dir"] == glue_dir
  assert cfg["model"]["name_or_path"] == "tiny-bert"


def test_rte_majority_is_146_of_277(task_run):
  summary = json.loads((task_run("rte") / "summary.json").read_text())
  assert summary["majority"]["accuracy"] == 146 / 277


class ResultsDiffer(AssertionError):
  """Two runs that should agree do not (raised by assert_same_results)."""


def assert_same_results(first, second):
  try:
    _compare_results(first, second)
  except AssertionError as e:
    raise ResultsDiffer(str(e)) from e


def _compare_results(first, second):
  s1 = json.loads((first / "summary.json").read_text())
  s2 = json.loads((second / "summary.json").read_text())
  assert s1["runs"] == s2["runs"]
  p1, p2 = load_npz(first / "probe.npz"), load_npz(second / "probe.npz")
  assert sorted(p1) == sorted(p2)
  for k in p1:
    assert np.array_equal(p1[k], p2[k]), k
  assert read_jsonl(first / "metrics.jsonl") == read_jsonl(second / "metrics.jsonl")
  q1, q2 = load_npz(first / "predictions.npz"), load_npz(second / "predictions.npz")
  for k in ("logits", "labels", "seeds"):
    assert np.array_equal(q1[k], q2[k]), k


def test_same_seed_twice_gives_identical_results(task_run, glue_dir, cli_root):
  first, second = task_run("rte"), cli_root / "rte_again"
  assert_ok(run_cli(task_args("rte", glue_dir), second))
  assert_same_results(first, second)


def test_rerun_in_a_used_workdir_is_identical_and_clears_stale_files(task_run, glue_dir,
                                                                      cli_root):
  """Same command again in a copy of a finished workdir (its token cache included): identical
  numbers, and nothing from an older run survives (metrics.jsonl is opened for appending)."""
  first, second = task_run("rte"), cli_root / "rte_rerun_in_used_workdir"
  shutil.copytree(first, second)
  (second / "tensorboard" / "seed_99").mkdir(parents=True)
  with open(second / "metrics.jsonl", "a", encoding="utf-8") as f:
    f.write(json.dumps({"kind": "dev", "seed": 99, "step": 0}) + "\n")
  (second / "summary.json").write_text("{\"stale\": true}\n")
  assert_ok(run_cli(task_args("rte", glue_dir), second))
  assert not (second / "tensorboard" / "seed_99").exists()
  assert all(r["seed"] == 1 for r in read_jsonl(second / "metrics.jsonl"))
  assert_same_results(first, second)


# ====================================================================== errors


def assert_failed_cleanly(proc, workdir, *patterns):
  line = error_line(proc)
  for pat in patterns:
    assert re.search(pat, line), f"{pat!r} not in {line!r}"
  assert "Traceback" not in line
  assert not (Path(workdir) / "summary.json").exists()
  return line


@pytest.mark.parametrize("args,patterns", [
    pytest.param(["--config=configs/rte.py", "--config.task=boolq"],
                 [r"'boolq'", r"\brte\b", r"\bmrpc\b", r"\bcola\b"], id="unknown-task"),
    pytest.param(["--config=configs/rte.py", "--config.optim.lrr=1"],
                 [r"optim\.lrr", r"\blr\b"], id="unknown-override-key"),
    pytest.param(["--config=configs/rte.py:foo=1"],
                 [r"'foo'", r"\bmodel\b", r"\bsetting\b", r"\bseeds\b"], id="unknown-config-arg"),
    pytest.param(["--config=configs/rte.py:setting=bogus"],
                 [r"'bogus'", r"\bdevlin\b", r"\bours\b"], id="unknown-setting"),
    pytest.param(["--config=configs/rte.py:seeds=1,2,1"], [r"seeds", r"twice"],
                 id="duplicated-seed"),
    pytest.param(["--config=configs/nothere.py"], [r"configs/nothere\.py"],
                 id="missing-config-file"),
])
def test_bad_command_line(args, patterns, tmp_path):
  workdir = tmp_path / "work"
  assert_failed_cleanly(run_cli(args, workdir), workdir, *patterns)


def test_missing_data_dir(tmp_path):
  workdir, missing = tmp_path / "work", tmp_path / "nonexistent"
  proc = run_cli(["--config=configs/rte.py:model=tiny-bert", f"--config.data.dir={missing}"],
                 workdir)
  assert_failed_cleanly(proc, workdir, re.escape(str(missing / "RTE" / "train.tsv")))


def test_missing_data_dir_leaves_an_old_run_untouched(tmp_path):
  """Inputs are checked before the workdir is touched: an old finished run survives."""
  workdir = tmp_path / "work"
  (workdir / "tensorboard" / "seed_1").mkdir(parents=True)
  old = {"summary.json": "{\"old\": true}\n", "metrics.jsonl": "{\"kind\": \"dev\"}\n",
         "probe.npz": "not really an npz", "tensorboard/seed_1/events.out.tfevents.old": "x"}
  for name, text in old.items():
    (workdir / name).write_text(text)
  proc = run_cli(["--config=configs/rte.py:model=tiny-bert",
                  f"--config.data.dir={tmp_path / 'nonexistent'}"], workdir)
  error_line(proc)
  for name, text in old.items():
    assert (workdir / name).read_text() == text, f"{name} was changed by a failed run"
  assert sorted(p.name for p in workdir.iterdir()) == ["metrics.jsonl", "probe.npz",
                                                        "summary.json", "tensorboard"]


@pytest.mark.parametrize("split,line", [("dev", 10), ("train", 3)])
def test_malformed_tsv_row(split, line, tmp_path, glue_dir):
  data_dir = tmp_path / "glue"
  shutil.copytree(Path(glue_dir) / "RTE", data_dir / "RTE")
  path = data_dir / "RTE" / f"{split}.tsv"
  with open(path, encoding="utf-8", newline="") as f:
    rows = f.read().split("\n")
  rows[line - 1] = "\t".join(rows[line - 1].split("\t")[:2])  # 2 of the 4 columns
  with open(path, "w", encoding="utf-8", newline="") as f:
    f.write("\n".join(rows))
  workdir = tmp_path / "work"
  proc = run_cli(["--config=configs/rte.py:model=tiny-bert", f"--config.data.dir={data_dir}"],
                 workdir)
  assert_failed_cleanly(proc, workdir, re.escape(f"{path}:{line}") + r"\b")


def test_offline_hub_model(tmp_path, glue_dir):
  workdir = tmp_path / "work"
  env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"),
         "HF_HUB_CACHE": str(tmp_path / "hf_home" / "hub")}
  proc = run_cli(["--config=configs/rte.py", f"--config.data.dir={glue_dir}",
                  "--config.model.name_or_path=bert-large-uncased"], workdir, env=env)
  assert_failed_cleanly(proc, workdir, r"bert-large-uncased", r"local folder")


def test_batch_size_not_divisible_by_device_count(tmp_path):
  workdir = tmp_path / "work"
  proc = run_cli(["--config=configs/demo.py", "--config.train.batch_size=3"], workdir,
                 env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  assert_failed_cleanly(proc, workdir, r"train\.batch_size=3\b", r"\b2 devices")


def test_non_numeric_config_argument(tmp_path):
  workdir = tmp_path / "work"
  proc = run_cli(["--config=configs/rte.py:lr=abc"], workdir)
  assert_failed_cleanly(proc, workdir, r"\blr\b|optim\.lr", r"'abc'")
