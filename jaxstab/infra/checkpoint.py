"""Checkpoints of a seed group inside training, kept final params, and fault injection for tests.

A seed group's whole train state (params, optimizer state, step, keys, probe buffers, divergence
marks, running loss) is one pytree saved by orbax every `checkpoint.every_steps` steps; the
host-side loop state (evaluations so far, their metric records) travels beside it as JSON.
Saves are asynchronous, so training goes on while they are written; orbax commits a step
atomically, and a step that cannot be read falls back to the one before it. SIGTERM (what a
preemption sends) triggers a final synchronous checkpoint and a clean exit.
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

  def save(self, step: int, state, host: dict, wait: bool = False) -> None:
    ocp = self._ocp
    self._mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                 host=ocp.args.JsonSave(host)), force=True)
    fault("kill_in_save", step)
    if wait:
      self._mgr.wait_until_finished()

  def newest_step(self) -> Optional[int]:
    """The newest saved step (readable or not), or None."""
    return max(self._mgr.all_steps(), default=None) if self.enabled else None

  def restore_latest(self, like) -> Optional[tuple]:
    """(step, state, host) of the newest readable checkpoint, or None. `like` gives the
    structure, dtypes and shardings of the state."""
    if not self.enabled:
      return None
    ocp = self._ocp
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
    for step in sorted(self._mgr.all_steps(), reverse=True):
      try:
        got = self._mgr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), host=ocp.args.JsonRestore()))
        return step, got["state"], got["host"]
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("checkpoint step %d in %s is unreadable (%s); trying an older one",
                        step, self.directory, str(e).splitlines()[0] if str(e) else type(e).__name__)
    return None

  def close(self, remove: bool = False) -> None:
    if self._mgr is not None:
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
