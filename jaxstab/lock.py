"""One study per workdir: a lock file naming its owner.

On a local disk the lock is created exclusively and holds the owner's pid; a lock whose pid is
gone is stale and taken over. A bucket has no exclusive create and no pids of other machines
(a preempted TPU VM comes back as another host), so there the lock is a lease: it names host,
pid and the time, a background thread renews it, and a lease not renewed for `LEASE_S` seconds
(or whose owner on this very host is gone) is stale.
"""
import contextlib
import errno
import json
import os
import socket
import threading
import time

from absl import logging

from jaxstab import fs
from jaxstab.errors import ConfigError

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
  """Refuses a workdir another live process is training in; takes over a stale lock."""
  if fs.is_remote(workdir):
    with _lease(workdir):
      yield
    return
  path = os.path.join(workdir, LOCK)
  while True:
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
      break
    except FileExistsError:
      try:
        with open(path, encoding="utf-8") as f:
          owner = int(f.read().strip() or 0)
      except (OSError, ValueError):
        owner = 0
      if owner and owner != os.getpid() and _alive(owner):
        raise ConfigError(f"{workdir} is in use by another jaxstab process (pid {owner}); wait "
                          f"for it or use another --workdir (lock file {path})") from None
      logging.warning("taking over the stale lock %s (pid %s is gone)", path, owner)
      os.remove(path)
    except OSError as e:
      raise ConfigError(f"cannot write in the workdir {workdir}: {e.strerror}") from None
  with os.fdopen(fd, "w") as f:
    f.write(str(os.getpid()))
  try:
    yield
  finally:
    with contextlib.suppress(OSError):
      os.remove(path)


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
