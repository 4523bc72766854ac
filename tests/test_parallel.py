"""The seed axis on a device mesh: 8 simulated CPU devices give the 1-device results."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxstab.engine import parallel
from tests import cli_runs

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


# 1 device maps over the seeds, more devices vmap: float32 rounding differs. Measured over 6
# steps, 3 seeds (8 devices / 2 processes vs 1): per record |d| / value of grad_norm 3.1e-7 /
# 1.5e-7, loss 1.7e-7 / 8.2e-8, total_grad_norm 2.4e-7 / 1.2e-7, update_norm 1.0e-7 / 9.0e-8,
# param_norm 0 / 0; final_train_loss 8.4e-8 / 0. Dev accuracies, lr and bias correction agree
# exactly.
PROBE_RTOL = 3e-6
TRAIN_LOSS_RTOL = 1e-6


def _assert_same_study(one, other):
  """Two workdirs of the same 3-seed study hold the same seeds and the same results."""
  s1 = json.loads((one / "summary.json").read_text())
  s2 = json.loads((other / "summary.json").read_text())
  assert s1["seeds"] == s2["seeds"] == [1, 2, 3]  # padding seeds are not reported
  assert [r["seed"] for r in s1["runs"]] == [r["seed"] for r in s2["runs"]] == [1, 2, 3]
  for a, b in zip(s1["runs"], s2["runs"]):
    assert a["final"] == b["final"] and a["best"] == b["best"]
    assert a["final_train_loss"] == pytest.approx(b["final_train_loss"], rel=TRAIN_LOSS_RTOL)
  with np.load(one / "probe.npz") as p1, np.load(other / "probe.npz") as p2:
    assert sorted(p1.files) == sorted(p2.files)
    for key in ("seeds", "groups", "step", "lr", "bias_correction"):
      np.testing.assert_array_equal(p2[key], p1[key], err_msg=key)
    for key in ("grad_norm", "loss", "total_grad_norm", "update_norm", "param_norm"):
      np.testing.assert_allclose(p2[key], p1[key], rtol=PROBE_RTOL, atol=0, err_msg=key)


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
  """The study on one CPU device, which maps over the seeds one at a time (seed_axis=auto). In
  this process (one CPU device, as the test session has): a fresh interpreter would prove
  nothing more here, while the 8-device and two-process runs need one each."""
  workdir = tmp_path_factory.mktemp("one_device")
  out = cli_runs.run_cli_in_process(ARGS, workdir)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "(map over seeds), on 1 device(s)" in out.stderr
  return workdir


def test_eight_devices_match_one(tmp_path, one_device):
  log8 = _run(tmp_path / "eight", 8)
  assert "8 per step (vmap over seeds), on 8 device(s)" in log8  # eight devices vmap
  _assert_same_study(one_device, tmp_path / "eight")


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


def test_two_processes_match_one(tmp_path, one_device):
  """Two processes joined by jax.distributed (CPU collectives) run one study; process 0 writes."""
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
  _assert_same_study(one_device, tmp_path / "two")
