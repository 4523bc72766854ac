"""Linear connectivity between seeds (jaxstab.analysis.connectivity, jaxstab.results.connectivity):
barriers against a direct loop, identical seeds, a planted high-loss region that splits two
basins, and the command line end to end on a tiny run with kept params (summary.json, table.md,
compare, a diverged seed, bad input)."""
import json
import math
import os
import shutil

import jax
import numpy as np
import pytest

from jaxstab import analysis, connectivity as entry
from jaxstab.analysis import connectivity as cn
from jaxstab.infra import checkpoint
from jaxstab.report import compare as compare_lib, connectivity as figure_lib
from jaxstab.results import connectivity as conn
from tests import guards
from tests.helpers import ToyModel, toy_arrays, toy_params

POINTS = 3


# ------------------------------------------------------------------ pure pieces
def test_barrier_basins_and_pairs_by_hand():
  alpha = conn.alphas(3)
  assert alpha.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
  # chord from 1.0 to 2.0; the curve rises 0.5 above it at alpha = 0.5
  assert conn.barrier([1.0, 1.25, 2.0, 1.75, 2.0], alpha) == pytest.approx(0.5, abs=1e-12)
  assert conn.barrier([0.7] * 5, alpha) == 0.0            # identical seeds: a flat line
  assert math.isnan(conn.barrier([0.7, np.nan, 0.7, 0.7, 0.7], alpha))
  assert conn.basins([1, 2, 3, 4], [(1, 2), (2, 3), (3, 4), (1, 4)], [0.01, 0.5, 0.02, np.nan],
                     0.1) == [[1, 2], [3, 4]]
  pairs, sampled = conn.choose_pairs(range(25))
  assert len(pairs) == 300 and not sampled
  some, sampled = conn.choose_pairs(range(25), max_pairs=40, pair_seed=3)
  assert sampled and len(set(some)) == 40 and some == conn.choose_pairs(range(25), 40, 3)[0]
  assert some != conn.choose_pairs(range(25), 40, 4)[0]
  assert conn.failed_apart([[1, 2], [3]], {3: True}) is True
  assert conn.failed_apart([[1, 3], [2]], {3: True}) is False
  assert "all 2 seeds" in conn.failed_apart([[1, 3]], {1: True, 3: True}).reason


# ------------------------------------------------------------------ against a direct loop
def test_toy_barrier_matches_a_direct_loop():
  """Two unequal endpoints (the chord matters) with the line crossing u v = 0."""
  model, arrays = ToyModel(), toy_arrays()
  a, b = toy_params(2.0, 2.0), toy_params(-1.0, -0.8, 0.3)
  want = guards.connectivity_loop(model, a, b, arrays, POINTS)
  got = guards.connectivity_package(model, a, b, arrays, POINTS)
  errors = guards.check_connectivity_matches_loop(got, want)
  print("\ntoy:", errors)
  assert want["barrier"] > 0.3 and abs(want["loss"][0] - want["loss"][-1]) > 0.05


def test_tiny_bert_line_matches_a_direct_loop(tiny_run):
  inputs = tiny_run["inputs"]
  arrays = {k: v[:32] for k, v in inputs.train_arrays.items()
            if k in ("input_ids", "attention_mask", "token_type_ids", "labels")}
  a, b = (analysis.final_params(inputs, s) for s in (1, 2))
  want = guards.connectivity_loop(inputs.model, a, b, arrays, POINTS)
  got = guards.connectivity_package(inputs.model, a, b, arrays, POINTS,
                                    inputs.cfg.model.matmul_precision)
  print("\ntiny BERT:", guards.check_connectivity_matches_loop(got, want))
  # identical seeds: (1 - alpha) theta + alpha theta is theta up to float32 rounding, so the
  # barrier is 0 up to it (measured 6e-8 nats; bound 1e-6)
  same = guards.connectivity_package(inputs.model, a, a, arrays, POINTS,
                                     inputs.cfg.model.matmul_precision)
  assert 0.0 <= same["barrier"] <= 1e-6, same["barrier"]


def test_a_planted_high_loss_region_splits_two_basins():
  """Seeds 1, 2 near (u, v) = (2, 2), seeds 3, 4 near (-2, -2): the same function, but every line
  from one group to the other crosses u v = 0, where the model knows nothing."""
  model, arrays = ToyModel(), toy_arrays()
  params = {1: toy_params(2.0, 2.0), 2: toy_params(2.2, 1.8), 3: toy_params(-2.0, -2.0),
            4: toy_params(-1.8, -2.3)}
  alpha = conn.alphas(8)
  batches = cn.stack_batches(arrays, arrays, np.arange(len(arrays["labels"])), 16)
  fn = cn.make_line_fn(model, "highest")
  pairs, _ = conn.choose_pairs(params)
  curves = [cn.evaluate_line(fn, params[a], params[b], alpha, batches,
                             jax.device_put(batches.arrays), "accuracy", 5)["train_loss"]
            for a, b in pairs]
  heights = [conn.barrier(c, alpha) for c in curves]
  threshold, _ = conn.default_threshold(2, False)
  by_pair = dict(zip(pairs, heights))
  assert by_pair[(1, 2)] < threshold and by_pair[(3, 4)] < threshold, by_pair
  assert min(by_pair[p] for p in [(1, 3), (1, 4), (2, 3), (2, 4)]) > 0.3, by_pair
  assert conn.basins(list(params), pairs, heights, threshold) == [[1, 2], [3, 4]]
  block = conn.block(list(params), pairs, alpha, heights, threshold, "rule", {3: True, 4: True},
                     {}, "train_loss", False, 0)
  assert block["basins"] == [[1, 2], [3, 4]] and block["failed_seeds_apart"] is True


# ------------------------------------------------------------------ command line
@pytest.fixture(scope="module")
def tiny_run(kept_params_run):
  """A copy of the session's kept-params run, before any connectivity was computed."""
  workdir = kept_params_run("connectivity_run")
  (name, directory, summary), = analysis.select_settings(str(workdir))
  return {"workdir": workdir, "inputs": analysis.load_setting(name, directory, summary)}


def _files(workdir):
  return {p.relative_to(workdir): p.read_bytes() for p in workdir.rglob("*")
          if p.is_file() and "cache" not in p.parts}


@pytest.mark.parametrize("flags,says", [
    (["--points=0"], "--points=0"),
    (["--setting=nope"], "no setting 'nope'"),
    (["--threshold=-1"], "--threshold=-1"),
])
def test_bad_input_is_one_line_and_writes_nothing(tiny_run, capsys, flags, says):
  workdir = tiny_run["workdir"]
  before = _files(workdir)
  assert entry.main([f"--workdir={workdir}", *flags]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("jaxstab: error:") and says in err and "\n" not in err
  assert _files(workdir) == before


def test_without_kept_params_is_one_line(tiny_run, tmp_path, capsys):
  copy = tmp_path / "no_params"
  shutil.copytree(tiny_run["workdir"], copy, ignore=shutil.ignore_patterns("params", "cache"))
  assert entry.main([f"--workdir={copy}"]) == 2
  assert "keep_final_params" in capsys.readouterr().err


def test_cli_end_to_end_with_an_identical_and_a_diverged_seed(tiny_run, tmp_path, capsys):
  """Seed 3's params replaced by seed 1's (a pair with barrier 0), seed 2's by NaN (diverged)."""
  workdir = tmp_path / "run"
  shutil.copytree(tiny_run["workdir"], workdir, ignore=shutil.ignore_patterns("cache"))
  inputs = tiny_run["inputs"]
  one = analysis.final_params(inputs, 1)
  checkpoint.save_params(str(workdir), 3, one)
  checkpoint.save_params(str(workdir), 2,
                         jax.tree_util.tree_map(lambda x: np.full_like(x, np.nan), one))
  before = json.loads((workdir / "summary.json").read_text())
  assert "connectivity" not in before
  assert "Linear connectivity" not in (workdir / "table.md").read_text()
  assert entry.main([f"--workdir={workdir}", f"--points={POINTS}", "--train_examples=32",
                     "--dev_examples=16"]) == 0
  capsys.readouterr()
  after = json.loads((workdir / "summary.json").read_text())
  block = after.pop("connectivity")
  assert after["settings"][0].pop("connectivity") == block  # a plain run lists its setting again
  assert after == before                                  # nothing else changed
  assert block["pairs"] == [[1, 2], [1, 3], [2, 3]]
  assert block["alphas"] == conn.alphas(POINTS).tolist()
  b12, b13, b23 = block["barrier"]
  assert b12 is None and b23 is None and "seed 2" in block["undefined"]
  assert 0.0 <= b13 <= 1e-6                               # identical params (bound as above)
  assert block["basins"] == [[1, 3]] and block["threshold"] == pytest.approx(0.1 * math.log(2))
  assert block["failed_seeds_apart"] is None              # every demo seed failed
  assert "failed_seeds_apart" in block["undefined"]
  record = json.loads((workdir / "analysis" / "connectivity.json").read_text())
  assert len(record["curves"]["dev_metric"]) == 3 and len(record["pretrained_path"]["seeds"]) == 3
  assert record["train_examples"] == 32 and record["dev_examples"] == 16
  table = (workdir / "table.md").read_text()
  assert "| devlin | DEMO | 3 | 3 | 1 (2) |" in table
  compared = compare_lib.markdown(compare_lib.gather([str(workdir)]))
  assert "| devlin | DEMO | 3 | 3 | 1 (2) |" in compared and "failed seeds apart" in compared
  caption = figure_lib.figure(str(workdir / "analysis" / "connectivity.json"),
                              str(tmp_path / "c.png"), "demo")
  assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG" and "1 basin(s)" in caption


def test_a_study_gets_the_block_in_both_summaries_and_keeps_its_table(tmp_path):
  """A study of several settings (the committed GPU RTE study, written by an older jaxstab whose
  table.md holds Table 1 only): the setting's own summary and its entry in the study's get the
  block, every other entry and key is unchanged, and table.md gains the connectivity table below
  what it had, which stays byte for byte (twice: a second run replaces its table)."""
  from jaxstab.analysis import connectivity_io  # pylint: disable=import-outside-toplevel
  from jaxstab.results import records, tables  # pylint: disable=import-outside-toplevel
  study = tmp_path / "study"
  shutil.copytree(os.path.join(os.path.dirname(__file__), "..", "docs", "results", "gpu",
                               "minilm_rte"), study)
  top = json.loads((study / "summary.json").read_text())
  entry = next(s for s in top["settings"] if s["name"] == "rte_ours")
  (study / "rte_ours").mkdir()
  records.write_setting(str(study / "rte_ours"), records.SettingSummary.from_json(entry))
  table_before = (study / "table.md").read_text()
  alpha = conn.alphas(1)
  for height in (0.5, 0.01):
    block = conn.block([1, 2], [(1, 2)], alpha, [height], 0.07, "rule", {1: True}, {},
                       "train_loss", False, 0)
    connectivity_io.write(str(study), "rte_ours", str(study / "rte_ours"), block, dict(block))
    after = json.loads((study / "summary.json").read_text())
    own = json.loads((study / "rte_ours" / "summary.json").read_text())
    assert own["connectivity"] == block
    for old, new in zip(top["settings"], after["settings"]):
      assert new == (dict(old, connectivity=block) if old["name"] == "rte_ours" else old)
    assert {k: v for k, v in after.items() if k != "settings"} == {
        k: v for k, v in top.items() if k != "settings"}
    table = (study / "table.md").read_text()
    assert table.startswith(table_before.rstrip("\n") + "\n\n" + tables.connectivity_header())
    assert table.count(tables.connectivity_header()) == 1
    assert f"| {2 if height > 0.07 else 1} (" in table
