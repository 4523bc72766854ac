"""Forecasting which seeds will fail from the probe's early records (numpy only).

The paper finds that failed runs are an optimisation failure: the gradients of the lower layers
vanish early in training and never recover, while the classifier keeps a sizeable gradient. The
rule here measures exactly that, per seed, from the records written so far:

  r_t   = ln ||g_low||_t - ln ||g_top||_t     g_low: the gradient of the lowest groups together
                                              (embeddings, layer_0, layer_1: the root of the sum
                                              of their squared norms); g_top: the classifier's
  score = r_first - mean(r_t over the recent records)

`first` is the seed's first record (step 0, the pretrained point, where every seed starts from
the same weights), "recent" the records in the second half of those seen so far (step in
(last / 2, last], last = the latest usable record at or before the cut-off). The score is how many nats the lower block's gradient has fallen,
relative to the classifier's, since the start: higher = more likely to fail. A seed is predicted
to fail when its score exceeds THRESHOLD = ln 10: the ratio has fallen tenfold. The threshold is
fixed a priori (not fit to any seeds): the paper's failed runs have lower-layer gradients two to
three orders of magnitude below the successful runs', and one decade is well inside that gap and
above the seed-to-seed noise of the ratio (single-batch norms; see docs/analyses.md). A run whose written
records hold a non-finite loss or norm has diverged: score +inf. A seed with no usable record yet
scores NaN (never predicted to fail).

`evaluate` scores a finished setting's probe at fixed fractions of training against the seeds'
final `failed` flags: precision and recall of the fixed threshold, the threshold-free AUROC, and,
for comparison, leave-one-out: each seed judged by a threshold chosen on the other seeds only.
"""
import math
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from jaxstab.results.schema import SettingSummary

LOW_GROUPS = ("embeddings", "layer_0", "layer_1")
TOP_GROUP = "classifier"
THRESHOLD = math.log(10.0)
FRACTIONS = (0.1, 0.2, 0.3)
RULE = ("score = ln(|g_low| / |g_classifier|) at step 0 minus its mean over the records in "
        "the second half of the records seen so far (g_low: embeddings, layer_0, layer_1 together); a seed is "
        "predicted to fail when its score exceeds a threshold fixed a priori")


def _group_index(groups: Sequence[str]):
  """(indices of the low groups, index of the top group) in `groups`."""
  names = [str(g) for g in groups]
  low = [names.index(g) for g in LOW_GROUPS if g in names] or [0]
  top = names.index(TOP_GROUP) if TOP_GROUP in names else len(names) - 1
  if top in low:
    raise ValueError(f"groups {names}: need a group above {LOW_GROUPS} to compare with")
  return low, top


def failure_scores(grad_norm, steps, groups, upto_step, loss=None) -> np.ndarray:
  """[S] scores (see the module doc; higher = more likely to fail) from the records with
  0 <= step <= upto_step.

  grad_norm: [S, R, G] (seeds, records, groups); steps: [R], or [S, R] as the train state's
  per-seed buffers hold them; loss: optional [S, R]. A record not yet written (step < 0, or all
  its norms 0: probe.init_buffers' fill) is skipped, so a mid-run buffer works as it is.
  """
  g = np.asarray(grad_norm, np.float64)
  if g.ndim != 3:
    raise ValueError(f"grad_norm must be [seeds, records, groups], got shape {g.shape}")
  s_count, r_count, _ = g.shape
  st = np.broadcast_to(np.asarray(steps, np.int64), (s_count, r_count))
  low, top = _group_index(groups)
  with np.errstate(invalid="ignore"):
    written = (st >= 0) & (st <= upto_step) & ~np.all(g == 0, axis=-1)
  bad = ~np.all(np.isfinite(g), axis=-1)
  if loss is not None:
    bad |= ~np.isfinite(np.asarray(loss, np.float64).reshape(s_count, r_count))
  with np.errstate(divide="ignore", invalid="ignore"):
    ratio = 0.5 * np.log(np.sum(g[..., low] ** 2, axis=-1)) - np.log(g[..., top])
  usable = written & ~bad & np.isfinite(ratio)
  out = np.full(s_count, np.nan)
  for s in range(s_count):
    if np.any(written[s] & bad[s]):
      out[s] = np.inf
      continue
    idx = np.flatnonzero(usable[s])
    if not idx.size:
      continue
    idx = idx[np.argsort(st[s, idx], kind="stable")]
    recent = idx[st[s, idx] > st[s, idx[-1]] / 2] if idx.size > 1 else idx
    out[s] = ratio[s, idx[0]] - ratio[s, recent].mean()
  return out


def predict(scores, threshold: float = THRESHOLD) -> np.ndarray:
  """[S] bools: predicted to fail (score above the threshold; NaN never)."""
  s = np.asarray(scores, np.float64)
  with np.errstate(invalid="ignore"):
    return np.where(np.isnan(s), False, s > threshold)


def auroc(scores, failed) -> Optional[float]:
  """P(a failed seed scores above a successful one), ties count half; None without both kinds.
  Seeds with a NaN score are left out."""
  s, f = np.asarray(scores, np.float64), np.asarray(failed, bool)
  keep = ~np.isnan(s)
  pos, neg = s[keep & f], s[keep & ~f]
  if not pos.size or not neg.size:
    return None
  diff = pos[:, None] - neg[None, :]
  with np.errstate(invalid="ignore"):  # inf - inf: a tie
    wins = np.where(np.isnan(diff), 0.5, (diff > 0) + 0.5 * (diff == 0))
  return float(wins.mean())


def loo_threshold(scores, failed) -> float:
  """The threshold that best separates these seeds: the midpoint between two consecutive
  distinct scores (or one below them all, or +inf: no alarm) that maximises Youden's J = recall -
  false-positive rate; ties go to the highest threshold, i.e. the fewest alarms. THRESHOLD when
  the seeds are not of both kinds (nothing to fit)."""
  s, f = np.asarray(scores, np.float64), np.asarray(failed, bool)
  keep = ~np.isnan(s)
  s, f = s[keep], f[keep]
  if not f.any() or f.all():
    return THRESHOLD
  finite = np.unique(s[np.isfinite(s)])
  if not finite.size:
    return THRESHOLD
  cuts = [np.inf, finite[0] - 1.0, *((finite[:-1] + finite[1:]) / 2)]  # inf: no alarm
  if np.isinf(s).any():  # a diverged seed (+inf) is separated from every finite score
    cuts.append(finite[-1] + 1.0)
  best, best_j = THRESHOLD, -np.inf
  for c in sorted(cuts, reverse=True):
    p = s > c
    j = p[f].mean() - p[~f].mean()
    if j > best_j + 1e-12:
      best, best_j = c, j
  return float(best)


def _counts(pred, failed) -> dict:
  pred, failed = np.asarray(pred, bool), np.asarray(failed, bool)
  tp = int(np.sum(pred & failed))
  n_pred, n_fail = int(pred.sum()), int(failed.sum())
  return {"predicted_failed": n_pred, "actual_failed": n_fail, "true_positives": tp,
          "precision": tp / n_pred if n_pred else None,
          "recall": tp / n_fail if n_fail else None}


def _json_float(x) -> Optional[float]:
  return float(x) if np.isfinite(x) else None


def _summary(summary: Union[SettingSummary, Mapping]) -> SettingSummary:
  """The typed summary; a JSON dict (as a test or a script may hold one) is converted."""
  return summary if isinstance(summary, SettingSummary) else SettingSummary.from_json(summary)


def total_steps_of(summary: Union[SettingSummary, Mapping], probe: dict) -> int:
  """The setting's number of optimizer steps: the summary's, else one past the last record."""
  total = _summary(summary).total_steps
  if isinstance(total, (int, float)) and total > 0:
    return int(total)
  steps = np.asarray(probe["step"])
  return int(steps.max()) + 1 if steps.size else 1


def evaluate(probe: dict, failed: Sequence[bool], total_steps: int,
             fractions=FRACTIONS, threshold: float = THRESHOLD) -> dict:
  """Scores a finished setting's seeds at each fraction of training and compares the forecast
  with how they ended.

  probe: a setting's probe.npz (keys step [R], groups, seeds [S], grad_norm [S, R, G], loss
  [S, R], ...); failed: [S] final failed flags in the order of probe["seeds"]. Returns a JSON-able
  dict: rule, threshold, seeds, and per fraction: the cut-off step (floor(fraction x
  total_steps)), records used, scores (None for NaN or +inf; `diverged` lists the +inf seeds),
  predicted flags, counts, precision (None without any alarm), recall (None without any failed
  seed), AUROC, and the leave-one-out precision / recall.
  """
  failed = np.asarray(failed, bool)
  grad_norm = np.asarray(probe["grad_norm"])
  if failed.shape != (grad_norm.shape[0],):
    raise ValueError(f"{failed.size} failed flags for {grad_norm.shape[0]} seeds in the probe")
  steps, groups = np.asarray(probe["step"]), [str(g) for g in probe["groups"]]
  loss = probe.get("loss")
  rows = []
  for frac in fractions:
    upto = int(math.floor(frac * total_steps))
    sc = failure_scores(grad_norm, steps, groups, upto, loss)
    pred = predict(sc, threshold)
    loo = np.zeros_like(pred)
    for i in range(sc.size):
      others = np.arange(sc.size) != i
      loo[i] = predict(sc[i:i + 1], loo_threshold(sc[others], failed[others]))[0]
    rows.append({"fraction": float(frac), "step": upto,
                 "records": int(np.sum((steps >= 0) & (steps <= upto))),
                 "scores": [_json_float(x) for x in sc],
                 "diverged": [int(s) for s, x in zip(probe["seeds"], sc) if x == np.inf],
                 "predicted": [bool(p) for p in pred], **_counts(pred, failed),
                 "auroc": auroc(sc, failed),
                 "loo": _counts(loo, failed)})
  return {"rule": RULE, "threshold": float(threshold), "threshold_kind": "fixed a priori",
          "low_groups": [g for g in LOW_GROUPS if g in groups], "top_group": TOP_GROUP,
          "seeds": [int(s) for s in probe["seeds"]], "failed": [bool(f) for f in failed],
          "total_steps": int(total_steps), "fractions": rows}


def of_setting(summary: Union[SettingSummary, Mapping], probe: Optional[dict],
               failed: Optional[Sequence[bool]] = None):
  """A setting's forecast: the one stored in its summary (`forecast`), else computed from its
  probe (None without one). failed: per run of summary.runs (default: their `failed` flags),
  matched to the probe's seeds by seed number."""
  summary = _summary(summary)
  if isinstance(summary.forecast, Mapping):
    return summary.forecast
  if probe is None or "grad_norm" not in probe or not np.asarray(probe["step"]).size:
    return None
  runs = summary.runs
  flags = failed if failed is not None else [bool(r.failed) for r in runs]
  by_seed = {int(r.seed): bool(f) for r, f in zip(runs, flags) if r.seed is not None}
  seeds = [int(s) for s in probe["seeds"]]
  if not seeds or any(s not in by_seed for s in seeds):
    return None
  return evaluate(probe, [by_seed[s] for s in seeds], total_steps_of(summary, probe))


def _fmt(x, digits=2) -> str:
  return "—" if x is None else f"{x:.{digits}f}"


def markdown(named) -> str:
  """One table, a row per setting and fraction, from [(setting name, task, forecast)]; ""
  when there is none."""
  named = [(n, t, f) for n, t, f in named if f]
  if not named:
    return ""
  lines = ["| setting | task | fraction | step | alarms / failed / seeds | precision | recall "
           "| AUROC | leave-one-out P / R |", "|---" * 9 + "|"]
  for name, task, f in named:
    for row in f["fractions"]:
      loo = row["loo"]
      lines.append(
          f"| {name} | {str(task).upper()} | {row['fraction']:.0%} | {row['step']} | "
          f"{row['predicted_failed']} / {row['actual_failed']} / {len(f['seeds'])} | "
          f"{_fmt(row['precision'])} | {_fmt(row['recall'])} | {_fmt(row['auroc'])} | "
          f"{_fmt(loo['precision'])} / {_fmt(loo['recall'])} |")
  thr = named[0][2].get("threshold", THRESHOLD)
  lines += ["", f"Failure forecast from the probe: {RULE} ({thr:.3g} = ln 10: a tenfold fall). "
            "Alarms: seeds predicted to fail from the records up to that step; failed: seeds that "
            "ended at or below the majority classifier; seeds: all. Precision = failed among the alarms, "
            "recall = alarms among the failed (— when undefined); AUROC ranks failed above "
            "successful seeds by score, threshold-free; leave-one-out judges each seed with a "
            "threshold chosen on the other seeds."]
  return "\n".join(lines)
