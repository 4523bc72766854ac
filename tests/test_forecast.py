"""The failure forecast (jaxstab.results.forecast): planted probe records whose answer is known exactly,
mid-run buffers with unwritten rows, the cut-off, divergence, the real reduced CPU reference
probe, and the stored-or-recomputed forecast in compare and the report."""
import json
import math
import os
import shutil

import numpy as np
import pytest

from jaxstab.report import build, compare, forecast as report_forecast
from jaxstab.results import forecast, records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = os.path.join(REPO, "docs", "results", "cpu_reference", "rte_devlin_lr2e-5")
GROUPS = ["embeddings", "layer_0", "layer_1", "layer_2", "layer_3", "pooler", "classifier"]
BASE = np.array([0.06, 0.05, 0.045, 0.05, 0.06, 0.3, 0.2])
TOTAL, EVERY = 200, 10


def planted(vanish, seeds=8):
  """Probe records of `seeds` seeds every 10 of 200 steps. Seed i in `vanish` has its three
  lowest groups' norms fall log-linearly by vanish[i] between steps 20 and 50, then stay there;
  every other seed has all its norms grow alike (1 + step / 100), so its low/classifier ratio,
  and hence its score, is exactly that of step 0."""
  steps = np.arange(0, TOTAL, EVERY)
  growth = 1 + steps / 100
  g = np.broadcast_to(BASE, (seeds, steps.size, len(GROUPS))).astype(np.float32).copy()
  for i in range(seeds):
    if i in vanish:
      ramp = np.clip((steps - 20) / 30, 0, 1)
      g[i, :, :3] *= (vanish[i] ** ramp)[:, None].astype(np.float32)
    else:
      g[i] *= growth[:, None].astype(np.float32)
  loss = np.full((seeds, steps.size), 0.69, np.float32)
  return {"step": steps, "groups": np.array(GROUPS), "seeds": np.arange(1, seeds + 1),
          "grad_norm": g, "loss": loss}


# seeds 3 and 6 (indices 2, 5) vanish 1000-fold and fail; seed 8 (index 7) vanishes 30-fold and
# does not fail (a false alarm once its fall passes tenfold); seed 1 fails with healthy norms.
VANISH = {2: 1e-3, 5: 1e-3, 7: 1 / 30}
FAILED = [True, False, True, False, False, True, False, False]


def test_planted_failures_give_exact_precision_and_recall():
  f = forecast.evaluate(planted(VANISH), FAILED, TOTAL)
  assert f["threshold"] == forecast.THRESHOLD and f["threshold_kind"] == "fixed a priori"
  r10, r20, r30 = f["fractions"]
  assert [r["step"] for r in f["fractions"]] == [20, 40, 60]
  assert [r["records"] for r in f["fractions"]] == [3, 5, 7]
  # 10%: recent record (step 20) is still at the start: nobody has fallen, no alarm.
  assert r10["predicted"] == [False] * 8 and r10["precision"] is None and r10["recall"] == 0.0
  # 20%: recent records 30, 40 -> seeds 3, 6 fell ln(1000)/2 = 3.45 > ln 10, seed 8 ln(30)/2 = 1.70.
  assert r20["predicted"] == [False, False, True, False, False, True, False, False]
  assert (r20["precision"], r20["recall"]) == (1.0, 2 / 3)
  # 30%: recent 40, 50, 60 -> mean fall 8/9 of the total: seed 8's ln(30)*8/9 = 3.02 raises an alarm.
  assert r30["predicted"] == [False, False, True, False, False, True, False, True]
  assert (r30["predicted_failed"], r30["actual_failed"], r30["true_positives"]) == (3, 3, 2)
  assert (r30["precision"], r30["recall"]) == (2 / 3, 2 / 3)
  # AUROC: the two vanished failures beat all 5 successes (10 pairs), the healthy failure ties
  # the 4 healthy successes (4 x 0.5) and loses to seed 8: 12 / 15.
  assert r30["auroc"] == 0.8
  want = math.log(1000) * 8 / 9
  err = abs(r30["scores"][2] - want)
  assert err < 1e-5, err  # float32 inputs: measured 1.4e-7
  healthy = max(abs(r30["scores"][i]) for i in (0, 1, 3, 4, 6))   # ratio unchanged: score 0
  assert healthy < 1e-6, healthy  # float32 rounding of the grown norms: measured 1.4e-8
  json.dumps(f, allow_nan=False)   # stored in summary.json: strict JSON


def test_leave_one_out_never_sees_the_seed_it_judges():
  clean = forecast.evaluate(planted({2: 1e-3, 5: 1e-3}), [i in (2, 5) for i in range(8)], TOTAL)
  r30 = clean["fractions"][2]
  assert (r30["precision"], r30["recall"], r30["auroc"]) == (1.0, 1.0, 1.0)
  assert (r30["loo"]["precision"], r30["loo"]["recall"]) == (1.0, 1.0)
  # One failed seed: held out, the others hold no failure to fit, so the fixed threshold judges it.
  assert forecast.loo_threshold([0.0, 0.0, 0.1], [False, False, False]) == forecast.THRESHOLD
  # Fit on the others: midpoint of the separating gap; ties go to the fewest alarms.
  assert forecast.loo_threshold([0.0, 1.0, 5.0, 7.0], [False, False, True, True]) == 3.0
  assert forecast.loo_threshold([0.0, 1.0], [True, False]) == math.inf   # no J > 0: no alarm
  one = forecast.evaluate(planted({2: 1e-3}), [i == 2 for i in range(8)], TOTAL)["fractions"][2]
  assert one["predicted"][2] and one["loo"]["true_positives"] == 1  # by the fixed threshold
  # A lone failed seed that fell only fivefold (score ln(5) * 8/9 = 1.43 < ln 10): a threshold
  # fit on all seeds would catch it (in-sample recall 1); left out, it cannot be caught.
  weak = forecast.evaluate(planted({2: 0.2}), [i == 2 for i in range(8)], TOTAL)["fractions"][2]
  assert weak["auroc"] == 1.0 and not weak["predicted"][2]
  assert (weak["loo"]["predicted_failed"], weak["loo"]["recall"]) == (0, 0.0)


def test_unwritten_rows_of_a_mid_run_buffer_are_skipped():
  p = planted(VANISH)
  full = forecast.failure_scores(p["grad_norm"], p["step"], GROUPS, 60)
  head = 7  # steps 0..60 written
  # as the train state holds them: per-seed step rows, -1 and zeros beyond the last write
  steps = np.tile(p["step"], (8, 1))
  steps[:, head:] = -1
  g = p["grad_norm"].copy()
  g[:, head:] = 0.0
  loss = p["loss"].copy()
  loss[:, head:] = 0.0
  for upto in (60, 10_000):
    np.testing.assert_array_equal(forecast.failure_scores(g, steps, GROUPS, upto, loss), full)
  g[:, head:] = np.nan   # a NaN fill with step -1: also unwritten
  loss[:, head:] = np.nan
  np.testing.assert_array_equal(forecast.failure_scores(g, steps, GROUPS, 10_000, loss), full)
  # zeros under a real step (a grid of steps passed instead of the buffer's): unwritten too
  g[:, head:] = 0.0
  np.testing.assert_array_equal(forecast.failure_scores(g, p["step"], GROUPS, 10_000), full)
  # ... whatever its loss slot holds (an all-zero row is never a real gradient): not a divergence
  np.testing.assert_array_equal(forecast.failure_scores(g, p["step"], GROUPS, 10_000, loss), full)
  # nothing written yet: NaN, never an alarm
  empty = forecast.failure_scores(np.zeros((3, 4, 7)), np.full(4, -1), GROUPS, 100)
  assert np.isnan(empty).all() and not forecast.predict(empty).any()


def test_records_past_the_cut_off_are_ignored():
  p = planted(VANISH)
  want = forecast.failure_scores(p["grad_norm"][:, :5], p["step"][:5], GROUPS, 40)
  g = p["grad_norm"].copy()
  g[:, 5:] = np.nan           # garbage (even divergence) after step 40 changes nothing
  loss = p["loss"].copy()
  loss[:, 5:] = np.inf
  got = forecast.failure_scores(g, p["step"], GROUPS, 40, loss)
  np.testing.assert_array_equal(got, want)
  assert forecast.failure_scores(g, p["step"], GROUPS, 49, loss).tolist() == want.tolist()
  assert np.isinf(forecast.failure_scores(g, p["step"], GROUPS, 50, loss)).all()


def test_a_diverged_seed_scores_inf_and_is_predicted():
  p = planted({})
  p["loss"][4, 3] = np.nan       # seed 5 diverged at step 30
  f = forecast.evaluate(p, [i == 4 for i in range(8)], TOTAL)
  r10, r20 = f["fractions"][:2]
  assert not r10["predicted"][4] and r10["diverged"] == []
  assert r20["predicted"][4] and r20["diverged"] == [5] and r20["scores"][4] is None
  assert (r20["precision"], r20["recall"], r20["auroc"]) == (1.0, 1.0, 1.0)
  json.dumps(f, allow_nan=False)


def test_the_reduced_cpu_reference_probe_evaluates():
  probe = records.read_probe(os.path.join(REFERENCE, "probe.npz"))
  with open(os.path.join(REFERENCE, "summary.json"), encoding="utf-8") as f:
    summary = json.load(f)
  failed = [r["failed"] for r in summary["runs"]]
  f = forecast.evaluate(probe, failed, summary["total_steps"])
  assert f["seeds"] == [1, 2, 3, 4, 5] and f["failed"] == [False, False, True, False, False]
  assert [(r["step"], r["records"]) for r in f["fractions"]] == [(46, 5), (93, 10), (140, 15)]
  r30 = f["fractions"][2]
  # measured scores (5 seeds, MiniLM-L6, 468 steps): no fall near tenfold, no alarm
  want = [-0.0754, -1.1503, -1.0468, -0.9761, 0.6130]
  err = np.max(np.abs(np.array(r30["scores"]) - want))
  assert err < 1e-4, err   # rounding to 4 decimals: measured 4.4e-5
  assert r30["predicted_failed"] == 0 and r30["recall"] == 0.0 and r30["auroc"] == 0.25
  assert forecast.of_setting(summary, probe) == f


def _study_copy(tmp_path, stored=None):
  """The CPU reference as a study folder in tmp_path, its summary optionally with a forecast."""
  root = tmp_path / "study"
  shutil.copytree(os.path.dirname(REFERENCE), root)
  if stored is not None:
    for path in (root / "summary.json", root / "rte_devlin_lr2e-5" / "summary.json"):
      s = json.loads(path.read_text(encoding="utf-8"))
      for entry in s.get("settings", [s]):
        entry["forecast"] = stored
      if "runs" in s:
        s["forecast"] = stored
      path.write_text(json.dumps(s), encoding="utf-8")
  return root


def test_compare_shows_the_stored_forecast_else_recomputes_it(tmp_path):
  root = _study_copy(tmp_path)
  text = compare.markdown(compare.gather([str(root)]))
  assert "| devlin_lr2e-5 | RTE | 30% | 140 | 0 / 1 / 5 | — | 0.00 | 0.25 |" in text
  probe = records.read_probe(os.path.join(REFERENCE, "probe.npz"))
  stored = forecast.evaluate(probe, [False, False, True, False, False], 468, fractions=(0.5,))
  stored["fractions"][0]["step"] = 12345   # a marker only a stored forecast can carry
  root2 = _study_copy(tmp_path / "b", stored)
  text = compare.markdown(compare.gather([str(root2)]))
  assert "| 50% | 12345 |" in text and "| 30% | 140 |" not in text
  (root / "rte_devlin_lr2e-5" / "probe.npz").unlink()   # neither: no forecast table
  assert "Failure forecast" not in compare.markdown(compare.gather([str(root)]))


def test_report_draws_the_forecast_and_its_table(tmp_path):
  report = build(REFERENCE, str(tmp_path / "rep"))
  assert "forecast_rte" in report.figures
  with open(report.figures["forecast_rte"], "rb") as f:
    assert len(f.read()) > 10_000   # a drawn figure
  caption = report.captions["forecast_rte"]
  assert "30% (step 140): 0 alarm(s), precision —, recall 0.00, AUROC 0.25" in caption
  with open(report.index, encoding="utf-8") as f:
    page = f.read()
  assert 'alt="failure forecast of RTE"' in page and "Failure forecast from the probe" in page
  assert "<td>30%</td><td>140</td><td>0 / 1 / 5</td>" in page
  setting = records.load(REFERENCE).settings[0]
  frac, scores = report_forecast.curves(setting)
  assert scores.shape == (5, 47) and frac[-1] == pytest.approx(460 / 468, abs=0)
