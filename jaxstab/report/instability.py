"""The report's instability figures: how far a setting's seeds disagree beyond the std of their
metric (jaxstab.results.instability computes the numbers; this draws them).

- disagreement: the pairwise disagreement matrix between the seeds (from predictions.npz), failed
  seeds marked, beside the distribution of the per-example consistency;
- cka: mean linear CKA per layer among successful seeds, among failed seeds and between the two
  (from the summary's `instability.cka`, drawn only when it is there): in which layer do the
  seeds part?

Each reads only what a study wrote (summary.json, predictions.npz), saves one PNG and returns its
caption, or None when the setting has nothing to draw.
"""
import itertools
from typing import List, Optional

import numpy as np
from matplotlib.lines import Line2D

from jaxstab.infra import fs
from jaxstab.report import figures, html
from jaxstab.results import agreement, outputs, tables
from jaxstab.results.records import Setting


def predictions_of(s: Setting) -> Optional[dict]:
  """The arrays of the setting's predictions.npz, or None when it has none (a summary written
  before it was kept)."""
  path = fs.join(s.directory, outputs.PREDICTIONS)
  return outputs.read_npz(path) if fs.isfile(path) else None


def _failed(s: Setting, seeds) -> List[Optional[bool]]:
  """The failed flag of each of `seeds` as the summary judged it (None: not judged)."""
  by_seed = {r.seed: r.failed for r in s.runs}
  return [by_seed.get(int(n)) for n in seeds]


def disagreement(s: Setting, path: str) -> Optional[str]:
  """Left: the [seeds, seeds] share of dev examples two seeds label differently (NaN rows for
  a diverged seed, grey); failed seeds' labels red with a cross. Right: the histogram of the
  per-example consistency (share of seeds giving the majority label), every finite seed and the
  successful ones. None without predictions.npz or for a regression task (no labels)."""
  z = predictions_of(s)
  if z is None or z["logits"].ndim != 3 or z["logits"].shape[2] < 2:
    return None
  logits, seeds = np.asarray(z["logits"], np.float64), [int(n) for n in z["seeds"]]
  failed = _failed(s, seeds)
  m = agreement.pairwise_disagreement(logits)
  n = len(seeds)
  fig = figures.new_figure(min(5.0 + 0.35 * n, 14.0) + 4.5, min(4.2 + 0.3 * n, 11.0))
  ax, hist = fig.subplots(1, 2, width_ratios=[1.4, 1.0])
  shown = np.ma.masked_invalid(m)
  image = ax.imshow(shown, cmap="magma_r", vmin=0.0, vmax=max(float(np.nanmax(m)) if
                                                               np.isfinite(m).any() else 0.0, 1e-3))
  ax.set_facecolor("#bbbbbb")
  bar = fig.colorbar(image, ax=ax, shrink=0.85)
  bar.set_label("share of dev examples labelled differently")
  labels = [f"{n_}{' ✗' if f else ''}" for n_, f in zip(seeds, failed)]
  step = max(1, n // 25)
  ticks = list(range(0, n, step))
  ax.set_xticks(ticks, [labels[i] for i in ticks], rotation=0 if n <= 12 else 90, fontsize=8)
  ax.set_yticks(ticks, [labels[i] for i in ticks], fontsize=8)
  for axis_labels in (ax.get_xticklabels(), ax.get_yticklabels()):
    for t, i in zip(axis_labels, ticks):
      if failed[i]:
        t.set_color(figures.FAILED_COLOR)
  if n <= 12:
    for i, j in itertools.product(range(n), range(n)):
      if i != j and np.isfinite(m[i, j]):
        ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7,
                color="white" if m[i, j] > 0.6 * np.nanmax(m) else "black")
  ax.set_xlabel("seed (✗ failed)")
  ax.set_ylabel("seed (✗ failed)")
  ax.set_title("pairwise disagreement", fontsize=10)
  finite = np.all(np.isfinite(logits.reshape(n, -1)), axis=1)
  ok = finite & np.array([f is False for f in failed])
  bins = np.linspace(0.0, 1.0, 21)
  handles = []
  for mask, color, name in ((finite, "#555555", "every finite seed"),
                            (ok, figures.OK_COLOR, "successful seeds")):
    if mask.sum() >= 2:
      c = agreement.consistency(logits, mask)
      hist.hist(c, bins=bins, color=color, alpha=0.5)
      handles.append(Line2D([], [], color=color, lw=6, alpha=0.5,
                            label=f"{name} ({int(mask.sum())}): mean {c.mean():.3f}"))
  hist.set_xlabel("share of seeds giving the example's majority label")
  hist.set_ylabel("dev examples")
  hist.set_title("per-example consistency", fontsize=10)
  if handles:
    hist.legend(handles=handles, fontsize=8, loc="upper left")
  fig.suptitle(f"Seed disagreement: {s.title()}", fontsize=11)
  figures.save(fig, path)
  block = s.summary.instability if isinstance(s.summary.instability, dict) else {}
  cells = tables.instability_cells({"instability": block})[0] if block else None
  said = (f" Mean disagreement over every seed / the successful ones: {cells[1]}; Fleiss' κ: "
          f"{cells[2]}." if cells else "")
  return (f"{s.title()}: share of the {logits.shape[1]} dev examples that each two of the "
          f"{n} seeds label differently at the end of training (predictions.npz; grey: a seed "
          f"with non-finite logits), {sum(bool(f) for f in failed)} failed seeds marked ✗; "
          "right, how many seeds give each example its majority label." + said)


def cka_curves(block) -> Optional[dict]:
  """{group: [layers] mean CKA}: among successful seeds ("successful"), among failed seeds
  ("failed") and between a failed and a successful one ("between"), from `block`'s `cka`
  [layers][seeds][seeds] and its `failed` flags (one per seed, in the matrices' order); a group
  without a pair is left out, a null cell skipped. None without `cka`."""
  cka, failed = block.get("cka"), block.get("failed")
  if not cka or failed is None:
    return None
  f = np.asarray([bool(x) for x in failed])
  groups = {"successful": lambda i, j: not f[i] and not f[j], "failed": lambda i, j: f[i] and f[j],
            "between": lambda i, j: f[i] != f[j]}
  out = {}
  for name, keep in groups.items():
    pairs = [(i, j) for i, j in itertools.combinations(range(len(f)), 2) if keep(i, j)]
    if not pairs:
      continue
    curve = []
    for layer in cka:
      v = [layer[i][j] for i, j in pairs if layer[i][j] is not None]
      curve.append(float(np.mean(v)) if v else float("nan"))
    out[name] = curve
  return out


def cka(s: Setting, path: str) -> Optional[str]:
  """Mean linear CKA per layer among successful seeds, among failed seeds and between the two;
  None when the summary has no `instability.cka`."""
  block = s.summary.instability
  if not isinstance(block, dict) or not block.get("cka"):
    return None
  failed = [bool(r.failed) for r in s.runs]
  curves = cka_curves(dict(block, failed=failed))
  if not curves:
    return None
  fig = figures.new_figure(8.0, 5.0)
  ax = fig.subplots()
  style = {"successful": (figures.OK_COLOR, "-", "among successful seeds"),
           "failed": (figures.FAILED_COLOR, "-", "among failed seeds"),
           "between": ("#7f7f7f", "--", "between a failed and a successful seed")}
  for name, curve in curves.items():
    color, ls, label = style[name]
    ax.plot(range(len(curve)), curve, ls, color=color, marker="o", ms=4, lw=2, label=label)
  layers = len(next(iter(curves.values())))
  ax.set_xticks(range(0, layers, max(1, layers // 25)))
  ax.set_xlabel("layer (0 = the lowest with representations)")
  ax.set_ylabel(f"mean linear CKA ({block.get('cka_estimator', '?')} HSIC)")
  ax.set_ylim(min(0.0, np.nanmin([v for c in curves.values() for v in c] + [0.0])), 1.02)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=9, loc="lower left")
  ax.set_title(f"Where the seeds part: {s.title()}", fontsize=11)
  figures.save(fig, path)
  n_failed = sum(failed)
  return (f"{s.title()}: linear CKA between the first-token representations of two seeds, per "
          f"layer, averaged over the pairs of {len(failed) - n_failed} successful seeds, of "
          f"{n_failed} failed seeds and across the two groups (1: the same representations up "
          "to a rotation and scale). Where the curves fall is where the seeds part.")


def section(settings: List[Setting], fig, pngs: dict) -> str:
  """The report's instability block: the table of tables.instability_markdown as HTML, then the
  figures drawn (keys disagreement_<name>, cka_<name> in `pngs`); '' when no setting has a
  block or predictions."""
  rows, regression, no_cka = [], False, False
  for s in settings:
    found = tables.instability_cells(s.summary.to_json())
    if found is None:
      continue
    cells, reg, none = found
    regression, no_cka = regression or reg, no_cka or none
    rows.append("<tr>" + "".join(f"<td>{html.esc(c)}</td>" for c in
                                 [s.recipe, s.task.upper(), *cells]) + "</tr>")
  keys = [k for k in pngs if k.startswith(("disagreement_", "cka_"))]
  if not rows and not keys:
    return ""
  head = "".join(f"<th>{html.esc(h)}</th>" for h in ("setting", "task", *tables.INSTABILITY_HEAD))
  table = (f"<table><tr>{head}</tr>{''.join(rows)}</table><p><small>"
           f"{html.esc(tables.instability_note(regression, no_cka))}</small></p>" if rows else "")
  return ("<h3>Beyond the std: how much the seeds disagree (Du &amp; Nguyen 2023)</h3>" + table
          + "".join(fig(k) for k in keys))
