"""Table 1 across workdirs: recipes x tasks from several finished runs or studies, side by side.

A proxy study is often run one task per workdir (each task its own sequence length, machine or
day), while the paper's Table 1 puts the tasks next to each other. This reads the summary.json
of each workdir (nothing is retrained; the statistics come from the per-seed records there) and
writes the table the study itself writes, the majority classifier per task, Levene's p-value and
the permutation tests' p-values (difference in mean and in std) for every two recipes of the same
task, and, per setting, bootstrap intervals of std / mean / median / failed runs and the
expected best of n = 1, 5 and N seeds (jaxstab.results.stats), how much its seeds' predictions
disagree (tables.instability_markdown), the linear connectivity between its seeds where
computed (tables.connectivity_markdown), and, where a setting has a stored forecast or a
probe.npz, how well its early gradient norms forecast the failed seeds (jaxstab.results.forecast).

Command line: python -m jaxstab.compare WORKDIR [WORKDIR ...] [--out=FILE.md] [--paper]
(console script: jaxstab-compare)
"""
import dataclasses
import sys
from typing import List

from jaxstab.infra import cli, fs
from jaxstab.infra.errors import ConfigError
from jaxstab.results import finite, forecast, outputs, records, stats, tables


# The paper's Table 1 (BERT-large, 25 seeds, dev metric ×100: std / mean / median / max),
# from the preprint; shown next to one's own rows with --paper.
PAPER_TABLE1 = {
    "Devlin et al.": {"rte": (7.2, 52.3, 47.3, 71.1), "mrpc": (5.9, 79.0, 74.8, 89.4),
                      "cola": (25.6, 45.6, 59.1, 64.6)},
    "Lee et al. (Mixout)": {"rte": (7.9, 65.3, 69.1, 74.4), "mrpc": (3.8, 87.8, 89.5, 91.8),
                            "cola": (20.9, 51.9, 60.3, 64.0)},
    "Ours (Mosbach et al.)": {"rte": (2.4, 70.1, 70.0, 75.5), "mrpc": (0.8, 89.6, 89.5, 91.4),
                              "cola": (1.0, 64.6, 64.7, 66.8)},
}


# What a setting needs to be a row of the table (compare checks it before reading further, so a
# file that is not a summary is refused by name).
NEED = ("task", "setting", "metric", "majority", "runs", "failed_runs", "final_spread")


@dataclasses.dataclass(frozen=True)
class Gathered:
  """One setting of the table: its summary (with `name` and `recipe` as the table names them)
  and where it came from."""
  summary: records.SettingSummary
  workdir: str                  # the WORKDIR argument it was found under
  directory: str                # the folder with its probe.npz
  unfinished: bool = False      # from a study still running or stopped

  @property
  def name(self) -> str:
    return self.summary.name

  @property
  def recipe(self) -> str:
    return self.summary.recipe

  @property
  def task(self) -> str:
    return self.summary.task

  @property
  def runs(self):
    return self.summary.runs

  def as_json(self) -> dict:
    """The summary entry as jaxstab.results.stats computes on it."""
    return self.summary.to_json()


def gather(workdirs) -> List[Gathered]:
  """Every setting of every workdir, tagged with its workdir and its recipe.

  A workdir may be a finished run or study (its summary.json), one setting folder of a study, or
  a study still running (its finished settings' folders are read; the table says so). A recipe
  may appear once per task: two workdirs that both hold, say, RTE devlin_lr2e-5 are refused,
  since the table would have to silently pick one.
  """
  out, seen = [], {}
  for wd in workdirs:
    for s in _settings_of(wd):
      key = (s.task, s.recipe)
      if key in seen:
        raise ConfigError(f"task {s.task!r}, recipe {s.recipe!r} is in both {seen[key]} "
                          f"and {wd}; pass only one of them")
      seen[key] = wd
      out.append(s)
  return out


def _settings_of(wd) -> List[Gathered]:
  path = fs.join(wd, outputs.SUMMARY)
  if fs.isfile(path):
    study = records.read_study(wd, NEED)
    if study.bare:  # one setting folder of a study, named by its folder
      return [_one_setting(study.settings[0], wd.rstrip("/").rsplit("/", 1)[-1], wd, wd,
                           unfinished=False)]
    # a plain run's summary lists its one setting too, but its files are in wd itself
    where = lambda n: fs.join(wd, n) if fs.isdir(fs.join(wd, n)) else wd
    return [Gathered(dataclasses.replace(s, recipe=s.recipe or s.setting), wd, where(s.name))
            for s in study.settings]
  names = ([n for n in fs.listdir(wd) if fs.isfile(fs.join(wd, n, outputs.SUMMARY))]
           if fs.isdir(wd) else [])
  if not names:
    raise ConfigError(f"{path} not found, nor any <setting>/summary.json under it: {wd} holds "
                      "no finished run, study or study setting")
  return [_one_setting(records.read_setting(fs.join(wd, n), NEED), n, wd, fs.join(wd, n),
                       unfinished=True) for n in names]


def _one_setting(summary, name, wd, directory, unfinished) -> Gathered:
  """A study's setting folder: named by its folder, its recipe the name less the task prefix."""
  prefix = f"{summary.task}_"
  recipe = name[len(prefix):] if name.startswith(prefix) else name
  return Gathered(dataclasses.replace(summary, name=name, recipe=recipe), wd, directory,
                  unfinished)


def markdown(settings, paper=False) -> str:
  """The table, the majority line, the pairwise tests (Levene, permutation), the intervals and
  expected best-of-n table (tables.uncertainty_markdown) and where each column came from; with
  `paper`, the paper's BERT-large rows for the same tasks below one's own (Table 1 alone, the
  first block, is what table.md and the results table of docs/results/README.md hold)."""
  tasks = list(dict.fromkeys(s.task for s in settings))
  majority = {}
  for s in settings:
    majority.setdefault(s.task, 100 * s.summary.majority[s.summary.metric])
  rows = [s.as_json() for s in settings]
  table = tables.table1_markdown(rows)
  in_paper = sorted({t for row in PAPER_TABLE1.values() for t in row})
  without = [t for t in tasks if t not in in_paper]
  if paper and len(without) < len(tasks):
    full = (" full |" if tables.method_column((None, r.get("peft"), None) for r in rows)
            else "")  # the paper's rows in the method column
    table += "".join(
        f"\n| paper, BERT-large: {recipe} |{full} "
        + " | ".join(" / ".join(f"{x:.1f}" for x in row[t]) if t in row else "—" for t in tasks)
        + " |" for recipe, row in PAPER_TABLE1.items())
  lines = [table, ""]
  if paper and without:  # say why, rather than print rows of empty cells
    lines += [f"--paper: the paper's Table 1 has no numbers for "
              f"{', '.join(t.upper() for t in without)}; "
              f"it reports {', '.join(t.upper() for t in in_paper)}.", ""]
  lines += [
           "Dev metric ×100, std / mean / median / max, " + _reported(settings)
           + "; a failed run ends training at or below the majority classifier: "
           + ", ".join(f"{t.upper()} {majority[t]:.1f}" for t in tasks) + ".", ""]
  pairs = stats.levene_table(rows)
  if pairs:
    label = {}
    for s, row in zip(settings, rows):  # "devlin (4 of 5 finite)" when a run's metric is not
      note = finite.only(stats.reported(row)).note()
      label[s.name] = s.recipe + (f" ({note})" if note else "")
    lines += ["| task | recipes | Levene's p | permutation p, mean | permutation p, std |",
              "|---|---|---|---|---|"]
    for p in pairs:
      values = [finite.shown(p, k, lambda x: f"{x:.2g}")
                for k in ("p", "perm_mean_p", "perm_std_p")]
      lines.append(f"| {p['task'].upper()} | {label[p['a']]} vs {label[p['b']]} | "
                   + " | ".join(values) + " |")
    lines += ["", "Two-sided p-values on the reported metric: Levene's test (median-centred) for "
              "equal spread; permutation tests of the difference in mean and in std "
              f"({stats.RESAMPLES:,} random splits of the pooled seeds, seed {stats.SEED}; "
              f"smallest possible p {2 / (stats.RESAMPLES + 1):.2g}).", ""]
  lines += [tables.uncertainty_markdown(rows), ""]
  for extra in (tables.seed_analyses_markdown(rows), tables.instability_markdown(rows),
                tables.connectivity_markdown(rows)):
    if extra:
      lines += [extra, ""]
  predicted = forecast.markdown([(s.recipe, s.task, setting_forecast(s)) for s in settings])
  if predicted:
    lines += [predicted, ""]
  unfinished = {}
  for s in settings:
    if s.unfinished:
      unfinished.setdefault(s.workdir, []).append(s.name)
  for wd, names in unfinished.items():
    lines += [f"{wd} is a study still running or stopped: only its finished settings "
              f"({', '.join(names)}) are in the table.", ""]
  lines.append("Sources: " + "; ".join(
      f"{t.upper()} {', '.join(dict.fromkeys(s.workdir for s in settings if s.task == t))}"
      f" ({_seeds(settings, t)})" for t in tasks) + ".")
  return "\n".join(lines) + "\n"


def setting_forecast(setting: Gathered, stored=True):
  """A gathered setting's failure forecast (jaxstab.results.forecast.evaluate's dict): the
  summary's `forecast` when stored (and `stored`), else computed from the probe.npz in its
  folder (None without one)."""
  if stored and isinstance(setting.summary.forecast, dict):
    return setting.summary.forecast
  path = fs.join(setting.directory, outputs.PROBE)
  if not fs.isfile(path):
    return None
  return forecast.of_setting(dataclasses.replace(setting.summary, forecast=None),
                             records.read_probe(path))


def _reported(settings) -> str:
  best = list(dict.fromkeys(s.recipe for s in settings if s.summary.select == "best"))
  if not best:
    return "at the end of training"
  return f"at the best dev checkpoint for {', '.join(best)}, at the end of training otherwise"


def _seeds(settings, task) -> str:
  counts = sorted({len(s.runs) for s in settings if s.task == task})
  return "/".join(map(str, counts)) + " seeds"


def main(argv=None) -> int:
  parser = cli.parser("jaxstab.compare",
                      "One Table-1-style table from several finished jaxstab runs or studies.")
  parser.add_argument("workdirs", nargs="+", metavar="WORKDIR")
  parser.add_argument("--out", default=None, help="also write the table to this markdown file")
  parser.add_argument("--paper", action="store_true",
                      help="add the paper's BERT-large rows (its Table 1) for the same tasks")

  def body(args):
    text = markdown(gather(args.workdirs), paper=args.paper)
    if args.out:
      fs.write_text(args.out, text)
    print(text, end="")
  return cli.run(parser, body, argv)


if __name__ == "__main__":
  sys.exit(main())
