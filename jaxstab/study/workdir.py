"""A setting's workdir: which config made its results, and where each seed's files go.

A rerun of the same command resumes (finished seeds are skipped); a rerun with a config that
would change any one seed's result is refused, naming the keys that differ, unless
overwrite=True.
"""
import json

from jaxstab.config import config_lib
from jaxstab.infra import fs
from jaxstab.results import outputs
from jaxstab.engine import parallel
from jaxstab.infra.errors import ConfigError

RUNS = "runs"

# Keys that do not change any one seed's result: a rerun may change them and still resume.
RESUMABLE = ("seed", "seeds", "train.seeds_per_step", "train.seed_axis", "overwrite",
             "settings", "checkpoint.every_steps", "checkpoint.keep", "compile_cache",
             "explicit")


def config_diff(old: dict, new: dict, prefix="", defaults=None):
  """Dotted keys whose values differ between two config dicts (RESUMABLE keys ignored).

  With `defaults` (base_config as a dict), a key the old config lacks counts as unchanged when
  the new value is its default: a workdir made before a key existed resumes after an upgrade.
  """
  out = []
  defaults = defaults or {}
  for k in sorted(set(old) | set(new)):
    key = prefix + k
    if key in RESUMABLE:
      continue
    a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
    if isinstance(a, dict) and isinstance(b, dict):
      sub = defaults.get(k)
      out += config_diff(a, b, key + ".", sub if isinstance(sub, dict) else None)
    elif a == "<absent>" and k in defaults and b == defaults[k]:
      continue
    elif a != b:
      out.append(f"{key}: {a!r} -> {b!r}")
  return out


def _as_json(cfg) -> dict:
  return json.loads(json.dumps(cfg.to_dict()))


def check_same_config(cfg, workdir: str) -> None:
  """Refuses a workdir holding results of another config (reads only; writes nothing)."""
  path = fs.join(workdir, outputs.CONFIG)
  if cfg.get("overwrite", False) or not fs.isfile(path):
    return
  defaults = _as_json(config_lib.base_config())
  diff = config_diff(fs.read_json(path), _as_json(cfg), defaults=defaults)
  if diff:
    raise ConfigError(f"{workdir} holds results of a different config ({'; '.join(diff)}). "
                      "Use a new --workdir, or pass --config.overwrite=True to discard them.")


def prepare(cfg, workdir: str) -> None:
  """Checks the workdir again (under its lock), then writes config.json and readies runs/;
  the merged files of an earlier run are removed (they are rebuilt at the end)."""
  check_same_config(cfg, workdir)
  if not parallel.is_primary():
    return
  path = fs.join(workdir, outputs.CONFIG)
  if not fs.isfile(path) or cfg.get("overwrite", False):
    fs.rmtree(fs.join(workdir, RUNS))
  fs.makedirs(fs.join(workdir, RUNS))
  for name in (outputs.SUMMARY, outputs.PROBE):
    fs.remove(fs.join(workdir, name))
  outputs.write_json(path, _as_json(cfg))


def run_path(workdir: str, seed: int, kind: str) -> str:
  """runs/seed_N.json (written last: it marks the seed finished), its probe and its metrics."""
  return fs.join(workdir, RUNS, {"json": f"seed_{seed}.json", "npz": f"probe_seed_{seed}.npz",
                                 "jsonl": f"metrics_seed_{seed}.jsonl"}[kind])
