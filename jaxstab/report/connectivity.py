"""The linear-connectivity figure of a setting, drawn from the analysis/connectivity.json that
python -m jaxstab.connectivity wrote (nothing here imports the analysis):

- the training-subset loss along the straight line between two seeds, pairs of successful seeds
  in one panel and pairs with a failed seed in another, so that failed pairs never hide the
  others;
- the same along the line from each seed's start (theta_p: pretrained + its initial head) to its
  final parameters;
- the barrier matrix, seeds ordered by basin (largest first), basins outlined, failed seeds'
  labels in red.
"""
import math

import numpy as np
from matplotlib import patches
from matplotlib.lines import Line2D

from jaxstab.infra import fs
from jaxstab.report import figures
from jaxstab.results import connectivity as conn

MIXED_COLOR, START_COLOR = "#9467bd", "#555555"


def _curves(ax, alpha, curves, colors, title):
  drawn = 0
  for y, color in zip(curves, colors):
    y = np.asarray([np.nan if v is None else v for v in y], np.float64)
    if np.isfinite(y).any():
      ax.plot(alpha, y, "-", color=color, lw=1.0, alpha=0.55, marker=".", ms=3)
      drawn += 1
  ax.set_title(f"{title} ({drawn})", fontsize=10)
  ax.set_xlabel("α")
  ax.grid(alpha=0.3)
  if not drawn:
    ax.text(0.5, 0.5, "none", transform=ax.transAxes, ha="center", va="center", color="gray")


def order_by_basin(seeds, basins):
  """The seeds basin by basin (basins as stored: largest first), then any seed in none (a
  diverged one); and each basin's (start, size) in that order."""
  order, spans = [], []
  for b in basins:
    spans.append((len(order), len(b)))
    order += [int(s) for s in b]
  order += [int(s) for s in seeds if int(s) not in order]
  return order, spans


def figure(path_json: str, path_png: str, title: str) -> str:
  """Curves (successful pairs, pairs with a failed seed, theta_p to each seed) and the barrier
  matrix ordered by basin; returns the caption."""
  r = fs.read_json(path_json)
  alpha, failed = np.asarray(r["alphas"]), set(r.get("failed", []))
  pairs = [tuple(p) for p in r["pairs"]]
  loss = r["curves"]["train_loss"]
  fig = figures.new_figure(12.0, 9.0)
  (a_ok, a_bad), (a_start, a_mat) = fig.subplots(2, 2)
  ok = [i for i, (a, b) in enumerate(pairs) if a not in failed and b not in failed]
  bad = [i for i in range(len(pairs)) if i not in ok]
  _curves(a_ok, alpha, [loss[i] for i in ok], [figures.OK_COLOR] * len(ok),
          "pairs of successful seeds")
  _curves(a_bad, alpha, [loss[i] for i in bad],
          [figures.FAILED_COLOR if pairs[i][0] in failed and pairs[i][1] in failed
           else MIXED_COLOR for i in bad], "pairs with a failed seed")
  a_bad.legend(handles=[Line2D([], [], color=figures.FAILED_COLOR, label="both failed"),
                        Line2D([], [], color=MIXED_COLOR, label="one failed")], fontsize=8)
  start = r.get("pretrained_path", {})
  seeds_p = start.get("seeds", [])
  _curves(a_start, alpha, start.get("train_loss", []),
          [figures.FAILED_COLOR if s in failed else figures.OK_COLOR for s in seeds_p],
          "from θp (pretrained + the seed's initial head) to each seed")
  for ax in (a_ok, a_bad, a_start):
    ax.set_ylabel("training-subset loss")
  seeds = [int(s) for s in r["seeds"]]
  order, spans = order_by_basin(seeds, r["basins"])
  m = conn.matrix(seeds, pairs, r["barrier"])
  index = [seeds.index(s) for s in order]
  m = m[np.ix_(index, index)]
  shown = np.ma.masked_invalid(m)
  image = a_mat.imshow(shown, cmap="magma_r", vmin=0.0,
                       vmax=max(float(np.nanmax(m)) if np.isfinite(m).any() else 0.0,
                                2 * r["threshold"]))
  bar = fig.colorbar(image, ax=a_mat)
  bar.set_label("barrier (nats; blank: not measured or not finite)")
  n = len(order)
  step = 1 if n <= 30 else math.ceil(n / 30)
  a_mat.set_xticks(range(0, n, step), [str(s) for s in order[::step]], fontsize=7, rotation=90)
  a_mat.set_yticks(range(0, n, step), [str(s) for s in order[::step]], fontsize=7)
  for lab in a_mat.get_xticklabels() + a_mat.get_yticklabels():
    if int(lab.get_text()) in failed:
      lab.set_color(figures.FAILED_COLOR)
  for begin, size in spans:
    a_mat.add_patch(patches.Rectangle((begin - 0.5, begin - 0.5), size, size, fill=False,
                                      edgecolor="#2ca02c", lw=2))
  a_mat.set_title(f"barrier matrix by basin (threshold {r['threshold']:.3g}; red: failed)",
                  fontsize=10)
  fig.suptitle(f"Linear connectivity: {title}", fontsize=11)
  figures.save(fig, path_png)
  apart = r.get("failed_seeds_apart")
  why = (r.get("undefined") or {}).get("failed_seeds_apart", "")
  sampled = (f" {len(pairs)} pairs sampled with seed {r.get('pair_seed')}; an unmeasured pair "
             "joins no basin." if r.get("pairs_sampled") else f" All {len(pairs)} pairs.")
  largest = r.get("largest_barrier")
  return (f"{title}: training loss on a fixed subset of {r.get('train_examples', '?')} "
          f"training examples (no dropout) at θ(α) = (1 − α)θa + αθb, {len(alpha)} values of α "
          f"in [0, 1].{sampled} Barrier = the largest rise of that loss above the straight line "
          f"between the two endpoint losses; basins: seeds joined by barriers below "
          f"{r['threshold']:.3g} ({r.get('threshold_rule', '')}). {len(r['basins'])} basin(s) "
          f"of sizes {', '.join(str(len(b)) for b in r['basins'])}; largest barrier "
          + (f"{largest:.3g}" if largest is not None else "undefined")
          + "; failed seeds in basins of their own: "
          + ("yes" if apart else "no" if apart is not None else f"undefined ({why})") + ".")
