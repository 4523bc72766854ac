"""Per-layer gradient norms of one setting (the paper's Fig. 4), from its probe.npz.

Four panels: (a) the failed representative's L2 gradient norm per group over the recorded
steps, (b) the same for the successful representative (seeds chosen by jaxstab.results.picks),
(c) the failed representative as a groups x steps heat map, (d) failed vs successful seeds
per group: each seed's norm averaged over the second half of the recorded steps (where failed
runs have settled: the paper's vanished lower-layer gradients never recover), then the
geometric mean over the seeds of each kind, whiskers from the smallest to the largest seed.
"""
import contextlib
import warnings
from typing import Optional, Tuple

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import BoundaryNorm, ListedColormap, LogNorm

from jaxstab.report.figures import FAILED_COLOR, new_figure, OK_COLOR, save
from jaxstab.results import picks
from jaxstab.results.records import Setting


def group_colors(n: int):
  """Colours from the embeddings (dark) to the classifier (light), skipping viridis' pale end."""
  cmap = colormaps["viridis"]
  return [cmap(0.9 * i / max(n - 1, 1)) for i in range(n)]


def positive(a) -> np.ndarray:
  """The array as float64 with non-finite and non-positive entries (unplottable on log) NaN."""
  a = np.array(a, np.float64)
  a[~np.isfinite(a) | (a <= 0)] = np.nan
  return a


@contextlib.contextmanager
def _all_nan_ok():
  """nanmean/nanmin of an all-NaN slice is NaN, as wanted here: no warning about it."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    yield


def late_mean(norms: np.ndarray) -> np.ndarray:
  """[S, T, G] -> [S, G]: each seed's mean norm over the second half of the recorded steps."""
  with _all_nan_ok():
    return np.nanmean(positive(norms[:, norms.shape[1] // 2:, :]), axis=1)


def geo_mean(x: np.ndarray, axis=0) -> np.ndarray:
  with _all_nan_ok():
    return np.exp(np.nanmean(np.log(positive(x)), axis=axis))


def _lines(ax, steps, norms, groups, colors, title, run):
  for g, name in enumerate(groups):
    ax.plot(steps, positive(norms[:, g]), ".-", color=colors[g], lw=1.2, ms=3, label=name)
  if run is not None and run.diverged_at is not None:
    ax.axvline(run.diverged_at, color=FAILED_COLOR, ls="--", lw=1)
    ax.text(run.diverged_at, 1, " diverged", transform=ax.get_xaxis_transform(),
            color=FAILED_COLOR, fontsize=8, va="top")
  if np.isfinite(positive(norms)).any():
    ax.set_yscale("log")
  ax.set_xlim(steps[0] - 0.5, steps[-1] + 0.5)
  ax.set_xlabel("training step")
  ax.set_ylabel("gradient L2 norm (before clipping)")
  ax.set_title(title, fontsize=10)
  ax.grid(alpha=0.3, which="both")


def _heatmap(fig, ax, steps, norms, groups, title):
  data = positive(norms.T)  # [G, T]
  finite = data[np.isfinite(data)]
  if finite.size:
    norm = LogNorm(vmin=finite.min(), vmax=max(finite.max(), finite.min() * 1.0001))
    cmap = colormaps["magma"].with_extremes(bad="#d0d0d0")  # grey: not finite (diverged)
    mesh = ax.pcolormesh(steps, np.arange(len(groups)), data, norm=norm, shading="nearest",
                         cmap=cmap)
    fig.colorbar(mesh, ax=ax, label="gradient L2 norm (log colour)")
  ax.set_yticks(range(len(groups)))
  ax.set_yticklabels(groups, fontsize=7 if len(groups) > 14 else 9)
  ax.set_xlabel("training step")
  ax.set_title(title, fontsize=10)


def _by_kind(ax, norms, seeds, groups, pick):
  """Bars per group: geometric mean over failed / successful seeds of each seed's late mean."""
  late = late_mean(norms)  # [S, G]
  index = {s: i for i, s in enumerate(seeds)}
  x = np.arange(len(groups))
  kinds = [("failed", pick.failed_seeds, FAILED_COLOR), ("successful", pick.success_seeds, OK_COLOR)]
  has_values = lambda kind_seeds: np.isfinite(late[[index[s] for s in kind_seeds if s in index]]).any()
  kinds = [k for k in kinds if any(s in index for s in k[1]) and has_values(k[1])]
  width = 0.8 / max(len(kinds), 1)
  for j, (label, kind_seeds, color) in enumerate(kinds):
    rows = late[[index[s] for s in kind_seeds if s in index]]
    mean = geo_mean(rows, axis=0)
    with _all_nan_ok():
      lo, hi = np.nanmin(rows, axis=0), np.nanmax(rows, axis=0)
    err = np.nan_to_num(np.stack([mean - lo, hi - mean]), nan=0.0).clip(min=0)
    xs = x - 0.4 + width * (j + 0.5)
    ax.bar(xs, np.nan_to_num(mean, nan=0.0), width, color=color, alpha=0.75,
           label=f"{label} seeds (n={len(rows)})")
    ax.errorbar(xs, mean, yerr=err, fmt="none", ecolor="black", lw=0.8, capsize=2)
  if kinds:
    ax.set_yscale("log")
  else:
    ax.text(0.5, 0.5, "no finite gradient norm in the second half of training", ha="center",
            transform=ax.transAxes)
  ax.set_xlim(-0.6, len(groups) - 0.4)
  ax.set_xticks(x)
  ax.set_xticklabels(groups, rotation=60, ha="right", fontsize=7 if len(groups) > 14 else 9)
  ax.set_ylabel("gradient L2 norm, late-training mean")
  ax.set_title("(d) failed vs successful seeds (second half of the recorded steps)", fontsize=10)
  ax.grid(axis="y", alpha=0.3, which="both")
  if kinds:
    ax.legend(fontsize=8)


def figure(setting: Setting, path: str) -> Tuple[Optional[str], picks.Pick]:
  """Draws the setting's gradient-norm figure; returns (caption or None if no probe, pick)."""
  pick = picks.pick(setting)
  probe = setting.probe
  if probe is None or "grad_norm" not in probe or pick.failed_seed is None or not len(probe["step"]):
    return None, pick
  steps, groups, seeds = probe["step"], probe["groups"], probe["seeds"]
  norms = np.asarray(probe["grad_norm"], np.float64)  # [S, T, G]
  index = {s: i for i, s in enumerate(seeds)}
  runs = {int(r.seed): r for r in setting.runs if r.seed is not None}
  colors = group_colors(len(groups))

  fig = new_figure(13, 9)
  (ax_f, ax_s), (ax_h, ax_m) = fig.subplots(2, 2)
  panels = [(ax_f, "a", pick.failed_seed, pick.failed_label),
            (ax_s, "b", pick.success_seed, pick.success_label)]
  for ax, letter, seed, label in panels:
    if seed in index and not (ax is ax_s and seed == pick.failed_seed):
      _lines(ax, steps, norms[index[seed]], groups, colors, f"({letter}) {label}", runs.get(seed))
    else:
      ax.set_axis_off()
      ax.text(0.5, 0.5, "no second run to show", ha="center", transform=ax.transAxes)
  if ax_s.has_data() and ax_f.has_data():
    low = np.nanmin([ax.get_ylim()[0] for ax in (ax_f, ax_s)])
    high = np.nanmax([ax.get_ylim()[1] for ax in (ax_f, ax_s)])
    for ax in (ax_f, ax_s):
      ax.set_ylim(low, high)  # the same scale, so the two runs compare at a glance
  cmap = ListedColormap(colors)
  bar = ScalarMappable(BoundaryNorm(np.arange(len(groups) + 1) - 0.5, len(groups)), cmap)
  cb = fig.colorbar(bar, ax=[ax_f, ax_s], ticks=range(len(groups)), label="group")
  cb.ax.set_yticklabels(groups, fontsize=7 if len(groups) > 14 else 9)
  if pick.failed_seed in index:
    _heatmap(fig, ax_h, steps, norms[index[pick.failed_seed]], groups,
             f"(c) {pick.failed_label}: groups × steps")
  _by_kind(ax_m, norms, seeds, groups, pick)
  fig.suptitle(f"Per-layer gradient norms: {setting.title()}")
  save(fig, path)
  caption = (f"{pick.reason} (a, b): L2 norm of the loss gradient of each parameter group "
             "(embeddings to classifier, dark to light), before clipping, at every recorded "
             "step, log scale, same y range in both panels. (c) the run of panel (a) as a heat "
             "map (groups × steps, log colour scale; grey: not finite, e.g. after divergence). (d) each seed's norm averaged over the second "
             "half of the recorded steps, then the geometric mean over the failed and over the "
             "successful seeds (whiskers: smallest to largest seed); the late half is used "
             "because a failed run's vanished gradients persist to the end, while a single step "
             "is noisy.")
  return caption, pick
