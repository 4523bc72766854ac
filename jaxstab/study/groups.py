"""One seed group of a setting: start (or resume), train to a step evaluating dev on the way,
write each real seed's files.

K seeds (the programs' seeds_per_group) advance together through one compiled step; a group
shorter than K is padded with repeats of its last run, whose results are dropped. A group's
checkpoint holds its device state and its host-side progress (`Progress`), so a rerun resumes
mid-group. A group with no checkpoint of its own starts from the newest checkpoint of a larger
group holding all its seeds, if there is one: that is how the groups formed after K was halved
(an out-of-memory error, sizing.py) go on from where the group that failed had got to. Reads only
the setting's records (plan.Plan, plan.Engine), never the config.
"""
import dataclasses
import json
import re
import time
from typing import Any, Callable, Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxstab.data import metrics
from jaxstab.engine import memory, parallel, train as train_lib
from jaxstab.infra import checkpoint, fs
from jaxstab.results import outputs
from jaxstab.study import early_stop, merge, progress as progress_lib, workdir as workdir_lib
from jaxstab.study import representations
from jaxstab.study.plan import Engine, Plan


@dataclasses.dataclass
class Progress:
  """One seed group's host-side progress (what a checkpoint stores besides the device state)."""
  seeds: List[int]
  records: Dict[int, list]
  last_loss: list
  step: int = 0
  # The main dev set's logits of the newest evaluation, [seeds, examples, outputs] float32, and
  # its step. Not in the checkpoint: the final ones are written with each seed's files, and a
  # group resumed after its final evaluation recomputes them from its restored params.
  logits: Optional[np.ndarray] = None
  logits_step: Optional[int] = None

  def host_state(self):
    return {"records": {str(s): self.records[s] for s in self.seeds},
            "last_loss": self.last_loss}


@dataclasses.dataclass
class Trained:
  """A group trained up to a step and not yet written: its device state, its progress, and its
  checkpointer (still open: the caller writes and closes it)."""
  state: Any
  progress: Progress
  ckpt: checkpoint.GroupCheckpointer


def group_name(group, k: int) -> str:
  return f"seeds_{'-'.join(map(str, group))}_of_{k}"


_GROUP_NAME = re.compile(r"seeds_(\d+(?:-\d+)*)_of_(\d+)")


def saved_groups(workdir: str):
  """(name, seeds, k) of every seed group with a checkpoint folder in the workdir."""
  root = fs.join(workdir, "checkpoints")
  found = [(name, _GROUP_NAME.fullmatch(name)) for name in
           (fs.listdir(root) if fs.isdir(root) else [])]
  return [(name, [int(x) for x in m.group(1).split("-")], int(m.group(2)))
          for name, m in found if m]


def padded(group, k: int):
  """A group padded to K slots with repeats of its last run (whose results are dropped)."""
  return list(group) + [group[-1]] * (k - len(group))


def keys(plan: Plan, numbers):
  """The seed keys (head, dropout, Mixout) and data-order keys of runs `numbers`."""
  runs = [plan.runs[n] for n in numbers]
  seed_keys = np.stack([np.asarray(train_lib.seed_key(r.init_seed)) for r in runs])
  data_keys = np.stack([np.asarray(train_lib.data_key_of(train_lib.seed_key(
      r.init_seed if r.data_seed is None else r.data_seed))) for r in runs])
  return seed_keys, data_keys


def train_and_write(plan: Plan, engine: Engine, group, stop,
                    initial: Optional[Callable] = None) -> None:
  """Trains one group to the end (train_to), writes each real seed's files into runs/, removes
  the group's checkpoints."""
  done = train_to(plan, engine, group, stop, plan.total_steps, initial)
  final_logits(done.state, engine, done.progress)
  representations.write(plan, engine, done.state, done.progress)  # before the .json (finished)
  write(plan, done.state, done.progress)
  done.ckpt.close(remove=parallel.is_primary())
  remove_finished(plan.workdir)
  parallel.barrier("seed group written")


def remove_finished(workdir: str) -> None:
  """Removes the checkpoints of groups whose seeds are all written (a larger group's, left when
  K was halved, once the smaller groups that took its seeds over are done)."""
  if not parallel.is_primary():
    return
  for name, seeds, _ in saved_groups(workdir):
    if all(fs.isfile(workdir_lib.run_path(workdir, n, "json")) for n in seeds):
      fs.rmtree(fs.join(workdir, "checkpoints", name))


def train_to(plan: Plan, engine: Engine, group, stop, until: int,
             initial: Optional[Callable] = None) -> Trained:
  """Trains one group of seeds together up to step `until`, evaluating dev at the points of
  plan.eval_steps not past it, and returns it unwritten. It starts from the group's newest
  checkpoint, else a larger group's holding its seeds (after K was halved), else `initial()` ->
  (state, progress) (the early stop's regrouped survivors), else a fresh state."""
  ckpt = checkpoint.GroupCheckpointer(plan.workdir, group_name(
      group, engine.programs.seeds_per_group), plan.saving.every_steps, plan.saving.keep)
  try:
    return _train_to(plan, engine, group, stop, until, ckpt, initial)
  except BaseException:
    ckpt.close()  # an error (out of memory, say): the saves under way finish first
    raise


def _train_to(plan: Plan, engine: Engine, group, stop, until: int, ckpt,
              initial: Optional[Callable]) -> Trained:
  state, progress = _start(plan, engine, group, ckpt, initial)
  done = {r["step"] for r in progress.records[group[0]]}
  t0, eval_s, clock = time.time(), 0.0, progress_lib.Clock()
  for point in plan.eval_steps:
    if point in done or point > until:
      continue
    state = _train_until(state, engine, progress, point, ckpt, stop, clock)
    state, seconds = _evaluate(state, plan, engine, progress)
    eval_s += seconds
    clock.evaluated(seconds)
    if ckpt.due(progress.step):
      ckpt.save(progress.step, state, progress.host_state())
    left = sum(1 for p in plan.eval_steps if progress.step < p <= until)
    logging.info("seeds %s: step %d/%d, %s, dev %s %s", group, progress.step, plan.total_steps,
                 clock.line(progress.step, until, left,
                            engine.programs.spec.batch_size * len(group)),
                 plan.task.metric,
                 " ".join(f"{progress.records[s][-1][plan.task.metric]:.3f}" for s in group))
  wall = time.time() - t0
  logging.info("seeds %s: %.0f s, of which evaluation %.0f s (%.0f%%)", group, wall, eval_s,
               100 * eval_s / max(wall, 1e-9))
  return Trained(state, progress, ckpt)


def _start(plan: Plan, engine: Engine, group, ckpt, initial: Optional[Callable] = None):
  """The group's newest checkpoint (of this state's layout or an older one), else a larger
  group's (_adopt), else `initial()` (state, progress), else a fresh state. Checkpoints are
  restored into the state's shapes and shardings (nothing allocated before), so a fresh state is
  made only when there is none to restore."""
  layout = engine.layout or parallel.Layout.create()
  like = memory.abstract_state(engine.programs, layout)
  restored = ckpt.restore_latest(like, train_lib.older_layouts(like))
  if restored is not None:
    progress = Progress(list(group), {}, [])
    progress.step, state, host = restored
    progress.records = {s: host["records"][str(s)] for s in group}
    progress.last_loss = host["last_loss"]
    logging.info("seeds %s: resumed from the checkpoint at step %d", group, progress.step)
    return state, progress
  # A resumed second phase of an early stop starts after the stop step.
  adopted = _adopt(plan, engine, group, after=plan.stopping.step if initial else -1)
  if adopted is not None:
    return adopted
  if initial is not None:
    return initial()
  state = engine.programs.create(*keys(plan, padded(group, engine.programs.seeds_per_group)))
  state = engine.programs.prepare(state, engine.train_on_device)
  return state, Progress(list(group), {s: [] for s in group}, [None] * len(group))


def _adopt(plan: Plan, engine: Engine, group, after: int = -1):
  """(state, progress) of `group` taken from the newest checkpoint, past step `after`, of a group
  of another size that holds all its seeds (its rows, regrouped and padded to this K), or None.
  Each seed's state and records are its own whatever group it ran in, so the seeds go on as if
  never regrouped."""
  k, layout = engine.programs.seeds_per_group, engine.layout or parallel.Layout.create()
  for name, seeds, size in saved_groups(plan.workdir):
    if size == k or not set(group) <= set(seeds):
      continue
    old = checkpoint.GroupCheckpointer(plan.workdir, name, plan.saving.every_steps,
                                       plan.saving.keep)
    newest = old.newest_step()
    restored = (old.restore_latest(memory.abstract_state(engine.programs_for(size), layout))
                if newest is not None and newest > after else None)
    old.close()
    if restored is None or restored[0] <= after:
      continue
    step, state, host = restored
    rows = [seeds.index(n) for n in padded(group, k)]
    state = jax.device_put(early_stop.take(state, rows), layout.seed_sharding(k))
    progress = Progress(list(group), {s: host["records"][str(s)] for s in group},
                        [host["last_loss"][seeds.index(s)] for s in group], step)
    logging.info("seeds %s: resumed from step %d of the checkpoint of %s", group, step, name)
    return state, progress
  return None


def _train_until(state, engine: Engine, progress: Progress, point: int, ckpt, stop, clock):
  """Train steps up to `point`; checkpoints when due; a SIGTERM saves and stops."""
  while progress.step < point:
    state = engine.programs.step(state, engine.train_on_device, engine.programs.anchor)
    progress.step += 1
    clock.stepped(progress.step)
    checkpoint.fault("kill_at_step", progress.step)
    checkpoint.fault("sigterm_at_step", progress.step)
    if stop[0]:
      ckpt.save(progress.step, state, progress.host_state(), wait=True)
      raise checkpoint.Preempted(f"stopped by SIGTERM at step {progress.step}; checkpoint in "
                                 f"{ckpt.directory}; rerun the same command to resume")
    if ckpt.due(progress.step) and progress.step != point:
      ckpt.save(progress.step, state, progress.host_state())
  return state


def _evaluate(state, plan: Plan, engine: Engine, progress: Progress):
  """Reads the mean training loss since the last evaluation, evaluates dev, appends records.
  Returns (state with the loss sums reset, seconds spent in evaluation)."""
  if progress.step > 0:  # mean training loss since the previous evaluation, read once here
    loss = parallel.to_host(state.loss_sum / jnp.maximum(state.loss_count, 1.0))
    state = state.replace(loss_sum=jnp.zeros_like(state.loss_sum),
                          loss_count=jnp.zeros_like(state.loss_count))
    progress.last_loss = [float(x) for x in loss[:len(progress.seeds)]]
  t0 = time.time()  # the train steps before it have finished: the loss was read above
  n = len(progress.seeds)
  found = [{} for _ in progress.seeds]
  sets = [("", engine.dev_on_device, engine.dev_labels)] + [
      (f"{name}_", batches, labels) for name, (batches, labels) in engine.extra_dev.items()]
  for prefix, batches, labels in sets:
    logits = dev_logits(state, engine, batches, len(labels), n)
    if not prefix:
      progress.logits, progress.logits_step = logits, progress.step
    for i in range(n):
      found[i].update({prefix + key: v for key, v in
                       metrics.score(plan.task.metric, logits[i], labels).items()})
  seconds = time.time() - t0
  checkpoint.fault("kill_in_eval", progress.step)
  lr = float(engine.programs.schedule(max(progress.step - 1, 0)))
  for i, s in enumerate(progress.seeds):
    progress.records[s].append(dict(kind="dev", seed=s, step=progress.step,
                                    train_loss=progress.last_loss[i], lr=lr, **found[i]))
  return state, seconds


def dev_logits(state, engine: Engine, batches, examples: int, seeds: int) -> np.ndarray:
  """The logits of a dev set for the group's first `seeds` slots (the padding dropped),
  [seeds, examples, outputs] float32 on the host."""
  logits = parallel.to_host(engine.programs.eval_logits(state.params, batches))
  k = engine.programs.seeds_per_group
  return logits.astype(np.float32).reshape(k, -1, logits.shape[-1])[:seeds, :examples]


def final_logits(state, engine: Engine, progress: Progress) -> None:
  """Makes sure `progress.logits` are those of the final evaluation. They are, unless the group
  was resumed from a checkpoint saved after it (a kill between that save and the seeds' files):
  then the same program on the same restored params computes them again, bit for bit."""
  if progress.logits is None or progress.logits_step != progress.step:
    progress.logits = dev_logits(state, engine, engine.dev_on_device, len(engine.dev_labels),
                                 len(progress.seeds))
    progress.logits_step = progress.step


def write(plan: Plan, state, progress: Progress, partial: bool = False) -> None:
  """Each real seed's probe, metrics, end-of-training dev logits (when `progress` holds those of
  its last step: final_logits) and (last: it marks the seed finished) its record; `partial`:
  the probe and metrics only (a run paused by an early stop)."""
  probes = {key: parallel.to_host(v) for key, v in state.probe.items()}
  diverged = parallel.to_host(state.diverged_at)
  for i, s in enumerate(progress.seeds if parallel.is_primary() else []):
    path = lambda kind, s=s: workdir_lib.run_path(plan.workdir, s, kind)
    outputs.write_npz(path("npz"), **{key: v[i] for key, v in probes.items()})
    fs.write_lines(path("jsonl"), (json.dumps(r) + "\n" for r in progress.records[s]))
    if partial:
      continue
    if progress.logits is not None and progress.logits_step == progress.step:
      outputs.write_npz(path("logits"), logits=progress.logits[i])
    record = merge.run_record(s, progress.records[s], plan.task, progress.last_loss[i])
    record.update(plan.runs[s].record())
    record["diverged_at"] = int(diverged[i]) if diverged[i] >= 0 else None
    outputs.write_json(path("json"), record)
  if plan.saving.keep_final_params and not partial:
    for i, s in enumerate(progress.seeds):
      checkpoint.save_params(plan.workdir, s,
                             jax.tree_util.tree_map(lambda x, i=i: x[i], state.params))
