"""Which seeds stand for a setting's failed and successful runs, and why: the report's
gradient-norm figure shows them and the loss-surface analysis spans its plane through them.

The failed representative is the failed run with the lowest final dev metric (a run with no
finite metric, e.g. one that diverged, counts as the lowest); the successful one is the run with
the highest final dev metric among the successful runs. Ties go to the smaller seed. When a
setting has no failed run (or no successful one) the worst and the best run are shown instead,
and the reason says so.
"""
import dataclasses
import math
from typing import List, Optional

from jaxstab.data import metrics
from jaxstab.results.records import RunRecord, Setting


@dataclasses.dataclass
class Pick:
  failed_seed: Optional[int]      # the "failed" panel's seed (the worst run when none failed)
  success_seed: Optional[int]     # the "successful" panel's seed (the best run)
  failed_label: str               # e.g. "failed seed 3" or "worst seed 3 (no failed run)"
  success_label: str
  reason: str                     # one sentence for the caption
  failed_seeds: List[int]         # every failed run's seed
  success_seeds: List[int]        # every successful run's seed


def is_failed(setting: Setting, run: RunRecord) -> bool:
  """The summary's `failed` flag; recomputed from the majority line when a summary lacks it."""
  if run.failed is not None:
    return bool(run.failed)
  value = setting.final(run)
  return bool(run.diverged_at is not None or metrics.is_failed(value, setting.majority))


def _score(setting: Setting, run: RunRecord) -> float:
  value = setting.final(run)
  return value if math.isfinite(value) else -math.inf


def _fmt(setting: Setting, run: RunRecord) -> str:
  value = setting.final(run)
  text = f"{setting.metric} {value:.3f}" if math.isfinite(value) else f"no finite {setting.metric}"
  if run.diverged_at is not None:
    text += f", diverged at step {run.diverged_at}"
  return text


def pick(setting: Setting) -> Pick:
  runs = [r for r in setting.runs if r.seed is not None]
  failed = [r for r in runs if is_failed(setting, r)]
  ok = [r for r in runs if not is_failed(setting, r)]
  seeds = lambda rs: [int(r.seed) for r in rs]
  if not runs:
    return Pick(None, None, "", "", "The setting has no runs.", [], [])
  lowest = lambda rs: min(rs, key=lambda r: (_score(setting, r), int(r.seed)))
  highest = lambda rs: max(rs, key=lambda r: (_score(setting, r), -int(r.seed)))
  if failed and ok:
    f, s = lowest(failed), highest(ok)
    reason = (f"Seed {f.seed} is the failed run with the lowest final dev {setting.metric} "
              f"({_fmt(setting, f)}); seed {s.seed} is the successful run with the highest "
              f"({_fmt(setting, s)}).")
    labels = (f"failed seed {f.seed}", f"successful seed {s.seed}")
  elif ok:  # no failed run
    f = lowest(ok)
    s = highest([r for r in ok if r is not f] or ok)
    reason = (f"No run failed, so the worst run (seed {f.seed}, {_fmt(setting, f)}) and the "
              f"best run (seed {s.seed}, {_fmt(setting, s)}) are shown.")
    labels = (f"worst seed {f.seed} (no failed run)", f"best seed {s.seed}")
  else:  # every run failed
    f = lowest(failed)
    s = highest([r for r in failed if r is not f] or failed)
    reason = (f"Every run failed: seed {f.seed} is the lowest ({_fmt(setting, f)}) and seed "
              f"{s.seed}, shown in place of a successful run, the highest ({_fmt(setting, s)}).")
    labels = (f"failed seed {f.seed}", f"best seed {s.seed} (also failed)")
  if f is s:
    reason = f"Only one run (seed {f.seed}, {_fmt(setting, f)}), shown alone."
  return Pick(int(f.seed), int(s.seed), labels[0], labels[1], reason, seeds(failed),
              seeds(ok))
