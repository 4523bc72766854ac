"""Checkpoints of a seed group inside training, kept final params, and fault injection for tests.

A seed group's whole train state (params, optimizer state, step, keys, probe buffers, divergence
marks, running loss) is one pytree saved by orbax every `checkpoint.every_steps` steps; the
host-side loop state (evaluations so far, their metric records) travels beside it as JSON.
Saves are asynchronous, so training goes on while they are written; orbax commits a step
atomically. A step that cannot be read is renamed `<step>.unreadable` (orbax ignores that name,
and would refuse to save the step again while the folder had its number) and the group falls
back to the step before it; renamed, not deleted, because a read can fail for a reason that is
not damage. SIGTERM (what a preemption sends) triggers a final synchronous checkpoint and a
clean exit. A full disk during a save is errors.DiskFull, one line.
"""
import contextlib
import os
import signal
from typing import Optional

import jax
from absl import logging

from jaxstab.infra import fs
from jaxstab.infra.errors import ConfigError

# Tests only: JAXSTAB_FAULT="<where>:<step>" with where one of kill_at_step, kill_in_save,
# kill_in_eval (SIGKILL there) or sigterm_at_step (SIGTERM, as a preemption would send).
FAULT_ENV = "JAXSTAB_FAULT"


def fault(where: str, step: int) -> None:
  """Signals this process when JAXSTAB_FAULT asks for `where` at `step` (fault-injection tests)."""
  spec = os.environ.get(FAULT_ENV, "")
  for name, sig in (("kill", signal.SIGKILL), ("sigterm", signal.SIGTERM)):
    if spec == f"{where}:{step}" and where.startswith(name):
      logging.warning("fault injection: %s at %s", sig.name, spec)
      os.kill(os.getpid(), sig)


class Preempted(Exception):
  """Raised after the final checkpoint that a SIGTERM asked for."""


class GroupCheckpointer:
  """Orbax checkpoints of one seed group, in <workdir>/checkpoints/<group name>/."""

  def __init__(self, workdir: str, group_name: str, every_steps: int, keep: int):
    # orbax is imported where a checkpoint is written or read (here and below), not by every
    # module that imports this one for Preempted or params_dir: it adds ~0.3 s to an import.
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
    self._ocp = ocp
    self.every = int(every_steps)
    self.directory = fs.absolute(fs.join(workdir, "checkpoints", group_name))
    self._mgr = None
    if self.every > 0:
      self._mgr = ocp.CheckpointManager(
          self.directory, options=ocp.CheckpointManagerOptions(
              max_to_keep=max(int(keep), 1), enable_async_checkpointing=True, create=True))

  @property
  def enabled(self) -> bool:
    return self._mgr is not None

  def due(self, step: int) -> bool:
    return self.enabled and step > 0 and step % self.every == 0

  def _writing(self):
    # A save runs in orbax's threads: its error comes out of the next save or wait, not
    # necessarily the one of its own step, so the message names the folder.
    return fs.writing(f"a checkpoint in {self.directory}")

  def save(self, step: int, state, host: dict, wait: bool = False) -> None:
    ocp = self._ocp
    with self._writing():
      self._mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   host=ocp.args.JsonSave(host)), force=True)
    fault("kill_in_save", step)
    if wait:
      with self._writing():
        self._mgr.wait_until_finished()

  def newest_step(self) -> Optional[int]:
    """The newest saved step (readable or not), or None."""
    return max(self._mgr.all_steps(), default=None) if self.enabled else None

  def restore_latest(self, like, older=()) -> Optional[tuple]:
    """(step, state, host) of the newest readable checkpoint, or None. `like` gives the
    structure, dtypes and shardings of the state. `older` lists (layout, convert) pairs for
    checkpoints written in an earlier layout of the state: a step that does not read as `like`
    is read as each `layout` in turn, and `convert` makes the state of what it read."""
    if not self.enabled:
      return None
    ocp = self._ocp
    for step in sorted(self._mgr.all_steps(), reverse=True):
      why = None
      for target, convert in [(like, None), *older]:
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
        try:
          got = self._mgr.restore(step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract), host=ocp.args.JsonRestore()))
        except Exception as e:  # pylint: disable=broad-except
          # The reason kept is the current layout's: the older layouts are a fallback.
          why = why or (str(e).splitlines()[0] if str(e) else type(e).__name__)
          continue
        return step, (convert(got["state"]) if convert else got["state"]), got["host"]
      self._set_aside(step, why)
    return None

  def _set_aside(self, step: int, why: str) -> None:
    """Renames an unreadable step `<step>.unreadable`, so that the group can save that step
    again when it gets there, and makes the manager forget it."""
    path = fs.join(self.directory, str(step))
    moved = None
    if jax.process_index() == 0:
      moved = fs.move_aside(path, "unreadable")
    if jax.process_count() > 1:  # every process reloads after the rename, not before
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      multihost_utils.sync_global_devices(f"checkpoint step {step} set aside")
    self._mgr.reload()
    logging.warning("checkpoint step %d in %s is unreadable (%s); renamed it %s and trying an "
                    "older one", step, self.directory, why, moved or f"{path}.unreadable")

  def close(self, remove: bool = False) -> None:
    if self._mgr is not None:
      with self._writing():
        self._mgr.wait_until_finished()
      self._mgr.close()
    if remove:
      fs.rmtree(self.directory)


def params_dir(workdir: str, seed: int) -> str:
  return fs.absolute(fs.join(workdir, "params", f"seed_{seed}"))


def save_params(workdir: str, seed: int, params) -> None:
  """Final parameters of one seed (for the loss surface and forgetting analyses)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel  # see GroupCheckpointer.__init__
  path = params_dir(workdir, seed)
  fs.rmtree(path)
  with fs.writing(f"the final parameters of seed {seed} in {path}"):
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(path, params)


def load_params(workdir: str, seed: int, like):
  """The final parameters `save_params` kept, restored with the structure of `like`."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel  # see GroupCheckpointer.__init__
  path = params_dir(workdir, seed)
  if not fs.isdir(path):
    raise ConfigError(f"no kept parameters for seed {seed} in {path}; train with "
                      "--config.checkpoint.keep_final_params=True")
  abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(path, abstract)


@contextlib.contextmanager
def sigterm_flag():
  """Yields a one-element list that becomes [True] when SIGTERM arrives (main thread only)."""
  flag = [False]

  def handler(signum, frame):  # pylint: disable=unused-argument
    logging.warning("SIGTERM: checkpointing and stopping")
    flag[0] = True

  try:
    old = signal.signal(signal.SIGTERM, handler)
  except ValueError:  # not the main thread: no handler, no flag
    yield flag
    return
  try:
    yield flag
  finally:
    signal.signal(signal.SIGTERM, old)
