"""The failure forecast of each task (jaxstab.results.forecast), one panel per setting with a probe: every
seed's score as a function of how much of training it has seen (the score recomputed with each
recorded step as the cut-off), failed seeds red, successful blue, the fixed threshold dashed and
the fractions the forecast is judged at dotted. The caption gives precision and recall there.
"""
from typing import Dict, List, Optional

import numpy as np
from matplotlib.lines import Line2D

from jaxstab.report.figures import FAILED_COLOR, new_figure, OK_COLOR, save
from jaxstab.results import forecast, picks
from jaxstab.results.records import Setting


def of_setting(s: Setting) -> Optional[dict]:
  """The setting's forecast: stored in its summary, else computed from its probe.npz; the
  failed flags as the report judges them (picks.is_failed)."""
  return forecast.of_setting(s.summary, s.probe, [picks.is_failed(s, r) for r in s.runs])


def curves(s: Setting):
  """(training fraction [R], scores [S, R]): each seed's score with each record as the cut-off."""
  p = s.probe
  steps = np.asarray(p["step"])
  total = forecast.total_steps_of(s.summary, p)
  scores = np.stack([forecast.failure_scores(p["grad_norm"], steps, p["groups"], int(t),
                                             p.get("loss")) for t in steps], axis=1)
  return steps / total, scores


def _rates(f: dict) -> str:
  def one(row):
    pr = "—" if row["precision"] is None else f"{row['precision']:.2f}"
    rc = "—" if row["recall"] is None else f"{row['recall']:.2f}"
    au = "—" if row["auroc"] is None else f"{row['auroc']:.2f}"
    return (f"{row['fraction']:.0%} (step {row['step']}): {row['predicted_failed']} alarm(s), "
            f"precision {pr}, recall {rc}, AUROC {au}")
  return "; ".join(one(r) for r in f["fractions"])


def figure(task: str, settings: List[Setting], found: Dict[str, Optional[dict]],
           path: str) -> Optional[str]:
  """Draws the task's panels into `path` and returns the caption; None (nothing drawn) when no
  setting of the task has a probe with gradient norms."""
  drawn = [s for s in settings if found.get(s.name) and s.probe and "grad_norm" in s.probe]
  if not drawn:
    return None
  fig = new_figure(max(5.5, 4.6 * len(drawn)), 4.0)
  axes = fig.subplots(1, len(drawn), squeeze=False)[0]
  texts = []
  for ax, s in zip(axes, drawn):
    f = found[s.name]
    frac, scores = curves(s)
    failed = dict(zip(f["seeds"], f["failed"]))
    finite = scores[np.isfinite(scores)]
    top = max(float(finite.max()) if finite.size else 0.0, f["threshold"]) + 0.5
    for i, seed in enumerate(f["seeds"]):
      y = np.where(np.isposinf(scores[i]), top, scores[i])
      bad = failed.get(seed, False)
      ax.plot(frac, y, "-", color=FAILED_COLOR if bad else OK_COLOR, lw=1.6 if bad else 0.9,
              alpha=0.9 if bad else 0.6, zorder=3 if bad else 2)
    ax.axhline(f["threshold"], color="black", ls="--", lw=1)
    ax.set_ylim(top=max(ax.get_ylim()[1], f["threshold"] + 0.6))
    for row in f["fractions"]:
      ax.axvline(row["fraction"], color="#888", ls=":", lw=1)
    ax.set_xlim(0, max(1.0, float(frac.max()) if frac.size else 1.0))
    ax.set_xlabel("fraction of training seen")
    ax.set_ylabel("failure score (nats; higher = more likely to fail)")
    n_failed = sum(f["failed"])
    ax.set_title(f"{s.name}: {n_failed}/{len(f['seeds'])} failed", fontsize=10)
    texts.append(f"{s.name}: {_rates(f)}")
  axes[0].legend(handles=[Line2D([], [], color=FAILED_COLOR, lw=1.6, label="failed seed"),
                          Line2D([], [], color=OK_COLOR, lw=0.9, label="successful seed"),
                          Line2D([], [], color="black", ls="--", lw=1,
                                 label=f"threshold ln 10 = {forecast.THRESHOLD:.2f}")],
                 fontsize=8, loc="upper left")
  fig.suptitle(f"{task.upper()}: forecasting failure from the early gradient norms", fontsize=11)
  save(fig, path)
  return (f"Failure forecast for {task.upper()}: each seed's score, the fall (in nats) of the "
          "lowest groups' gradient norm (embeddings, layer_0, layer_1) relative to the "
          "classifier's since step 0, averaged over the second half of the records seen so far; "
          "a seed past the dashed threshold (a tenfold fall, fixed a priori) is predicted to "
          "fail; diverged seeds are drawn at the top. Judged at the dotted fractions: "
          + " | ".join(texts) + ". Precision: failed among the alarms; recall: alarms among "
          "the failed; — when undefined.")
