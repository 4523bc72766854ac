"""Expected best-of-n (Dodge et al. 2019), percentile-bootstrap intervals and permutation tests
(jaxstab.results.stats), against exact enumeration, closed forms and scipy.

Monte-Carlo bounds: two independent estimates (ours with seed 0, scipy's with its own stream) of
the same quantity differ by Monte-Carlo error alone, whose standard error is computed here from
the data (never guessed), and each bound is 4 of those standard errors. The measured ratio
|difference| / SE is written beside each bound (scipy 1.17.1, numpy 2.4.6).
"""
import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from jaxstab.results import finite, stats, tables

R = stats.RESAMPLES


def _brute_force_max(values, n):
  """Mean and std of max over all N^n equally likely n-tuples of the values (drawn with
  replacement): the definition, enumerated."""
  maxima = np.array([max(t) for t in itertools.product(values, repeat=n)], np.float64)
  return maxima.mean(), maxima.std()


# ------------------------------------------------------------------ expected best of n
def test_expected_max_is_exact_enumeration_of_every_tuple():
  values = [0.61, 0.55, 0.61, 0.70]   # a tie, unsorted
  mean, std = stats.expected_max(values, n_max=5)   # n beyond N is still defined
  assert mean.shape == std.shape == (5,)
  for n in range(1, 6):                             # 4, 16, 64, 256, 1024 tuples
    m, s = _brute_force_max(values, n)
    assert abs(mean[n - 1] - m) <= 1e-12 and abs(std[n - 1] - s) <= 1e-12, n
  values = [0.3, 0.9, 0.5, 0.5, 0.5, 0.1]           # a triple tie, N=6, n=4: 1296 tuples
  mean, std = stats.expected_max(values)
  assert mean.shape == (6,)
  m, s = _brute_force_max(values, 4)
  assert abs(mean[3] - m) <= 1e-12 and abs(std[3] - s) <= 1e-12


def test_expected_max_at_n1_is_the_mean_and_grows_to_the_max():
  v = np.random.default_rng(3).normal(0.6, 0.05, 25)
  mean, std = stats.expected_max(v)
  assert mean.shape == (25,)
  assert mean[0] == pytest.approx(v.mean(), abs=1e-14)
  assert std[0] == pytest.approx(v.std(), abs=1e-14)     # population std, as the table's
  assert np.all(np.diff(mean) > 0) and mean[-1] < v.max()
  big, big_std = stats.expected_max(v, n_max=5000)
  # P(max of n misses the top value) = (1 - 1/N)^n: at n = 5000 about 1e-89
  assert big[-1] == pytest.approx(v.max(), abs=1e-12) and big_std[-1] < 1e-12
  # Monte Carlo of the definition, 20,000 draws of 5 seeds: within 4 standard errors
  draws = v[np.random.default_rng(0).integers(0, 25, size=(20_000, 5))].max(axis=1)
  se = draws.std() / math.sqrt(draws.size)
  assert abs(draws.mean() - mean[4]) < 4 * se    # measured: 0.68 SE
  # a sample std of 20,000 draws: relative SE about 1/sqrt(2 x 20,000) = 0.005; measured 0.0016
  assert draws.std() == pytest.approx(std[4], rel=4 * 0.005)


def test_expected_max_of_the_finite_values_and_of_no_values():
  """A non-finite value is refused (the non-finite policy; this test used to check that
  expected_max dropped them itself): the caller drops them with finite.only."""
  with pytest.raises(ValueError, match="stats.expected_max"):
    stats.expected_max([0.5, math.nan, 0.7, math.inf])
  mean, std = stats.expected_max(finite.only([0.5, math.nan, 0.7, math.inf]).values)
  np.testing.assert_allclose(mean, [0.6, 0.5 * 0.25 + 0.7 * 0.75], atol=1e-15)
  assert std[0] == pytest.approx(0.1)
  assert stats.expected_max([])[0].size == 0
  assert stats.expected_max(finite.only([math.nan]).values)[1].size == 0
  one, one_std = stats.expected_max([0.4], n_max=3)
  assert one.tolist() == [0.4] * 3 and one_std.tolist() == [0.0] * 3


# ------------------------------------------------------------------ bootstrap intervals
def _quantile_se(distribution, q, resamples):
  """Standard error of the q-quantile of `resamples` i.i.d. draws: sqrt(q(1-q)/R) / f(Q(q)),
  1/f from the spacing of the quantiles at q +- 0.01 of a reference bootstrap distribution."""
  lo, hi = np.percentile(distribution, [100 * (q - 0.01), 100 * (q + 0.01)])
  return math.sqrt(q * (1 - q) / resamples) * (hi - lo) / 0.02


@pytest.mark.parametrize("name", ["mean", "std"])
def test_bootstrap_ci_agrees_with_scipy_percentile_within_monte_carlo_error(name):
  """Bound: 4 SE of the difference of two independent percentile estimates. Measured, low and
  high bound: mean 0.78 and 1.36 SE, std 2.34 and 0.08 SE. (Over 20 seeds each, our std's low
  bound averaged 0.009656 against scipy's 0.009661, per-run SD 4.5e-5 and 5.9e-5 against the
  formula's 5.0e-5: no bias, and the SE formula holds.)"""
  v = np.random.default_rng(1).normal(0.6, 0.02, 25)
  ours = stats.bootstrap_ci(v, name)
  ref = sps.bootstrap((v,), getattr(np, name), n_resamples=R, method="percentile",
                      confidence_level=0.95, rng=np.random.default_rng(12345))
  for bound, theirs, q in zip(ours, ref.confidence_interval, (0.025, 0.975)):
    se = math.sqrt(2) * _quantile_se(ref.bootstrap_distribution, q, R)  # two independent runs
    assert abs(bound - theirs) < 4 * se, (name, q, abs(bound - theirs) / se)
  if name == "std":  # ddof 0 as the table's: the same resamples with ddof 1 give a wider one
    ddof1 = stats.bootstrap_ci(v, lambda x, axis: np.std(x, axis=axis, ddof=1))
    assert ours[0] < np.std(v) < ours[1] and ddof1[0] > ours[0] and ddof1[1] > ours[1]


def _binomial_percentile(cdf, q, resamples):
  """The q-percentile of `resamples` draws of a discrete distribution with CDF `cdf` (a list of
  (value, P(X <= value))), when the CDF is 4 standard errors of the draws away from q at every
  support point, so the drawn percentile is this value whatever the draws."""
  se = math.sqrt(q * (1 - q) / resamples)
  assert all(abs(f - q) > 4 * se for _, f in cdf), "too close to call; pick other data"
  return next(value for value, f in cdf if f > q)


def test_bootstrap_median_is_the_closed_form_order_statistic():
  """For N = 27 distinct values the bootstrap median is <= v_(k) with probability
  P(Bin(27, k/27) >= 14): its percentiles are order statistics, v_(9) and v_(19). (N = 27, not
  25: at 25 the CDF passes 3.2 standard errors from 0.025, too close to call; at 27, 7.)"""
  v = np.random.default_rng(2).normal(0.6, 0.02, 27)
  s = np.sort(v)
  cdf = [(s[k - 1], sps.binom.sf(13, 27, k / 27)) for k in range(1, 28)]
  low, high = stats.bootstrap_ci(v, "median")
  assert low == _binomial_percentile(cdf, 0.025, R) and high == _binomial_percentile(cdf, 0.975, R)
  assert (np.searchsorted(s, low) + 1, np.searchsorted(s, high) + 1) == (9, 19)


@pytest.mark.parametrize("failed,expected", [(2, (0, 5)), (14, (9, 19)), (0, (0, 0))])
def test_bootstrap_failed_count_is_the_binomial_quantiles(failed, expected):
  """Resampling 25 failed flags of which `failed` are set counts Bin(25, failed/25) failures."""
  flags = [True] * failed + [False] * (25 - failed)
  np.random.default_rng(failed).shuffle(flags)
  cdf = [(c, sps.binom.cdf(c, 25, failed / 25)) for c in range(26)]
  if failed:
    ours = stats.bootstrap_ci(flags, "sum")
    assert tuple(ours) == (_binomial_percentile(cdf, 0.025, R),
                           _binomial_percentile(cdf, 0.975, R)) == expected
  else:
    assert stats.bootstrap_ci(flags, "sum") == [0.0, 0.0]   # no failure seen: a point interval


def test_bootstrap_ci_arguments():
  v = np.random.default_rng(8).normal(size=10)
  assert stats.bootstrap_ci([], "mean") == finite.Undefined("no value")
  assert stats.bootstrap_ci(v, "mean") == stats.bootstrap_ci(v, "mean", seed=0)
  assert stats.bootstrap_ci(v, "mean") != stats.bootstrap_ci(v, "mean", seed=1)
  wide, narrow = stats.bootstrap_ci(v, "mean", level=0.99), stats.bootstrap_ci(v, "mean", level=0.5)
  assert wide[0] < narrow[0] < narrow[1] < wide[1]
  assert stats.bootstrap_ci([0.5, 0.8], lambda x, axis: np.max(x, axis=axis),
                            level=0.5) == [0.8, 0.8]   # P(max = 0.8) = 3/4
  with pytest.raises(ValueError, match="unknown statistic 'var'"):
    stats.bootstrap_ci(v, "var")


# ------------------------------------------------------------------ permutation tests
def _diff(fn):
  return lambda x, y, axis: fn(x, axis=axis) - fn(y, axis=axis)


@pytest.mark.parametrize("name", ["mean", "std"])
def test_permutation_test_agrees_with_scipy_within_monte_carlo_error(name):
  """25 against 25 seeds: C(50, 25) splits, so scipy samples 10,000 of them too. Each two-sided p
  is 2 x a one-sided proportion q of R draws: SE 2 sqrt(q(1-q)/R), times sqrt(2) for the
  difference of two independent runs; bound 4 SE. Measured: mean 0.10 SE (p 0.162 against
  0.163), std 2.69 SE (0.270 against 0.245). (Over 20 seeds each the std test's p averaged
  0.2598 against scipy's 0.2568, per-run SD 0.0073 and 0.0067 against the formula's 0.0067.)"""
  fn = getattr(np, name)
  rng = np.random.default_rng(1)
  rng.normal(size=25)
  a, b = rng.normal(0.60, 0.02, 25), rng.normal(0.61, 0.03, 25)
  ours = stats.permutation_test(a, b, name)
  ref = sps.permutation_test((a, b), _diff(fn), vectorized=True, n_resamples=R,
                             alternative="two-sided", rng=np.random.default_rng(7)).pvalue
  q = ref / 2
  se = math.sqrt(2) * 2 * math.sqrt(q * (1 - q) / R)
  assert 0.05 < ref < 0.5                    # a p where Monte-Carlo error is largest
  assert abs(ours - ref) < 4 * se, abs(ours - ref) / se


@pytest.mark.parametrize("name,fn", [("mean", np.mean), ("std", np.std)])
def test_permutation_test_against_the_exact_test(name, fn):
  """5 against 4 values: 126 splits, which scipy enumerates (the exact p); ours samples 10,000
  of them, so it differs by Monte-Carlo error (SE 2 sqrt(q(1-q)/R)) and the +1 of the observed
  split (at most 2/(R+1))."""
  a, b = [0.61, 0.58, 0.66, 0.63, 0.70], [0.55, 0.60, 0.52, 0.59]
  exact = sps.permutation_test((a, b), _diff(fn), vectorized=True, n_resamples=R,
                               alternative="two-sided").pvalue
  # the same exact p by hand: every way to pick a's 5 of the 9 values
  pooled = np.array(a + b)
  obs = fn(a) - fn(b)
  d = np.array([fn(pooled[list(i)]) - fn(np.delete(pooled, list(i)))
                for i in itertools.combinations(range(9), 5)])
  by_hand = min(1.0, 2 * min(np.mean(d <= obs + 1e-12), np.mean(d >= obs - 1e-12)))
  assert exact == pytest.approx(by_hand, abs=1e-12)
  ours = stats.permutation_test(a, b, name)
  q = exact / 2   # measured: mean exact 0.0635, ours 0.0638 (bound 0.014); std 0.730, 0.732
  assert abs(ours - exact) < 4 * 2 * math.sqrt(q * (1 - q) / R) + 2 / (R + 1), (ours, exact)


def test_permutation_test_counts_exact_ties_of_a_discrete_metric():
  """Accuracies on 277 examples take few values: splits whose mean difference equals the observed
  one must count as ties although float rounding differs. Integer sums give the exact p: 0.714,
  24% of the splits tie with the observed one. Ours 0.718 (bound 0.0385 from it); counting only
  exact float ties, the same draws give 0.665, outside the bound."""
  ka, kb = [150, 151, 151, 152, 152], [150, 150, 151, 151, 152]
  a, b = np.array(ka) / 277, np.array(kb) / 277
  pooled = ka + kb
  obs = sum(ka) - sum(kb)
  d = np.array([2 * sum(pooled[j] for j in i) - sum(pooled)
                for i in itertools.combinations(range(10), 5)])
  exact = min(1.0, 2 * min(np.mean(d <= obs), np.mean(d >= obs)))
  ours = stats.permutation_test(a, b, "mean")
  q = exact / 2
  assert abs(ours - exact) < 4 * 2 * math.sqrt(q * (1 - q) / R) + 2 / (R + 1), (ours, exact)


def test_permutation_test_of_identical_and_of_separated_samples():
  v = np.random.default_rng(4).normal(0.6, 0.02, 25)
  # the null is symmetric about the observed 0: p = 2 min(p_less, p_greater) ~ 1, less by
  # Monte-Carlo error (2 SE of 2 sqrt(0.25/R) = 0.02; measured 0.9955 and 0.9979)
  assert stats.permutation_test(v, v.copy(), "mean") > 0.98
  assert stats.permutation_test(v, v[::-1], "std") > 0.98
  far = v + 1.0
  # no split but the observed one is as extreme: p is the smallest possible, 2 / (R + 1)
  assert stats.permutation_test(v, far, "mean") == pytest.approx(2 / (R + 1), rel=1e-12)
  assert stats.permutation_test((v - 0.6) * 0.01, (v - 0.6) * 100, "std") == pytest.approx(
      2 / (R + 1), rel=1e-12)
  assert stats.permutation_test([], v) == finite.Undefined("a has no value")
  assert stats.permutation_test(v, far, "mean", seed=3) == stats.permutation_test(v, far, "mean")


# ------------------------------------------------------------------ in the summaries
def _runs(finals, bests, majority=0.527):
  return [{"final": {"accuracy": f}, "best": {"accuracy": b}, "failed": f <= majority}
          for f, b in zip(finals, bests)]


def test_setting_stats_adds_expected_max_and_intervals_of_the_reported_metric():
  rng = np.random.default_rng(5)
  finals, bests = rng.normal(0.56, 0.03, 25), rng.normal(0.6, 0.02, 25)
  runs = _runs(finals, bests)
  before = {"failed_runs", "final_spread", "best_spread", "reported_spread"}
  out = stats.setting_stats(runs, "accuracy", "best")
  assert set(out) == before | {"expected_max", "expected_max_std", "ci"}
  assert out["reported_spread"] == stats.spread(bests.tolist())       # unchanged fields
  mean, std = stats.expected_max(bests)
  assert out["expected_max"] == mean.tolist() and out["expected_max_std"] == std.tolist()
  assert len(out["expected_max"]) == 25 and out["expected_max"][0] == pytest.approx(bests.mean())
  ci = out["ci"]
  # "n": how many values were finite (added by the non-finite policy)
  assert set(ci) == {"std", "mean", "median", "failed_runs", "level", "n"} and ci["level"] == 0.95
  assert ci["n"] == 25
  for k in ("std", "mean", "median"):
    assert ci[k] == stats.bootstrap_ci(bests, k)
  assert ci["failed_runs"] == stats.bootstrap_ci([r["failed"] for r in runs], "sum")
  assert ci["std"][0] < out["reported_spread"]["std"] < ci["std"][1]
  assert ci["failed_runs"][0] <= out["failed_runs"] <= ci["failed_runs"][1]


def test_a_summary_written_before_the_intervals_gets_them_from_its_runs():
  runs = _runs([0.50, 0.62, 0.70, 0.55, 0.60], [0.66, 0.64, 0.72, 0.69, 0.61])
  new = {"task": "rte", "metric": "accuracy", "select": "best", "name": "rte_ours",
         "recipe": "ours", "runs": runs, **stats.setting_stats(runs, "accuracy", "best")}
  old = {k: v for k, v in new.items() if k not in ("expected_max", "expected_max_std", "ci")}
  assert stats.uncertainty(old) == stats.uncertainty(new)
  assert tables.uncertainty_markdown([old]) == tables.uncertainty_markdown([new])


def test_uncertainty_tables_and_pairwise_tests():
  rng = np.random.default_rng(6)
  a, b = rng.normal(0.56, 0.03, 25), rng.normal(0.60, 0.01, 6)
  ra, rb = _runs(a, a), _runs(b, b)
  settings = [{"task": "rte", "metric": "accuracy", "select": "final", "name": n, "recipe": r,
               "runs": runs, **stats.setting_stats(runs, "accuracy")}
              for n, r, runs in (("rte_devlin", "devlin", ra), ("rte_ours", "ours", rb))]
  text = tables.uncertainty_markdown(settings)
  x = lambda v: f"{100 * v:.1f}"
  ci = settings[0]["ci"]
  failed = settings[0]["failed_runs"]
  lo, hi = ci["failed_runs"]
  assert (f"| devlin | RTE | 25 | {x(a.std())} [{x(ci['std'][0])}, {x(ci['std'][1])}] | "
          f"{x(a.mean())} [{x(ci['mean'][0])}, {x(ci['mean'][1])}] | ") in text
  assert f"| {failed} [{lo:.0f}, {hi:.0f}] |" in text
  mean, std = stats.expected_max(a)
  assert (f"| devlin | RTE | 25 | {x(mean[0])} ± {x(std[0])} | {x(mean[4])} ± {x(std[4])} | "
          f"{x(mean[24])} ± {x(std[24])} |") in text
  mean, std = stats.expected_max(b)
  assert f"| ours | RTE | 6 | {x(mean[0])} ± {x(std[0])} | {x(mean[4])} ± {x(std[4])} | " in text
  assert "95% percentile-bootstrap intervals (10,000 resamples" in text
  (row,) = stats.levene_table(settings)
  assert row["p"] == pytest.approx(sps.levene(a, b, center="median").pvalue)
  assert row["perm_mean_p"] == stats.permutation_test(a, b, "mean")
  assert row["perm_std_p"] == stats.permutation_test(a, b, "std")
