"""Reading the user's CSV / JSON-lines files into rows: texts, labels as written, line numbers.

custom_data.py decides what the rows mean (classes or scores, the task); this module only reads,
and every mistake it finds is a ConfigError naming the file and line.
"""
import csv
import io
import json
import math
import sys
from typing import List, NamedTuple, Optional

from jaxstab.infra import fs
from jaxstab.infra.errors import ConfigError

_FRACTION = ("a class id must be a whole number; for real-valued labels (regression) set "
             "data.metric=pearson_spearman")


class Label(NamedTuple):
  """One label as read: `key` is the class name (text), `kind` its type for the mixed-type
  check, `order` how inferred classes are sorted."""
  key: str
  kind: str
  order: tuple


class Rows(NamedTuple):
  """One file's examples; `lines` are the file's line numbers (for messages)."""
  path: str
  text_a: List[str]
  text_b: Optional[List[str]]
  labels: List[Label]
  lines: List[int]



def _text_of(path: str) -> str:
  raw = fs.read_bytes(path)
  try:
    return raw.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    line = raw[:e.start].count(b"\n") + 1
    raise ConfigError(f"{path}:{line}: not UTF-8 text ({e.reason} at byte {e.start}); save the "
                      "file as UTF-8") from None


def csv_label(raw: str, where: str) -> Label:
  """A CSV label: a number (an integer class id, written any way int() or float() reads it) or
  a class name; the mixed-type check keeps a column to one of the two."""
  value = raw.strip()
  if not value:
    raise ConfigError(f"{where}: empty label")
  try:
    number = int(value)
  except ValueError:
    try:
      number = float(value)
    except ValueError:
      number = None
  if number is None or (isinstance(number, float) and not math.isfinite(number)):
    return Label(value, "text", (value,))
  if number != int(number):
    raise ConfigError(f"{where}: label {value!r} is not a whole number; {_FRACTION}")
  return Label(str(int(number)), "number", (int(number),))


def _score(raw, where: str, field: str, metric: str) -> Label:
  """A regression label: a finite number (text that float() reads, or a JSON number; a JSON
  boolean is refused). The value is kept in `order`."""
  value = None
  if isinstance(raw, str):
    try:
      value = float(raw.strip())
    except ValueError:
      pass
  elif isinstance(raw, (int, float)) and not isinstance(raw, bool):
    value = float(raw)
  if value is None or not math.isfinite(value):
    shown = repr(raw.strip()) if isinstance(raw, str) else json.dumps(raw)
    raise ConfigError(f"{where}: label {shown} in column {field!r} (data.label) is not a "
                      f"number; data.metric={metric} makes this a regression task, whose "
                      "labels are real-valued scores")
  return Label(repr(value), "number", (value,))


def _json_label(value, where: str, field: str) -> Label:
  if isinstance(value, bool):
    return Label("true" if value else "false", "boolean", (value,))
  if isinstance(value, (int, float)):
    if isinstance(value, float) and (not math.isfinite(value) or value != int(value)):
      raise ConfigError(f"{where}: label {value!r} is not a whole number; {_FRACTION}")
    return Label(str(int(value)), "number", (int(value),))
  if isinstance(value, str):
    if not value.strip():
      raise ConfigError(f"{where}: empty label")
    return Label(value.strip(), "string", (value.strip(),))
  raise ConfigError(f"{where}: field {field!r} (data.label) is {_json_type(value)}; a label "
                    "must be a string, an integer or a boolean")


def _json_type(value) -> str:
  return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
          list: "a list", dict: "an object", type(None): "null"}.get(type(value), "a value")


KIND_WORDS = {"text": "not a number", "number": "a number", "string": "a JSON string",
              "boolean": "a JSON boolean"}


def read_csv(path: str, cols, regression: str = "") -> Rows:
  """A CSV file (comma-separated, standard quoting) or, named *.tsv, a tab-separated one (quotes
  literal, as in GLUE's files); its first line is the header naming the columns. `regression`:
  the regression metric, when the labels are real-valued scores ('' = class labels)."""
  csv.field_size_limit(sys.maxsize)
  tab = path.endswith(".tsv")
  reader = csv.reader(io.StringIO(_text_of(path), newline=""), delimiter="\t" if tab else ",",
                      quoting=csv.QUOTE_NONE if tab else csv.QUOTE_MINIMAL)
  texts = {key: [] for key, _ in cols}
  labels, lines = [], []
  header, index, end = None, {}, 0
  try:
    for row in reader:
      line, end = end + 1, reader.line_num
      if not row:
        continue
      if header is None:
        header = [h.strip() for h in row]
        for key, name in cols:
          if name not in header:
            raise ConfigError(f"{path}: no column {name!r} (data.{key}); the header (line "
                              f"{line}) has columns: {', '.join(repr(h) for h in header)}. The "
                              "first line must name the columns")
          if header.count(name) > 1:
            raise ConfigError(f"{path}:{line}: column {name!r} (data.{key}) appears twice in "
                              "the header")
          index[key] = header.index(name)
        continue
      if len(row) != len(header):
        hint = "" if tab else " (a text holding a comma must be in double quotes)"
        raise ConfigError(f"{path}:{line}: {len(row)} fields, but the header has "
                          f"{len(header)}{hint}")
      for key, _ in cols:
        if key == "label" and regression:
          labels.append(_score(row[index[key]], f"{path}:{line}", dict(cols)[key], regression))
        elif key == "label":
          labels.append(csv_label(row[index[key]], f"{path}:{line}"))
        else:
          texts[key].append(row[index[key]])
      lines.append(line)
  except csv.Error as e:
    raise ConfigError(f"{path}:{reader.line_num}: malformed CSV: {e}") from None
  if header is None:
    raise ConfigError(f"{path}: empty file (expected a header line naming the columns, then "
                      "one example per line)")
  if not labels:
    raise ConfigError(f"{path}: empty file: a header but no examples")
  return Rows(path, texts["text_a"], texts.get("text_b"), labels, lines)


def read_jsonl(path: str, cols, regression: str = "") -> Rows:
  """A JSON-lines file: one JSON object per line (blank lines skipped); `regression` as in
  read_csv (a regression label must be a JSON number)."""
  texts = {key: [] for key, _ in cols}
  labels, lines = [], []
  # split("\n"), not splitlines(): a JSON string may hold U+2028 and other line separators.
  for line, raw in enumerate(_text_of(path).split("\n"), 1):
    if not raw.strip():
      continue
    where = f"{path}:{line}"
    try:
      obj = json.loads(raw)
    except json.JSONDecodeError as e:
      raise ConfigError(f"{where}: not valid JSON ({e.msg}, column {e.colno}); each line must "
                        "be one JSON object") from None
    if not isinstance(obj, dict):
      raise ConfigError(f"{where}: expected a JSON object {{...}}, found {_json_type(obj)}")
    for key, name in cols:
      if name not in obj:
        raise ConfigError(f"{where}: no field {name!r} (data.{key}); this line has fields: "
                          f"{', '.join(repr(k) for k in obj)}")
      value = obj[name]
      if key == "label" and regression:
        labels.append(_score(value, where, name, regression))
      elif key == "label":
        labels.append(_json_label(value, where, name))
      elif not isinstance(value, str):
        raise ConfigError(f"{where}: field {name!r} (data.{key}) is {_json_type(value)}, not a "
                          "string")
      else:
        texts[key].append(value)
    lines.append(line)
  if not labels:
    raise ConfigError(f"{path}: empty file: no JSON objects (one example per line)")
  return Rows(path, texts["text_a"], texts.get("text_b"), labels, lines)


def check_one_kind(files: List[Rows]) -> None:
  """A label column holds one type: in CSV numbers or names, in JSON strings, numbers or
  booleans. The first label read is the reference."""
  first = files[0]
  ref, ref_where = first.labels[0], f"{first.path}:{first.lines[0]}"
  for rows in files:
    for label, line in zip(rows.labels, rows.lines):
      if label.kind != ref.kind:
        raise ConfigError(
            f"{rows.path}:{line}: mixed types in the label column: {label.key!r} is "
            f"{KIND_WORDS[label.kind]}, but the first label ({ref_where}) {ref.key!r} is "
            f"{KIND_WORDS[ref.kind]}; every label must be of one type (all class names or all "
            "integer class ids)")
