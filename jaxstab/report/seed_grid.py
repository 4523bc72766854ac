"""Figures of the seed analyses: the init seed x data-order seed grid of a setting (data_seeds)
as a heat map of its reported dev metric, failed runs crossed, with the variance shares in the
caption; and, for a setting that stopped runs early, every started run's dev curve with the
stop step and which runs went on."""
from typing import Optional

import numpy as np

from jaxstab.report.figures import FAILED_COLOR, new_figure, OK_COLOR, save
from jaxstab.results import finite, picks
from jaxstab.results.records import EarlyStop, Setting


def has_grid(s: Setting) -> bool:
  return isinstance(s.summary.decomposition, dict)


def grid(s: Setting, path: str) -> Optional[str]:
  """The heat map of `s` into `path`; its caption, or None without a decomposition."""
  d = s.summary.decomposition
  if not isinstance(d, dict):
    return None
  inits, datas = d["init_seeds"], d["data_seeds"]
  values = np.full((len(inits), len(datas)), np.nan)
  failed = np.zeros_like(values, bool)
  for r in s.runs:
    if r.init_seed in inits and r.data_seed in datas:
      i, j = inits.index(r.init_seed), datas.index(r.data_seed)
      values[i, j], failed[i, j] = s.reported(r), picks.is_failed(s, r)
  fig = new_figure(1.2 + 0.55 * len(datas) + 1.4, 1.0 + 0.45 * len(inits))
  ax = fig.subplots()
  image = ax.imshow(100 * values, cmap="viridis", aspect="auto")
  fig.colorbar(image, ax=ax, label=f"dev {s.metric} ×100")
  for i in range(len(inits)):
    for j in range(len(datas)):
      if failed[i, j]:
        ax.text(j, i, "×", ha="center", va="center", color="white", fontsize=14,
                fontweight="bold")
  ax.set_xticks(range(len(datas)), [str(x) for x in datas])
  ax.set_yticks(range(len(inits)), [str(x) for x in inits])
  ax.set_xlabel("data-order seed")
  ax.set_ylabel("init seed")
  ax.set_title(s.title(), fontsize=9)
  save(fig, path)
  pct = lambda k: finite.shown(d, k, lambda x: f"{100 * x:.0f}%")
  p = lambda k: finite.shown(d["p"], k, lambda x: f"{x:.3f}")
  return (f"{s.title()}: reported dev {s.metric} of each init seed (rows) × data-order seed "
          f"(columns); × = failed run ({int(failed.sum())} of {failed.size}). Variance shares: "
          f"init {pct('init')}, data order {pct('data')}, residual {pct('residual')} (two-way "
          f"ANOVA without replication, random-effects components; F-test p: init {p('init')}, "
          f"data {p('data')}).")


def has_early_stop(s: Setting) -> bool:
  return isinstance(s.summary.early_stop, EarlyStop)


def early_stop(s: Setting, path: str) -> Optional[str]:
  """Every started run's dev metric over training, the stop step dashed; continued runs in
  colour (red if they failed), stopped runs grey. None for a setting without an early stop."""
  es = s.summary.early_stop
  if not isinstance(es, EarlyStop):
    return None
  curves = {}
  for rec in s.records:
    if rec.get("kind") == "dev" and s.metric in rec:
      curves.setdefault(int(rec["seed"]), []).append((rec["step"], rec[s.metric]))
  continued = {int(r.seed): r for r in s.runs if r.seed is not None}
  fig = new_figure(6.0, 3.6)
  ax = fig.subplots()
  for seed, points in sorted(curves.items()):
    steps, vals = zip(*sorted(points))
    if seed in continued:
      color = FAILED_COLOR if picks.is_failed(s, continued[seed]) else OK_COLOR
      ax.plot(steps, 100 * np.asarray(vals), color=color, lw=1.2, alpha=0.9)
    else:
      ax.plot(steps, 100 * np.asarray(vals), color="0.6", lw=0.8, alpha=0.7)
  ax.axvline(es.step, color="k", ls="--", lw=0.8)
  ax.axhline(100 * s.majority, color="0.3", ls=":", lw=0.8)
  ax.set_xlabel("step")
  ax.set_ylabel(f"dev {s.metric} ×100")
  ax.set_title(s.title(), fontsize=9)
  save(fig, path)
  return (f"{s.title()}: {es.started} runs started, ranked at step {es.step} "
          f"({es.at:g} of training) by {es.by}; {es.continued} continued (coloured: "
          f"blue succeeded, red failed), the rest stopped (grey). Compute: "
          f"{100 * es.fraction_of_compute:.0f}% of training every run to the end; dotted: "
          f"the majority classifier.")
