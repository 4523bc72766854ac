"""The study's tables as text, from its setting entries (summary.json's JSON form): Table 1
(`table1_markdown`), the intervals and expected best-of-n tables below it
(`uncertainty_markdown`), the seed analyses (`seed_analyses_markdown`), how much the seeds'
predictions disagree (`instability_markdown`), the linear connectivity between seeds
(`connectivity_markdown`), table.md as a whole (`table_md`) and summary.csv (`summary_csv`).
table.md, `compare` and the study's log print them.

Every metric statistic is over a setting's finite values (jaxstab.results.finite): a cell says
"n of N finite" when a run's metric was not a number, and an undefined statistic prints as
"undefined: <reason>", never as `nan`.
"""
import csv
import io

import numpy as np

from jaxstab.results import finite, stats


def _x100(x) -> str:
  return "—" if x is None or not np.isfinite(x) else f"{100 * x:.1f}"


def _count(x) -> str:
  """A bootstrap bound of a count: an integer unless the percentile fell between two."""
  return "—" if x is None else (f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}")


def _p(x) -> str:
  return "—" if x is None else f"{x:.3f}"


def _share(x) -> str:
  return f"{100 * x:.0f}%"


def _body(sp: dict) -> str:
  """std / mean / median / max x100 of a spread; one "undefined: <reason>" when it has no value."""
  if not sp["n"]:
    return finite.shown(sp, "mean", _x100)
  return " / ".join(finite.shown(sp, k, _x100) for k in ("std", "mean", "median", "max"))


def _cell(sp, failed, n, started=None, note="") -> str:
  if not n and not sp["n"]:
    return "—"
  stopped = f"; {started} started, {n} continued" if started else ""
  return _body(sp) + f" ({failed}/{n} failed{stopped}{'; ' + note if note else ''})"


def started_runs(setting):
  """Runs started by a setting that stopped some early (train.early_stop), else None."""
  es = setting.get("early_stop")
  return es.get("started") if isinstance(es, dict) else None


def _trained(n) -> str:
  """A parameter count as people say it: 2,306 / 36.9k / 22.7M."""
  return f"{n:,}" if n < 10_000 else (f"{n / 1e3:.1f}k" if n < 10**6 else f"{n / 1e6:.1f}M")


def method_label(peft, n=None) -> str:
  """What a setting fine-tuned, from summary.json's `peft` and `trainable_params` (n): "full",
  "LoRA r=8 α=8 query,value" or "BitFit" (", pooler" when peft.train_pooler), and how many
  parameters each seed trained. A summary written before PEFT has no `peft`: it fine-tuned
  everything."""
  peft = peft or {}
  method = peft.get("method", "none")
  if method == "lora":
    label = f"LoRA r={peft.get('rank')} α={peft.get('alpha'):g} {peft.get('targets')}"
  else:
    label = {"none": "full", "bitfit": "BitFit"}.get(method, method)
  if method != "none" and peft.get("train_pooler"):
    label += ", pooler"
  return label + (f" ({_trained(n)} trained)" if isinstance(n, int) and n > 0 else "")


def method_column(rows) -> dict:
  """The method column of a table whose rows are (row name, peft, trainable_params) per setting:
  row name -> its method labels joined by '; ', or {} (no column) when no setting used PEFT."""
  rows = list(rows)
  if not any((p or {}).get("method", "none") != "none" for _, p, _ in rows):
    return {}
  labels = {}
  for row, peft, n in rows:
    labels.setdefault(row, {}).setdefault(method_label(peft, n), None)
  return {row: "; ".join(found) for row, found in labels.items()}


def table1_markdown(settings) -> str:
  """Rows = recipes, columns = tasks; cells std / mean / median / max (x100) of the reported
  metric (see stats.reported) over the finite values ("n of N finite" when not all are), and the
  failed runs (always judged at the end of training; a non-finite metric is a failed run). Where
  a setting used PEFT, a method column says what each row fine-tuned (method_label)."""
  tasks = list(dict.fromkeys(s["task"] for s in settings))
  recipes = list(dict.fromkeys(s.get("recipe", s["name"]) for s in settings))
  methods = method_column((s.get("recipe", s["name"]), s.get("peft"), s.get("trainable_params"))
                          for s in settings)
  lines = ["| setting | " + ("method | " if methods else "")
           + " | ".join(t.upper() for t in tasks) + " |",
           "|---" * (len(tasks) + 1 + bool(methods)) + "|"]
  for rec in recipes:
    cells = []
    for t in tasks:
      hit = [s for s in settings if s["task"] == t and s.get("recipe", s["name"]) == rec]
      if not hit:
        cells.append("")
        continue
      values = stats.reported(hit[0])
      f = finite.only(values)
      cells.append(_cell(stats.spread_of(values), hit[0]["failed_runs"], f.total,
                         started_runs(hit[0]), f.note()))
    method = f"{methods[rec]} | " if methods else ""
    lines.append(f"| {rec} | {method}" + " | ".join(cells) + " |")
  return "\n".join(lines)


def _with_ci(text: str, ci, fmt) -> str:
  return text + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if isinstance(ci, (list, tuple)) else "")


def best_of_n(u: dict, f: finite.Finite, fmt=_x100) -> list:
  """The expected best of n = 1, 5 and N (the finite runs) seeds ± its std, as three cells;
  "—" for n above N, "undefined: <reason>" without a finite run."""
  em, em_std = u["expected_max"], u["expected_max_std"]
  if not em:
    return [str(finite.Undefined(f.none_left()))] * 3 if f.total else ["—"] * 3
  return [f"{fmt(em[n - 1])} ± {fmt(em_std[n - 1])}" if n <= len(em) else "—"
          for n in (1, 5, len(em))]


def seeds_cell(f: finite.Finite) -> str:
  """The seeds column: N, or "n of N" when only n runs have a finite metric."""
  return f"{f.n} of {f.total}" if f.dropped else str(f.total)


DROPPED_NOTE = ("Where seeds reads n of N, only n runs have a finite metric: the others "
                "diverged, count as failed, and are left out of every metric statistic.")


def uncertainty_markdown(settings) -> str:
  """Two tables below Table 1, one row per setting (recipe and task): the bootstrap intervals of
  the reported metric's std / mean / median and of the failed-run count, and the expected best
  of n = 1, 5 and N seeds ± its std (stats.uncertainty); a line under each says what it is."""
  level = stats.LEVEL
  rows_ci, rows_max, dropped = [], [], False
  for s in settings:
    u = stats.uncertainty(s)
    ci, level = u["ci"], u["ci"].get("level", stats.LEVEL)
    f = finite.only(stats.reported(s))
    dropped |= bool(f.dropped)
    sp = stats.spread_of(stats.reported(s))
    label = f"| {s.get('recipe', s['name'])} | {s['task'].upper()} | {seeds_cell(f)} | "
    rows_ci.append(label + " | ".join(
        [_with_ci(finite.shown(sp, k, _x100), ci.get(k), _x100) for k in ("std", "mean", "median")]
        + [_with_ci(str(s["failed_runs"]), ci.get("failed_runs"), _count)]) + " |")
    rows_max.append(label + " | ".join(best_of_n(u, f)) + " |")
  if not settings:
    return ""
  pct = f"{100 * level:g}%"
  return "\n".join(
      [f"| setting | task | seeds | std [{pct} CI] | mean [{pct} CI] | median [{pct} CI] "
       f"| failed runs [{pct} CI] |", "|---" * 7 + "|", *rows_ci, "",
       f"Reported dev metric ×100 over the seeds, {pct} percentile-bootstrap intervals "
       f"({stats.RESAMPLES:,} resamples of the seeds, seed {stats.SEED}); the failed-run count's "
       "interval resamples the failed flags." + (" " + DROPPED_NOTE if dropped else ""), "",
       "| setting | task | seeds | best of n = 1 | best of n = 5 | best of n = N |",
       "|---" * 6 + "|", *rows_max, "",
       "Expected best reported dev metric ×100 of n seeds drawn from the N runs (Dodge et al. "
       "2019), ± the std of that best; N = the seeds column" + (" (its n)" if dropped else "")
       + "."])


def seed_analyses_markdown(settings) -> str:
  """Tables for the settings that have them: the init / data-order decomposition (data_seeds)
  and the early stop (train.early_stop); '' when no setting has either."""
  dec, stop = [], []
  for s in settings:
    label = f"| {s.get('recipe', s['name'])} | {s['task'].upper()} | "
    d = s.get("decomposition")
    if isinstance(d, dict):
      dec.append(label + f"{d['grid'][0]} × {d['grid'][1]} | " + " | ".join(
          [finite.shown(d, k, _share) for k in ("init", "data", "residual")]
          + [finite.shown(d["p"], k, _p) for k in ("init", "data")]) + " |")
    es = s.get("early_stop")
    if isinstance(es, dict):
      f = finite.only(stats.reported(s))
      found = float(f.values.max()) if f.n else None
      stop.append(label + f"{es['started']} | {es['continued']} | {es['step']} ({es['at']:g}) | "
                  f"{es['by']} | {100 * es['fraction_of_compute']:.0f}% | {_x100(found)} |")
  out = []
  if dec:
    out += ["| setting | task | init × data seeds | init | data order | residual | p init "
            "| p data |", "|---" * 8 + "|", *dec, "",
            "Shares of the reported metric's variance over the grid (two-way ANOVA without "
            "replication, random-effects components by the method of moments; the residual "
            "holds the init × data interaction); p: F test of no added variance."]
  if stop:
    out += ([""] if out else []) + [
        "| setting | task | started | continued | stop step (fraction) | ranked by | compute "
        "| best reported |", "|---" * 8 + "|", *stop, "",
        "Runs stopped early leave every statistic above; compute = seed-steps trained as a "
        "share of training every started run to the end."]
  return "\n".join(out)


def summary_csv(settings) -> str:
  """One row per setting and result kind (final / best); `reported` marks the kind the
  setting reports (its `select`); `n` counts the runs with a finite metric, which the
  statistics are over, `runs` all runs (an undefined statistic is an empty cell)."""
  buf = io.StringIO()
  w = csv.writer(buf)
  w.writerow(["setting", "task", "metric", "result", "reported", "n", "failed", "majority", "std",
              "mean", "median", "min", "max", "runs"])
  for s in settings:
    for kind in ("final", "best"):
      sp = s[f"{kind}_spread"]
      w.writerow([s["name"], s["task"], s["metric"], kind, kind == (s.get("select") or "final"),
                  sp["n"], s["failed_runs"], s["majority"][s["metric"]]]
                 + [sp[k] for k in ("std", "mean", "median", "min", "max")] + [len(s["runs"])])
  return buf.getvalue()


def _f3(x) -> str:
  return f"{x:.3f}"


def last_layer_cka(block):
  """The mean linear CKA over the pairs of distinct seeds in the last layer of `block`'s `cka`
  [layers][seeds][seeds] (its null cells left out), or Undefined when it has none: where the
  seeds' top-layer representations part, which the predictions alone cannot show."""
  cka = block.get("cka") if isinstance(block, dict) else None
  if not cka:
    return finite.Undefined("no per-layer representations in this summary")
  m = np.array([[np.nan if v is None else v for v in row] for row in cka[-1]], np.float64)
  off = m[~np.eye(len(m), dtype=bool)]
  off = off[np.isfinite(off)]
  return float(off.mean()) if off.size else finite.Undefined("no pair of seeds with a CKA")


def _pair(block, key, fmt) -> str:
  """"all / successful" of one measure of an instability block."""
  succ = block.get("successful")
  return finite.shown(block, key, fmt) + (
      " / " + finite.shown(succ, key, fmt) if isinstance(succ, dict) else "")


INSTABILITY_HEAD = ("seeds (successful)", "disagreement", "Fleiss' κ", "CKA, last layer")


def instability_cells(s: dict):
  """The cells of one setting's row of the instability table (INSTABILITY_HEAD), and whether
  it is a regression row and has no CKA; None for a summary written before the block."""
  if "instability" not in s:
    return None
  b = s["instability"]
  if not isinstance(b, dict):  # null, with the reason under the summary's `undefined`
    return [finite.shown(s, "instability", str), "", "", ""], False, False
  succ = b.get("successful") if isinstance(b.get("successful"), dict) else {}
  seeds = f"{b.get('seeds')}" + (f" ({succ['seeds']})" if "seeds" in succ else "")
  regression = "icc" in b
  if regression:
    cells = ["MSD " + _pair(b, "mean_squared_difference", _f3), "ICC " + _pair(b, "icc", _f3)]
  else:
    cells = [_pair(b, "disagreement", _f3), _pair(b, "fleiss_kappa", _f3)]
  cka = last_layer_cka(b)
  cells.append("—" if isinstance(cka, finite.Undefined) else _f3(cka))
  return [seeds] + cells, regression, isinstance(cka, finite.Undefined)


def instability_note(regression: bool, no_cka: bool) -> str:
  """What the instability table's columns are (the line under it, also in the report)."""
  notes = ["Seeds' end-of-training dev predictions (predictions.npz), over every seed / over the "
           "successful seeds alone (failed seeds that all predict the majority class agree "
           "perfectly); seeds: with finite outputs (successful ones). Disagreement: mean share "
           "of dev examples two seeds label differently; Fleiss' κ: seeds as raters, 1 = full "
           "agreement, 0 = chance. CKA: mean linear CKA between two seeds' last-layer "
           "representations."]
  if no_cka:
    notes.append("—: no per-layer representations were kept for that setting, so no CKA.")
  if regression:
    notes.append("Regression: MSD = mean squared difference of two seeds' predictions; "
                 "ICC = ICC(2,1) (two-way random, absolute agreement, one rater).")
  return " ".join(notes)


def instability_markdown(settings) -> str:
  """One row per setting that has an `instability` block (jaxstab.results.instability): how
  much its seeds' end-of-training dev predictions disagree, over every seed / over the
  successful ones, Fleiss' kappa the same way, and the mean CKA between seeds in the last layer
  ("—" without representations). Regression rows show the mean squared difference of the
  predictions and ICC(2,1) in those columns. '' when no setting has a block."""
  rows, regression, no_cka = [], False, False
  for s in settings:
    found = instability_cells(s)
    if found is None:
      continue
    cells, reg, none = found
    regression, no_cka = regression or reg, no_cka or none
    rows.append(f"| {s.get('recipe', s['name'])} | {s['task'].upper()} | "
                + " | ".join(cells) + " |")
  if not rows:
    return ""
  return "\n".join(["| setting | task | " + " | ".join(INSTABILITY_HEAD) + " |",
                    "|---" * 6 + "|", *rows, "", instability_note(regression, no_cka)])


CONNECTIVITY_HEAD = ("seeds", "pairs", "basins (sizes)", "largest barrier", "threshold",
                     "failed seeds apart")


def connectivity_cells(s: dict):
  """The cells of one setting's row of the connectivity table, None without a block."""
  b = s.get("connectivity")
  if not isinstance(b, dict):
    return None
  sizes = ", ".join(str(len(x)) for x in b.get("basins", []))
  apart = finite.shown(b, "failed_seeds_apart", lambda v: "yes" if v else "no")
  pairs = f"{len(b.get('pairs', []))}" + (" (sampled)" if b.get("pairs_sampled") else "")
  return [str(len(b.get("seeds", []))), pairs, f"{len(b.get('basins', []))} ({sizes})",
          finite.shown(b, "largest_barrier", _f3), _f3(b["threshold"]), apart]


def connectivity_markdown(settings) -> str:
  """One row per setting with a `connectivity` block (python -m jaxstab.connectivity): its
  basin count and sizes, the largest barrier, the threshold and whether the failed seeds sit in
  basins of their own. '' when no setting has one, so a table without it is unchanged."""
  rows = []
  for s in settings:
    cells = connectivity_cells(s)
    if cells is not None:
      rows.append(f"| {s.get('recipe', s['name'])} | {s['task'].upper()} | "
                  + " | ".join(cells) + " |")
  if not rows:
    return ""
  return "\n".join([connectivity_header(), "|---" * 8 + "|", *rows, "",
                    "Linear connectivity of the seeds' final parameters: barrier = the largest "
                    "rise of the training-subset loss (nats) above the straight line between two "
                    "seeds' losses; basins = groups of seeds joined by barriers below the "
                    "threshold (seeds with finite parameters; with sampled pairs an unmeasured "
                    "pair joins nothing)."])


def connectivity_header() -> str:
  return "| setting | task | " + " | ".join(CONNECTIVITY_HEAD) + " |"


def with_connectivity(text: str, table: str) -> str:
  """table.md `text` with its connectivity table (the last one, when there) replaced by `table`:
  everything above it stays byte for byte, even in a workdir written by an older jaxstab whose
  table.md lacks tables the current one would add."""
  cut = text.find("\n\n" + connectivity_header())
  base = (text[:cut] if cut >= 0 else text).rstrip("\n")
  return base + ("\n\n" + table if table else "") + "\n"


def table_md(results) -> str:
  """table.md: Table 1, the intervals, and each further table a setting has data for."""
  extra = [t for t in (seed_analyses_markdown(results), instability_markdown(results),
                       connectivity_markdown(results)) if t]
  return "\n\n".join([table1_markdown(results), uncertainty_markdown(results), *extra]) + "\n"
