"""The local workdir lock (jaxstab/infra/lock.py): one holder at a time, even among racing starters.

The race: 8 processes start together on a workdir whose `.lock` names a dead pid (its owner was
killed), 20 times over; never more than one may hold the lock. The previous lock (create with
O_EXCL, take over a dead pid's file by deleting it) let several in at once. Then: a live owner
is refused by name and its lock is free the moment it is SIGKILLed; and three CLI runs started
together on one workdir: one trains, the others exit 2 saying who holds it.
"""
import importlib
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxstab.infra import lock
from jaxstab.infra.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
IN_USE = "is in use by another jaxstab process"


def dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


# ====================================================================== racing starters

def _racer(module, workdir, rounds, start, done, go, mutex, holding, most, got, refusals,
           errors):
  """One starter: each round, waits for the others, tries the lock once, holds it a few ms."""
  lock_lib = importlib.import_module(module)
  for _ in range(rounds):
    start.wait()
    while time.time() < go.value:  # a barrier wakes its waiters one by one; a clock, all at once
      pass
    try:
      with lock_lib.workdir_lock(workdir):
        with mutex:
          holding.value += 1
          most.value = max(most.value, holding.value)
          got.value += 1
        time.sleep(0.01)
        with mutex:
          holding.value -= 1
    except ConfigError as e:
      with mutex:
        refusals.value += IN_USE in str(e)
    except Exception:  # pylint: disable=broad-except  (the old lock's races end in OSError too)
      with mutex:
        errors.value += 1
    done.wait()


def race(workdir, module="jaxstab.infra.lock", n=8, rounds=20, extra_path=None):
  """Races n processes for the lock of `workdir` `rounds` times, each round on a lock file that
  names a dead pid. Returns, per round, the most holders at once and the number of holders; and
  the refusals and other errors over all rounds."""
  ctx = multiprocessing.get_context("spawn")
  start, done = ctx.Barrier(n + 1), ctx.Barrier(n + 1)
  mutex = ctx.Lock()
  holding, most, got, refusals, errors = (ctx.Value("i", 0, lock=False) for _ in range(5))
  go = ctx.Value("d", 0.0, lock=False)
  path = sys.path[:]
  if extra_path:
    sys.path.insert(0, extra_path)  # spawned children start with the parent's sys.path
  try:
    procs = [ctx.Process(target=_racer, args=(module, workdir, rounds, start, done, go, mutex,
                                              holding, most, got, refusals, errors), daemon=True)
             for _ in range(n)]
    for p in procs:
      p.start()
  finally:
    sys.path[:] = path
  stale = str(dead_pid())
  per_round, most_per_round = [], []
  try:
    for _ in range(rounds):
      Path(workdir, lock.LOCK).write_text(stale)  # the previous owner was killed
      got.value = most.value = 0
      go.value = time.time() + 0.02
      start.wait(timeout=60)
      done.wait(timeout=60)
      per_round.append(got.value)
      most_per_round.append(most.value)
  finally:
    for p in procs:
      p.join(timeout=30)
      if p.is_alive():
        p.kill()
  return most_per_round, per_round, refusals.value, errors.value


def test_racing_starters_on_a_dead_owners_lock_get_it_one_at_a_time(tmp_path):
  most, per_round, refusals, errors = race(str(tmp_path))
  assert max(most) == 1, f"most holders at once, per round: {most}"
  assert min(per_round) >= 1, f"holders per round: {per_round}"
  assert errors == 0
  assert refusals == 8 * 20 - sum(per_round)  # every other starter: the "in use" ConfigError
  assert (tmp_path / lock.LOCK).exists()  # never deleted: deleting is what makes flock racy


# ====================================================================== a live owner, killed

OWNER = """
import sys
from jaxstab.infra import lock
with lock.workdir_lock(sys.argv[1]):
  print("locked", flush=True)
  sys.stdin.read()
"""


def test_a_live_owner_is_refused_by_pid_and_its_lock_is_free_once_it_is_killed(tmp_path):
  owner = subprocess.Popen([sys.executable, "-c", OWNER, str(tmp_path)], cwd=REPO,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    assert owner.stdout.readline().strip() == "locked"
    path = tmp_path / lock.LOCK
    with pytest.raises(ConfigError) as refused:
      with lock.workdir_lock(str(tmp_path)):
        pass
    msg = str(refused.value)
    assert f"{IN_USE} (pid {owner.pid})" in msg and str(path) in msg, msg
  finally:
    owner.send_signal(signal.SIGKILL)
    owner.wait()
  with lock.workdir_lock(str(tmp_path)):  # the kernel released it: no stale-lock step, no wait
    assert path.read_text() == str(os.getpid())
  assert path.exists() and path.read_text() == ""


def test_locking_one_workdir_twice_in_one_process_is_refused(tmp_path):
  with lock.workdir_lock(str(tmp_path)):
    with pytest.raises(ConfigError, match="already locked by this process"):
      with lock.workdir_lock(str(tmp_path)):
        pass
    assert (tmp_path / lock.LOCK).read_text() == str(os.getpid())  # the outer lock still holds
  with lock.workdir_lock(str(tmp_path)):
    pass


# ====================================================================== through the CLI

def test_three_cli_runs_started_together_on_one_workdir(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TOKENIZERS_PARALLELISM="false")
  env.pop("XLA_FLAGS", None)
  workdir = tmp_path / "work"
  cmd = [sys.executable, "-m", "jaxstab.main", "--config=configs/demo.py", f"--workdir={workdir}",
         "--config.train.max_steps=2", "--config.seeds=1", "--config.train.max_seq_length=16"]
  logs = [tmp_path / f"stderr_{i}.txt" for i in range(3)]
  procs = []
  for log in logs:
    with open(log, "w", encoding="utf-8") as f:
      procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=f))
  results = [(p.pid, p.wait(timeout=240), log.read_text()) for p, log in zip(procs, logs)]
  winners = [r for r in results if r[1] == 0]
  losers = [r for r in results if r[1] != 0]
  assert len(winners) == 1, [(pid, rc, err[-2000:]) for pid, rc, err in results]
  assert (workdir / "summary.json").is_file() and (workdir / "runs" / "seed_1.json").is_file()
  for _, rc, err in losers:
    assert rc == 2, err[-2000:]
    assert f"{IN_USE} (pid {winners[0][0]})" in err, err[-2000:]
