"""Kill a run anywhere, rerun the same command: it resumes from the newest complete checkpoint
and the results are bit-identical. The same after a damaged checkpoint, a damaged run record or
token cache, a checkpoint of an older state layout, and a full disk (the damage tests resume in
this process: a separate one would prove nothing more)."""
import dataclasses
import errno
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstab import main
from jaxstab.engine import train as train_lib
from jaxstab.infra import checkpoint, fs, lock
from jaxstab.infra.errors import ConfigError, DiskFull
from jaxstab.study import studies
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
  """The runs, probe.npz with predictions.npz's arrays (the final dev logits, under
  "predictions/<key>") and metrics.jsonl of a finished workdir."""
  summary = json.loads((workdir / "summary.json").read_text())
  probe = {}
  for name, prefix in (("probe.npz", ""), ("predictions.npz", "predictions/")):
    with np.load(workdir / name) as z:
      probe.update({prefix + k: z[k] for k in z.files})
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
  _assert_same(_results(workdir), reference)
  assert not (workdir / GROUP).exists()  # cleaned up when done
  print(f"\n{fault}: resumed from step {step}")


GROUP = Path("checkpoints", "seeds_1-2_of_2")


def _assert_same(got, reference):
  """summary.json's runs, probe.npz, the final dev logits (predictions.npz) and metrics.jsonl
  equal the uninterrupted run's, bit for bit."""
  (runs, probe, metrics_text), (ref_runs, ref_probe, ref_metrics) = got, reference
  assert runs == ref_runs
  assert probe.keys() == ref_probe.keys() and "predictions/logits" in probe
  for k in probe:
    np.testing.assert_array_equal(probe[k], ref_probe[k], err_msg=k)
  assert metrics_text == ref_metrics


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
  step, state, host = ck.restore_latest(like, train_lib.older_layouts(like))
  assert ck.restore_latest(like) is None  # the current layout alone cannot read it ...
  ck.close()
  assert (tmp_path / "checkpoints" / "g" / "6.unreadable").is_dir()  # ... and sets it aside
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


# ------------------------------------------------------------------ damaged files, a full disk
def _run_here(workdir, caplog) -> str:
  """Reruns the command of guards.CHECKPOINT_ARGS on `workdir` in this process; returns its log."""
  caplog.clear()
  with caplog.at_level(logging.INFO):
    studies.run(guards.checkpoint_config(), str(workdir))
  return caplog.text


def _cut(path: Path, keep: float = 0.5) -> None:
  path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


def _files(workdir: Path) -> dict:
  return {str(p.relative_to(workdir)): p.read_bytes() for p in sorted(workdir.rglob("*"))
          if p.is_file() and p.name != lock.LOCK}


def test_damaged_run_records_stop_in_one_line_and_their_fix_ends_bit_identical(
    cli_root, reference, caplog):  # pylint: disable=unused-argument
  """A finished run with runs/seed_1.json, runs/probe_seed_2.npz and the token cache cut in
  half. Each rerun stops with one line naming the damaged file and the fix, having written
  nothing; after the fix (the records renamed) both seeds are trained again, the cache is
  tokenized again, and the results equal the uninterrupted run's. (Both seeds, so that they
  train in the group they trained in and the compiled programs come from the cache: seed 1
  trained again alone, in a group of one, was checked bit-identical too, BUILD_NOTES.)"""
  workdir = cli_root / "damaged_records"
  shutil.copytree(cli_root / "uninterrupted", workdir)
  runs = workdir / "runs"
  cache = next((workdir / "cache").glob("demo-train-*.npz"))
  cache_bytes = cache.read_bytes()
  for path in (runs / "seed_1.json", runs / "probe_seed_2.npz", cache):
    _cut(path)
  for seed, damaged in ((1, f"{runs / 'seed_1.json'} is not a run record (not JSON"),
                        (2, f"{runs / 'probe_seed_2.npz'} is damaged (BadZipFile")):
    record = runs / f"seed_{seed}.json"
    before = _files(workdir)
    with pytest.raises(ConfigError) as refused:
      studies.run(guards.checkpoint_config(), str(workdir))
    message = str(refused.value)
    assert "\n" not in message and message.startswith(damaged), message
    assert f"rename {record} (e.g. to seed_{seed}.json.damaged)" in message
    assert message.endswith(f"rerun the same command to train seed {seed} again")
    assert _files(workdir) == before  # refused before anything was written
    record.rename(record.with_name(f"seed_{seed}.json.damaged"))  # the fix the message names
  log = _run_here(workdir, caplog)
  assert "resuming" not in log and "2 seeds to train" in log
  assert f"token cache {cache} is unreadable" in log
  assert cache.read_bytes() == cache_bytes  # tokenized again, written again
  _assert_same(_results(workdir), reference)


# What tensorstore raised when orbax saved into a 3 MB tmpfs (BUILD_NOTES, "Damaged files and a
# full disk"), paths shortened.
TENSORSTORE_NO_SPACE = (
    'RESOURCE_EXHAUSTED: Error writing "params.bert.embeddings.word_embeddings.embedding/0.0.0" '
    'in OCDBT database at local file "/w/checkpoints/seeds_1-2_of_2/4.orbax-checkpoint-tmp/'
    'state.orbax-checkpoint-tmp/ocdbt.process_0/": Failed writing: "/w/ocdbt.process_0/d/94de": '
    "Failed to write 237529 bytes to file 5: No space left on device [os_error_code='28']")


def test_damaged_checkpoint_then_a_full_disk_then_space_freed_ends_bit_identical(
    killed_at_step_7, reference, monkeypatch, caplog):  # pylint: disable=unused-argument
  """Two faults on one killed run (one resume less for CI). (1) Every file of the newest
  complete checkpoint cut to a third: the rerun renames that step <step>.unreadable and resumes
  from the one before. (2) On that rerun orbax's array writer fails as on a full disk, inside
  orbax's own save threads, when it saves the damaged step's number again (which orbax would
  refuse, StepAlreadyExistsError, had the damaged folder kept it): the run stops with one
  DiskFull line naming the checkpoint folder, and each error orbax logged on the way is one the
  command line drops. (3) Space freed, the next rerun ends as the uninterrupted run."""
  from orbax.checkpoint._src.serialization import serialization  # pylint: disable=import-outside-toplevel
  workdir = killed_at_step_7("damaged_checkpoint_full_disk")
  committed = guards.committed_checkpoints(workdir)
  assert len(committed) >= 2, committed  # an older one to fall back to
  newest = workdir / GROUP / str(committed[-1])
  for p in newest.rglob("*"):
    if p.is_file():
      _cut(p, 1 / 3)

  async def no_space(*args, **kwargs):
    raise ValueError(TENSORSTORE_NO_SPACE)

  monkeypatch.setattr(serialization, "async_serialize_from_host", no_space)
  caplog.clear()
  with caplog.at_level(logging.INFO), pytest.raises(DiskFull) as stopped:
    studies.run(guards.checkpoint_config(), str(workdir))
  log = caplog.text
  assert f"checkpoint step {committed[-1]} in {workdir / GROUP} is unreadable" in log
  assert f"renamed it {newest}.unreadable" in log
  assert Path(f"{newest}.unreadable").is_dir() and not newest.exists()
  guards.check_resumed_at(log, committed[-2])
  message = str(stopped.value)
  assert "\n" not in message and message.startswith("no space left on the device: could not "
                                                     f"write a checkpoint in {workdir / GROUP}.")
  assert "rerun the same command" in message
  resumed = next(i for i, r in enumerate(caplog.records) if "resumed from" in r.getMessage())
  logged = [r for r in caplog.records[resumed:]  # after the damaged step's own orbax error
            if "orbax" in r.pathname and r.levelno >= logging.ERROR]
  assert logged and all(main.quiet_library_record(r) for r in logged), len(logged)
  assert not (workdir / "summary.json").exists() and not list(workdir.rglob("*.tmp[0-9]*"))

  monkeypatch.undo()  # space freed
  log = _run_here(workdir, caplog)
  guards.check_resumed_at(log, committed[-2])
  _assert_same(_results(workdir), reference)
  print(f"\ncomplete checkpoints {committed}; step {committed[-1]} damaged, resumed from "
        f"{committed[-2]}; {len(logged)} orbax error records on the full disk, all dropped")


def test_full_disk_in_a_file_write_is_one_line_and_leaves_the_old_file(tmp_path, monkeypatch,
                                                                        capsys):
  """fs.write_bytes cut short by ENOSPC: DiskFull names the file, the half-written temporary
  file is gone, the old file is whole; the command line prints one line and exits 75, also for
  a full disk that no fs.writing named."""
  path = tmp_path / "summary.json"
  path.write_text("old")
  real_open = open

  class FullDisk:  # a file whose write stops part way, as on a full disk
    def __init__(self, name, mode):
      self.f = real_open(name, mode)

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      self.f.close()

    def write(self, data):
      self.f.write(data[:10])
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(fs, "open", FullDisk, raising=False)  # fs's own `open` only
  with pytest.raises(DiskFull, match=f"could not write {path}. Free some space") as stopped:
    fs.write_bytes(str(path), b"new" * 100)
  monkeypatch.undo()
  assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == [path.name]
  assert fs.out_of_space(ValueError(TENSORSTORE_NO_SPACE))
  assert fs.out_of_space(OSError(errno.EDQUOT, "Disk quota exceeded"))
  assert not fs.out_of_space(OSError(errno.EACCES, "Permission denied"))
  main.parse_flags(["jaxstab", "--config=configs/demo.py", f"--workdir={tmp_path}",
                    "--config.compile_cache=off"])
  quota = OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
  for error, said in ((stopped.value, f"could not write {path}."),
                      (quota, f"could not write into {tmp_path} (OSError: [Errno")):
    def run(cfg, workdir, error=error):  # pylint: disable=unused-argument
      raise error

    monkeypatch.setattr(studies, "run", run)
    with pytest.raises(SystemExit) as done:
      main.main(["jaxstab"])
    err = capsys.readouterr().err
    assert done.value.code == main.EXIT_DISK_FULL and err.count("\n") == 1, err
    assert err.startswith("jaxstab: error: no space left on the device: ") and said in err, err
