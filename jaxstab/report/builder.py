"""Builds the whole report of a finished workdir: the PNG figures and index.html."""
import dataclasses
import os
import re
from typing import Dict, List

from jaxstab.infra import fs
from jaxstab.infra.errors import ConfigError
from jaxstab.report import (analyses, figures, forecast as forecast_fig, gradnorms, html,
                            instability, seed_grid)
from jaxstab.results import outputs, picks, records


@dataclasses.dataclass
class Report:
  index: str                      # path of index.html
  figures: Dict[str, str]         # figure key -> PNG path
  captions: Dict[str, str]        # figure key -> caption
  picks: Dict[str, picks.Pick]    # setting name -> the seeds its gradient-norm figure shows


def safe_name(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "setting"


def expected_max_key(task: str) -> str:
  """The figure key of a task's expected best-of-n curves."""
  return f"expected_max_{safe_name(task)}"


def build(workdir: str, out: str = None) -> Report:
  """Reads `workdir` (a finished run or study, local or in a bucket) and writes the report into
  `out` (default workdir/report; a local folder, since matplotlib writes the figures there).
  Raises jaxstab.infra.errors.ConfigError when workdir is not finished."""
  study = records.load(workdir)
  if out is None and fs.is_remote(study.workdir):
    raise ConfigError(f"{study.workdir} is in a bucket: pass a local folder for the report")
  out = os.path.abspath(out or os.path.join(study.workdir, "report"))
  os.makedirs(out, exist_ok=True)
  settings = study.settings
  pngs, captions, chosen, notes = {}, {}, {}, []
  for s in settings:
    if s.missing:
      notes.append(f"{s.name}: missing {', '.join(os.path.basename(m) for m in s.missing)}; "
                   "the figures that need them skip this setting.")

  def draw(key, fn, *args):
    path = os.path.join(out, f"{key}.png")
    caption = fn(*args, path)
    pngs[key], captions[key] = path, caption
    return caption

  draw("spread", figures.spread, settings)
  found = {s.name: html.uncertainty(s) for s in settings}
  tasks = figures.by_task(settings)
  for task, group in tasks.items():
    draw(expected_max_key(task), figures.expected_max, group, found)
  for s in settings:
    key = f"gradnorms_{safe_name(s.name)}"
    path = os.path.join(out, f"{key}.png")
    caption, chosen[s.name] = gradnorms.figure(s, path)
    if caption is None:
      captions[key] = f"{s.title()}: no probe.npz with gradient norms; figure skipped."
    else:
      pngs[key], captions[key] = path, caption
  forecasts = {s.name: forecast_fig.of_setting(s) for s in settings}
  for task, group in tasks.items():
    path = os.path.join(out, f"forecast_{safe_name(task)}.png")
    caption = forecast_fig.figure(task, group, forecasts, path)
    if caption:
      pngs[f"forecast_{safe_name(task)}"], captions[f"forecast_{safe_name(task)}"] = path, caption
  per_setting = (  # the seed analyses (init x data-order grid, early stop), then how far the
      # seeds' predictions and representations part
      (("seed_grid", seed_grid.grid), ("early_stop", seed_grid.early_stop)),
      (("disagreement", instability.disagreement), ("cka", instability.cka)))
  for kinds in per_setting:
    for s in settings:
      for kind, fn in kinds:
        key = f"{kind}_{safe_name(s.name)}"
        caption = fn(s, os.path.join(out, f"{key}.png"))
        if caption:
          pngs[key], captions[key] = os.path.join(out, f"{key}.png"), caption
  draw("bias_correction", figures.bias_correction, settings)
  surfaces = _analysis_figures(settings, out, "loss_surface", pngs, captions, notes)
  forgetting = _analysis_figures(settings, out, "forgetting", pngs, captions, notes)
  connected = _analysis_figures(settings, out, "connectivity", pngs, captions, notes)
  draw("generalization", figures.generalization, settings)
  draw("train_loss", figures.train_loss, settings)

  fig = lambda key, alt: html.figure(pngs.get(key), alt, captions[key])
  sections: List[str] = [
      "<h2>1. Seed spread</h2>",
      "<div class='side'>" + fig("spread", "box plots of the reported dev metric per setting")
      + "<div class='tables'>" + html.table1(settings) + html.details_table(settings)
      + html.levene_table(study) + html.uncertainty_table(settings, found) + "</div></div>",
      "<h3>How many seeds? Expected best of n</h3>",
      *[fig(expected_max_key(t), f"expected best-of-n curves of {t.upper()}") for t in tasks],
      *(["<h3>Init seed vs data order (Dodge et al. 2020)</h3>"]
        + [fig(f"seed_grid_{safe_name(s.name)}", f"init x data-order grid of {s.name}")
           for s in settings if seed_grid.has_grid(s)] if any(map(seed_grid.has_grid, settings))
        else []),
      *(["<h3>Start many, stop early</h3>"]
        + [fig(f"early_stop_{safe_name(s.name)}", f"early stop of {s.name}")
           for s in settings if seed_grid.has_early_stop(s)]
        if any(map(seed_grid.has_early_stop, settings)) else []),
      instability.section(settings, lambda key: fig(key, (
          "seed disagreement of " if key.startswith("disagreement_") else "per-layer CKA of ")
          + key.split("_", 1)[1]), pngs),
      "<h2>2. Gradient norms: failed vs successful runs</h2>",
      *[f"<h3>{html.esc(s.title())}</h3>"
        + fig(f"gradnorms_{safe_name(s.name)}", f"gradient norms of {s.name}") for s in settings],
      "<h3>Forecasting failure from the early gradient norms</h3>",
      *[fig(f"forecast_{safe_name(t)}", f"failure forecast of {t.upper()}")
        for t in tasks if f"forecast_{safe_name(t)}" in pngs],
      html.forecast_table(settings, forecasts)
      or "<p class='note'>No setting has a probe.npz with gradient norms: no forecast.</p>",
      "<h2>3. Bias correction acts as warmup</h2>",
      fig("bias_correction", "bias-correction factor and effective learning rate"),
      "<h2>4. Loss surface through the pretrained, a failed and a successful model</h2>",
      html.analysis_section(study, out, surfaces, pngs, captions, outputs.LOSS_SURFACE,
                            analyses.KINDS["loss_surface"][2] + " --workdir=" + study.workdir),
      "<h2>5. Forgetting: masked-LM perplexity with the top k layers restored</h2>",
      html.analysis_section(study, out, forgetting, pngs, captions, outputs.FORGETTING,
                            analyses.KINDS["forgetting"][2] + " --workdir=" + study.workdir
                            + " --text=FILE"),
      "<h2>6. Linear connectivity between seeds: barriers and basins</h2>",
      html.analysis_section(study, out, connected, pngs, captions, outputs.CONNECTIVITY,
                            analyses.KINDS["connectivity"][2] + " --workdir=" + study.workdir),
      "<h2>7. Generalization</h2>",
      fig("generalization", "final dev metric vs final training loss"),
      fig("train_loss", "training-loss curves of every seed"),
  ]
  index = os.path.join(out, "index.html")
  fs.write_text(index, html.page(study, out, sections, notes))
  return Report(index, pngs, captions, chosen)


def _analysis_figures(settings, out, kind, pngs, captions, notes):
  """Draws the file analysis `kind` wrote in each setting that has it (report.analyses.KINDS);
  returns [(setting, figure key or None, data path)] for the settings that have the file."""
  filename, plot, _ = analyses.KINDS[kind]
  found = []
  for s in settings:
    data = outputs.analysis_path(s.directory, filename)
    if not fs.isfile(data):
      continue
    key = f"{kind}_{safe_name(s.name)}"
    path = os.path.join(out, f"{key}.png")
    try:
      captions[key] = plot(data, path, s.title())
      pngs[key] = path
      found.append((s, key, data))
    except Exception as e:  # pylint: disable=broad-except
      notes.append(f"{s.name}: could not draw {data} ({type(e).__name__}: {e}); figure skipped.")
      found.append((s, None, data))
  return found
