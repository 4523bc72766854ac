"""Workdir file operations that work the same on a local disk and on a bucket (gs://, s3://).

Studies on preemptible TPU VMs keep their workdir in a bucket, so that a fresh VM resumes where
the last one was stopped. Every file a run writes goes through here: local paths use the os
module directly (atomic temp-file + rename), remote ones use etils epath (fsspec underneath).
A bucket object only becomes visible once its upload completes, so a whole-object write is
already atomic there and needs no temporary name.
"""
import io
import json
import os
import shutil
from typing import Iterable

import numpy as np
from etils import epath

from jaxstab.infra.errors import ConfigError


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
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


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
