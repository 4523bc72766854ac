"""The learning rate each update really gets: the warmup/decay schedule times Adam's bias
correction, from a setting's own config (the paper's "bias correction acts as warmup", Fig. 6).

Update s (s = 0, 1, ..., updates already applied) uses lr(s) from
jaxstab.engine.optim.linear_warmup_decay and, with bias correction on, the factor
sqrt(1 - b2^t) / (1 - b1^t) of jaxstab.engine.optim.bias_correction_factor at t = s + 1, exactly as the
optimizer and the probe do. Without bias correction the effective rate is the schedule alone.

It takes the setting's `optim` group as resolved by jaxstab.config.stored (records.Setting.resolved),
so a key the setting's config.json lacks has the value that run ran with.
"""
import dataclasses

import numpy as np

from jaxstab.engine import optim


@dataclasses.dataclass
class Curve:
  step: np.ndarray        # update index s, 0 .. total_steps - 1
  factor: np.ndarray      # sqrt(1 - b2^(s+1)) / (1 - b1^(s+1))
  schedule: np.ndarray    # lr(s): linear warmup then linear decay
  effective: np.ndarray   # schedule * factor when bias correction is on, else schedule
  warmup_steps: int
  bias_correction: bool
  b1: float
  b2: float
  lr: float


def curve(optim_cfg, total_steps: int) -> Curve:
  """The curves over all `total_steps` updates for one setting's resolved `optim` group."""
  total_steps = max(int(total_steps), 1)
  b1, b2, lr = float(optim_cfg.b1), float(optim_cfg.b2), float(optim_cfg.lr)
  warmup = optim.warmup_steps(optim_cfg.warmup_ratio, total_steps)  # as optim.from_config
  corrected = bool(optim_cfg.bias_correction)
  step = np.arange(total_steps)
  factor = np.asarray(optim.bias_correction_factor(step + 1, b1, b2), np.float64)
  sched = np.asarray(optim.linear_warmup_decay(lr, warmup, total_steps)(step), np.float64)
  effective = sched * factor if corrected else sched
  return Curve(step, factor, sched, effective, warmup, corrected, b1, b2, lr)
