"""A setting's workdir: which config made its results, and where each seed's files go.

A rerun of the same command resumes (finished seeds are skipped); a rerun with a config that
would change any one seed's result is refused, naming the keys that differ, unless
overwrite=True.
"""
import json

from jaxstab.config import stored
from jaxstab.engine import parallel
from jaxstab.infra import fs
from jaxstab.infra.errors import ConfigError
from jaxstab.results import outputs
from jaxstab.study import early_stop

RUNS = "runs"
SEEDS_PER_STEP = "seeds_per_step.json"  # how K was chosen and halved (study/sizing.py)

# Keys that do not change any one seed's result: a rerun may change them and still resume.
# train.remat recomputes the same values (bit-identical on XLA:CPU, tested); like seed_axis it
# may round differently elsewhere, and it is what one turns on to fit a run that ran out of memory.
RESUMABLE = ("seed", "seeds", "train.seeds_per_step", "train.seed_axis", "train.remat",
             "overwrite", "settings", "checkpoint.every_steps", "checkpoint.keep", "compile_cache",
             "explicit")


def config_diff(old: dict, new: dict):
  """Dotted keys whose values differ between a stored config dict and a new one (RESUMABLE keys
  ignored).

  `old` is read as config.stored.from_json reads it: a key it lacks has the value the run it
  describes ran with (ABSENT_MEANS, else today's default), so a workdir made before a key
  existed resumes after an upgrade when the new value is that one, and is refused otherwise.
  """
  return _diff(old, _as_json(stored.from_json(old)), new, "")


def _diff(raw: dict, old: dict, new: dict, prefix: str):
  out = []
  for k in sorted(set(old) | set(new)):
    key = prefix + k
    if key in RESUMABLE:
      continue
    a, b = old.get(k, _ABSENT), new.get(k, _ABSENT)
    given = isinstance(raw, dict) and k in raw
    if isinstance(a, dict) and isinstance(b, dict):
      out += _diff(raw[k] if given else {}, a, b, key + ".")
    elif a != b:
      out.append(f"{key}: {a!r} -> {b!r}" if given else
                 f"{key}: {_ABSENT!r} -> {b!r} (a config.json without the key ran with {a!r})")
  return out


_ABSENT = "<absent>"


def _as_json(cfg) -> dict:
  return json.loads(json.dumps(cfg.to_dict()))


def check_same_config(cfg, workdir: str) -> None:
  """Refuses a workdir holding results of another config (reads only; writes nothing)."""
  path = fs.join(workdir, outputs.CONFIG)
  if cfg.overwrite or not fs.isfile(path):
    return
  diff = config_diff(fs.read_json(path), _as_json(cfg))
  if diff:
    raise ConfigError(f"{workdir} holds results of a different config ({'; '.join(diff)}). "
                      "Use a new --workdir, or pass --config.overwrite=True to discard them.")


def prepare(cfg, workdir: str) -> None:
  """Checks the workdir again (under its lock), then writes config.json and readies runs/;
  the merged files of an earlier run are removed (they are rebuilt at the end). overwrite=True
  also removes what the discarded config left to resume from: its group checkpoints, its early
  stop's decision and its record of K."""
  check_same_config(cfg, workdir)
  if not parallel.is_primary():
    return
  path = fs.join(workdir, outputs.CONFIG)
  if not fs.isfile(path) or cfg.overwrite:
    fs.rmtree(fs.join(workdir, RUNS))
    fs.rmtree(fs.join(workdir, "checkpoints"))
    for name in (SEEDS_PER_STEP, early_stop.DECISION):
      fs.remove(fs.join(workdir, name))
  fs.makedirs(fs.join(workdir, RUNS))
  for name in (outputs.SUMMARY, outputs.PROBE):
    fs.remove(fs.join(workdir, name))
  outputs.write_json(path, _as_json(cfg))


def run_path(workdir: str, seed: int, kind: str) -> str:
  """runs/seed_N.json (written last: it marks the seed finished), its probe and its metrics."""
  return fs.join(workdir, RUNS, {"json": f"seed_{seed}.json", "npz": f"probe_seed_{seed}.npz",
                                 "jsonl": f"metrics_seed_{seed}.jsonl"}[kind])
