"""When a setting evaluates dev: its own evenly spaced points, or the reference code's rule."""
from jaxstab.config import reference


def eval_steps(task: str, steps_per_epoch: int, total: int, every: int, per_epoch: int):
  """When dev is evaluated: every (train.eval_every_steps) = 0 -> eval_points (per_epoch =
  train.evals_per_epoch, evenly); N > 0 -> every N steps and each epoch end, the reference's
  rule; -1 -> the same with the reference's own N for the task (reference_eval_steps)."""
  if every == 0:
    return eval_points(steps_per_epoch, total, per_epoch)
  return reference.reference_eval_steps(task, steps_per_epoch, total,
                                        every=None if every < 0 else every)


def eval_points(steps_per_epoch: int, total: int, per_epoch: int):
  """Step 0, `per_epoch` evenly spaced points in each epoch (the last at its end), and the end."""
  pts = {0, total}
  epoch = 0
  while epoch * steps_per_epoch < total:
    for k in range(1, per_epoch + 1):
      pts.add(min(epoch * steps_per_epoch + round(k * steps_per_epoch / per_epoch), total))
    epoch += 1
  return sorted(pts)
