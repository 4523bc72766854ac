"""Figures of the analyses, drawn from the files they wrote (jaxstab.analysis computes and writes
<setting dir>/analysis/{loss_surface.npz, forgetting.json, connectivity.json}; nothing here
imports it):

- loss_surface: the training loss on the plane through the pretrained, a failed and a successful
  model (the paper's Fig. 7), a contour plot with the three models marked;
- forgetting: masked-LM perplexity against the number k of top layers restored to their
  pretrained weights (the paper's Fig. 2), one line per seed;
- connectivity: the loss on the straight lines between seeds and the barrier matrix by basin
  (jaxstab.report.connectivity).

Each function reads one file, saves one PNG and returns its caption.
"""
import math
import os

import numpy as np
from matplotlib import colors
from matplotlib.lines import Line2D

from jaxstab.infra import fs
from jaxstab.report import connectivity, figures
from jaxstab.results import outputs


def loss_surface(path_npz: str, path_png: str, title: str) -> str:
  """Contour plot of the saved surface with theta_p, theta_f and theta_s marked."""
  z = outputs.read_npz(path_npz)
  alpha, beta, loss = z["alpha"], z["beta"], np.asarray(z["loss"], np.float64)
  f_label = z.get("failed_label", f"seed {int(z['seeds'][0])}")
  s_label = z.get("success_label", f"seed {int(z['seeds'][1])}")
  finite = loss[np.isfinite(loss)]
  fig = figures.new_figure(8.0, 7.4)
  ax = fig.subplots()
  lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
  log = finite.size and lo > 0 and hi / lo > 3
  if log:
    levels = np.geomspace(lo, hi, 25)
    norm = colors.LogNorm(vmin=lo, vmax=hi)
  else:
    levels = np.linspace(lo, hi if hi > lo else lo + 1e-6, 25)
    norm = None
  # loss[i, j] is at (alpha[i], beta[j]): alpha on x, beta on y, so the array is transposed.
  grid_z = np.ma.masked_invalid(loss.T)
  filled = ax.contourf(alpha, beta, grid_z, levels=levels, norm=norm, cmap="viridis")
  ax.contour(alpha, beta, grid_z, levels=levels[::3], colors="white", linewidths=0.6, alpha=0.7)
  bar = fig.colorbar(filled, ax=ax, format="%.3g")
  bar.set_label("training loss (mean cross-entropy, nats)" + (", log scale" if log else ""))
  at = lambda a, b: _value_at(alpha, beta, loss, a, b)
  marks = [((0, 0), "o", "white", f"θp: pretrained + initial head of seed {int(z['seeds'][0])}"),
           ((1, 0), "X", "#d62728", f"θf: {f_label}"),
           ((0, 1), "*", "#1f77b4", f"θs: {s_label}")]
  for (a, b), marker, color, label in marks:
    value = at(a, b)
    ax.plot(a, b, marker, color=color, mec="black", ms=14 if marker == "*" else 11,
            label=f"{label} (loss {value:.3g})" if math.isfinite(value) else label)
  ax.set_xlabel(f"α  (direction θf − θp; {f_label})")
  ax.set_ylabel(f"β  (direction θs − θp; {s_label})")
  ax.set_title(f"Loss surface: {title}", fontsize=11)
  fig.legend(loc="outside lower center", fontsize=9, ncols=1, frameon=False)
  figures.save(fig, path_png)
  n_ex = len(z.get("examples", []))
  return (f"{title}: training loss f(α, β) = L(θp + α(θf − θp) + β(θs − θp)) on a "
          f"{len(alpha)}×{len(beta)} grid, α, β in [{alpha[0]:g}, {alpha[-1]:g}], on a fixed "
          f"subset of {n_ex} training examples (no dropout). θp is the pretrained model with the "
          f"initial classification head of the failed seed (the point that run started from). "
          f"{z.get('reason', '')} Loss range {lo:.3g} to {hi:.3g}.")


def _value_at(alpha, beta, loss, a, b) -> float:
  i, j = np.argmin(np.abs(alpha - a)), np.argmin(np.abs(beta - b))
  if abs(alpha[i] - a) > 1e-6 or abs(beta[j] - b) > 1e-6:
    return math.nan
  return float(loss[i, j])


def forgetting(path_json: str, path_png: str, title: str) -> str:
  """Perplexity vs k, one thin line per seed (failed red, successful blue), the mean of each group
  bold, the pretrained model dashed."""
  r = fs.read_json(path_json)
  k = np.asarray(r["k"])
  fig = figures.new_figure(8.0, 5.2)
  ax = fig.subplots()
  groups = {True: [], False: []}
  for run in r["runs"]:
    y = np.asarray(run["perplexity"], np.float64)
    failed = bool(run.get("failed"))
    groups[failed].append(y)
    ax.plot(k, y, "-", color=figures.FAILED_COLOR if failed else figures.OK_COLOR, lw=1.0,
            alpha=0.45, marker=".", ms=4)
  handles = []
  for failed, ys in groups.items():
    if not ys:
      continue
    color = figures.FAILED_COLOR if failed else figures.OK_COLOR
    ax.plot(k, np.mean(ys, axis=0), "-", color=color, lw=2.6, marker="o", ms=6)
    handles.append(Line2D([], [], color=color, lw=2.6, marker="o",
                          label=f"{'failed' if failed else 'successful'} runs: mean of "
                                f"{len(ys)} (thin: each seed)"))
  pre = float(r["pretrained_perplexity"])
  ax.axhline(pre, color="black", ls="--", lw=1.4)
  handles.append(Line2D([], [], color="black", ls="--", lw=1.4,
                        label=f"pretrained model ({pre:.4g})"))
  values = [pre] + [v for ys in groups.values() for y in ys for v in y]
  if figures.wide(values):
    ax.set_yscale("log")
  L = int(r["num_layers"])
  ax.set_xticks(k if L <= 24 else k[::2])
  ax.set_xlabel(f"k: top encoder layers restored to their pretrained weights (of L = {L}; "
                "embeddings too at k = L)")
  ax.set_ylabel("masked-LM perplexity" + (" (log scale)" if figures.wide(values) else ""))
  ax.set_title(f"Forgetting: {title}", fontsize=11)
  ax.grid(alpha=0.3)
  ax.legend(handles=handles, fontsize=9, loc="best")
  figures.save(fig, path_png)
  n_failed, n_ok = len(groups[True]), len(groups[False])
  return (f"{title}: masked-LM perplexity on {os.path.basename(str(r['text']))} "
          f"({r['masked_tokens']} masked of {r['text_tokens']} tokens, {100 * r['mask_prob']:g}% "
          f"masked with seed {r['mask_seed']}) of each fine-tuned encoder with its top k layers "
          f"put back to the pretrained weights ({r['restores']}); {n_failed} failed and {n_ok} "
          f"successful seeds. MLM head: {r['mlm_head']}.")


# kind -> (file in <setting dir>/analysis, drawing function, the command that writes the file)
KINDS = {
    "loss_surface": (outputs.LOSS_SURFACE, loss_surface, "python -m jaxstab.loss_surface"),
    "forgetting": (outputs.FORGETTING, forgetting, "python -m jaxstab.forgetting"),
    "connectivity": (outputs.CONNECTIVITY, connectivity.figure, "python -m jaxstab.connectivity"),
}
