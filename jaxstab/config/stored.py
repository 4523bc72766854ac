"""What a stored config.json means: today's base config with the stored values laid over it.

A workdir's config.json was written by the jaxstab of its day. A key added since is absent from
it, yet the run it describes ran with *some* value of that key: the value the code of its day
used, which is today's default (config_lib.base_config) unless ABSENT_MEANS names another. Every
reader of a stored config (the resume and different-config check in study/workdir.py, the
analyses through analysis.load_setting, the report's schedule) goes through `from_json`, so that
rule lives here once and no module outside jaxstab/config/ needs `cfg.get(key, default)`: a key
read from a config is always there.

Unknown stored keys (a key since removed, or one written by a newer jaxstab) are kept as stored,
not refused: reading results back (analyses, report) still works, and the resume check compares
against a config that lacks the key, so it names the key as a difference and refuses to resume a
run whose config this code would silently ignore. A stored value of another type than today's
default (say an int where a string is expected) is kept as stored too: from_json says what ran;
judging values is validate.check_config's job.
"""
from typing import Any, Dict, NamedTuple

import ml_collections

from jaxstab.config import config_lib


class Absent(NamedTuple):
  """The value a workdir that lacked a key ran with, and why it is not today's default."""
  value: Any
  why: str


# dotted key -> Absent(value, why): only keys whose absent value differs from today's default
# (a key absent from an older config.json whose meaning *is* today's default needs no entry).
# A new key whose default changes what runs gets its entry here in the same change that adds it
# to base_config.
ABSENT_MEANS: Dict[str, Absent] = {
    "model.matmul_precision": Absent(
        "default", "before the key existed nothing set JAX's matmul precision, so float32 "
        "matmuls ran at JAX's default: TF32 on recent NVIDIA GPUs, one bfloat16 pass on TPU"),
}


def absent_value(dotted: str):
  """What a config.json lacking `dotted` ran with: ABSENT_MEANS, else today's default (None for
  a key that today's base config does not have either)."""
  if dotted in ABSENT_MEANS:
    return ABSENT_MEANS[dotted].value
  return config_lib.get_path(config_lib.base_config(), dotted)


def has_path(stored: dict, dotted: str) -> bool:
  """Whether the stored (JSON) dict holds the dotted key."""
  node = stored
  for part in dotted.split("."):
    if not isinstance(node, dict) or part not in node:
      return False
    node = node[part]
  return True


def from_json(stored: dict) -> ml_collections.ConfigDict:
  """The full config a stored config.json describes: base_config(), then ABSENT_MEANS for each
  of its keys the stored dict lacks, then every stored value (unknown keys and values of another
  type kept as stored; see the module docstring). Pure: `stored` is not changed."""
  cfg = config_lib.base_config()
  for dotted, absent in ABSENT_MEANS.items():
    if not has_path(stored, dotted):
      _put(cfg, dotted.split("."), absent.value)
  _lay_over(cfg, stored)
  return cfg


def _put(cfg, parts, value) -> None:
  """cfg.<parts> = value, creating groups on the way (an ABSENT_MEANS key may be new)."""
  node = cfg
  for p in parts[:-1]:
    if p not in node or not isinstance(node[p], ml_collections.ConfigDict):
      node[p] = ml_collections.ConfigDict()
    node = node[p]
  _assign(node, parts[-1], value)


def _lay_over(node: ml_collections.ConfigDict, values: dict) -> None:
  for k, v in values.items():
    if k in node and isinstance(node[k], ml_collections.ConfigDict) and isinstance(v, dict):
      _lay_over(node[k], v)
    else:
      _assign(node, k, v)


def _assign(node: ml_collections.ConfigDict, key: str, value) -> None:
  """node[key] = value; where the field's type refuses it, the stored value replaces the field."""
  try:
    node[key] = value
  except TypeError:
    del node[key]
    node[key] = value
