"""Files a run writes in its workdir. JSON and npz are written atomically (temp file + rename),
and summary.json is written last: its presence means the run finished."""
import json
import os

import numpy as np

SUMMARY, PROBE, METRICS, CONFIG = "summary.json", "probe.npz", "metrics.jsonl", "config.json"


def write_json(path: str, obj) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, sort_keys=False, default=_jsonable)
    f.write("\n")
  os.replace(tmp, path)


def write_npz(path: str, **arrays) -> None:
  tmp = f"{path}.tmp{os.getpid()}.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def _jsonable(x):
  if isinstance(x, (np.floating, np.integer, np.bool_)):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  raise TypeError(f"not JSON serialisable: {type(x).__name__}")


class Log:
  """metrics.jsonl (one JSON object a line) plus TensorBoard event files, one folder per seed."""

  def __init__(self, workdir: str, seeds, truncate: bool = False):
    self._jsonl = open(os.path.join(workdir, METRICS), "w" if truncate else "a", encoding="utf-8")  # pylint: disable=consider-using-with
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    self._tb = {s: SummaryWriter(os.path.join(workdir, "tensorboard", f"seed_{s}")) for s in seeds}

  def write(self, record: dict) -> None:
    self._jsonl.write(json.dumps(record, default=_jsonable) + "\n")
    self._jsonl.flush()
    tb = self._tb.get(record.get("seed"))
    if tb is not None:
      for k, v in record.items():
        if k not in ("seed", "step", "kind") and isinstance(v, (int, float)) and not isinstance(v, bool):
          tb.add_scalar(f"{record.get('kind', 'train')}/{k}", v, record["step"])

  def close(self) -> None:
    self._jsonl.close()
    for tb in self._tb.values():
      tb.close()
