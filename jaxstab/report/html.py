"""The report page: one self-contained index.html (PNG figures embedded as base64 data URIs),
with the Table-1-style results, captions, each setting's config and links to the raw files."""
import base64
import datetime
import html
import json
import math
import os
from typing import List, Optional

from jaxstab.infra import fs
from jaxstab.results import finite, forecast, outputs, picks, stats, tables
from jaxstab.results.records import num, Setting, Study

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px; padding: 0 1em;
       color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .92em; color: #333; max-width: 1100px; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
th, td { border: 1px solid #bbb; padding: .25em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
.side { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
.side figure { flex: 1 1 640px; } .side .tables { flex: 0 1 520px; }
.note { color: #8a4b00; } pre { background: #f7f7f7; padding: .6em; overflow-x: auto; font-size: .85em; }
"""


def esc(x) -> str:
  return html.escape(str(x), quote=True)


def img(path: str, alt: str) -> str:
  data = base64.b64encode(fs.read_bytes(path)).decode("ascii")
  return f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}">'


def figure(path: Optional[str], alt: str, caption: str) -> str:
  body = img(path, alt) if path else ""
  return f"<figure>{body}<figcaption>{esc(caption)}</figcaption></figure>"


def pct(x) -> str:
  x = num(x)
  return f"{100 * x:.1f}" if math.isfinite(x) else "—"


def final_spread(s: Setting) -> dict:
  """Spread of the runs' final metric over the finite values, from the runs (a summary written
  before the non-finite policy stored NaN in a spread with a diverged run)."""
  return stats.spread_of([s.final(r) for r in s.runs])


def reported_spread(s: Setting) -> dict:
  """Spread of what each run reports (best dev checkpoint for select=best recipes)."""
  return stats.spread_of([s.reported(r) for r in s.runs])


def finite_note(s: Setting) -> str:
  """"4 of 5 finite" when a run's reported metric is not a number, else ""."""
  return finite.only([s.reported(r) for r in s.runs]).note()


def shown(mapping, key: str, fmt=pct) -> str:
  return finite.shown(mapping, key, fmt)


def failed_count(s: Setting) -> int:
  return sum(picks.is_failed(s, r) for r in s.runs)


def uncertainty(s: Setting) -> dict:
  """stats.uncertainty of the setting, with failed flags judged as the report judges them (old
  summaries without the flag fall back to the majority rule, see picks.is_failed)."""
  return stats.uncertainty(s.summary.to_json(), values=[s.reported(r) for r in s.runs],
                           failed=[picks.is_failed(s, r) for r in s.runs])


def _with_ci(value: str, ci, fmt=pct) -> str:
  return value + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "")


def _count(x) -> str:
  x = num(x)
  return "—" if not math.isfinite(x) else (f"{x:.0f}" if x.is_integer() else f"{x:.1f}")


def uncertainty_table(settings: List[Setting], found: dict) -> str:
  """Per setting: std / mean / median of the reported metric and the failed-run count with their
  bootstrap intervals, and the expected best of n = 1, 5 and N seeds ± its std (`found`: setting
  name -> `uncertainty`)."""
  level = next((num(found[s.name]["ci"].get("level")) for s in settings), stats.LEVEL)
  head = ["setting", "task", "seeds", "std", "mean", "median", "failed runs", "best of 1",
          "best of 5", "best of N"]
  out = [f"<table><caption>Uncertainty over seeds, reported dev metric ×100: "
         f"{100 * level:g}% percentile-bootstrap intervals in brackets ({stats.RESAMPLES:,} "
         f"resamples of the seeds, seed {stats.SEED}); expected best of n seeds ± its std "
         "(Dodge et al. 2019)</caption>",
         "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
  for s in settings:
    u, sp = found[s.name], reported_spread(s)
    ci = u["ci"]
    f = finite.only([s.reported(r) for r in s.runs])
    cells = [s.name, s.task.upper(), tables.seeds_cell(f)]
    cells += [_with_ci(shown(sp, k), ci.get(k)) for k in ("std", "mean", "median")]
    cells.append(_with_ci(str(failed_count(s)), ci.get("failed_runs"), _count))
    cells += tables.best_of_n(u, f, pct)
    out.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
  if any(finite_note(s) for s in settings):
    out.append(f"<tr><td colspan='{len(head)}'>{esc(tables.DROPPED_NOTE)}</td></tr>")
  return "\n".join(out + ["</table>"])


def forecast_table(settings: List[Setting], found: dict) -> str:
  """Per setting with a forecast (`found`: setting name -> jaxstab.results.forecast.evaluate's dict, the
  summary's stored one or recomputed from probe.npz) and fraction: the cut-off step, alarms /
  failed seeds, precision, recall, AUROC and the leave-one-out precision / recall."""
  rows = [(s, found.get(s.name)) for s in settings if found.get(s.name)]
  if not rows:
    return ""
  fmt = lambda x: "—" if x is None else f"{x:.2f}"
  head = ["setting", "task", "fraction", "step", "alarms / failed / seeds", "precision",
          "recall", "AUROC", "leave-one-out P / R"]
  out = [f"<table><caption>Failure forecast from the probe at each fraction of training: a seed "
         f"is predicted to fail when its lowest groups' gradient norm has fallen more than "
         f"tenfold (score &gt; {forecast.THRESHOLD:.2f}, fixed a priori) relative to the "
         "classifier's since step 0; precision = failed among the alarms, recall = alarms among "
         "the failed (— when undefined); leave-one-out: each seed judged by a threshold chosen "
         "on the other seeds</caption>",
         "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
  for s, f in rows:
    for r in f["fractions"]:
      cells = [s.name, s.task.upper(), f"{100 * r['fraction']:.0f}%", r["step"],
               f"{r['predicted_failed']} / {r['actual_failed']} / {len(f['seeds'])}",
               fmt(r["precision"]),
               fmt(r["recall"]), fmt(r["auroc"]),
               f"{fmt(r['loo']['precision'])} / {fmt(r['loo']['recall'])}"]
      out.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
  return "\n".join(out + ["</table>"])


def table1(settings: List[Setting]) -> str:
  """Rows: recipes (setting names when two settings of a task share a recipe); columns: tasks;
  cells: std / mean / median / max of the reported dev metric (at the end of training, or at
  the best dev checkpoint for select=best recipes), x100, and the failed count (always judged
  at the end of training)."""
  tasks = list(dict.fromkeys(s.task for s in settings))
  keys = [(s.task, s.recipe) for s in settings]
  row_of = (lambda s: s.name) if len(set(keys)) < len(keys) else (lambda s: s.recipe)
  rows = list(dict.fromkeys(row_of(s) for s in settings))
  best = sorted({row_of(s) for s in settings if s.select == "best"})
  note = f"; best dev checkpoint for {', '.join(best)}" if best else ""
  methods = tables.method_column((row_of(s), s.summary.peft, s.summary.trainable_params)
                                 for s in settings)
  out = [f"<table><caption>reported dev metric ×100: std / mean / median / max (end of training"
         f"{note}); failed runs judged at the end of training</caption>",
         "<tr><th>setting</th>" + ("<th>method</th>" if methods else "")
         + "".join(f"<th>{esc(t.upper())}</th>" for t in tasks) + "</tr>"]
  for row in rows:
    cells = [f"<td>{esc(methods[row])}</td>"] if methods else []
    for t in tasks:
      hit = [s for s in settings if s.task == t and row_of(s) == row]
      if not hit:
        cells.append("<td></td>")
        continue
      sp, s = reported_spread(hit[0]), hit[0]
      body = (" / ".join(shown(sp, k) for k in ("std", "mean", "median", "max")) if sp["n"]
              else shown(sp, "mean"))
      note = f"; {finite_note(s)}" if finite_note(s) else ""
      cells.append(f"<td>{esc(body)}<br><small>{failed_count(s)}/{len(s.runs)} failed{note}"
                   "</small></td>")
    out.append(f"<tr><td>{esc(row)}</td>{''.join(cells)}</tr>")
  return "\n".join(out + ["</table>"])


def details_table(settings: List[Setting]) -> str:
  head = ["setting", "task", "model", "recipe", "method", "metric", "seeds", "failed",
          "majority ×100", "final mean ×100", "final min ×100", "best-ckpt mean ×100"]
  out = ["<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
  for s in settings:
    sp, best = final_spread(s), stats.spread_of([r.value("best", s.metric) for r in s.runs])
    method = tables.method_label(s.summary.peft, s.summary.trainable_params)
    cells = [s.name, s.task, s.model, s.recipe, method, s.metric, len(s.runs), failed_count(s),
             pct(s.majority), shown(sp, "mean"), shown(sp, "min"), shown(best, "mean")]
    out.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
  return "\n".join(out + ["</table>"])


def _levene_rows(study: Study) -> list:
  """Levene's p and the permutation tests' p between every two settings of a task, recomputed
  from the runs (so a workdir written by an older version, which tested the final metric or had
  no permutation tests, gets the reported metric's, and all three)."""
  try:
    return stats.levene_table([dict(s.summary.to_json(), name=s.name) for s in study.settings])
  except (KeyError, TypeError):
    return list(study.summary.levene or [])


def levene_table(study: Study) -> str:
  rows = _levene_rows(study)
  if not rows:
    return ""
  out = ["<table><caption>Two-sided p-values on the reported metric: Levene's test "
         "(median-centred) for equal spread, and permutation tests of the difference in mean and "
         f"in std ({stats.RESAMPLES:,} random splits, seed {stats.SEED})</caption>"
         "<tr><th>task</th><th>a</th><th>b</th><th>p</th><th>permutation p, mean</th>"
         "<th>permutation p, std</th></tr>"]
  notes = {s.name: finite_note(s) for s in study.settings}
  named = lambda n: esc(n) + (f" ({esc(notes[n])})" if notes.get(n) else "")
  p3 = lambda p: f"{num(p):.3g}" if math.isfinite(num(p)) else "—"
  for r in rows:
    out.append(f"<tr><td>{esc(r.get('task'))}</td><td>{named(r.get('a'))}</td>"
               f"<td>{named(r.get('b'))}</td>"
               + "".join(f"<td>{esc(shown(r, k, p3))}</td>"
                         for k in ("p", "perm_mean_p", "perm_std_p"))
               + "</tr>")
  return "\n".join(out + ["</table>"])


def _link(out_dir: str, path: str, label: str) -> str:
  """A link to a workdir file: relative to the report on a local disk, the URL in a bucket."""
  if not fs.isfile(path):
    return f"<span class='note'>{esc(label)} (missing)</span>"
  href = path if fs.is_remote(path) else os.path.relpath(path, out_dir)
  return f'<a href="{esc(href)}">{esc(label)}</a>'


def settings_section(study: Study, out_dir: str) -> str:
  parts = []
  top = [_link(out_dir, fs.join(study.workdir, f), f)
         for f in (outputs.SUMMARY, "summary.csv", "table.md")]
  parts.append(f"<p>Study files: {' · '.join(top)}</p>")
  for s in study.settings:
    links = [_link(out_dir, fs.join(s.directory, f), f)
             for f in (outputs.CONFIG, outputs.METRICS, outputs.PROBE, outputs.SUMMARY)]
    config = json.dumps(s.config, indent=2) if s.config else "(config.json missing)"
    parts.append(f"<h3>{esc(s.title())}</h3><p>Raw files: {' · '.join(links)}</p>"
                 f"<details><summary>config of {esc(s.name)}</summary><pre>{esc(config)}</pre>"
                 "</details>")
  return "\n".join(parts)


def analysis_section(study: Study, out_dir: str, found, pngs: dict, captions: dict,
                     filename: str, command: str) -> str:
  """One analysis (loss surface or forgetting): each setting's figure with a link to the file it
  was drawn from, or how to compute it when no setting has the file."""
  if not found:
    kept = [s.name for s in study.settings if outputs.kept_seeds(s.directory)]
    need = ("The final parameters are kept (in "
            f"{esc(', '.join(kept))}); run " if kept else
            "It needs the final parameters of the seeds (train with "
            "<code>--config.checkpoint.keep_final_params=True</code>), then run ")
    return (f"<p class='note'>Not computed for this {'run' if study.plain else 'study'}: no "
            f"<code>analysis/{esc(filename)}</code> in any setting. {need}"
            f"<code>{esc(command)}</code> and rebuild this report.</p>")
  parts = []
  for s, key, data in found:
    body = (figure(pngs.get(key), f"{filename} of {s.name}", captions[key]) if key
            else "<p class='note'>The figure could not be drawn (see the notes at the top).</p>")
    parts.append(f"<h3>{esc(s.title())}</h3>{body}"
                 f"<p>Raw data: {_link(out_dir, data, 'analysis/' + filename)}</p>")
  return "\n".join(parts)


def page(study: Study, out_dir: str, sections: List[str], notes: List[str]) -> str:
  models = ", ".join(dict.fromkeys(s.model for s in study.settings))
  tasks = ", ".join(dict.fromkeys(s.task.upper() for s in study.settings))
  seeds = sorted({int(r.seed) for s in study.settings for r in s.runs if r.seed is not None})
  when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
  kind = "single run" if study.plain else f"study of {len(study.settings)} settings"
  note_html = "".join(f"<li class='note'>{esc(n)}</li>" for n in notes)
  return "\n".join([
      "<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
      f"<title>jaxstab report: {esc(os.path.basename(study.workdir))}</title>",
      f"<style>{CSS}</style></head><body>",
      f"<h1>Fine-tuning stability report: {esc(tasks)} · {esc(models)}</h1>",
      f"<p>{esc(kind)} in <code>{esc(study.workdir)}</code>; {len(seeds)} seeds "
      f"({esc(_seed_text(seeds))}); built {esc(when)} from the saved results (nothing "
      "retrained).</p>",
      f"<ul>{note_html}</ul>" if notes else "",
      *sections,
      "<h2>Settings, configs and raw files</h2>", settings_section(study, out_dir),
      "</body></html>"])


def _seed_text(seeds) -> str:
  if seeds and seeds == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 2:
    return f"seeds {seeds[0]}–{seeds[-1]}"
  return "seeds " + ", ".join(map(str, seeds))
