"""The user's own data, classification or regression: CSV or JSON-lines files with named columns.

`data.source=csv` (or `jsonl`) reads a training and a dev file, found in the folder `data.path`
(train.csv or train.tsv, dev.csv or dev.tsv; train.jsonl, dev.jsonl) or named by
`data.train_file` / `data.dev_file`. `data.text_a`, `data.text_b` ('' = single text) and
`data.label` name the columns (CSV header) or fields (JSON objects). The classes are the training
file's labels, sorted (numbers by value), unless `data.labels` lists them; a class's position is
its id, and for f1, mcc and acc_and_f1 (two classes only) the second class is the positive one.

The result is a `tasks.Task` built for the files (its name is the config's `task`, which must not
be a built-in task's) and two `dataset.Split`s, after which a run is the same as a GLUE task's:
tokenized and cached alike, the majority baseline computed on dev, failed = final main metric
<= the majority's. `check_config` checks the keys without reading a file (validate.py runs it
before anything is written); `load` reads the files (inputs.load, still before the workdir is
touched). Every mistake is a ConfigError naming the file, and the line where there is one.

Regression: data.metric=pearson_spearman (or pearson, spearman) makes the task a regression, as
STS-B is: every label must be a number (a real-valued score), the model has one output trained
with the mean squared error, and dev reports pearson, spearman, their mean and mse. The metric is
the switch (no other key): a classification metric with a fractional label is an error that says
so. The baseline is the constant predictor, whose correlation is 0 (metrics.majority), so a
regression run fails when its final dev correlation is <= 0.
"""
import re
from typing import Dict, List, Tuple

import numpy as np
from absl import logging

from jaxstab.data import custom_files, dataset, metrics, tasks
from jaxstab.data.custom_files import read_csv, read_jsonl, Rows
from jaxstab.infra import fs
from jaxstab.infra.errors import ConfigError

SOURCES = dataset.CUSTOM_SOURCES
CLASSIFICATION = ("accuracy", "f1", "mcc", "acc_and_f1")
METRICS = CLASSIFICATION + metrics.REGRESSION_METRICS
BINARY_METRICS = ("f1", "mcc", "acc_and_f1")  # metrics.py scores these for classes 0 and 1
# What a folder (data.path) is searched for, in this order; two matches are an error.
FILE_NAMES = {"csv": ("{split}.csv", "{split}.tsv"), "jsonl": ("{split}.jsonl",)}
# Keys read only for the user's own files; '' is "not set" for every one of them.
KEYS = ("path", "train_file", "dev_file", "text_a", "text_b", "label", "labels", "metric")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")

# ------------------------------------------------------------------ checks without reading


def _get(cfg, key: str) -> str:
  return str(cfg.data.get(key, "") or "")


def parse_labels(spec: str) -> List[str]:
  """data.labels ('neg,pos') as a list; [] when empty."""
  return [x.strip() for x in str(spec).split(",")] if str(spec).strip() else []


def check_config(cfg) -> None:
  """The custom-data keys of a config with data.source=csv|jsonl; reads no file."""
  source, name = cfg.data.source, str(cfg.task)
  if not _NAME.fullmatch(name):
    raise ConfigError(f"task={name!r}: with data.source={source} the task is your data's name, "
                      "shown in summaries and tables and used in file names: letters, digits, "
                      "'_' and '-' (e.g. task=custom)")
  if name.lower().replace("-", "") in tasks.TASKS:
    raise ConfigError(f"task={name!r} is a built-in task, but data.source={source} reads your own "
                      "files: give them their own name (e.g. task=custom), or use "
                      "data.source=tsv|hf|tfds for the built-in task")
  for key, what in (("text_a", "the first text"), ("label", "the label")):
    if not _get(cfg, key):
      raise ConfigError(f"data.{key} is empty: with data.source={source} name the column of "
                        f"{what} (a CSV header's name or a JSON field)")
  if _get(cfg, "label") in (_get(cfg, "text_a"), _get(cfg, "text_b")):
    raise ConfigError(f"data.label={_get(cfg, 'label')!r} is also a text column (data.text_a="
                      f"{_get(cfg, 'text_a')!r}, data.text_b={_get(cfg, 'text_b')!r})")
  if not _get(cfg, "path"):
    missing = [f"data.{k}" for k in ("train_file", "dev_file") if not _get(cfg, k)]
    if missing:
      ext = "csv" if source == "csv" else "jsonl"
      raise ConfigError(f"data.source={source} needs data.path (a folder holding train.{ext} and "
                        f"dev.{ext}) or both data.train_file and data.dev_file; "
                        f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set")
  metric = _get(cfg, "metric") or "accuracy"
  if metric not in METRICS:
    raise ConfigError(f"data.metric={metric!r} is not allowed; choose one of: "
                      f"{', '.join(METRICS)} ('' = accuracy; the last three: regression)")
  given = parse_labels(_get(cfg, "labels"))
  if given and metrics.is_regression(metric):
    raise ConfigError(f"data.labels={_get(cfg, 'labels')!r} lists classes, but data.metric="
                      f"{metric} makes a regression task (real-valued labels): leave data.labels "
                      "empty")
  if given:
    if "" in given:
      raise ConfigError(f"data.labels={_get(cfg, 'labels')!r} has an empty class name")
    dup = sorted({x for x in given if given.count(x) > 1})
    if dup:
      raise ConfigError(f"data.labels={_get(cfg, 'labels')!r} lists {', '.join(dup)} twice")
    if len(given) < 2:
      raise ConfigError(f"data.labels={_get(cfg, 'labels')!r}: classification needs at least "
                        "two classes")
    _check_binary(metric, given, "data.labels")


def check_unused(cfg) -> None:
  """A custom-data key set while data.source reads a built-in task: refused, so that a
  forgotten data.source=csv never trains on GLUE instead of the user's files."""
  for key in KEYS:
    if _get(cfg, key):
      raise ConfigError(f"data.{key}={_get(cfg, key)!r} is read only with data.source=csv or "
                        f"jsonl (your own files), but data.source={cfg.data.source!r}: set "
                        f"--config.data.source=csv (or jsonl), or leave data.{key} empty")


def _check_binary(metric: str, labels, where: str) -> None:
  if metric in BINARY_METRICS and len(labels) != 2:
    raise ConfigError(f"data.metric={metric} needs exactly two classes (the second is the "
                      f"positive one), but {where} has {len(labels)}: {', '.join(labels)}; "
                      "use data.metric=accuracy")


# ------------------------------------------------------------------ reading


def find_files(cfg) -> Dict[str, str]:
  """{'train': path, 'dev': path}: data.train_file / data.dev_file, else looked up in data.path."""
  source, folder, out = cfg.data.source, _get(cfg, "path"), {}
  for split in dataset.SPLITS:
    key = f"{split}_file"
    given = _get(cfg, key)
    if given:
      if not fs.isfile(given):
        raise ConfigError(f"data.{key}={given!r}: no such file")
      out[split] = given
      continue
    names = [n.format(split=split) for n in FILE_NAMES[source]]
    found = [fs.join(folder, n) for n in names if fs.isfile(fs.join(folder, n))]
    if not found:
      where = folder if fs.isdir(folder) else f"{folder} (no such folder)"
      raise ConfigError(f"no {split} file in {where} (data.path, data.source={source}): looked "
                        f"for {' and '.join(names)}; or name the file with data.{key}")
    if len(found) > 1:
      raise ConfigError(f"both {' and '.join(found)} exist (data.path): keep one, or name it "
                        f"with data.{key}")
    out[split] = found[0]
  return out


def _columns(cfg) -> Tuple[Tuple[str, str], ...]:
  cols = [("text_a", _get(cfg, "text_a"))]
  if _get(cfg, "text_b"):
    cols.append(("text_b", _get(cfg, "text_b")))
  return tuple(cols + [("label", _get(cfg, "label"))])


def _class_ids(rows: Rows, classes: List[str], unknown) -> np.ndarray:
  pos = {c: i for i, c in enumerate(classes)}
  for label, line in zip(rows.labels, rows.lines):
    if label.key not in pos:
      raise ConfigError(unknown(f"{rows.path}:{line}", label.key))
  return np.asarray([pos[label.key] for label in rows.labels], np.int32)


def _canonical(name: str, kind: str) -> str:
  """A class of data.labels spelled as the files' labels are keyed (numbers: '01' -> '1')."""
  if kind == "number":
    try:
      return custom_files.csv_label(name, "data.labels").key
    except ConfigError:
      return name
  return name


def load(cfg) -> Tuple[tasks.Task, dataset.Split, dataset.Split]:
  """The Task of the user's files and their train and dev splits (raises ConfigError)."""
  check_config(cfg)
  paths = find_files(cfg)
  cols = _columns(cfg)
  reader = read_csv if cfg.data.source == "csv" else read_jsonl
  metric = _get(cfg, "metric") or "accuracy"
  regression = metric if metrics.is_regression(metric) else ""
  train = reader(paths["train"], cols, regression)
  dev = reader(paths["dev"], cols, regression)
  if regression:
    return _regression_task(cfg, metric, train, dev)
  custom_files.check_one_kind([train, dev])
  kind = train.labels[0].kind
  seen = sorted({l.key: l.order for l in train.labels}.items(), key=lambda kv: kv[1])
  if len(seen) < 2:
    raise ConfigError(f"{train.path}: every label is {seen[0][0]!r}; classification needs at "
                      "least two classes in the training file")
  given = [_canonical(x, kind) for x in parse_labels(_get(cfg, "labels"))]
  if len(set(given)) != len(given):
    raise ConfigError(f"data.labels={_get(cfg, 'labels')!r} names one class twice")
  classes = given or [key for key, _ in seen]
  _check_binary(metric, classes, "data.labels" if given else f"the training file {train.path}")
  if given:
    unknown = lambda where, key: (f"{where}: label {key!r} is not in data.labels "
                                  f"({', '.join(given)})")
    y_train = _class_ids(train, classes, unknown)
    y_dev = _class_ids(dev, classes, unknown)
  else:
    y_train = _class_ids(train, classes, None)
    y_dev = _class_ids(dev, classes, lambda where, key: (
        f"{where}: label {key!r} never occurs in the training file {train.path}, whose labels "
        f"are: {', '.join(classes)}; a classifier cannot learn a class it never sees: fix the "
        "label, or add training examples of it"))
  # Column numbers are meaningless here (the files' columns have names): text_a, text_b and
  # label are the positions in (text_a, text_b, label) and glue_dir is empty.
  task = tasks.Task(str(cfg.task), "", 0, 1 if train.text_b is not None else None, 2,
                    tuple(classes), metric)
  logging.info("%s: %d train examples (%s), %d dev (%s); classes by id: %s; main metric %s%s",
               task.name, len(y_train), train.path, len(y_dev), dev.path, ", ".join(classes),
               metric, f" (positive class {classes[1]!r})" if metric in BINARY_METRICS else "")
  return (task, dataset.Split(train.text_a, train.text_b, y_train),
          dataset.Split(dev.text_a, dev.text_b, y_dev))


def _regression_task(cfg, metric: str, train: Rows, dev: Rows):
  """The Task and Splits of real-valued labels (float32 scores, one model output)."""
  y = []
  for rows in (train, dev):
    y.append(np.asarray([label.order[0] for label in rows.labels], np.float32))
    if np.all(y[-1] == y[-1][0]):
      raise ConfigError(f"{rows.path}: every label is {rows.labels[0].key}; a correlation "
                        f"(data.metric={metric}) needs labels that vary")
  task = tasks.Task(str(cfg.task), "", 0, 1 if train.text_b is not None else None, 2, (), metric,
                    regression=True)
  logging.info("%s: %d train examples (%s), %d dev (%s); regression (labels %.3g..%.3g, one "
               "output, MSE loss); main metric %s", task.name, len(y[0]), train.path, len(y[1]),
               dev.path, float(y[0].min()), float(y[0].max()), metric)
  return (task, dataset.Split(train.text_a, train.text_b, y[0]),
          dataset.Split(dev.text_a, dev.text_b, y[1]))
