"""The progress line of a seed group: examples per second and the time left.

Both are measured from the moment the train step has been compiled, not from the group's start:
jit compiles on the first call, so counting from the start put the compilation into every early
estimate (a demo run that took 81 s announced "ETA 1081s" at step 0, and was right only after a
fifth of the run). The time left is the remaining steps at the measured seconds per step plus the
remaining evaluations at the measured seconds per evaluation; before any step has run there is no
estimate, and the line says so.
"""
import dataclasses
import time
from typing import List, Optional


@dataclasses.dataclass
class Clock:
  """Wall-clock bookkeeping of one group; `stepped` after each step call, `evaluated` after each
  evaluation. Host-side only: it reads no device value, so it adds no sync to the loop."""
  started: Optional[float] = None   # when the first step call returned (it compiled, then queued)
  start_step: int = 0               # steps done before that first step
  evals: List[float] = dataclasses.field(default_factory=list)        # seconds of every evaluation
  evals_after: List[float] = dataclasses.field(default_factory=list)  # those after `started`

  def stepped(self, step: int, now: Optional[float] = None) -> None:
    if self.started is None:
      self.started, self.start_step = time.time() if now is None else now, step - 1

  def evaluated(self, seconds: float) -> None:
    self.evals.append(seconds)
    if self.started is not None:
      self.evals_after.append(seconds)

  def seconds_per_step(self, step: int, now: Optional[float] = None) -> Optional[float]:
    if self.started is None or step <= self.start_step:
      return None
    now = time.time() if now is None else now
    return max(now - self.started - sum(self.evals_after), 0.0) / (step - self.start_step)

  def eta(self, step: int, end: int, evals_left: int, now: Optional[float] = None
          ) -> Optional[float]:
    """Seconds left to train to `end` with `evals_left` evaluations on the way; None before the
    first measured step. An evaluation's cost is the mean of those after the first, which
    compiled the evaluation program (the first one's, while it is the only one)."""
    per_step = self.seconds_per_step(step, now)
    if per_step is None:
      return None
    measured = self.evals[1:] or self.evals
    per_eval = sum(measured) / len(measured) if measured else 0.0
    return (end - step) * per_step + evals_left * per_eval

  def line(self, step: int, end: int, evals_left: int, examples_per_step: int,
           now: Optional[float] = None) -> str:
    """'412.3 examples/s, ETA 1m05s', or 'ETA after the first steps' before any step ran."""
    per_step = self.seconds_per_step(step, now)
    if per_step is None:
      return "ETA after the first steps (compiling)"
    rate = examples_per_step / per_step if per_step > 0 else float("inf")
    return f"{rate:.1f} examples/s, ETA {duration(self.eta(step, end, evals_left, now))}"


def duration(seconds: float) -> str:
  """42s, 3m07s, 2h05m."""
  s = int(round(seconds))
  if s < 60:
    return f"{s}s"
  if s < 3600:
    return f"{s // 60}m{s % 60:02d}s"
  return f"{s // 3600}h{(s % 3600) // 60:02d}m"
