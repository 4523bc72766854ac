"""The seed axis on a device mesh: 8 simulated CPU devices give the 1-device results."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxstab import parallel

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--config=configs/demo.py:seeds=1-3", "--config.train.max_steps=6",
        "--config.train.max_seq_length=24", "--config.train.evals_per_epoch=1",
        "--config.probe.every=1"]


def _run(workdir, devices):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  out = subprocess.run([sys.executable, "-m", "jaxstab.main", *ARGS, f"--workdir={workdir}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stderr


def test_eight_devices_match_one(tmp_path):
  log1 = _run(tmp_path / "one", 1)
  log8 = _run(tmp_path / "eight", 8)
  # one CPU device maps over the seeds one at a time, eight devices vmap (train.seed_axis=auto)
  assert "(map over seeds), on 1 device(s)" in log1
  assert "8 per step (vmap over seeds), on 8 device(s)" in log8
  s1 = json.loads((tmp_path / "one" / "summary.json").read_text())
  s8 = json.loads((tmp_path / "eight" / "summary.json").read_text())
  assert [r["seed"] for r in s8["runs"]] == [1, 2, 3]  # padding seeds are not reported
  for a, b in zip(s1["runs"], s8["runs"]):
    assert a["final"] == b["final"] and a["best"] == b["best"]
    assert a["final_train_loss"] == pytest.approx(b["final_train_loss"], rel=1e-5)
  with np.load(tmp_path / "one" / "probe.npz") as p1, np.load(tmp_path / "eight" / "probe.npz") as p8:
    for key in ("grad_norm", "loss", "total_grad_norm", "update_norm"):
      np.testing.assert_allclose(p8[key], p1[key], rtol=1e-5, err_msg=key)


class _FakeDevice:
  def __init__(self, free):
    self._free = free

  def memory_stats(self):
    return {"bytes_limit": self._free, "bytes_in_use": 0} if self._free else None


class _FakeLayout:
  def __init__(self, n, free):
    self.num_devices = n
    self.mesh = type("M", (), {"devices": np.asarray([_FakeDevice(free)] * n)})()


def test_seeds_per_step_choice():
  gb = 1 << 30
  assert parallel.seeds_per_step(3, 25, _FakeLayout(1, 0), gb, 0) == 3
  assert parallel.seeds_per_step(0, 25, _FakeLayout(1, 0), gb, 0) == 25  # no memory info: all
  # 10 GB free, 0.8 * 10 - 2 shared = 6 GB -> 6 seeds of 1 GB.
  assert parallel.seeds_per_step(0, 25, _FakeLayout(1, 10 * gb), gb, 2 * gb) == 6
  assert parallel.seeds_per_step(0, 4, _FakeLayout(1, 10 * gb), gb, 2 * gb) == 4
  # On 4 devices each holds 6 -> 24, and K is a multiple of the device count.
  assert parallel.seeds_per_step(0, 25, _FakeLayout(4, 10 * gb), gb, 2 * gb) == 24
  assert parallel.seeds_per_step(3, 25, _FakeLayout(8, 0), gb, 0) == 8


def test_bytes_per_seed_grows_with_model_and_batch():
  small = parallel.bytes_per_seed(10**6, 16, 128, 256, 4, 4)
  assert parallel.bytes_per_seed(2 * 10**6, 16, 128, 256, 4, 4) - small == 16 * 10**6
  assert parallel.bytes_per_seed(10**6, 32, 128, 256, 4, 4) > 1.9 * (small - 16 * 10**6)


def _free_port():
  import socket  # pylint: disable=import-outside-toplevel
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
  """Two processes joined by jax.distributed (CPU collectives) run one study; process 0 writes."""
  _run(tmp_path / "one", 1)
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  cmd = [sys.executable, "-m", "jaxstab.main", *ARGS, "--config.checkpoint.every_steps=2",
         f"--workdir={tmp_path / 'two'}", f"--coordinator_address=127.0.0.1:{port}",
         "--num_processes=2"]
  procs = [subprocess.Popen(cmd + [f"--process_id={i}"], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in (0, 1)]
  logs = [p.communicate(timeout=600)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
  assert "process 1 of 2" in logs[1] and "on 2 device(s)" in logs[0]
  s1 = json.loads((tmp_path / "one" / "summary.json").read_text())
  s2 = json.loads((tmp_path / "two" / "summary.json").read_text())
  for a, b in zip(s1["runs"], s2["runs"]):
    assert a["final"] == b["final"] and a["best"] == b["best"]
    assert a["final_train_loss"] == pytest.approx(b["final_train_loss"], rel=1e-5)
  with np.load(tmp_path / "one" / "probe.npz") as p1, np.load(tmp_path / "two" / "probe.npz") as p2:
    np.testing.assert_allclose(p2["grad_norm"], p1["grad_norm"], rtol=1e-5)
