"""Spread statistics over seeds and comparisons between settings, as the paper's Table 1."""
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
  spread of the one the recipe reports (`select`)."""
  return {"failed_runs": int(sum(bool(r["failed"]) for r in runs)),
          "final_spread": spread([r["final"][metric] for r in runs]),
          "best_spread": spread([r["best"][metric] for r in runs]),
          "reported_spread": spread([r[select][metric] for r in runs])}


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
  """Levene p-values between every two settings of the same task (reported main metric)."""
  out = []
  for x, y in itertools.combinations(settings, 2):
    if x["task"] != y["task"]:
      continue
    out.append({"task": x["task"], "a": x["name"], "b": y["name"],
                "p": levene(reported(x), reported(y))})
  return out


def _cell(spread_, failed=None, n=None):
  if not spread_["n"]:
    return "—"
  body = " / ".join(f"{100 * spread_[k]:.1f}" for k in ("std", "mean", "median", "max"))
  return body + (f" ({failed}/{n} failed)" if failed is not None else "")


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
      cells.append(_cell(spread(reported(hit[0])), hit[0]["failed_runs"], len(hit[0]["runs"]))
                   if hit else "")
    lines.append(f"| {rec} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


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
