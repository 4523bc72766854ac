"""Workdir file operations that work the same on a local disk and on a bucket (gs://, s3://).

Studies on preemptible TPU VMs keep their workdir in a bucket, so that a fresh VM resumes where
the last one was stopped. Every file a run writes goes through here: local paths use the os
module directly (atomic temp-file + rename), remote ones use etils epath (fsspec underneath).
A bucket object only becomes visible once its upload completes, so a whole-object write is
already atomic there and needs no temporary name.

A full disk is a `DiskFull` (one line: what could not be written, where, how to go on), raised
where the write failed (`write_bytes`, or `writing` around a writer that is not ours, such as
orbax), so the user reads that line instead of the writer's tracebacks.
"""
import contextlib
import errno
import io
import json
import os
import shutil
import zipfile
from typing import Iterable

import numpy as np
from etils import epath

from jaxstab.infra.errors import ConfigError, DiskFull

# What reading a damaged or cut-short file raises: json (ValueError), npz (np.load and the
# zip's members), or a file that went missing.
UNREADABLE = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# How the errors of writers outside Python say it: tensorstore (orbax's arrays) raises a
# ValueError "RESOURCE_EXHAUSTED: ... No space left on device [os_error_code='28']".
NO_SPACE_TEXTS = tuple(os.strerror(e) for e in NO_SPACE_ERRNOS) + tuple(
    f"os_error_code='{e}'" for e in NO_SPACE_ERRNOS)


def out_of_space_text(text: str) -> bool:
  return any(t in text for t in NO_SPACE_TEXTS)


def out_of_space(exc: BaseException) -> bool:
  """Whether `exc`, or an exception it was raised from or during, is a full disk or quota."""
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    if isinstance(exc, DiskFull) or (isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS):
      return True
    if out_of_space_text(str(exc)):
      return True
    exc = exc.__cause__ or exc.__context__
  return False


@contextlib.contextmanager
def writing(what: str):
  """Turns a full disk inside the block into DiskFull(what); other errors pass unchanged."""
  try:
    yield
  except DiskFull:
    raise
  except Exception as e:  # pylint: disable=broad-except  # re-raised unless it is a full disk
    if out_of_space(e):
      raise DiskFull(what) from e
    raise


def is_remote(path: str) -> bool:
  return "://" in str(path)


def _epath(path: str):
  return epath.Path(path)


def join(base: str, *parts: str) -> str:
  if is_remote(base):
    return "/".join([str(base).rstrip("/")] + [p.strip("/") for p in parts])
  return os.path.join(base, *parts)


def local_cache(kind: str) -> str:
  """~/.cache/jaxstab/<kind>: where a bucket workdir's caches live (cheap to rebuild, slow to
  read over the network)."""
  return os.path.join(os.path.expanduser("~"), ".cache", "jaxstab", kind)


def absolute(path: str) -> str:
  return str(path) if is_remote(path) else os.path.abspath(path)


def exists(path: str) -> bool:
  return _epath(path).exists() if is_remote(path) else os.path.exists(path)


def isfile(path: str) -> bool:
  if is_remote(path):
    p = _epath(path)
    return p.exists() and not p.is_dir()
  return os.path.isfile(path)


def isdir(path: str) -> bool:
  return _epath(path).is_dir() if is_remote(path) else os.path.isdir(path)


def listdir(path: str) -> list:
  """Sorted entry names of a folder (local or bucket)."""
  if is_remote(path):
    return sorted(p.name for p in _epath(path).iterdir())
  return sorted(os.listdir(path))


def makedirs(path: str) -> None:
  if is_remote(path):
    _epath(path).mkdir(parents=True, exist_ok=True)
  else:
    os.makedirs(path, exist_ok=True)


def remove(path: str) -> None:
  """Deletes a file if it is there."""
  if is_remote(path):
    p = _epath(path)
    if p.exists():
      p.unlink()
  elif os.path.exists(path):
    os.remove(path)


def rmtree(path: str) -> None:
  """Deletes a folder and everything under it, if it is there."""
  if is_remote(path):
    p = _epath(path)
    if p.exists():
      p.rmtree()
  else:
    shutil.rmtree(path, ignore_errors=True)


def move_aside(path: str, label: str) -> str:
  """Renames a file or folder to `<path>.<label>` (`.<label>-2`, ... if taken) and returns the
  new name: what could not be read is kept for a look, under a name that says why, and out of
  the way of the file that replaces it."""
  dest, n = f"{path}.{label}", 1
  while exists(dest):
    n += 1
    dest = f"{path}.{label}-{n}"
  if not is_remote(path):
    os.rename(path, dest)
    return dest
  _copy(_epath(path), _epath(dest))  # a bucket has no rename: copy, then delete the original
  (_epath(path).rmtree if isdir(path) else _epath(path).unlink)()
  return dest


def _copy(src, dest) -> None:
  """Copies a bucket object, or a folder of them, object by object (epath has no recursive glob
  for buckets)."""
  if not src.is_dir():
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(src.read_bytes())
    return
  for child in src.iterdir():
    _copy(child, dest / child.name)


def read_text(path: str) -> str:
  if is_remote(path):
    return _epath(path).read_text(encoding="utf-8")
  with open(path, encoding="utf-8") as f:
    return f.read()


def read_bytes(path: str) -> bytes:
  if is_remote(path):
    return _epath(path).read_bytes()
  with open(path, "rb") as f:
    return f.read()


def write_bytes(path: str, data: bytes) -> None:
  """Whole-file write that a crash never leaves half done."""
  if is_remote(path):
    _epath(path).write_bytes(data)
    return
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with writing(path):
      with open(tmp, "wb") as f:
        f.write(data)
      os.replace(tmp, path)
  except BaseException:
    remove(tmp)  # a half-written temporary file would hold the space the next try needs
    raise


def write_text(path: str, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def write_lines(path: str, lines: Iterable[str]) -> None:
  write_text(path, "".join(lines))


def read_json(path: str):
  return json.loads(read_text(path))


def load_npz(path: str) -> dict:
  with np.load(io.BytesIO(read_bytes(path))) as z:
    return {k: z[k] for k in z.files}


def save_npz(path: str, **arrays) -> None:
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  write_bytes(path, buf.getvalue())


def upload_tree(local_dir: str, remote_dir: str) -> None:
  """Copies a local folder's files under remote_dir (TensorBoard events of a bucket workdir)."""
  for root, _, files in os.walk(local_dir):
    rel = os.path.relpath(root, local_dir)
    for name in files:
      dest = join(remote_dir, *([] if rel == "." else rel.split(os.sep)), name)
      write_bytes(dest, read_bytes(os.path.join(root, name)))


def require_local(path: str, tool: str) -> None:
  """The analyses read and write many files in place; they run on a local copy of a bucket."""
  if is_remote(path):
    raise ConfigError(f"{tool} works on a local workdir; copy {path} first, e.g. "
                      f"`gsutil -m cp -r {path} .`, and pass the local folder")
