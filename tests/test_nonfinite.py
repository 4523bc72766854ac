"""The one policy for metric values that are not numbers and for undefined statistics
(jaxstab.results.finite): the statistics refuse NaN / inf; the functions over a setting's runs
drop them, count them as failed runs and say over how many runs they computed; an undefined
statistic is null with its reason and prints as "undefined: <reason>"; and a setting with a
diverged run prints no `nan` in table.md, summary.csv, compare's table or the report page."""
import json
import math
import re
import types

import pytest
from scipy import stats as sps

from jaxstab.data import metrics
from jaxstab.report import compare, html
from jaxstab.results import finite, records, stats, tables
from jaxstab.study import merge, studies
from tests.test_report import write_study

NAN = re.compile(r"\bnan\b", re.IGNORECASE)
R = stats.RESAMPLES

REFUSING = {
    "stats.spread": lambda bad: stats.spread([0.5, bad, 0.7]),
    "stats.expected_max": lambda bad: stats.expected_max([0.5, bad]),
    "stats.bootstrap_ci": lambda bad: stats.bootstrap_ci([0.5, bad], "mean"),
    "stats.permutation_test": lambda bad: stats.permutation_test([0.5, 0.6], [0.7, bad]),
    "stats.levene": lambda bad: stats.levene([bad, 0.5, 0.6], [0.7, 0.8, 0.75]),
    "stats.decomposition": lambda bad: stats.decomposition([0.1, 0.2, 0.3, bad], [1, 1, 2, 2],
                                                           [1, 2, 1, 2]),
}


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("name", sorted(REFUSING))
def test_each_statistic_refuses_a_non_finite_value(name, bad):
  with pytest.raises(ValueError, match=rf"^{re.escape(name)}: \w+ holds 1 non-finite value"):
    REFUSING[name](bad)


def test_a_refusal_names_the_side():
  with pytest.raises(ValueError, match=r"^stats.permutation_test: rte_ours holds 1 non-finite "
                                       r"value\(s\) \(NaN or inf\) at position\(s\) \[1\]"):
    stats.permutation_test([0.5, 0.6], [0.7, math.nan], names=("rte_devlin", "rte_ours"))


def _runs(finals, majority=0.527):
  return [{"final": {"accuracy": v}, "best": {"accuracy": v},
           "failed": metrics.is_failed(v, majority)} for v in finals]


def _setting(name, finals, task="rte"):
  runs = _runs(finals)
  return {"task": task, "metric": "accuracy", "select": "final", "name": name,
          "recipe": name.split("_", 1)[1], "majority": {"accuracy": 0.527}, "runs": runs,
          **stats.setting_stats(runs, "accuracy")}


def test_the_helpers_over_runs_drop_non_finite_values_and_count_them():
  f = finite.only([0.5, math.nan, None, math.inf, 0.7])
  assert f.values.tolist() == [0.5, 0.7] and (f.n, f.total, f.dropped) == (2, 5, 3)
  assert f.note() == "2 of 5 finite" and finite.only([0.5, 0.7]).note() == ""
  # a diverged run's metric is not a number: it has failed (NaN <= majority is false in floats)
  assert metrics.is_failed(math.nan, 0.5) and metrics.is_failed(math.inf, 0.5)
  assert not metrics.is_failed(0.6, 0.5)
  finals = [0.70, 0.45, math.nan, 0.50, 0.65]
  s = _setting("rte_devlin", finals)
  kept = [0.70, 0.45, 0.50, 0.65]
  assert s["failed_runs"] == 3                              # 0.45, NaN, 0.50
  for k in ("final_spread", "best_spread", "reported_spread"):
    assert s[k] == stats.spread(kept) and s[k]["n"] == 4
  mean, std = stats.expected_max(kept)
  assert s["expected_max"] == mean.tolist() and s["expected_max_std"] == std.tolist()
  ci = s["ci"]
  assert ci["n"] == 4 and ci["mean"] == stats.bootstrap_ci(kept, "mean")
  # the failed-run interval resamples every run's flag, the diverged one's included
  flags = [r["failed"] for r in s["runs"]]
  assert len(flags) == 5 and ci["failed_runs"] == stats.bootstrap_ci(flags, "sum")
  assert stats.intervals(finals, flags) == ci


def test_permutation_test_with_a_diverged_run_is_not_the_smallest_p():
  """Before the policy a NaN made every comparison false, so no split counted as extreme as the
  observed one and p came out 2/(R+1), the most significant there is, for two settings that
  barely differ. Now the test runs on the finite runs and says so (n_a = 4)."""
  a, b = [0.60, 0.62, 0.65, 0.61, math.nan], [0.61, 0.63, 0.60, 0.64, 0.62]
  with pytest.raises(ValueError, match="stats.permutation_test"):
    stats.permutation_test(a, b)
  (row,) = stats.levene_table([_setting("rte_devlin", a), _setting("rte_ours", b)])
  kept = a[:4]
  assert (row["n_a"], row["n_b"]) == (4, 5) and "undefined" not in row
  assert row["perm_mean_p"] == stats.permutation_test(kept, b, "mean")
  assert row["perm_std_p"] == stats.permutation_test(kept, b, "std")
  assert row["perm_mean_p"] > 0.5 and row["perm_std_p"] > 0.1   # measured: 1.0 and 0.526
  assert row["p"] == sps.levene(kept, b, center="median").pvalue  # 0.702


def test_undefined_statistics_come_with_their_reason():
  U = finite.Undefined
  # Levene: 0/0 where scipy says NaN, or a number that float rounding decides
  assert stats.levene([0.5, 0.5, 0.5], [0.6, 0.6]) == U("neither side has any spread (0/0)")
  assert stats.levene([0.5, 0.6], [0.7, 0.8]) == U(
      "each side's values lie at one distance from its median, the same on both sides (0/0)")
  # scipy 1.17.1 gives p 0.4226 here: F = 1 from deviations 0.05 that differ only by rounding
  assert 0 < sps.levene([0.5, 0.6], [0.7, 0.8], center="median").pvalue < 1
  assert stats.levene([0.5, 0.6], [0.5, 0.9]) == U(
      "each side's values lie at one distance from its median (always so with 2 a side): no "
      "variation within a side to test against (x/0)")
  assert sps.levene([0.5, 0.6], [0.5, 0.9], center="median").pvalue < 1e-20   # 2.7e-31
  assert stats.levene([0.5], [0.6, 0.7], ("rte_x", "rte_y")) == U(
      "rte_x has 1 value; Levene's test needs 2 a side")
  assert stats.permutation_test([0.5], [], names=("rte_x", "rte_y")) == U("rte_y has no value")
  assert stats.bootstrap_ci([], "std") == U("no value")
  d = stats.decomposition([0.5] * 4, [1, 1, 2, 2], [1, 2, 1, 2])   # nothing varies
  assert d["init"] is None and d["undefined"]["init"] == "nothing varies over the grid (0/0)"
  assert d["p"]["undefined"]["data"] == "no residual variance (F = x/0)"
  # In a summary: null, the reason beside it, and strict JSON (no NaN anywhere)
  dead, one = _setting("rte_dead", [math.nan] * 3), _setting("rte_one", [0.6, math.inf])
  none = "none of the 3 runs has a finite value"
  assert dead["reported_spread"] == {"n": 0, **dict.fromkeys(stats.SPREAD),
                                     "undefined": dict.fromkeys(stats.SPREAD, none)}
  assert dead["ci"]["mean"] is None and dead["ci"]["undefined"]["mean"] == none
  assert dead["expected_max"] == [] and dead["failed_runs"] == 3
  (row,) = stats.levene_table([dead, one])
  assert row["p"] is None and row["undefined"] == {
      "p": "rte_dead has 0 values; Levene's test needs 2 a side",
      "perm_mean_p": "rte_dead has no value", "perm_std_p": "rte_dead has no value"}
  stats_only = [{k: v for k, v in s.items() if k != "runs"} for s in (dead, one)] + [row]
  json.dumps(stats_only, allow_nan=False)   # raises on a NaN
  # ... and in the tables, "undefined: <reason>" where the number would be
  table = tables.table1_markdown([dead, one])
  assert f"| dead | undefined: {none} (3/3 failed; 0 of 3 finite) |" in table
  assert "| one | 0.0 / 60.0 / 60.0 / 60.0 (1/2 failed; 1 of 2 finite) |" in table
  text = tables.uncertainty_markdown([dead, one])
  assert f"| dead | RTE | 0 of 3 | undefined: {none} | undefined: {none} | " in text
  assert "| dead | RTE | 0 of 3 | " + " | ".join([f"undefined: {none}"] * 3) + " |" in text
  assert not NAN.search(table + text)
  assert finite.shown(row, "p", str) == (
      "undefined: rte_dead has 0 values; Levene's test needs 2 a side")
  assert finite.shown({"p": None}, "p", str) == "—"   # a summary written before the policy


def _plan(name, n):
  return types.SimpleNamespace(
      task=types.SimpleNamespace(name="rte", metric="accuracy"), majority={"accuracy": 0.527},
      setting=name, select="final", model=types.SimpleNamespace(name="tiny-bert"),
      total_steps=10, seeds=list(range(1, n + 1)), stopping=None, data_seeds=None,
      matmul_precision="highest", workdir="/nowhere", peft=None, trainable_params=None)


def _merged(name, finals):
  """merge.summary's entry of a setting whose runs ended at `finals` (NaN: diverged at step 5)."""
  runs = [{"seed": i + 1, "final": {"step": 10, "accuracy": v}, "best": {"step": 10, "accuracy": v},
           "final_train_loss": 0.1, "diverged_at": None if math.isfinite(v) else 5}
          for i, v in enumerate(finals)]
  return dict(merge.summary(_plan(name, len(finals)), runs), name=f"rte_{name}", recipe=name)


def test_a_study_with_a_diverged_run_prints_no_nan(tmp_path, capsys):
  """The path a study takes (merge.summary, then the study's table.md, summary.csv and
  summary.json) and compare's table over it: before the policy Table 1 read
  "nan / nan / nan / nan (3/5 failed)" above finite intervals of the same setting."""
  results = [_merged("devlin", [0.70, 0.45, math.nan, 0.50, 0.65]),
             _merged("ours", [0.71, 0.72, 0.69, 0.70, 0.73]),
             _merged("dead", [math.nan, math.nan])]
  studies._write(str(tmp_path), results)   # pylint: disable=protected-access
  capsys.readouterr()
  table = (tmp_path / "table.md").read_text(encoding="utf-8")
  csv_text = (tmp_path / "summary.csv").read_text(encoding="utf-8")
  assert not NAN.search(table) and not NAN.search(csv_text)
  assert "| devlin | 10.3 / 57.5 / 57.5 / 70.0 (3/5 failed; 4 of 5 finite) |" in table
  assert "| devlin | RTE | 4 of 5 | 10.3 [" in table
  assert "| dead | undefined: none of the 2 runs has a finite value (2/2 failed; 0 of 2 finite) |" \
      in table
  assert "rte_devlin,rte,accuracy,final,True,4,3,0.527," in csv_text and csv_text.endswith(",2\n")
  saved = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
  json.dumps([{k: v for k, v in s.items() if k != "runs"} for s in saved["settings"]]
             + saved["levene"], allow_nan=False)
  text = compare.markdown(compare.gather([str(tmp_path)]))
  assert not NAN.search(text)
  pair = [l for l in text.splitlines() if "devlin (4 of 5 finite) vs dead (0 of 2 finite)" in l]
  assert pair == ["| RTE | devlin (4 of 5 finite) vs dead (0 of 2 finite) | undefined: rte_dead "
                  "has 0 values; Levene's test needs 2 a side | undefined: rte_dead has no value "
                  "| undefined: rte_dead has no value |"]


def test_the_report_tables_say_undefined_and_how_many_runs(tmp_path):
  """The report page's tables (html.py) from a study's files: the same cells as table.md."""
  write_study(tmp_path, {"rte_devlin": dict(finals=[0.70, 0.45, math.nan, 0.50, 0.65],
                                            diverged={3: 10}),
                         "rte_dead": dict(finals=[math.nan, math.nan], diverged={1: 10, 2: 10},
                                          recipe="dead")})
  study = records.load(str(tmp_path))
  settings = list(study.settings)
  found = {s.name: html.uncertainty(s) for s in settings}
  page = html.table1(settings) + html.uncertainty_table(settings, found) + html.levene_table(study)
  assert not NAN.search(page)
  none = "none of the 2 runs has a finite value"
  assert "<td>10.3 / 57.5 / 57.5 / 70.0<br><small>3/5 failed; 4 of 5 finite</small></td>" in page
  assert f"<td>undefined: {none}<br><small>2/2 failed; 0 of 2 finite</small></td>" in page
  assert f"<td>0 of 2</td><td>undefined: {none}</td>" in page
  assert ("<td>rte_devlin (4 of 5 finite)</td><td>rte_dead (0 of 2 finite)</td><td>undefined: "
          "rte_dead has 0 values; Levene&#x27;s test needs 2 a side</td>") in page
