"""Kill a run anywhere, rerun the same command: the results are bit-identical."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from jaxstab import checkpoint, lock
from jaxstab.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--config=configs/demo.py:seeds=1-2", "--config.train.max_steps=12",
        "--config.train.epochs=1", "--config.train.max_seq_length=24",
        "--config.train.evals_per_epoch=2", "--config.probe.every=1",
        "--config.checkpoint.every_steps=2"]


def _cli(workdir, fault="", extra=()):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop(checkpoint.FAULT_ENV, None)
  if fault:
    env[checkpoint.FAULT_ENV] = fault
  return subprocess.run([sys.executable, "-m", "jaxstab.main", *ARGS, *extra,
                         f"--workdir={workdir}"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _results(workdir):
  summary = json.loads((workdir / "summary.json").read_text())
  with np.load(workdir / "probe.npz") as z:
    probe = {k: z[k] for k in z.files}
  return summary["runs"], probe, (workdir / "metrics.jsonl").read_text()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  out = _cli(workdir)
  assert out.returncode == 0, out.stderr[-3000:]
  return _results(workdir)


@pytest.mark.parametrize("fault,code", [("kill_at_step:7", -9), ("kill_in_save:4", -9),
                                        ("kill_in_eval:12", -9), ("sigterm_at_step:5", 143)])
def test_killed_and_resumed_run_is_bit_identical(tmp_path, reference, fault, code):
  killed = _cli(tmp_path, fault)
  assert killed.returncode == code, killed.stderr[-3000:]
  assert not (tmp_path / "summary.json").exists()  # nothing that looks finished
  if code == 143:
    assert "rerun the same command to resume" in killed.stderr
  resumed = _cli(tmp_path)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed from the checkpoint at step" in resumed.stderr
  runs, probe, metrics_text = _results(tmp_path)
  ref_runs, ref_probe, ref_metrics = reference
  assert runs == ref_runs
  assert probe.keys() == ref_probe.keys()
  for k in probe:
    np.testing.assert_array_equal(probe[k], ref_probe[k], err_msg=k)
  assert metrics_text == ref_metrics
  assert not (tmp_path / "checkpoints" / "seeds_1-2_of_2").exists()  # cleaned up when done


def test_diverged_seeds_survive_a_kill_and_resume(tmp_path):
  """lr 1e30: both seeds diverge early; the divergence marks resume with the rest."""
  extra = ["--config.optim.lr=1e30"]
  ref = _cli(tmp_path / "ref", extra=extra)
  assert ref.returncode == 0, ref.stderr[-3000:]
  killed = _cli(tmp_path / "k", "kill_at_step:7", extra)
  assert killed.returncode == -9
  resumed = _cli(tmp_path / "k", extra=extra)
  assert resumed.returncode == 0 and "resumed from the checkpoint" in resumed.stderr
  runs, probe, _ = _results(tmp_path / "k")
  ref_runs, ref_probe, _ = _results(tmp_path / "ref")
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


def test_workdir_lock_refuses_a_live_owner_and_takes_over_a_stale_one(tmp_path):
  owner_code = ("import sys; from jaxstab import lock; l = lock.workdir_lock(sys.argv[1]); "
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
