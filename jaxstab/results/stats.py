"""Spread statistics over seeds and comparisons between settings, as the paper's Table 1, with
their uncertainty: the expected best of n seeds (Dodge et al. 2019, "Show Your Work"),
percentile-bootstrap intervals and permutation tests (numpy only, vectorised over resamples)."""
import csv
import io
import itertools

import numpy as np


def spread(values) -> dict:
  """n, std (population, as numpy's default), mean, median, min, max of a list of numbers."""
  v = np.asarray(values, np.float64)
  if not v.size:
    return {"n": 0, "std": None, "mean": None, "median": None, "min": None, "max": None}
  return {"n": int(v.size), "std": float(v.std()), "mean": float(v.mean()),
          "median": float(np.median(v)), "min": float(v.min()), "max": float(v.max())}


def setting_stats(runs, metric: str, select: str = "final") -> dict:
  """Failed count, the spread of the final and the best-dev main metric over runs, and the
  spread of the one the recipe reports (`select`); for the reported metric also its expected
  best of n seeds and that best's std (`expected_max`, `expected_max_std`: index n-1 -> value,
  n = 1..N) and bootstrap intervals (`ci`, see `intervals`)."""
  reported_values = [r[select][metric] for r in runs]
  return {"failed_runs": int(sum(bool(r["failed"]) for r in runs)),
          "final_spread": spread([r["final"][metric] for r in runs]),
          "best_spread": spread([r["best"][metric] for r in runs]),
          "reported_spread": spread(reported_values),
          **uncertainty_of(reported_values, [bool(r["failed"]) for r in runs])}


# ---------------------------------------------------------------- expected best of n seeds
def expected_max(values, n_max=None):
  """(mean, std), two arrays of length n_max (default N): the expected maximum of n i.i.d. draws
  from the empirical distribution of the N finite `values`, n = 1..n_max, and the std of that
  maximum (Dodge et al. 2019). With v_(1) <= ... <= v_(N) sorted, the maximum of n draws is
  v_(i) with probability w_i(n) = (i/N)^n - ((i-1)/N)^n, so
      E[max_n] = sum_i w_i(n) v_(i),   std[max_n] = sqrt(sum_i w_i(n) (v_(i) - E[max_n])^2).
  Exact (no sampling); tied values simply share their probability mass. n = 1 gives the mean and
  the population std; as n grows both tend to the sample max and 0. Non-finite values are
  dropped; no finite value gives two empty arrays."""
  v = np.sort(_finite(values))
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


def _finite(values) -> np.ndarray:
  v = np.asarray(values, np.float64).ravel()
  return v[np.isfinite(v)]


def _rows(resamples: int, width: int) -> int:
  """Resamples drawn at a time, so that one block holds about 4 M numbers."""
  return max(1, min(resamples, 4_000_000 // max(width, 1)))


def bootstrap_ci(values, statistic, level=LEVEL, resamples=RESAMPLES, seed=SEED):
  """[low, high]: the percentile bootstrap interval of `statistic` ("mean", "std" (ddof 0),
  "median", "sum", or f(x, axis)) over `values`: `resamples` samples of the N values drawn with
  replacement (numpy's default_rng(seed)), the statistic of each, and its (1-level)/2 and
  (1+level)/2 quantiles (np.percentile, linear interpolation, as scipy.stats.bootstrap's
  method='percentile'). The same seed and N draw the same resamples, so intervals of several
  statistics of the same runs come from the same resampled runs. None when there is no value.
  The values are used as given (a NaN gives NaN bounds)."""
  v = np.asarray(values, np.float64).ravel()
  if not v.size:
    return None
  f = _statistic(statistic)
  rng = np.random.default_rng(seed)
  theta, step = [], _rows(resamples, v.size)
  for start in range(0, resamples, step):
    idx = rng.integers(0, v.size, size=(min(step, resamples - start), v.size))
    theta.append(np.asarray(f(v[idx], axis=-1), np.float64))
  lo, hi = np.percentile(np.concatenate(theta), [50 * (1 - level), 50 * (1 + level)])
  return [float(lo), float(hi)]


def permutation_test(a, b, statistic="mean", resamples=RESAMPLES, seed=SEED):
  """Two-sided p-value of a permutation test of the difference statistic(a) - statistic(b)
  ("mean", "std" (ddof 0), "median", or f(x, axis)): the pooled values are split at random into
  groups of len(a) and len(b) `resamples` times (default_rng(seed)), and, as
  scipy.stats.permutation_test(alternative='two-sided') does, p = min(1, 2 min(p_less,
  p_greater)) with p_less = (1 + #{d* <= d}) / (resamples + 1) (the observed split counts as one,
  so p >= 2 / (resamples + 1)) and p_greater likewise. Differences within 1e-9 x the largest
  |value| of the observed one count as ties (metrics such as accuracy take few values). None when
  a side is empty."""
  a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
  if not a.size or not b.size:
    return None
  f = _statistic(statistic)
  pooled = np.concatenate([a, b])
  observed = float(f(a, axis=-1) - f(b, axis=-1))
  gamma = 1e-9 * float(np.max(np.abs(pooled)))
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
  the finite `values`; "failed_runs": [low, high] of the failed-run count, the `failed` flags
  resampled; "level"}. A statistic without data gets None."""
  v = _finite(values)
  out = {k: bootstrap_ci(v, k, level, resamples, seed) for k in ("std", "mean", "median")}
  out["failed_runs"] = bootstrap_ci(np.asarray(failed, bool), "sum", level, resamples, seed)
  out["level"] = level
  return out


def uncertainty_of(values, failed) -> dict:
  """{"expected_max", "expected_max_std", "ci"} of a setting's reported metric `values` and its
  runs' `failed` flags (the fields `setting_stats` adds)."""
  mean, std = expected_max(values)
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


def levene(a, b):
  """p-value of Levene's test (median-centred, i.e. Brown-Forsythe) for equal spread; None
  when undefined (fewer than 2 runs a side, or no spread at all)."""
  # Deferred: scipy.stats takes about a second to import and only Levene's test needs it.
  from scipy import stats  # pylint: disable=import-outside-toplevel
  if len(a) < 2 or len(b) < 2:
    return None
  with np.errstate(invalid="ignore", divide="ignore"):
    p = float(stats.levene(a, b, center="median").pvalue)
  return p if np.isfinite(p) else None


def levene_table(settings) -> list:
  """Every two settings of the same task, compared on the reported main metric: Levene's p
  (`p`) and the permutation tests' two-sided p of the difference in means (`perm_mean_p`) and in
  std (`perm_std_p`; see `permutation_test`; non-finite values left out)."""
  out = []
  for x, y in itertools.combinations(settings, 2):
    if x["task"] != y["task"]:
      continue
    a, b = reported(x), reported(y)
    out.append({"task": x["task"], "a": x["name"], "b": y["name"], "p": levene(a, b),
                "perm_mean_p": permutation_test(_finite(a), _finite(b), "mean"),
                "perm_std_p": permutation_test(_finite(a), _finite(b), "std")})
  return out


def _cell(spread_, failed=None, n=None, started=None):
  if not spread_["n"]:
    return "—"
  body = " / ".join(f"{100 * spread_[k]:.1f}" for k in ("std", "mean", "median", "max"))
  stopped = f"; {started} started, {n} continued" if started else ""
  return body + (f" ({failed}/{n} failed{stopped})" if failed is not None else "")


def started_runs(setting):
  """Runs started by a setting that stopped some early (train.early_stop), else None."""
  es = setting.get("early_stop")
  return es.get("started") if isinstance(es, dict) else None


def table1_markdown(settings) -> str:
  """Rows = recipes, columns = tasks; cells std / mean / median / max (x100) of the reported
  metric (see `reported`) and the failed runs (always judged at the end of training)."""
  tasks = list(dict.fromkeys(s["task"] for s in settings))
  recipes = list(dict.fromkeys(s.get("recipe", s["name"]) for s in settings))
  lines = ["| setting | " + " | ".join(t.upper() for t in tasks) + " |",
           "|---" * (len(tasks) + 1) + "|"]
  for rec in recipes:
    cells = []
    for t in tasks:
      hit = [s for s in settings if s["task"] == t and s.get("recipe", s["name"]) == rec]
      cells.append(_cell(spread(reported(hit[0])), hit[0]["failed_runs"], len(hit[0]["runs"]),
                         started_runs(hit[0])) if hit else "")
    lines.append(f"| {rec} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _x100(x) -> str:
  return "—" if x is None or not np.isfinite(x) else f"{100 * x:.1f}"


def _count(x) -> str:
  """A bootstrap bound of a count: an integer unless the percentile fell between two."""
  return "—" if x is None else (f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}")


def _with_ci(value, ci, fmt=_x100) -> str:
  return fmt(value) + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "")


def uncertainty_markdown(settings) -> str:
  """Two tables below Table 1, one row per setting (recipe and task): the bootstrap intervals of
  the reported metric's std / mean / median and of the failed-run count, and the expected best
  of n = 1, 5 and N seeds ± its std (`uncertainty`); a line under each says what it is."""
  level = LEVEL
  rows_ci, rows_max = [], []
  for s in settings:
    u = uncertainty(s)
    ci, level = u["ci"], u["ci"].get("level", LEVEL)
    sp = spread([v for v in reported(s) if np.isfinite(v)])
    label = f"| {s.get('recipe', s['name'])} | {s['task'].upper()} | {len(s['runs'])} | "
    rows_ci.append(label + " | ".join(
        [_with_ci(sp[k], ci.get(k)) for k in ("std", "mean", "median")]
        + [_with_ci(s["failed_runs"], ci.get("failed_runs"), _count)]) + " |")
    em, em_std = u["expected_max"], u["expected_max_std"]
    cells = [f"{_x100(em[n - 1])} ± {_x100(em_std[n - 1])}" if n <= len(em) else "—"
             for n in (1, 5, len(em) or 1)]
    rows_max.append(label + " | ".join(cells) + " |")
  if not settings:
    return ""
  pct = f"{100 * level:g}%"
  return "\n".join(
      [f"| setting | task | seeds | std [{pct} CI] | mean [{pct} CI] | median [{pct} CI] "
       f"| failed runs [{pct} CI] |", "|---" * 7 + "|", *rows_ci, "",
       f"Reported dev metric ×100 over the seeds, {pct} percentile-bootstrap intervals "
       f"({RESAMPLES:,} resamples of the seeds, seed {SEED}); the failed-run count's interval "
       "resamples the failed flags.", "",
       "| setting | task | seeds | best of n = 1 | best of n = 5 | best of n = N |",
       "|---" * 6 + "|", *rows_max, "",
       "Expected best reported dev metric ×100 of n seeds drawn from the N runs (Dodge et al. "
       "2019), ± the std of that best; N = the seeds column."])


def _p(x) -> str:
  return "—" if x is None else f"{x:.3f}"


def seed_analyses_markdown(settings) -> str:
  """Tables for the settings that have them: the init / data-order decomposition (data_seeds)
  and the early stop (train.early_stop); '' when no setting has either."""
  dec, stop = [], []
  for s in settings:
    label = f"| {s.get('recipe', s['name'])} | {s['task'].upper()} | "
    d = s.get("decomposition")
    if isinstance(d, dict):
      share = lambda k, d=d: "—" if d.get(k) is None else f"{100 * d[k]:.0f}%"
      dec.append(label + f"{d['grid'][0]} × {d['grid'][1]} | " + " | ".join(
          [share("init"), share("data"), share("residual"), _p(d["p"].get("init")),
           _p(d["p"].get("data"))]) + " |")
    es = s.get("early_stop")
    if isinstance(es, dict):
      found = max((v for v in reported(s) if np.isfinite(v)), default=None)
      stop.append(label + f"{es['started']} | {es['continued']} | {es['step']} ({es['at']:g}) | "
                  f"{es['by']} | {100 * es['fraction_of_compute']:.0f}% | {_x100(found)} |")
  out = []
  if dec:
    out += ["| setting | task | init × data seeds | init | data order | residual | p init "
            "| p data |", "|---" * 8 + "|", *dec, "",
            "Shares of the reported metric's variance over the grid (two-way ANOVA without "
            "replication, random-effects components by the method of moments; the residual "
            "holds the init × data interaction); p: F test of no added variance."]
  if stop:
    out += ([""] if out else []) + [
        "| setting | task | started | continued | stop step (fraction) | ranked by | compute "
        "| best reported |", "|---" * 8 + "|", *stop, "",
        "Runs stopped early leave every statistic above; compute = seed-steps trained as a "
        "share of training every started run to the end."]
  return "\n".join(out)


def summary_csv(settings) -> str:
  """One row per setting and result kind (final / best); `reported` marks the kind the
  setting reports (its `select`)."""
  buf = io.StringIO()
  w = csv.writer(buf)
  w.writerow(["setting", "task", "metric", "result", "reported", "n", "failed", "majority", "std",
              "mean", "median", "min", "max"])
  for s in settings:
    for kind in ("final", "best"):
      sp = s[f"{kind}_spread"]
      w.writerow([s["name"], s["task"], s["metric"], kind, kind == (s.get("select") or "final"),
                  sp["n"], s["failed_runs"], s["majority"][s["metric"]]]
                 + [sp[k] for k in ("std", "mean", "median", "min", "max")])
  return buf.getvalue()


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
  None when the grid is incomplete, smaller than 2 x 2, or not finite."""
  inits, datas = sorted(set(init_seeds)), sorted(set(data_seeds))
  n_i, n_d = len(inits), len(datas)
  if n_i < 2 or n_d < 2 or len(values) != n_i * n_d:
    return None
  y = np.full((n_i, n_d), np.nan)
  for v, a, b in zip(values, init_seeds, data_seeds):
    y[inits.index(a), datas.index(b)] = v
  if not np.all(np.isfinite(y)):
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
    p[k] = (float(sps.f.sf(ms[k] / ms["residual"], df[k], df["residual"]))
            if ms["residual"] > 0 else None)
  share = lambda d, tot: {k: (d[k] / tot if tot > 0 else None) for k in d}
  return {**share(comp, total_comp), "components": comp, "ss_shares": share(ss, total_ss),
          "p": p, "grid": [n_i, n_d], "init_seeds": inits, "data_seeds": datas,
          "method": "two-way ANOVA without replication, random effects, method of moments"}
