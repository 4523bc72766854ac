"""Start many runs, continue the best (Dodge et al. 2020): train.early_stop = {at, keep, by}.

Every run of a setting trains to the stop step (a fraction `at` of the total). There the runs
are ranked, by the dev metric at that step (`by=dev`) or by the probe's failure forecast
(`by=probe`, forecast.failure_scores), and only the best `keep` go on. The stopped runs keep
their records up to the stop step, are marked `stopped_at`, and leave the spread statistics.

The survivors are regrouped into new, smaller seed groups, so a stopped run costs nothing after
the stop step: its slot is not computed, masked or padded. Between the two phases each first-
phase group's whole state waits in an orbax checkpoint (checkpoints/early_stop/), so the host
never holds more than one group; the ranking is written to early_stop.json, and a rerun resumes
from whichever of the two is on disk.
"""
import dataclasses
import math
from typing import Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxstab.infra import fs
from jaxstab.infra.errors import ConfigError
from jaxstab.results import forecast, outputs

CRITERIA = ("dev", "probe")
DECISION = "early_stop.json"   # the ranking and who went on, in the setting's workdir
CHECKPOINTS = "early_stop"     # under checkpoints/: the first phase's group states


@dataclasses.dataclass(frozen=True)
class Spec:
  at: float      # fraction of the total steps
  keep: int      # runs continued
  by: str        # one of CRITERIA
  step: int      # the stop step: round(at x total), at least 1, before the last step


def enabled(cfg) -> bool:
  return float(cfg.train.early_stop.at) > 0


def check(cfg, n_runs: int) -> None:
  """Config errors of train.early_stop (before anything is written)."""
  if not enabled(cfg):
    return
  es = cfg.train.early_stop
  if not 0 < float(es.at) < 1:
    raise ConfigError(f"train.early_stop.at={es.at}: a fraction of training in (0, 1), or 0 = off")
  if not 1 <= int(es.keep) < n_runs:
    raise ConfigError(f"train.early_stop.keep={es.keep}: continue between 1 and {n_runs - 1} of "
                      f"the {n_runs} runs (keeping all of them stops none)")
  if es.by not in CRITERIA:
    raise ConfigError(f"train.early_stop.by={es.by!r}: choose one of {', '.join(CRITERIA)}")
  if es.by == "probe" and int(cfg.probe.every) <= 0:
    raise ConfigError("train.early_stop.by=probe ranks runs by their probe records: set "
                      "probe.every > 0 (e.g. 1 or 5)")


def spec(cfg, total_steps: int) -> Optional[Spec]:
  if not enabled(cfg):
    return None
  es = cfg.train.early_stop
  step = min(max(1, int(round(float(es.at) * total_steps))), max(total_steps - 1, 1))
  return Spec(at=float(es.at), keep=int(es.keep), by=str(es.by), step=step)


def score_dev(records: List[dict], metric: str, step: int) -> float:
  """The dev criterion's score of one run (lower = continued): minus its dev metric at `step`;
  a run with no finite metric there ranks last."""
  at = [r for r in records if r["step"] == step]
  value = at[-1][metric] if at else float("nan")
  return -value if math.isfinite(value) else math.inf


def score_probe(probe_buffers: Dict[str, np.ndarray], groups, step: int) -> np.ndarray:
  """The probe criterion's scores of a group's runs (lower = continued) from their probe
  buffers as the train state holds them at `step` (forecast.failure_scores; NaN ranks last)."""
  scores = forecast.failure_scores(probe_buffers["grad_norm"], probe_buffers["step"], groups,
                                   step, loss=probe_buffers.get("loss"))
  return np.where(np.isnan(scores), np.inf, scores)


def choose(scores: Dict[int, float], keep: int):
  """(continued, stopped) run numbers: the `keep` lowest scores go on; ties go to the smaller
  run number."""
  order = sorted(scores, key=lambda n: (scores[n], n))
  return sorted(order[:keep]), sorted(order[keep:])


def checkpoint_name(group_name: str) -> str:
  return f"{CHECKPOINTS}/{group_name}"


def scores_path(workdir: str, group_name: str) -> str:
  """Written once a first-phase group's state is saved: its runs' scores and host progress."""
  return fs.join(workdir, "checkpoints", CHECKPOINTS, f"{group_name}.json")


def decision_path(workdir: str) -> str:
  return fs.join(workdir, DECISION)


def write_decision(workdir: str, spec_: Spec, scores: Dict[int, float], continued, stopped,
                   groups: Dict[str, List[int]]) -> dict:
  decision = {"at": spec_.at, "keep": spec_.keep, "by": spec_.by, "step": spec_.step,
              "started": len(scores), "continued": continued, "stopped": stopped,
              "scores": {str(n): (None if not math.isfinite(v) else v) for n, v in scores.items()},
              "groups": groups}
  outputs.write_json(decision_path(workdir), decision)
  return decision


def take(state, rows: List[int]):
  """Rows `rows` of a group state (leading seed axis), on the device: one compiled program for
  the whole state (eagerly, every leaf's gather would be a program of its own to compile)."""
  return _take_rows(state, jnp.asarray(rows, jnp.int32))


@jax.jit
def _take_rows(state, idx):
  return jax.tree_util.tree_map(lambda x: jnp.take(x, idx, axis=0), state)


@jax.jit
def concat(states):
  """Group states joined along their seed axis (one compiled program, as `take`)."""
  return jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs, axis=0), *states)


def steps_trained(n_started: int, n_continued: int, stop_step: int, total: int) -> dict:
  """Seed-steps computed with and without stopping (the compute an early stop saves)."""
  spent = n_started * stop_step + n_continued * (total - stop_step)
  return {"seed_steps": spent, "seed_steps_without": n_started * total,
          "fraction_of_compute": spent / max(n_started * total, 1)}
