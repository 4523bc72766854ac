"""Analyses that need a setting's kept final parameters (train with
--config.checkpoint.keep_final_params=True): the loss surface through the pretrained, a failed and
a successful model (loss_surface), masked-LM forgetting (forgetting), and the linear connectivity
between seeds (connectivity).

Both read a finished setting directory (jaxstab.results.records), rebuild its model, tokenizer and data
from config.json exactly as training did (jaxstab.engine.inputs), compute, and write
<setting dir>/analysis/{loss_surface.npz, forgetting.json, connectivity.json} (names in
jaxstab.results.outputs); connectivity also adds its block to the summary. The report only reads
those files and draws them when present; it imports nothing from here.

Command lines: python -m jaxstab.loss_surface, python -m jaxstab.forgetting,
python -m jaxstab.connectivity.
"""
import argparse
import dataclasses
from typing import Optional

import jax

from jaxstab.config import stored
from jaxstab.engine import inputs as inputs_lib, noisytune, train as train_lib
from jaxstab.infra import checkpoint, fs
from jaxstab.infra.errors import ConfigError
from jaxstab.results import outputs, records
from jaxstab.config import runs as runs_lib


@dataclasses.dataclass
class SettingInputs:
  """A finished setting rebuilt from its config.json: what training had before its first step."""
  name: str
  directory: str
  cfg: object            # ml_collections.ConfigDict, the setting's full config
  summary: records.SettingSummary  # runs with their `failed` flags
  task: object
  model: object          # jaxstab.engine.models.Model (pretrained params, random head)
  tokenizer: object
  train_arrays: dict     # tokenized training set, subsampled exactly as training used it
  dev_arrays: Optional[dict] = None  # the tokenized (main) dev set training scored


def select_settings(workdir: str, setting: Optional[str] = None):
  """[(name, directory, SettingSummary)] of the settings of a finished run or study; `setting`
  narrows to one (by name). Raises ConfigError naming what exists."""
  study = records.load(workdir)
  found = [(s.name, s.directory, s.summary) for s in study.settings]
  if setting:
    hit = [f for f in found if f[0] == setting]
    if not hit:
      raise ConfigError(f"no setting {setting!r} in {workdir} (flag --setting); settings: "
                        f"{', '.join(f[0] for f in found)}")
    return hit
  return found


def load_setting(name: str, directory: str,
                 summary: Optional[records.SettingSummary] = None) -> SettingInputs:
  """Rebuilds model, tokenizer and the training arrays of a finished setting from its
  config.json, through the same public functions training uses (jaxstab.engine.inputs)."""
  path = fs.join(directory, outputs.CONFIG)
  if not fs.isfile(path):
    raise ConfigError(f"{path} not found: {directory} is not a finished jaxstab setting")
  # laid over the base config: a key an older workdir lacks takes the value it ran with
  cfg = stored.from_json(records.read_config(directory))
  if summary is None:
    summary = records.read_setting(directory)
  loaded = inputs_lib.load(cfg)
  arrays = inputs_lib.tokenize(cfg, loaded, inputs_lib.token_cache_dir(directory))
  return SettingInputs(name, directory, cfg, summary, loaded.task, loaded.model,
                       loaded.tokenizer, arrays.train, arrays.dev)


def init_seed(cfg, run: int) -> int:
  """The init seed that run number `run` of the setting `cfg` was started from, by the study's own
  numbering (config.runs): a plain run is its own seed, a data_seeds grid run 3002 is init seed 3.
  The run number itself would give a grid run another head than the one it trained from."""
  found = runs_lib.by_number(runs_lib.parse(cfg))
  if run not in found:
    raise ConfigError(f"{run} is not a run of this setting (its runs: "
                      f"{', '.join(map(str, found))})")
  return found[run].init_seed


def initial_params(model, cfg, run: int):
  """The parameters run `run` started training from: train.initial_params with the key of its
  init seed (init_seed) and the setting's re-initialisation and NoisyTune switches. Compiled, with the
  pretrained weights as an argument, as training's create program runs it: run eagerly, the
  head's normal draw rounds differently (1.9e-9 on a tiny BERT's head, measured on CPU), compiled
  it is bit for bit the run's step-0 parameters (tests/test_seed_grid_and_early_stop.py)."""
  refuse_peft(cfg)
  st = cfg.stabilisers
  reinit_layers, reinit_pooler = int(st.reinit_layers), bool(st.reinit_pooler)

  def start(pretrained, key):
    return train_lib.initial_params(dataclasses.replace(model, params=pretrained), key,
                                    reinit_layers, reinit_pooler,
                                    noisytune.scale_of(st))
  return jax.jit(start)(model.params, train_lib.seed_key(init_seed(cfg, run)))


def final_params(inputs: SettingInputs, seed: int):
  """The kept final parameters of `seed` (structure from the pretrained model)."""
  refuse_peft(inputs.cfg)
  return checkpoint.load_params(inputs.directory, seed, inputs.model.params)


def refuse_peft(cfg) -> None:
  """The analyses that read full parameter trees (loss surface, forgetting) do not read a PEFT
  run's trainable tree yet: one line instead of a checkpoint-structure error."""
  if cfg.peft.method != "none":
    raise ConfigError(f"this setting trained with peft.method={cfg.peft.method!r}: its kept "
                      "parameters are the trainable part only, and this analysis reads full "
                      "parameter trees (not yet for PEFT runs; jaxstab.engine.peft.merged "
                      "exports a run's full weights)")


def run_failed(summary: records.SettingSummary) -> dict:
  """seed -> the summary's `failed` flag, for every run of a setting."""
  return {int(r.seed): bool(r.failed) for r in summary.runs if r.seed is not None}


def add_workdir_flags(parser: argparse.ArgumentParser) -> None:
  """--workdir and --setting, as every analysis takes them."""
  parser.add_argument("--workdir", required=True, help="a finished run or study, trained with "
                      "--config.checkpoint.keep_final_params=True")
  parser.add_argument("--setting", default=None, help="one setting of a study (default: all "
                      "settings that keep params)")
