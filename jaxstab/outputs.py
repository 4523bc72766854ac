"""Files a run writes in its workdir. JSON and npz are written atomically (temp file + rename,
or one whole-object upload in a bucket), and summary.json is written last: its presence means
the run finished."""
import json
import os
import tempfile

import numpy as np

from jaxstab import fs

SUMMARY, PROBE, METRICS, CONFIG = "summary.json", "probe.npz", "metrics.jsonl", "config.json"


def write_json(path: str, obj) -> None:
  fs.write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def write_npz(path: str, **arrays) -> None:
  fs.save_npz(path, **arrays)


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
