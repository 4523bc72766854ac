"""predictions.npz and the summary's `instability` block, without training: a setting's runs/
files written by hand, merged by jaxstab.study.instability_io, checked against a recomputation
from predictions.npz (check_instability, which tests/test_cli.py runs on a real run too), with a
planted bug the check must catch; the table and the report's figures built from them."""
import dataclasses
import itertools
import json
import math

import numpy as np
import pytest

from jaxstab.infra import fs
from jaxstab.report import instability as report_instability
from jaxstab.results import agreement, instability, outputs, records, tables
from jaxstab.results.records import SettingSummary
from jaxstab.study import instability_io, workdir as workdir_lib
from tests import guards
from tests.test_planted_bugs import assert_caught


def _leaves(x, prefix=""):
  """{dotted path: value} of every leaf of a JSON-like tree (lists indexed)."""
  if isinstance(x, dict):
    return {k: v for key, val in x.items() for k, v in _leaves(val, f"{prefix}{key}.").items()}
  if isinstance(x, (list, tuple)):
    return {k: v for i, val in enumerate(x) for k, v in _leaves(val, f"{prefix}{i}.").items()}
  return {prefix.rstrip("."): x}


def check_instability(summary: dict, predictions: dict, regression: bool = False,
                      workdir=None) -> dict:
  """Guard: the summary's `instability` block equals the block recomputed from predictions.npz
  over every seed, and over the seeds the summary's own runs mark not failed; the seeds of
  predictions.npz are the summary's runs, in order. With `workdir`, the representation measures
  too, from its runs/reps_seed_N.npy. Every numeric leaf is compared; the bound is 0 (the same
  float32 logits and float16 vectors, read back exactly, through the same float64 arithmetic)."""
  runs = summary["runs"]
  ok = [r["failed"] is False for r in runs]  # written here, not taken from instability_io
  reps = None
  if workdir is not None:
    reps = np.stack([np.load(f"{workdir}/runs/reps_seed_{r['seed']}.npy") for r in runs])
  want = _leaves(instability.instability(
      predictions["logits"], "logits", successful=np.asarray(ok, bool), representations=reps,
      task_type="regression" if regression else "classification"))
  got = _leaves(summary["instability"])
  errors = {"seeds": (float(list(predictions["seeds"]) != [r["seed"] for r in runs]), 0.0),
            "keys": (float(set(got) != set(want)), 0.0)}
  for k in sorted(set(got) & set(want)):
    a, b = got[k], want[k]
    if isinstance(b, (int, float)) and not isinstance(b, bool) and a is not None:
      errors[k] = (abs(a - b) if math.isfinite(b) else float(a != b), 0.0)
    else:
      errors[k] = (float(a != b), 0.0)
  return guards.enforce("instability block = its recomputation from predictions.npz", errors)


# ------------------------------------------------------------------ a setting written by hand
@dataclasses.dataclass
class _Task:
  regression: bool = False


@dataclasses.dataclass
class _Arrays:
  dev: dict


@dataclasses.dataclass
class _Plan:
  """The fields of plan.Plan that instability_io reads."""
  workdir: str
  arrays: _Arrays
  task: _Task
  rep_examples: int = 0  # no representations captured (tests/test_representations_capture.py)


def _setting(tmp_path, regression=False, missing=()):
  """6 runs on 40 dev examples: runs 1-2 failed to class 0 on every example (their logits
  differ only in confidence), run 3 diverged (NaN logits), runs 4-6 successful, each flipping
  a different few labels of a shared answer. Returns (plan, runs)."""
  rng = np.random.default_rng(0)
  n, classes = 40, 1 if regression else 3
  truth = rng.integers(0, 3, n)
  logits = []
  for seed in range(1, 7):
    if regression:
      x = (truth + (seed <= 2) * 2.0 + 0.1 * seed * rng.normal(size=n))[:, None]
    elif seed <= 2:
      x = np.tile([3.0 + seed, 0.0, 0.0], (n, 1))
    else:
      label = truth.copy()
      flip = rng.choice(n, 4 + seed, replace=False)
      label[flip] = (label[flip] + 1) % classes
      x = np.eye(classes)[label] * 2.0 + 0.1 * rng.normal(size=(n, classes))
    if seed == 3:
      x = np.full_like(x, np.nan)
    logits.append(x.astype(np.float32))
  fs.makedirs(str(tmp_path / "runs"))
  for seed, x in zip(range(1, 7), logits):
    if seed not in missing:
      outputs.write_npz(workdir_lib.run_path(str(tmp_path), seed, "logits"), logits=x)
  runs = [{"seed": s, "failed": s <= 3, "diverged_at": 5 if s == 3 else None}
          for s in range(1, 7)]
  plan = _Plan(str(tmp_path), _Arrays({"labels": truth.astype(np.int32)}), _Task(regression))
  return plan, runs


def test_predictions_and_block_of_a_setting(tmp_path):
  plan, runs = _setting(tmp_path)
  out = {"runs": runs}
  pred = instability_io.add(out, plan, runs)
  assert pred["logits"].shape == (6, 40, 3) and pred["logits"].dtype == np.float32
  assert pred["seeds"].tolist() == [1, 2, 3, 4, 5, 6]
  np.testing.assert_array_equal(pred["labels"], plan.arrays.dev["labels"])
  check_instability(out, pred)
  b = out["instability"]
  # the diverged run 3 is dropped with a note; the successful block is runs 4-6 alone, whose
  # disagreement the failed runs (which agree with one another on every example) hide
  assert (b["seeds"], b["of"], b["successful"]["seeds"], b["successful"]["of"]) == (5, 6, 3, 3)
  assert "5 of 6 seeds have finite outputs" in b["note"]
  assert b["successful"]["disagreement"] == pytest.approx(
      agreement.disagreement(pred["logits"][3:]), abs=0)   # measured: equal
  assert b["disagreement"] != b["successful"]["disagreement"]
  # written and read back, the arrays are exactly what the block was computed from
  outputs.write_npz(str(tmp_path / outputs.PREDICTIONS), **pred)
  back = outputs.read_npz(str(tmp_path / outputs.PREDICTIONS))
  np.testing.assert_array_equal(back["logits"], pred["logits"])
  check_instability(out, back)


def test_planted_bug_all_seeds_counted_successful_is_caught(tmp_path, monkeypatch):
  """Plant: instability_io counts every run as successful (the failed runs' perfect agreement
  then leaks into the successful block). check_instability must catch it."""
  plan, runs = _setting(tmp_path)
  monkeypatch.setattr(instability_io, "successful", lambda runs: np.ones(len(runs), bool))
  out = {"runs": runs}
  pred = instability_io.add(out, plan, runs)
  errors = assert_caught("all seeds successful", check_instability, out, pred)
  assert errors["successful.of"][0] == 3.0 and errors["successful.disagreement"][0] > 0.05


def test_a_run_without_logits_makes_the_block_null_with_its_reason(tmp_path):
  """A seed finished before the logits were kept (an older workdir resumed): no
  predictions.npz, and `instability` is null with the reason, as the NaN policy has it."""
  plan, runs = _setting(tmp_path, missing=(5,))
  out = {"runs": runs}
  assert instability_io.add(out, plan, runs) is None
  assert out["instability"] is None
  assert "run(s) [5]" in out["undefined"]["instability"]
  cells = tables.instability_cells(out)[0]
  assert cells[0].startswith("undefined: no end-of-training dev logits for run(s) [5]")
  summary = SettingSummary.from_json(dict(out, task="rte", name="x"))
  assert summary.instability is None and summary.to_json()["undefined"] == out["undefined"]


def test_regression_block(tmp_path):
  plan, runs = _setting(tmp_path, regression=True)
  out = {"runs": runs}
  pred = instability_io.add(out, plan, runs)
  assert pred["logits"].shape == (6, 40, 1)
  check_instability(out, pred, regression=True)
  b = out["instability"]
  assert b["icc_form"] == "ICC(2,1)" and "disagreement" not in b
  cells, regression, _ = tables.instability_cells(out)
  assert regression and cells[1].startswith("MSD ") and cells[2].startswith("ICC ")


def test_summary_round_trip_and_an_older_summary(tmp_path):
  """The block survives a write and read of summary.json; a summary written before it loads,
  has no row in the table, and compare's table has no instability block for it."""
  plan, runs = _setting(tmp_path)
  out = {"task": "rte", "metric": "accuracy", "runs": [dict(r, final={"accuracy": 0.6})
                                                       for r in runs]}
  instability_io.add(out, plan, runs)
  text = json.dumps(out, indent=2)
  assert json.dumps(SettingSummary.from_json(json.loads(text)).to_json(), indent=2) == text
  old = {k: v for k, v in out.items() if k != "instability"}
  assert SettingSummary.from_json(old).instability is None
  assert "instability" not in SettingSummary.from_json(old).to_json()
  assert tables.instability_markdown([dict(old, name="old")]) == ""
  table = tables.instability_markdown([dict(out, name="new", recipe="devlin"),
                                       dict(old, name="old", recipe="ours")])
  rows = [l for l in table.splitlines() if l.startswith("| devlin")]
  assert len(rows) == 1 and "| ours" not in table
  b = out["instability"]
  assert rows[0] == (f"| devlin | RTE | 5 (3) | {b['disagreement']:.3f} / "
                     f"{b['successful']['disagreement']:.3f} | {b['fleiss_kappa']:.3f} / "
                     f"{b['successful']['fleiss_kappa']:.3f} | — |")
  assert "no per-layer representations" in table


def test_pairwise_disagreement_against_a_loop():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(5, 30, 4))
  x[2, 7, 1] = np.inf
  m = agreement.pairwise_disagreement(x)
  pred = x.argmax(-1)
  for i, j in itertools.product(range(5), range(5)):
    if 2 in (i, j):
      assert math.isnan(m[i, j])
    else:
      assert m[i, j] == sum(pred[i, e] != pred[j, e] for e in range(30)) / 30
  ok = [0, 1, 3, 4]
  assert m[np.ix_(ok, ok)][np.triu_indices(4, 1)].mean() == pytest.approx(
      agreement.disagreement(x, ok), rel=1e-15)   # measured: 0 (the same shares, summed)


def _cka_block():
  """A block with CKA from synthetic representations: seeds 1, 2, 4 share one representation
  per layer up to noise that grows with the layer; seeds 3 and 5 (failed) another."""
  rng = np.random.default_rng(2)
  layers, n, dims = 3, 50, 8
  good, bad = rng.normal(size=(layers, n, dims)), rng.normal(size=(layers, n, dims))
  noise = lambda: (0.1 + 0.4 * np.arange(layers))[:, None, None] * rng.normal(
      size=(layers, n, dims))
  reps = np.stack([(bad if s in (3, 5) else good) + noise() for s in range(1, 6)])
  failed = [False, False, True, False, True]
  block = instability.instability(rng.normal(size=(5, n, 2)), successful=~np.asarray(failed),
                                  representations=reps)
  return block, failed


def test_last_layer_cka_and_the_curves_by_group():
  block, failed = _cka_block()
  last = np.asarray(block["cka"][-1], np.float64)
  assert tables.last_layer_cka(block) == pytest.approx(
      last[~np.eye(5, dtype=bool)].mean(), rel=1e-12)   # measured: 0
  curves = report_instability.cka_curves(dict(block, failed=failed))
  for name, pairs in (("successful", [(0, 1), (0, 3), (1, 3)]), ("failed", [(2, 4)]),
                      ("between", [(i, j) for i in (0, 1, 3) for j in (2, 4)])):
    want = [np.mean([layer[i][j] for i, j in pairs]) for layer in block["cka"]]
    np.testing.assert_allclose(curves[name], want, rtol=1e-12)  # measured: 0
  # the seeds of one group are alike, across the groups not
  assert min(curves["successful"]) > max(curves["between"])


def test_report_figures_of_a_setting(tmp_path):
  """The disagreement figure from predictions.npz, the CKA curves only with `cka`."""
  plan, runs = _setting(tmp_path)
  out = {"task": "rte", "metric": "accuracy",
         "runs": [dict(r, final={"accuracy": 0.6}) for r in runs]}
  pred = instability_io.add(out, plan, runs)
  outputs.write_npz(str(tmp_path / outputs.PREDICTIONS), **pred)
  s = records.Setting("rte_x", str(tmp_path), out, None, None, [], [])
  caption = report_instability.disagreement(s, str(tmp_path / "d.png"))
  assert "3 failed seeds marked" in caption and (tmp_path / "d.png").stat().st_size > 10_000
  assert report_instability.cka(s, str(tmp_path / "c.png")) is None   # no representations
  block, _ = _cka_block()
  s = records.Setting("rte_x", str(tmp_path), dict(out, instability=block,
                      runs=[dict(r, failed=f) for r, f in zip(
                          out["runs"][:5], [False, False, True, False, True])]),
                      None, None, [], [])
  assert "2 failed seeds" in report_instability.cka(s, str(tmp_path / "c.png"))
  assert (tmp_path / "c.png").stat().st_size > 10_000


# ------------------------------------------------------------------ the final logits of a group
class _Programs:
  """eval_logits of a group of K = 3 slots, 2 of them real, on 5 dev examples in a batch of 8
  (the padding rows must be dropped); counts its calls."""
  seeds_per_group = 3

  def __init__(self):
    self.calls = 0

  def eval_logits(self, params, batches):
    self.calls += 1
    return np.arange(3 * 8 * 2, dtype=np.float64).reshape(3 * 8, 2) + params


def test_final_logits_recomputed_only_after_a_resume_past_the_final_evaluation():
  """A group whose last evaluation was at its last step keeps those logits (no second dev
  pass); one resumed from a checkpoint saved after its final evaluation (the logits are not in
  the checkpoint) gets them from its restored params, padding dropped."""
  from jaxstab.study import groups  # pylint: disable=import-outside-toplevel
  programs = _Programs()
  engine = dataclasses.make_dataclass("E", ["programs", "dev_on_device", "dev_labels"])(
      programs, None, np.zeros(5))
  state = dataclasses.make_dataclass("S", ["params"])(0.5)
  kept = np.ones((2, 5, 2), np.float32)
  progress = groups.Progress([1, 2], {}, [], step=12, logits=kept, logits_step=12)
  groups.final_logits(state, engine, progress)
  assert programs.calls == 0 and progress.logits is kept
  resumed = groups.Progress([1, 2], {}, [], step=12)  # restored: no logits
  groups.final_logits(state, engine, resumed)
  want = (np.arange(48).reshape(3, 8, 2) + 0.5)[:2, :5].astype(np.float32)
  assert programs.calls == 1 and resumed.logits_step == 12
  np.testing.assert_array_equal(resumed.logits, want)
  stale = groups.Progress([1, 2], {}, [], step=12, logits=kept, logits_step=10)
  groups.final_logits(state, engine, stale)
  assert programs.calls == 2 and stale.logits_step == 12
  np.testing.assert_array_equal(stale.logits, want)
