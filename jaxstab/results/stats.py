"""Spread statistics over seeds and comparisons between settings, as the paper's Table 1, with
their uncertainty: the expected best of n seeds (Dodge et al. 2019, "Show Your Work"),
percentile-bootstrap intervals and permutation tests (numpy only, vectorised over resamples).

Non-finite values and undefined statistics follow one policy (jaxstab.results.finite): the
statistics here refuse NaN / inf (ValueError); the functions that take a setting's runs
(`setting_stats`, `spread_of`, `intervals`, `uncertainty_of`, `levene_table`,
`decomposition_of`, the tables) drop them with finite.only and say how many remain; a statistic
the data do not define is finite.Undefined, stored as null with its reason."""
import itertools

import numpy as np

from jaxstab.results import finite
from jaxstab.results.finite import Undefined

SPREAD = ("std", "mean", "median", "min", "max")
# Differences (permutation tests) and deviations (Levene) within TIE x the largest |value| are
# equal: metrics such as accuracy take few values, and float rounding must not split a tie.
TIE = 1e-9


def spread(values) -> dict:
  """n, std (population, as numpy's default), mean, median, min, max of finite numbers (a NaN
  or inf is refused: `spread_of` drops them); with no value the five are undefined."""
  v = finite.check(values, "stats.spread")
  if not v.size:
    return _no_spread(Undefined("no value"))
  return {"n": int(v.size), "std": float(v.std()), "mean": float(v.mean()),
          "median": float(np.median(v)), "min": float(v.min()), "max": float(v.max())}


def _no_spread(why: Undefined) -> dict:
  out = {"n": 0}
  for k in SPREAD:
    finite.put(out, k, why)
  return out


def _spread(f: finite.Finite) -> dict:
  return spread(f.values) if f.n else _no_spread(Undefined(f.none_left()))


def spread_of(values) -> dict:
  """`spread` of a setting's runs: over the finite `values` only, so `n` is how many of the N
  runs that is; none finite: the five are undefined, saying so."""
  return _spread(finite.only(values))


def setting_stats(runs, metric: str, select: str = "final") -> dict:
  """Failed count (every run: one whose metric is not finite has failed), the spread of the
  final and the best-dev main metric over runs, and the spread of the one the recipe reports
  (`select`); for the reported metric also its expected best of n seeds and that best's std
  (`expected_max`, `expected_max_std`: index n-1 -> value, n = 1..n finite) and bootstrap
  intervals (`ci`, see `intervals`). The metric statistics are over the finite values (each
  spread's `n`, ci's `n`)."""
  reported_values = [r[select][metric] for r in runs]
  return {"failed_runs": int(sum(bool(r["failed"]) for r in runs)),
          "final_spread": spread_of([r["final"][metric] for r in runs]),
          "best_spread": spread_of([r["best"][metric] for r in runs]),
          "reported_spread": spread_of(reported_values),
          **uncertainty_of(reported_values, [bool(r["failed"]) for r in runs])}


# ---------------------------------------------------------------- expected best of n seeds
def expected_max(values, n_max=None):
  """(mean, std), two arrays of length n_max (default N): the expected maximum of n i.i.d. draws
  from the empirical distribution of the N finite `values`, n = 1..n_max, and the std of that
  maximum (Dodge et al. 2019). With v_(1) <= ... <= v_(N) sorted, the maximum of n draws is
  v_(i) with probability w_i(n) = (i/N)^n - ((i-1)/N)^n, so
      E[max_n] = sum_i w_i(n) v_(i),   std[max_n] = sqrt(sum_i w_i(n) (v_(i) - E[max_n])^2).
  Exact (no sampling); tied values simply share their probability mass. n = 1 gives the mean and
  the population std; as n grows both tend to the sample max and 0. A non-finite value is
  refused (a caller drops them with finite.only); no value gives two empty arrays."""
  v = np.sort(finite.check(values, "stats.expected_max"))
  size = v.size
  n_max = size if n_max is None else int(n_max)
  if not size or n_max < 1:
    return np.zeros(0), np.zeros(0)
  n = np.arange(1, n_max + 1, dtype=np.float64)[:, None]
  cdf = np.arange(size + 1, dtype=np.float64) / size            # P(draw <= v_(i)), i = 0..N
  w = np.diff(cdf[None, :] ** n, axis=1)                         # (n_max, N), rows sum to 1
  mean = w @ v
  var = np.einsum("ni,ni->n", w, (v[None, :] - mean[:, None]) ** 2)  # centred: no cancellation
  return mean, np.sqrt(np.maximum(var, 0.0))


# ---------------------------------------------------------------- bootstrap and permutations
LEVEL, RESAMPLES, SEED = 0.95, 10_000, 0

# statistic name -> f(x, axis); "std" is the population std (ddof 0), as `spread` and the table.
STATISTICS = {
    "mean": np.mean,
    "std": np.std,
    "median": np.median,
    "sum": np.sum,
}


def _statistic(statistic):
  if callable(statistic):
    return statistic
  if statistic not in STATISTICS:
    raise ValueError(f"unknown statistic {statistic!r}: one of {', '.join(STATISTICS)} or a "
                     "function f(x, axis)")
  return STATISTICS[statistic]


def _rows(resamples: int, width: int) -> int:
  """Resamples drawn at a time, so that one block holds about 4 M numbers."""
  return max(1, min(resamples, 4_000_000 // max(width, 1)))


def bootstrap_ci(values, statistic, level=LEVEL, resamples=RESAMPLES, seed=SEED):
  """[low, high]: the percentile bootstrap interval of `statistic` ("mean", "std" (ddof 0),
  "median", "sum", or f(x, axis)) over `values`: `resamples` samples of the N values drawn with
  replacement (numpy's default_rng(seed)), the statistic of each, and its (1-level)/2 and
  (1+level)/2 quantiles (np.percentile, linear interpolation, as scipy.stats.bootstrap's
  method='percentile'). The same seed and N draw the same resamples, so intervals of several
  statistics of the same runs come from the same resampled runs. Undefined when there is no
  value; a non-finite value is refused (a NaN would give NaN bounds beside finite ones)."""
  v = finite.check(values, "stats.bootstrap_ci")
  if not v.size:
    return Undefined("no value")
  f = _statistic(statistic)
  rng = np.random.default_rng(seed)
  theta, step = [], _rows(resamples, v.size)
  for start in range(0, resamples, step):
    idx = rng.integers(0, v.size, size=(min(step, resamples - start), v.size))
    theta.append(np.asarray(f(v[idx], axis=-1), np.float64))
  lo, hi = np.percentile(np.concatenate(theta), [50 * (1 - level), 50 * (1 + level)])
  return [float(lo), float(hi)]


def permutation_test(a, b, statistic="mean", resamples=RESAMPLES, seed=SEED, names=("a", "b")):
  """Two-sided p-value of a permutation test of the difference statistic(a) - statistic(b)
  ("mean", "std" (ddof 0), "median", or f(x, axis)): the pooled values are split at random into
  groups of len(a) and len(b) `resamples` times (default_rng(seed)), and, as
  scipy.stats.permutation_test(alternative='two-sided') does, p = min(1, 2 min(p_less,
  p_greater)) with p_less = (1 + #{d* <= d}) / (resamples + 1) (the observed split counts as one,
  so p >= 2 / (resamples + 1)) and p_greater likewise. Differences within TIE x the largest
  |value| of the observed one count as ties (metrics such as accuracy take few values).
  Undefined when a side is empty (`names` name the sides in the reason). A non-finite value is
  refused: every comparison with a NaN is false, which would count no split as extreme as the
  observed one and give the smallest p there is."""
  a = finite.check(a, "stats.permutation_test", names[0])
  b = finite.check(b, "stats.permutation_test", names[1])
  for name, v in zip(names, (a, b)):
    if not v.size:
      return Undefined(f"{name} has no value")
  f = _statistic(statistic)
  pooled = np.concatenate([a, b])
  observed = float(f(a, axis=-1) - f(b, axis=-1))
  gamma = TIE * float(np.max(np.abs(pooled)))
  rng = np.random.default_rng(seed)
  less = greater = 0
  step = _rows(resamples, pooled.size)
  for start in range(0, resamples, step):
    rows = min(step, resamples - start)
    perm = rng.permuted(np.broadcast_to(pooled, (rows, pooled.size)), axis=1)
    d = f(perm[:, :a.size], axis=-1) - f(perm[:, a.size:], axis=-1)
    less += int(np.count_nonzero(d <= observed + gamma))
    greater += int(np.count_nonzero(d >= observed - gamma))
  p = 2 * min(less + 1, greater + 1) / (resamples + 1)
  return float(min(p, 1.0))


def intervals(values, failed, level=LEVEL, resamples=RESAMPLES, seed=SEED) -> dict:
  """`ci` of a setting: percentile-bootstrap intervals {"std", "mean", "median": [low, high] of
  the finite `values`; "failed_runs": [low, high] of the failed-run count, the `failed` flags of
  every run resampled; "level"; "n": how many values were finite}. A statistic without data is
  null, its reason in "undefined" (finite.put)."""
  f = finite.only(values)
  out = {}
  for k in ("std", "mean", "median"):
    finite.put(out, k, bootstrap_ci(f.values, k, level, resamples, seed) if f.n
               else Undefined(f.none_left()))
  flags = np.asarray(failed, bool)
  finite.put(out, "failed_runs", bootstrap_ci(flags, "sum", level, resamples, seed) if flags.size
             else Undefined("no runs"))
  out["level"] = level
  out["n"] = f.n
  return out


def uncertainty_of(values, failed) -> dict:
  """{"expected_max", "expected_max_std", "ci"} of a setting's reported metric `values` (over
  the finite ones) and its runs' `failed` flags (the fields `setting_stats` adds)."""
  mean, std = expected_max(finite.only(values).values)
  return {"expected_max": mean.tolist(), "expected_max_std": std.tolist(),
          "ci": intervals(values, failed)}


def uncertainty(setting, values=None, failed=None) -> dict:
  """`expected_max`, `expected_max_std` and `ci` of a setting (a summary entry): the stored ones,
  or, for a summary written before they existed, recomputed from its runs with the same
  defaults: the reported metric (`values`, else `reported`) and the failed flags (`failed`,
  else the runs' stored `failed` keys)."""
  keys = ("expected_max", "expected_max_std", "ci")
  if all(isinstance(setting.get(k), (list, dict)) for k in keys):
    return {k: setting[k] for k in keys}
  if failed is None:
    failed = [bool(r.get("failed")) for r in setting["runs"]]
  return uncertainty_of(reported(setting) if values is None else values, failed)


def reported(setting) -> list:
  """The dev main metric each run of a setting reports: at the end of training, or at the best
  dev checkpoint for a recipe with select=best (the paper's baseline). Computed from the runs,
  so summaries written before `reported_spread` existed give the same table."""
  select = setting.get("select") or "final"
  return [r[select][setting["metric"]] for r in setting["runs"]]


def levene(a, b, names=("a", "b")):
  """p-value of Levene's test (median-centred, i.e. Brown-Forsythe) for equal spread: a one-way
  ANOVA of the absolute deviations from each side's median. Undefined (`names` name the sides
  in the reason) with fewer than 2 values a side, or when each side's deviations are all equal
  (within TIE x the largest |value|): the F ratio then divides by zero within-side variation,
  0/0 when the sides do not differ either (e.g. neither has any spread), x/0 otherwise, where
  scipy returns NaN, or a p near 0 that rounding decides (2 runs a side always lie at one
  distance from their median). A non-finite value is refused."""
  a = finite.check(a, "stats.levene", names[0])
  b = finite.check(b, "stats.levene", names[1])
  for name, v in zip(names, (a, b)):
    if v.size < 2:
      return Undefined(f"{name} has {v.size} value{'' if v.size == 1 else 's'}; Levene's test "
                       "needs 2 a side")
  dev = [np.abs(v - np.median(v)) for v in (a, b)]
  tie = TIE * float(max(np.max(np.abs(a)), np.max(np.abs(b))))
  if all(np.ptp(d) <= tie for d in dev):
    if max(np.max(d) for d in dev) <= tie:
      return Undefined("neither side has any spread (0/0)")
    if abs(dev[0].mean() - dev[1].mean()) <= tie:
      return Undefined("each side's values lie at one distance from its median, the same on "
                       "both sides (0/0)")
    return Undefined("each side's values lie at one distance from its median (always so with 2 "
                     "a side): no variation within a side to test against (x/0)")
  # Deferred: scipy.stats takes about a second to import and only Levene's test needs it.
  from scipy import stats  # pylint: disable=import-outside-toplevel
  p = float(stats.levene(a, b, center="median").pvalue)
  return p if np.isfinite(p) else Undefined("scipy's Levene test gave no number")


def levene_table(settings) -> list:
  """Every two settings of the same task, compared on the reported main metric over each one's
  finite values (`n_a`, `n_b` of them): Levene's p (`p`) and the permutation tests' two-sided p
  of the difference in means (`perm_mean_p`) and in std (`perm_std_p`; see `permutation_test`);
  an undefined p is null, its reason in `undefined`."""
  out = []
  for x, y in itertools.combinations(settings, 2):
    if x["task"] != y["task"]:
      continue
    a, b = finite.only(reported(x)).values, finite.only(reported(y)).values
    names = (x["name"], y["name"])
    row = {"task": x["task"], "a": x["name"], "b": y["name"]}
    finite.put(row, "p", levene(a, b, names))
    for k in ("mean", "std"):
      finite.put(row, f"perm_{k}_p", permutation_test(a, b, k, names=names))
    row.update(n_a=int(a.size), n_b=int(b.size))
    out.append(row)
  return out


# ---------------------------------------------------------------- init vs data order
def decomposition(values, init_seeds, data_seeds):
  """How the spread of a metric over a seeds x data_seeds grid divides between the init seed,
  the data-order seed and the rest (Dodge et al. 2020): a two-way ANOVA without replication,
  read as a random-effects model, with the method-of-moments (ANOVA) estimators
      var_init = (MS_init - MS_res) / D,  var_data = (MS_data - MS_res) / I,  var_res = MS_res
  (I init seeds, D data seeds; a negative estimate is set to 0). `init`, `data`, `residual` are
  each component's share of their sum. Shares of the sums of squares (`ss_shares`) are given
  too, but they overstate a factor that does nothing by about (levels - 1) / (I D - 1) of the
  residual, which the components correct. `p` holds the F tests of "this factor adds no
  variance". The residual holds the init x data interaction, inseparable without replicates.
  None when the grid is incomplete or smaller than 2 x 2; a non-finite value is refused
  (`decomposition_of` drops them and says why there is no decomposition). A share is undefined
  when nothing varies over the grid (0/0), an F test when the residual does not (x/0)."""
  values = finite.check(values, "stats.decomposition")
  grid = _grid(init_seeds, data_seeds, values.size)
  if grid is None:
    return None
  inits, datas = grid
  n_i, n_d = len(inits), len(datas)
  y = np.full((n_i, n_d), np.nan)
  for v, a, b in zip(values, init_seeds, data_seeds):
    y[inits.index(a), datas.index(b)] = v
  if not np.all(np.isfinite(y)):  # a cell given twice, another never
    return None
  grand, rows, cols = y.mean(), y.mean(axis=1), y.mean(axis=0)
  ss = {"init": n_d * float(np.sum((rows - grand) ** 2)),
        "data": n_i * float(np.sum((cols - grand) ** 2)),
        "residual": float(np.sum((y - rows[:, None] - cols[None, :] + grand) ** 2))}
  df = {"init": n_i - 1, "data": n_d - 1, "residual": (n_i - 1) * (n_d - 1)}
  ms = {k: ss[k] / df[k] for k in ss}
  comp = {"init": max((ms["init"] - ms["residual"]) / n_d, 0.0),
          "data": max((ms["data"] - ms["residual"]) / n_i, 0.0),
          "residual": ms["residual"]}
  total_comp, total_ss = sum(comp.values()), sum(ss.values())
  from scipy import stats as sps  # pylint: disable=import-outside-toplevel  # ~1 s import
  p = {}
  for k in ("init", "data"):
    finite.put(p, k, float(sps.f.sf(ms[k] / ms["residual"], df[k], df["residual"]))
               if ms["residual"] > 0 else Undefined("no residual variance (F = x/0)"))
  out = _shares(comp, total_comp)
  out.update(components=comp, ss_shares=_shares(ss, total_ss), p=p, **_about(inits, datas))
  return out


def _grid(init_seeds, data_seeds, n):
  """The sorted init and data seeds of a full grid of n runs, at least 2 x 2; else None."""
  inits, datas = sorted(set(init_seeds)), sorted(set(data_seeds))
  if len(inits) < 2 or len(datas) < 2 or n != len(inits) * len(datas):
    return None
  return inits, datas


def _about(inits, datas) -> dict:
  return {"grid": [len(inits), len(datas)], "init_seeds": inits, "data_seeds": datas,
          "method": "two-way ANOVA without replication, random effects, method of moments"}


def _shares(parts: dict, total: float) -> dict:
  out = {}
  for k, v in parts.items():
    finite.put(out, k, v / total if total > 0 else Undefined("nothing varies over the grid (0/0)"))
  return out


def decomposition_of(values, init_seeds, data_seeds):
  """`decomposition` of a grid's runs. A run whose value is not finite leaves a hole the
  two-way ANOVA without replication cannot fill, so the shares and F tests are then undefined,
  with the count (the grid and its seeds are still given); None without a full grid."""
  f = finite.only(values)
  if not f.dropped:
    return decomposition(values, init_seeds, data_seeds)
  grid = _grid(init_seeds, data_seeds, f.total)
  if grid is None:
    return None
  why = Undefined(f"{f.dropped} of the {f.total} grid runs have no finite value, and the "
                  "decomposition needs every cell")
  out, p = {}, {}
  for k in ("init", "data", "residual"):
    finite.put(out, k, why)
  for k in ("init", "data"):
    finite.put(p, k, why)
  out.update(p=p, **_about(*grid))
  return out
