"""Reading one split of a GLUE task: its TSV file, nyu-mll/glue on the HF hub, or tfds.

Every reader returns a `Split`: the texts and the labels (int32 class ids, or float32 values
for a regression task such as STS-B). `data.load_split` chooses the reader.
"""
import csv
import dataclasses
import math
import os
import sys
from typing import List, Optional

import numpy as np
from absl import logging

from jaxstab.data.tasks import Task
from jaxstab.infra.errors import ConfigError

MAX_SKIPPED_SHOWN = 5  # line numbers of skipped rows named in the log line


@dataclasses.dataclass
class Split:
  text_a: List[str]
  text_b: Optional[List[str]]
  labels: np.ndarray  # int32 class ids, or float32 values (regression)

  def __len__(self):
    return len(self.labels)


def label_dtype(task: Task):
  return np.float32 if task.regression else np.int32


def _parse_label(task: Task, raw: str, where: str):
  """The label of one row: a class id, or a finite number for a regression task."""
  label = raw.strip()
  if task.regression:
    try:
      value = float(label)
    except ValueError:
      value = math.nan
    if not math.isfinite(value):
      raise ConfigError(f"{where}: label {label!r} is not a number (task {task.name!r} is a "
                        "regression: each label is a real-valued score)")
    return value
  if label not in task.labels:
    raise ConfigError(f"{where}: label {label!r} is not one of {list(task.labels)}")
  return task.labels.index(label)


def read_tsv(task: Task, path: str) -> Split:
  """A GLUE TSV file. A row with too few columns, or a bad label, is an error naming its line;
  for a task with `skip_malformed` (QQP) it is skipped instead, and the skips are counted in
  one log line."""
  if not os.path.isfile(path):
    folder = os.path.dirname(path)
    files = ", ".join(f"{task.file_name(s)}.tsv" for s in ("train", "dev") + task.extra_dev)
    raise ConfigError(f"missing data file {path} for task {task.name!r} (data.source=tsv); "
                      f"expected {files} in {folder} (the GLUE layout). "
                      "Set --config.data.dir to the folder holding the task folders.")
  csv.field_size_limit(sys.maxsize)
  cols = [c for c in (task.text_a, task.text_b, task.label) if c is not None]
  need = max(c if c >= 0 else -c - 1 for c in cols) + 1
  text_a, text_b, labels, skipped = [], [], [], []
  # utf-8-sig: MRPC's train.tsv starts with a byte-order mark. QUOTE_NONE: quotes are literal.
  with open(path, encoding="utf-8-sig", newline="") as f:
    for lineno, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
      if lineno == 1 and task.header:
        continue
      if not row or row == [""]:
        continue
      where = f"{path}:{lineno}"
      try:
        if len(row) < need:
          raise ConfigError(f"{where}: malformed row: expected at least {need} tab-separated "
                            f"columns, found {len(row)}")
        label = _parse_label(task, row[task.label], where)
      except ConfigError:
        if not task.skip_malformed:
          raise
        skipped.append(lineno)
        continue
      text_a.append(row[task.text_a])
      if task.text_b is not None:
        text_b.append(row[task.text_b])
      labels.append(label)
  if skipped:
    shown = ", ".join(map(str, skipped[:MAX_SKIPPED_SHOWN]))
    logging.warning("%s: skipped %d malformed row(s) (too few columns or a bad label; lines %s%s)",
                    path, len(skipped), shown, ", ..." if len(skipped) > MAX_SKIPPED_SHOWN else "")
  if not labels:
    raise ConfigError(f"{path}: no examples found")
  return Split(text_a, text_b if task.text_b is not None else None,
               np.asarray(labels, label_dtype(task)))


def read_hf(task: Task, split: str, data_dir: str) -> Split:
  try:
    import datasets  # pylint: disable=import-outside-toplevel  # optional, heavy
  except ImportError as e:
    raise ConfigError("data.source=hf needs the `datasets` package: pip install 'datasets<5'") from e
  hf_split = task.hub_split(split)
  try:
    ds = datasets.load_dataset("nyu-mll/glue", task.hf_name, split=hf_split,
                               cache_dir=data_dir or None)
  except Exception as e:  # offline, or the hub refused: say what to do instead
    raise ConfigError(f"could not load nyu-mll/glue/{task.hf_name} ({hf_split}) from the HF "
                      f"hub: {e}. Offline, use --config.data.source=tsv --config.data.dir=GLUE_DIR.") from e
  cols = task.hf_text
  return Split(list(ds[cols[0]]), list(ds[cols[1]]) if len(cols) > 1 else None,
               np.asarray(ds["label"], label_dtype(task)))


def read_tfds(task: Task, split: str, data_dir: str) -> Split:
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel  # optional
  except ImportError as e:
    raise ConfigError("data.source=tfds needs tensorflow-datasets: pip install 'jaxstab[tfds]'") from e
  ds = tfds.as_numpy(tfds.load(task.tfds_name, split=task.hub_split(split),
                               data_dir=data_dir or None))
  cols = task.hf_text
  dec = lambda b: b.decode("utf-8") if isinstance(b, bytes) else str(b)
  text_a, text_b, labels = [], [], []
  for r in ds:  # one pass, no list of records
    text_a.append(dec(r[cols[0]]))
    if len(cols) > 1:
      text_b.append(dec(r[cols[1]]))
    labels.append(r["label"])
  return Split(text_a, text_b if len(cols) > 1 else None, np.asarray(labels, label_dtype(task)))
