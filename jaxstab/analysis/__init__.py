"""Analyses that need a setting's kept final parameters (train with
--config.checkpoint.keep_final_params=True): the loss surface through the pretrained, a failed and
a successful model (loss_surface), and masked-LM forgetting (forgetting).

Both read a finished setting directory, rebuild its model, tokenizer and data from config.json
exactly as training did (jaxstab.inputs), compute, and write
<setting dir>/analysis/{loss_surface.npz, forgetting.json}. The report (jaxstab.report) only
reads those files and draws them when present.

This module holds what both share and imports nothing heavy at import time (the report imports
it for the file names).
"""
import dataclasses
import json
import os
from typing import List, Optional

import ml_collections

from jaxstab import inputs as inputs_lib
from jaxstab import outputs
from jaxstab import train as train_lib
from jaxstab.errors import ConfigError

ANALYSIS_DIR = "analysis"
LOSS_SURFACE = "loss_surface.npz"
FORGETTING = "forgetting.json"


def analysis_path(setting_dir: str, name: str) -> str:
  return os.path.join(setting_dir, ANALYSIS_DIR, name)


def kept_seeds(setting_dir: str) -> List[int]:
  """Seeds whose final parameters are kept in <setting dir>/params/seed_N (sorted)."""
  root = os.path.join(setting_dir, "params")
  if not os.path.isdir(root):
    return []
  out = []
  for name in os.listdir(root):
    if name.startswith("seed_") and name[5:].isdigit() and os.path.isdir(os.path.join(root, name)):
      out.append(int(name[5:]))
  return sorted(out)


@dataclasses.dataclass
class SettingInputs:
  """A finished setting rebuilt from its config.json: what training had before its first step."""
  name: str
  directory: str
  cfg: object            # ml_collections.ConfigDict, the setting's full config
  summary: dict          # the setting's summary.json (runs with their `failed` flags)
  task: object
  model: object          # jaxstab.models.Model (pretrained params, random head)
  tokenizer: object
  train_arrays: dict     # tokenized training set, subsampled exactly as training used it


def select_settings(workdir: str, setting: Optional[str] = None):
  """[(name, directory, summary)] of the settings of a finished run or study; `setting` narrows
  to one (by name). Raises ConfigError naming what exists."""
  from jaxstab.report import load  # pylint: disable=import-outside-toplevel
  study = load.load(workdir)
  found = [(s.name, s.directory, s.summary) for s in study.settings]
  if setting:
    hit = [f for f in found if f[0] == setting]
    if not hit:
      raise ConfigError(f"no setting {setting!r} in {workdir} (flag --setting); settings: "
                        f"{', '.join(f[0] for f in found)}")
    return hit
  return found


def load_setting(name: str, directory: str, summary: Optional[dict] = None) -> SettingInputs:
  """Rebuilds model, tokenizer and the training arrays of a finished setting from its
  config.json, through the same public functions training uses (jaxstab.inputs)."""
  path = os.path.join(directory, outputs.CONFIG)
  if not os.path.isfile(path):
    raise ConfigError(f"{path} not found: {directory} is not a finished jaxstab setting")
  with open(path, encoding="utf-8") as f:
    cfg = ml_collections.ConfigDict(json.load(f))
  if summary is None:
    with open(os.path.join(directory, outputs.SUMMARY), encoding="utf-8") as f:
      summary = json.load(f)
  loaded = inputs_lib.load(cfg)
  arrays = inputs_lib.tokenize(cfg, loaded, inputs_lib.token_cache_dir(directory))
  return SettingInputs(name, directory, cfg, summary, loaded.task, loaded.model,
                       loaded.tokenizer, arrays.train)


def initial_params(model, cfg, seed: int):
  """The parameters seed `seed` started training from (train.initial_params with the setting's
  re-initialisation switches)."""
  st = cfg.get("stabilisers")
  reinit = st is not None and (st.get("reinit_layers", 0) or st.get("reinit_pooler", False))
  return train_lib.initial_params(model, train_lib.seed_key(seed),
                                  st.reinit_layers if reinit else 0,
                                  bool(st.reinit_pooler) if reinit else False)


def final_params(inputs: SettingInputs, seed: int):
  """The kept final parameters of `seed` (structure from the pretrained model)."""
  from jaxstab import checkpoint  # pylint: disable=import-outside-toplevel
  return checkpoint.load_params(inputs.directory, seed, inputs.model.params)


def run_failed(summary: dict) -> dict:
  """seed -> the summary's `failed` flag, for every run of a setting."""
  return {int(r["seed"]): bool(r.get("failed")) for r in summary.get("runs", [])
          if r.get("seed") is not None}
