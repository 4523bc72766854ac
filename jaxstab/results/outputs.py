"""Files a run writes in its workdir, and the names of the files the analyses add to it. JSON and
npz are written atomically (temp file + rename, or one whole-object upload in a bucket), and
summary.json is written last: its presence means the run finished.

A setting's folder (the workdir of a plain run, workdir/<name> in a study):
  config.json summary.json metrics.jsonl probe.npz    written by training (study.py)
  predictions.npz                                     every seed's end-of-training dev logits
  params/seed_N/                                      final params, with keep_final_params
  analysis/loss_surface.npz analysis/forgetting.json  written by jaxstab.analysis, drawn by
  analysis/connectivity.json                          jaxstab.report when present
"""
import json
import os
import tempfile
from typing import List

import numpy as np

from jaxstab.infra import fs

SUMMARY, PROBE, METRICS, CONFIG = "summary.json", "probe.npz", "metrics.jsonl", "config.json"
PREDICTIONS = "predictions.npz"  # logits [seeds, dev examples, outputs], labels, seeds
PARAMS = "params"              # params/seed_N: checkpoint.params_dir
ANALYSIS_DIR = "analysis"
LOSS_SURFACE = "loss_surface.npz"
FORGETTING = "forgetting.json"
CONNECTIVITY = "connectivity.json"


def analysis_path(setting_dir: str, name: str) -> str:
  """<setting dir>/analysis/<name>: where an analysis writes and the report reads."""
  return fs.join(setting_dir, ANALYSIS_DIR, name)


def kept_seeds(setting_dir: str) -> List[int]:
  """Seeds whose final parameters are kept in <setting dir>/params/seed_N (sorted)."""
  root = fs.join(setting_dir, PARAMS)
  if not fs.isdir(root):
    return []
  out = []
  for name in fs.listdir(root):
    if name.startswith("seed_") and name[5:].isdigit() and fs.isdir(fs.join(root, name)):
      out.append(int(name[5:]))
  return sorted(out)


def write_json(path: str, obj) -> None:
  fs.write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def write_npz(path: str, **arrays) -> None:
  fs.save_npz(path, **arrays)


def read_npz(path: str) -> dict:
  """An npz written by write_npz as a dict of arrays; a 0-d string array (a label) as a str."""
  out = fs.load_npz(path)
  return {k: str(v) if v.ndim == 0 and v.dtype.kind == "U" else v for k, v in out.items()}


def _jsonable(x):
  if isinstance(x, (np.floating, np.integer, np.bool_)):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  raise TypeError(f"not JSON serialisable: {type(x).__name__}")


class Log:
  """metrics.jsonl (one JSON object a line) plus TensorBoard event files, one folder per seed,
  written whole when closed. A bucket workdir gets its events written locally, then uploaded."""

  def __init__(self, workdir: str, seeds):
    self._workdir, self._lines = workdir, []
    self._staging = tempfile.mkdtemp(prefix="jaxstab-tb-") if fs.is_remote(workdir) else None
    tb_dir = fs.join(self._staging or workdir, "tensorboard")
    # Deferred: tensorboardX takes seconds to import and only training writes events; the report,
    # compare and the analyses read this module's names without it.
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    self._tb = {s: SummaryWriter(os.path.join(tb_dir, f"seed_{s}")) for s in seeds}

  def write(self, record: dict) -> None:
    self._lines.append(json.dumps(record, default=_jsonable) + "\n")
    tb = self._tb.get(record.get("seed"))
    if tb is not None:
      for k, v in record.items():
        if k not in ("seed", "step", "kind") and isinstance(v, (int, float)) and not isinstance(v, bool):
          tb.add_scalar(f"{record.get('kind', 'train')}/{k}", v, record["step"])

  def close(self) -> None:
    for tb in self._tb.values():
      tb.close()
    if self._staging:
      fs.upload_tree(os.path.join(self._staging, "tensorboard"), fs.join(self._workdir, "tensorboard"))
      fs.rmtree(self._staging)
    fs.write_lines(fs.join(self._workdir, METRICS), self._lines)
