"""The report's figures that compare settings: seed spread (Fig. 1/5), the expected best of n
seeds (Dodge et al. 2019), the effective learning rate with bias correction (Fig. 6), and
generalization (dev metric vs training loss).

Every function takes loaded settings (jaxstab.results.records), draws one matplotlib Figure on the
Agg canvas, saves it as PNG and returns its caption text.
"""
import math
from typing import Dict, List

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from jaxstab.report import schedule
from jaxstab.results import picks
from jaxstab.results.records import num, Setting

FAILED_COLOR, OK_COLOR = "#d62728", "#1f77b4"
DPI = 100


def new_figure(width: float, height: float) -> Figure:
  fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
  FigureCanvasAgg(fig)
  return fig


def save(fig: Figure, path: str) -> str:
  fig.savefig(path, format="png", dpi=DPI)
  return path


def wide(values) -> bool:
  """True when positive values span more than a decade: worth a log axis."""
  v = np.asarray(values, np.float64)
  v = v[np.isfinite(v)]
  return bool(v.size and v.min() > 0 and v.max() / v.min() > 10)


def by_task(settings: List[Setting]) -> Dict[str, List[Setting]]:
  out: Dict[str, List[Setting]] = {}
  for s in settings:
    out.setdefault(s.task, []).append(s)
  return out


def setting_colors(settings: List[Setting]) -> Dict[str, str]:
  cycle = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#d62728"]
  return {s.name: cycle[i % len(cycle)] for i, s in enumerate(settings)}


def _models(settings: List[Setting]) -> str:
  return ", ".join(dict.fromkeys(s.model for s in settings))


# ---------------------------------------------------------------- 1. seed spread
def spread(settings: List[Setting], path: str) -> str:
  """Box plot of the reported dev main metric per setting (the best dev checkpoint's for
  select=best recipes, the end of training's otherwise), one panel per task, every seed a
  point; failed runs marked as judged at the end of training."""
  tasks = by_task(settings)
  fig = new_figure(max(5.0, (2.2 + 1.5 * max(len(v) for v in tasks.values())) * len(tasks)), 5.0)
  axes = fig.subplots(1, len(tasks), squeeze=False)[0]
  rng = np.random.default_rng(0)  # the same jitter every time
  not_drawn = 0
  for ax, (task, group) in zip(axes, tasks.items()):
    values = [np.array([s.reported(r) for r in s.runs], np.float64) for s in group]
    finite = [v[np.isfinite(v)] for v in values]
    ax.boxplot([v if v.size else [np.nan] for v in finite], positions=range(len(group)),
               widths=0.5, showfliers=False, medianprops={"color": "black"})
    for i, s in enumerate(group):
      for r, v in zip(s.runs, values[i]):
        if not math.isfinite(v):
          not_drawn += 1
          continue
        failed = picks.is_failed(s, r)
        x = i + rng.uniform(-0.15, 0.15)
        marker = "^" if r.diverged_at is not None else ("x" if failed else "o")
        ax.plot(x, v, marker, color=FAILED_COLOR if failed else OK_COLOR, ms=7,
                mfc="none" if marker == "o" else FAILED_COLOR, alpha=0.85)
    majority = group[0].majority
    if math.isfinite(majority):
      ax.axhline(majority, color="gray", ls="--", lw=1)
      ax.text(-0.55, majority, f"majority {majority:.3f}", ha="left", va="bottom", fontsize=8,
              color="gray")
    ax.set_xticks(range(len(group)))
    ax.set_xticklabels([s.name + ("\n(best ckpt)" if s.select == "best" else "") for s in group],
                       rotation=20 if len(group) > 3 else 0)
    ax.set_xlim(-0.6, len(group) - 0.4)
    n = max(len(s.runs) for s in group)
    ax.set_title(f"{task.upper()} ({_models(group)}), {n} seeds")
    ax.set_ylabel(f"reported dev {group[0].metric}")
    ax.grid(axis="y", alpha=0.3)
  handles = [Line2D([], [], ls="none", marker="o", mfc="none", color=OK_COLOR, label="successful run"),
             Line2D([], [], ls="none", marker="x", color=FAILED_COLOR, label="failed run (≤ majority)"),
             Line2D([], [], ls="none", marker="^", color=FAILED_COLOR, label="diverged run"),
             Line2D([], [], ls="--", color="gray", label="majority classifier")]
  fig.legend(handles=handles, fontsize=8, loc="outside lower center", ncol=2)
  fig.suptitle("Seed spread of the reported dev metric")
  save(fig, path)
  caption = ("Reported dev metric of every seed (end of training; best dev checkpoint for "
             "settings marked \"best ckpt\"), one box per setting (box: quartiles, whiskers: "
             "1.5 IQR), each seed a jittered point; failed runs (metric at the end of training ≤ "
             "the majority classifier's, dashed line) are red crosses, diverged runs red "
             "triangles.")
  if not_drawn:
    caption += f" {not_drawn} run(s) without a finite metric are not drawn (counted failed)."
  return caption


# ---------------------------------------------------------------- 1b. expected best of n seeds
def expected_max(settings: List[Setting], found: Dict[str, dict], path: str) -> str:
  """One task's settings: the expected best reported dev metric of n seeds, n = 1..N, one curve
  per setting with a band of ± the std of that best, and the majority line. `found`: setting
  name -> its {expected_max, expected_max_std} (report.html.uncertainty)."""
  colors = setting_colors(settings)
  fig = new_figure(7.6, 4.8)
  ax = fig.subplots()
  shown, skipped, longest = [], [], 1
  for s in settings:
    mean = np.asarray(found[s.name]["expected_max"], np.float64)
    std = np.asarray(found[s.name]["expected_max_std"], np.float64)
    if not mean.size:
      skipped.append(s.name)
      continue
    n = np.arange(1, mean.size + 1)
    longest = max(longest, mean.size)
    ax.fill_between(n, mean - std, mean + std, color=colors[s.name], alpha=0.18, lw=0)
    ax.plot(n, mean, "-", marker="o", ms=3, color=colors[s.name],
            label=s.name + (" (best ckpt)" if s.select == "best" else ""))
    at = [k for k in (1, 5, mean.size) if k <= mean.size]
    shown.append(f"{s.name} " + ", ".join(f"{mean[k - 1]:.4g} ± {std[k - 1]:.2g} at n = {k}"
                                          for k in dict.fromkeys(at)))
  majority = settings[0].majority
  if math.isfinite(majority):
    ax.axhline(majority, color="gray", ls="--", lw=1, label="majority classifier")
  ax.set_xlim(0.5, longest + 0.5)
  ax.xaxis.get_major_locator().set_params(integer=True)
  ax.set_xlabel("n: seeds trained (the best dev result of them is kept)")
  ax.set_ylabel(f"expected best reported dev {settings[0].metric}")
  ax.set_title(f"{settings[0].task.upper()} ({_models(settings)}): expected best of n seeds")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc="lower right")
  save(fig, path)
  caption = ("Expected best reported dev metric of n seeds (Dodge et al. 2019, \"Show Your "
             "Work\"), exact for n draws with replacement from the N runs' values: E[max of n] = "
             "Σ v_(i) ((i/N)^n − ((i−1)/N)^n) over the sorted values; the band is ± the std of "
             "that best. n = 1 is the mean; at n = N the curve stays below the observed max, "
             "which N draws with replacement often miss. It describes these N runs, not "
             "seeds beyond them. " + "; ".join(shown) + ".")
  if skipped:
    caption += f" Not drawn (no finite reported metric): {', '.join(skipped)}."
  return caption


# ---------------------------------------------------------------- 3. bias correction as warmup
def bias_correction(settings: List[Setting], path: str) -> str:
  """Panel a: the factor sqrt(1-b2^t)/(1-b1^t) (log steps); panel b: schedule x factor."""
  fig = new_figure(11, 4.2)
  ax_f, ax_e = fig.subplots(1, 2)
  colors = setting_colors(settings)
  shown, skipped, betas = [], [], set()
  for s in settings:
    total = s.summary.total_steps or max((r.get("step", 0) for r in s.records), default=0)
    if not s.config or not total:
      skipped.append(s.name)
      continue
    c = schedule.curve(s.resolved.optim, total)
    shown.append(s.name)
    if (c.b1, c.b2) not in betas:
      betas.add((c.b1, c.b2))
      ax_f.plot(c.step + 1, c.factor, label=f"β₁={c.b1}, β₂={c.b2}")
    label = f"{s.name} ({'with' if c.bias_correction else 'no'} bias correction)"
    ax_e.plot(c.step, c.effective, color=colors[s.name], label=label)
    ax_e.plot(c.step, c.schedule, color=colors[s.name], ls=":", lw=1)
    if c.warmup_steps:
      ax_e.axvline(c.warmup_steps, color=colors[s.name], ls="--", lw=0.6, alpha=0.6)
    if s.probe is not None and "lr" in s.probe:  # what training really used, from the probe
      recorded = s.probe["lr"][0] * (s.probe["bias_correction"][0] if c.bias_correction else 1.0)
      every = max(len(recorded) // 25, 1)  # at most ~25 dots, so the curve stays visible
      ax_e.plot(s.probe["step"][::every], recorded[::every], "o", color=colors[s.name], ms=4,
                mfc="none")
  ax_f.set_xscale("log")
  ax_f.set_xlabel("update t (log scale)")
  ax_f.set_ylabel("√(1−β₂ᵗ) / (1−β₁ᵗ)")
  ax_f.set_title("Adam's bias-correction factor")
  ax_f.axhline(1.0, color="gray", lw=0.8, ls="--")
  ax_f.grid(alpha=0.3, which="both")
  ax_f.legend(fontsize=8)
  ax_e.set_xlabel("training step (updates applied)")
  ax_e.set_ylabel("effective learning rate")
  ax_e.set_title("schedule × bias correction (dotted: schedule alone)")
  ax_e.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
  ax_e.grid(alpha=0.3)
  if shown:
    ax_e.legend(fontsize=8)
  fig.suptitle(f"Bias correction acts as warmup ({_models(settings)})")
  save(fig, path)
  caption = ("Left: Adam's bias-correction factor √(1−β₂ᵗ)/(1−β₁ᵗ) for the β's of the study "
             "(log steps; it stays below 1 for thousands of updates when β₂=0.999). Right: the "
             "learning rate each update really gets, from each setting's config.json (lr, "
             "warmup_ratio, total steps, β's): the linear warmup/decay schedule (dotted) times "
             "the factor when bias correction is on, the schedule alone when it is off. Dashed "
             "verticals mark the end of warmup; dots are the values the probe recorded during "
             "training (first seed).")
  if skipped:
    caption += f" Not drawn (no config.json or step count): {', '.join(skipped)}."
  return caption


# ---------------------------------------------------------------- 7. generalization
def generalization(settings: List[Setting], path: str) -> str:
  """Final dev metric vs final training loss, one point per seed, one panel per task."""
  tasks = by_task(settings)
  colors = setting_colors(settings)
  fig = new_figure(5.2 * len(tasks), 4.4)
  axes = fig.subplots(1, len(tasks), squeeze=False)[0]
  not_drawn, positive = 0, True
  for ax, (task, group) in zip(axes, tasks.items()):
    for s in group:
      for r in s.runs:
        x, y = num(r.final_train_loss), s.final(r)
        if not (math.isfinite(x) and math.isfinite(y)):
          not_drawn += 1
          continue
        positive &= x > 0
        failed = picks.is_failed(s, r)
        ax.plot(x, y, "x" if failed else "o", color=colors[s.name], ms=7,
                mfc="none" if not failed else colors[s.name])
      ax.plot([], [], "o", color=colors[s.name], label=s.name)
    majority = group[0].majority
    if math.isfinite(majority):
      ax.axhline(majority, color="gray", ls="--", lw=1, label="majority classifier")
    ax.plot([], [], "x", color="black", label="failed run")
    if positive and wide([x for l in ax.lines for x in l.get_xdata()]):
      ax.set_xscale("log")
    ax.set_xlabel("final training loss (mean over the last evaluation interval)")
    ax.set_ylabel(f"reported dev {group[0].metric}")
    ax.set_title(f"{task.upper()} ({_models(group)})")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
  fig.suptitle("Generalization: dev metric vs training loss per seed")
  save(fig, path)
  caption = ("Each point is one seed: its training loss at the end (mean over the steps since "
             "the previous evaluation) against its final dev metric; one colour per setting, "
             "crosses for failed runs. Seeds with the same low training loss but different dev "
             "metric show the spread that remains once optimization succeeds.")
  if not_drawn:
    caption += f" {not_drawn} run(s) without a finite loss or metric are not drawn."
  return caption


def train_loss(settings: List[Setting], path: str) -> str:
  """Training-loss curves of every seed, one panel per setting (metrics.jsonl, else probe)."""
  cols = min(len(settings), 3)
  rows = -(-len(settings) // cols)
  fig = new_figure(4.6 * cols, 3.6 * rows)
  axes = fig.subplots(rows, cols, squeeze=False).ravel()
  sources = set()
  for ax, s in zip(axes, settings):
    failed = {int(r.seed) for r in s.runs if picks.is_failed(s, r)}
    for seed, (steps, losses, source) in _loss_curves(s).items():
      sources.add(source)
      color = FAILED_COLOR if seed in failed else OK_COLOR
      ax.plot(steps, losses, "-", marker=".", ms=3, color=color, alpha=0.7, lw=1)
    if wide([y for l in ax.lines for y in l.get_ydata()]):
      ax.set_yscale("log")
    ax.set_title(s.title(), fontsize=9)
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss (cross-entropy)")
    ax.grid(alpha=0.3, which="both")
    ax.plot([], [], color=FAILED_COLOR, label="failed seeds")
    ax.plot([], [], color=OK_COLOR, label="successful seeds")
    ax.legend(fontsize=8)
  for ax in axes[len(settings):]:
    ax.set_visible(False)
  fig.suptitle("Training loss of every seed")
  save(fig, path)
  what = {"metrics": "metrics.jsonl (mean training loss since the previous evaluation)",
          "probe": "probe.npz (the loss of the recorded step's batch)"}
  return ("Training loss of all seeds over training, one panel per setting (log scale when the "
          "values span more than a decade); red: failed seeds, blue: successful ones. Source: "
          + "; ".join(what[k] for k in sorted(sources)) + ".")


def _loss_curves(s: Setting):
  """{seed: (steps, losses, source)}: metrics.jsonl's train_loss, or the probe's loss when
  metrics.jsonl has fewer than 3 points a seed and the probe has more."""
  out = {}
  for rec in s.records:
    loss = num(rec.get("train_loss"))
    if rec.get("kind", "dev") == "dev" and rec.get("seed") is not None and math.isfinite(loss):
      out.setdefault(int(rec["seed"]), ([], [], "metrics"))
      out[int(rec["seed"])][0].append(rec["step"])
      out[int(rec["seed"])][1].append(loss)
  few = not out or min(len(v[0]) for v in out.values()) < 3
  if s.probe is None or not few or len(s.probe["step"]) <= max((len(v[0]) for v in out.values()),
                                                               default=0):
    return out
  out = {}  # too few evaluations for a curve: the probe's per-step losses instead
  for i, seed in enumerate(s.probe["seeds"]):
    loss = np.asarray(s.probe["loss"][i], np.float64)
    keep = np.isfinite(loss)
    out[seed] = (s.probe["step"][keep], loss[keep], "probe")
  return out
