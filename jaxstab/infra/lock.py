"""One study per workdir: a lock file naming its owner.

On a local disk the lock is `fcntl.flock` on `<workdir>/.lock`, a file that is never deleted; the
owner writes its pid into it only so that a refused run can name it. The kernel drops a flock
when its holder dies (even by SIGKILL), so there is no stale lock to detect and take over, and
hence no check-then-act race between starters: of any number of runs that start together, one
gets the lock and the others are refused. (Deleting the file on release would bring a race back:
a starter could lock the deleted file while another creates and locks a new one.) The fd is not
inherited across exec; a fork()ed child shares it, and the lock lasts until every copy is closed.
POSIX only (fcntl); Windows is not a target.

A bucket has no exclusive create and no pids of other machines (a preempted TPU VM comes back as
another host), so there the lock is a lease: it names host, pid and the time, a background thread
renews it, and a lease not renewed for `LEASE_S` seconds (or whose owner on this very host is
gone) is stale.
"""
import contextlib
import errno
import fcntl
import json
import os
import socket
import threading
import time

from absl import logging

from jaxstab.infra import fs
from jaxstab.infra.errors import ConfigError

LOCK = ".lock"
LEASE_S = 300.0        # a bucket lock not renewed for this long is stale
RENEW_S = 60.0         # how often its owner renews it


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except OSError as e:
    return e.errno == errno.EPERM
  return True


@contextlib.contextmanager
def workdir_lock(workdir: str):
  """Refuses a workdir that another live process is training in (a ConfigError naming it)."""
  if fs.is_remote(workdir):
    with _lease(workdir):
      yield
    return
  path = os.path.join(workdir, LOCK)
  try:
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o644)
  except OSError as e:
    raise ConfigError(f"cannot write in the workdir {workdir}: {e.strerror}") from None
  try:
    _flock(fd, workdir, path)
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, str(os.getpid()).encode(), 0)
    except OSError as e:
      raise ConfigError(f"cannot write in the workdir {workdir}: {e.strerror}") from None
  except BaseException:
    os.close(fd)
    raise
  try:
    yield
  finally:
    with contextlib.suppress(OSError):
      os.ftruncate(fd, 0)  # still held: nobody reads a pid that is about to be gone
    os.close(fd)  # releases the flock; the file stays (see the module docstring)


def _flock(fd: int, workdir: str, path: str, wait_s: float = 0.5) -> None:
  """Takes the flock of `fd` or raises a ConfigError naming the live pid that holds it. A holder
  that has just started may not have written its pid yet (the file is empty, or still names the
  previous, dead owner): then it tries again for up to wait_s, and takes the lock if it was freed
  meanwhile, or refuses without a pid."""
  deadline = time.monotonic() + wait_s
  while True:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      return
    except BlockingIOError:
      pass
    except OSError as e:
      raise ConfigError(f"cannot lock the workdir {workdir}: {e.strerror} (lock file {path})"
                        ) from None
    owner = _written_pid(path)
    if owner == os.getpid():  # a second lock on one workdir in one process: a bug, say so
      raise ConfigError(f"{workdir} is already locked by this process (pid {owner}); one run "
                        f"per workdir (lock file {path})")
    live = owner > 0 and _alive(owner)
    if live or time.monotonic() > deadline:
      who = f" (pid {owner})" if live else ""
      raise ConfigError(f"{workdir} is in use by another jaxstab process{who}; wait for it or "
                        f"use another --workdir (lock file {path})")
    time.sleep(0.02)


def _written_pid(path: str) -> int:
  try:
    with open(path, encoding="utf-8") as f:
      return int(f.read().strip() or 0)
  except (OSError, ValueError):
    return 0


def _me() -> dict:
  return {"host": socket.gethostname(), "pid": os.getpid()}


def _is_mine(lease) -> bool:
  return bool(lease) and all(lease.get(k) == v for k, v in _me().items())


def _read_lease(path: str):
  try:
    return json.loads(fs.read_text(path))
  except Exception:  # pylint: disable=broad-except  (missing or torn: no valid owner)
    return None


def _stale(lease: dict, now: float) -> bool:
  if lease.get("host") == socket.gethostname() and not _alive(int(lease.get("pid", 0))):
    return True
  return now - float(lease.get("time", 0.0)) > LEASE_S


@contextlib.contextmanager
def _lease(workdir: str, settle_s: float = 1.0):
  path = fs.join(workdir, LOCK)
  me = _me()
  held = _read_lease(path)
  if held and not _is_mine(held) and not _stale(held, time.time()):
    raise ConfigError(
        f"{workdir} is in use by another jaxstab process (host {held.get('host')}, pid "
        f"{held.get('pid')}, lease renewed {time.time() - float(held.get('time', 0)):.0f}s ago); "
        f"wait for it, use another --workdir, or delete {path} if that process is gone (a lease "
        f"expires by itself {LEASE_S:.0f}s after its last renewal)")
  if held:
    logging.warning("taking over the stale lock %s (%s)", path, held)
  fs.write_text(path, json.dumps(dict(me, time=time.time())))
  time.sleep(settle_s)  # two racing starters both wrote: the later write wins, the other leaves
  now = _read_lease(path)
  if not _is_mine(now):
    raise ConfigError(f"{workdir} was taken by another jaxstab process at the same moment "
                      f"({now}); use another --workdir")
  stop = threading.Event()

  def renew():
    while not stop.wait(RENEW_S):
      with contextlib.suppress(Exception):
        fs.write_text(path, json.dumps(dict(me, time=time.time())))

  thread = threading.Thread(target=renew, name="jaxstab-lock-lease", daemon=True)
  thread.start()
  try:
    yield
  finally:
    stop.set()
    thread.join(timeout=5)
    with contextlib.suppress(Exception):
      fs.remove(path)
