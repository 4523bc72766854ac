"""The records a setting's training passes around: what it will do (Plan, fixed before anything
is compiled) and what is compiled for it (Engine).

They are built once, from the config, by experiment.py (`_prepare`, `_build`); the seed-group
loop (groups.py), the early stop's two phases (early_stop_run.py) and the merge (merge.py) read
only these records, never the ConfigDict, so what each of them depends on is named here.
"""
import dataclasses
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from jaxstab.config import runs as runs_lib
from jaxstab.data import tasks
from jaxstab.engine import inputs as inputs_lib, memory, models, parallel, train as train_lib
from jaxstab.study import early_stop


@dataclasses.dataclass(frozen=True)
class Saving:
  """How a setting's seed groups are checkpointed and what is kept at the end (checkpoint.*)."""
  every_steps: int            # orbax checkpoint of a seed group every N steps; 0 = off
  keep: int                   # newest checkpoints kept per seed group
  keep_final_params: bool     # every seed's final params (loss surface, forgetting)


@dataclasses.dataclass
class Plan:
  """What a setting will do, fixed before anything is compiled."""
  task: tasks.Task
  model: models.Model         # a peft.PeftModel under peft.method != 'none'
  workdir: str
  seeds: List[int]            # run numbers (the seeds; seeds x data_seeds: see runs.py)
  runs: Dict[int, runs_lib.Run]  # run number -> its init and data seeds
  todo: List[int]             # runs without a finished record in runs/
  arrays: inputs_lib.Arrays   # tokenized train (as trained on) and dev
  total_steps: int
  eval_steps: List[int]       # steps after which dev is evaluated (0 and the end included)
  majority: Dict[str, float]  # the majority classifier's dev metrics: the failed-run line
  saving: Saving
  setting: str                # the recipe preset's name (for the record)
  select: str                 # which dev result the setting reports: final | best
  data_seeds: bool            # runs are the grid seeds x data_seeds (the decomposition)
  matmul_precision: str       # model.matmul_precision the programs trace (for the record)
  stopping: Optional[early_stop.Spec] = None  # train.early_stop, when on
  rep_examples: int = 0       # analysis.rep_examples: dev examples whose representations are kept
  peft: Optional[dict] = None  # peft.Spec.to_json() (summary.json `peft`)
  trainable_params: int = 0   # parameters each seed trains (summary.json `trainable_params`)


@dataclasses.dataclass
class Engine:
  """The compiled programs and the data they read, on the devices."""
  programs: train_lib.Programs
  # The same builder for another group size (the early stop's second phase): k -> Programs.
  programs_for: Callable[[int], train_lib.Programs]
  train_on_device: Any        # the whole tokenized training set, replicated
  dev_on_device: Any          # dev batches (without their weights), replicated
  dev_labels: np.ndarray
  extra_dev: Dict[str, tuple]  # further dev sets (MNLI's mismatched): name -> (batches, labels)
  layout: Optional[parallel.Layout] = None  # the devices the groups run on
  sizing: Optional[memory.Sizing] = None    # how K was chosen (and halved): seeds_per_step.json
