"""Kill a run anywhere, rerun the same command: it resumes from the newest complete checkpoint
and the results are bit-identical."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstab.engine import train as train_lib
from jaxstab.infra import checkpoint, lock
from jaxstab.infra.errors import ConfigError
from tests import guards

ROOT = Path(__file__).resolve().parents[1]
# The run (guards.CHECKPOINT_ARGS): 2 seeds, 12 steps, evaluations at steps 0 and 12, a
# checkpoint every 2 steps. It resumes from the newest complete checkpoint at the fault. Saves
# are asynchronous and orbax commits a step (renames its folder to the step number) only when
# it is fully written, so the newest one started may still be in flight when the process is
# killed (measured: it was, for 6 and 10); then the one before it is the newest complete.
RESUME_AT = {"kill_at_step:7": (6, 4),    # saves started at 2, 4, 6; killed after step 7
             "kill_in_save:4": (2,),      # killed inside the save at 4
             "kill_in_eval:12": (10, 8),  # killed in the last evaluation, before its save
             "sigterm_at_step:5": (5,)}   # SIGTERM: a synchronous save at 5, then exit


def _cli(workdir, fault="", extra=()):
  return guards.checkpoint_cli(workdir, fault, extra)


def _results(workdir):
  summary = json.loads((workdir / "summary.json").read_text())
  with np.load(workdir / "probe.npz") as z:
    probe = {k: z[k] for k in z.files}
  return summary["runs"], probe, (workdir / "metrics.jsonl").read_text()


def _resume(workdir, fault, extra=()):
  """Reruns a killed run; checks it resumed from the newest complete checkpoint, which must be
  one RESUME_AT allows for `fault`."""
  assert not (workdir / "summary.json").exists()  # nothing that looks finished
  committed = guards.committed_checkpoints(workdir)
  assert committed and committed[-1] in RESUME_AT[fault], committed
  resumed = _cli(workdir, extra=extra)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  guards.check_resumed_at(resumed.stderr, committed[-1])
  return committed[-1]


@pytest.fixture(scope="module")
def reference(cli_root):
  workdir = cli_root / "uninterrupted"
  out = _cli(workdir)
  assert out.returncode == 0, out.stderr[-3000:]
  assert guards.resume_steps(out.stderr) == []
  return _results(workdir)


@pytest.mark.parametrize("fault,code", [("kill_at_step:7", -9), ("kill_in_save:4", -9),
                                        ("kill_in_eval:12", -9), ("sigterm_at_step:5", 143)])
def test_killed_and_resumed_run_is_bit_identical(cli_root, killed_at_step_7, reference, fault,
                                                 code):
  name = "resumed_" + fault.replace(":", "_")
  if fault == "kill_at_step:7":  # made once a session (conftest), also for test_planted_bugs
    workdir = killed_at_step_7(name)
  else:
    workdir = cli_root / name
    killed = _cli(workdir, fault)
    assert killed.returncode == code, killed.stderr[-3000:]
    if code == 143:
      assert "rerun the same command to resume" in killed.stderr
  step = _resume(workdir, fault)
  runs, probe, metrics_text = _results(workdir)
  ref_runs, ref_probe, ref_metrics = reference
  assert runs == ref_runs
  assert probe.keys() == ref_probe.keys()
  for k in probe:
    np.testing.assert_array_equal(probe[k], ref_probe[k], err_msg=k)
  assert metrics_text == ref_metrics
  assert not (workdir / "checkpoints" / "seeds_1-2_of_2").exists()  # cleaned up when done
  print(f"\n{fault}: resumed from step {step}")


def test_diverged_seeds_survive_a_kill_and_resume(cli_root):
  """lr 1e30: both seeds diverge early; the divergence marks resume with the rest."""
  extra = ["--config.optim.lr=1e30"]
  ref = _cli(cli_root / "diverged_ref", extra=extra)
  assert ref.returncode == 0, ref.stderr[-3000:]
  killed = _cli(cli_root / "diverged_killed", "kill_at_step:7", extra)
  assert killed.returncode == -9
  _resume(cli_root / "diverged_killed", "kill_at_step:7", extra)
  runs, probe, _ = _results(cli_root / "diverged_killed")
  ref_runs, ref_probe, _ = _results(cli_root / "diverged_ref")
  assert runs == ref_runs and all(r["diverged_at"] is not None and r["failed"] for r in runs)
  for k in probe:
    np.testing.assert_array_equal(probe[k], ref_probe[k], err_msg=k)


def test_truncated_checkpoint_falls_back_to_the_previous(tmp_path):
  state = {"w": jnp.arange(6.0), "step": jnp.int32(0)}
  ck = checkpoint.GroupCheckpointer(str(tmp_path), "g", every_steps=1, keep=3)
  for step in (1, 2):
    ck.save(step, {"w": state["w"] * step, "step": jnp.int32(step)}, {"at": step}, wait=True)
  ck.close()
  newest = tmp_path / "checkpoints" / "g" / "2"
  files = [p for p in newest.rglob("*") if p.is_file() and p.stat().st_size > 0]
  assert files
  for p in files:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
  ck = checkpoint.GroupCheckpointer(str(tmp_path), "g", every_steps=1, keep=3)
  step, restored, host = ck.restore_latest(state)
  assert step == 1 and host == {"at": 1}
  np.testing.assert_array_equal(np.asarray(restored["w"]), np.arange(6.0))
  ck.close()


@flax.struct.dataclass
class _StateWithoutOrder:
  """train.TrainState as it was before it kept its epoch's order: what older checkpoints hold."""
  step: jax.Array
  params: dict
  opt_state: dict
  key: jax.Array
  data_key: jax.Array
  probe: dict
  loss_sum: jax.Array
  loss_count: jax.Array
  diverged_at: jax.Array


def test_checkpoint_without_the_epoch_order_is_read_by_the_older_layout(tmp_path):
  """A checkpoint of the state without `order` / `order_epoch` is refused as `like` and read
  through train.older_layouts: every saved field comes back exact, in a TrainState whose
  order_epoch is -1, so its next step draws the epoch's order again (the draw
  test_train.test_order_drawn_once_per_epoch_equals_the_per_step_permutation checks)."""
  rng = np.random.default_rng(0)
  arr = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  old = _StateWithoutOrder(
      step=jnp.int32(6), params={"w": arr(3, 2)}, opt_state={"mu": arr(3, 2)},
      key=jax.random.PRNGKey(3), data_key=jax.random.fold_in(jax.random.PRNGKey(5), 1),
      probe={"loss": arr(4)}, loss_sum=jnp.float32(1.5), loss_count=jnp.float32(3.0),
      diverged_at=jnp.int32(-1))
  like = train_lib.TrainState(
      step=jnp.int32(0), params={"w": jnp.zeros((3, 2))}, opt_state={"mu": jnp.zeros((3, 2))},
      key=jax.random.PRNGKey(0), data_key=jax.random.PRNGKey(0),
      order=jnp.zeros((8,), jnp.int32), order_epoch=jnp.int32(-1), probe={"loss": jnp.zeros(4)},
      loss_sum=jnp.float32(0), loss_count=jnp.float32(0), diverged_at=jnp.int32(-1))
  ck = checkpoint.GroupCheckpointer(str(tmp_path), "g", every_steps=1, keep=3)
  ck.save(6, old, {"at": 6}, wait=True)
  assert ck.restore_latest(like) is None  # the current layout alone cannot read it
  step, state, host = ck.restore_latest(like, train_lib.older_layouts(like))
  ck.close()
  assert step == 6 and host == {"at": 6} and isinstance(state, train_lib.TrainState)
  for field in dataclasses.fields(old):
    a, b = getattr(old, field.name), getattr(state, field.name)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b), field.name
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=field.name)
  assert int(state.order_epoch) == -1 and state.order.shape == (8,)


def test_workdir_lock_refuses_a_live_owner_and_takes_over_a_stale_one(tmp_path):
  owner_code = ("import sys; from jaxstab.infra import lock; l = lock.workdir_lock(sys.argv[1]); "
                "l.__enter__(); print('locked', flush=True); sys.stdin.read()")
  owner = subprocess.Popen([sys.executable, "-c", owner_code, str(tmp_path)], cwd=ROOT,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    assert owner.stdout.readline().strip() == "locked"
    with pytest.raises(ConfigError, match=f"pid {owner.pid}"):
      with lock.workdir_lock(str(tmp_path)):
        pass
  finally:
    owner.kill()
    owner.wait()
  (tmp_path / ".lock").write_text(str(owner.pid))  # names a dead pid, locked by nobody: stale
  with lock.workdir_lock(str(tmp_path)):  # the owner is gone: its flock went with it
    assert (tmp_path / ".lock").read_text() == str(os.getpid())
  assert (tmp_path / ".lock").read_text() == ""  # kept, never deleted (lock.py says why)
