"""A setting's workdir: which config made its results, and where each seed's files go.

A rerun of the same command resumes (finished seeds are skipped); a rerun with a config that
would change any one seed's result is refused, naming the keys that differ, unless
overwrite=True. A finished seed whose files cannot be read stops the rerun with one line naming
the file and the fix, before anything is written (`check_finished` says why it is not retrained
on its own).
"""
import json

from jaxstab.config import runs as runs_lib, stored
from jaxstab.engine import parallel
from jaxstab.infra import fs
from jaxstab.infra.errors import ConfigError
from jaxstab.results import outputs, records
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


def check_finished(cfg, workdir: str) -> None:
  """Refuses a workdir where a finished seed's record, probe or metrics cannot be read: a
  ConfigError naming the file, and the fix, before anything is written (reads only; nothing to
  check where runs/ is about to be emptied: a new workdir, or overwrite=True).

  Not retrained on its own, for three reasons. Every one of these files is written whole and
  renamed into place, so a damaged one was damaged outside jaxstab (a cut-short copy, a failing
  disk) and other files may be too: a person should look. The result may have cost hours, and
  a copy may still hold it. And a seed trained again alone runs in a group of another size,
  which on a vmapped seed axis rounds differently, so it need not reproduce the lost result to
  the last bit. Renaming the record (the message says how) is all it takes to train it again."""
  if cfg.overwrite or not fs.isfile(fs.join(workdir, outputs.CONFIG)):
    return
  for s in (r.number for r in runs_lib.parse(cfg)):
    record = run_path(workdir, s, "json")
    if not fs.isfile(record):
      continue
    # the logits are read where present: a seed finished before they were kept has none
    kinds = ("json", "npz", "jsonl") + (("logits",) if fs.isfile(run_path(workdir, s, "logits"))
                                        else ())
    for kind in kinds:
      try:
        _read_finished(run_path(workdir, s, kind), kind, s)
      except ConfigError as e:  # records' own line, which names the file
        problem = str(e)
      except fs.UNREADABLE as e:
        problem = f"{run_path(workdir, s, kind)} is damaged ({type(e).__name__}: {e})"
      else:
        continue
      raise ConfigError(f"{problem}: the finished result of seed {s} cannot be read. Restore it "
                        f"from a copy, or {_retrain(cfg, workdir, s, record)}")


def _retrain(cfg, workdir: str, seed: int, record: str) -> str:
  """How to train a damaged seed again. After an early stop has finished, its first phase's
  saved states and scores are gone, and neither a stopped run's record nor a continued run's
  start can be rebuilt from them: only the whole setting can be trained again."""
  if (early_stop.enabled(cfg) and fs.isfile(early_stop.decision_path(workdir))
      and not fs.isdir(fs.join(workdir, "checkpoints", early_stop.CHECKPOINTS))):
    return ("rerun with --config.overwrite=True to train the setting again (after an early "
            "stop has finished, one run cannot be trained again alone)")
  return (f"rename {record} (e.g. to seed_{seed}.json.damaged) and rerun the same command to "
          f"train seed {seed} again")


def _read_finished(path: str, kind: str, seed: int) -> None:
  """Reads one file of a finished seed whole; raises what a damaged one raises."""
  if kind == "json":
    run = records.read_run(path)
    if run.seed != seed or not run.final:
      raise ConfigError(f"{path} is not the run record of seed {seed} (seed {run.seed}, final "
                        f"evaluation {dict(run.final)})")
  elif kind in ("npz", "logits"):
    fs.load_npz(path)
  else:
    for line in fs.read_text(path).splitlines():
      json.loads(line)


def prepare(cfg, workdir: str) -> None:
  """Checks the workdir again (under its lock), then writes config.json and readies runs/;
  the merged files of an earlier run are removed (they are rebuilt at the end). overwrite=True
  also removes what the discarded config left to resume from: its group checkpoints, its early
  stop's decision and its record of K."""
  check_same_config(cfg, workdir)
  check_finished(cfg, workdir)
  if not parallel.is_primary():
    return
  path = fs.join(workdir, outputs.CONFIG)
  if not fs.isfile(path) or cfg.overwrite:  # nothing of an earlier config may be resumed
    fs.rmtree(fs.join(workdir, RUNS))
    fs.rmtree(fs.join(workdir, "checkpoints"))
    for left in (fs.join(workdir, SEEDS_PER_STEP), early_stop.decision_path(workdir)):
      fs.remove(left)
  fs.makedirs(fs.join(workdir, RUNS))
  for name in (outputs.SUMMARY, outputs.PROBE, outputs.PREDICTIONS):
    fs.remove(fs.join(workdir, name))
  outputs.write_json(path, _as_json(cfg))


def run_path(workdir: str, seed: int, kind: str) -> str:
  """runs/seed_N.json (written last: it marks the seed finished), its probe, its metrics, its
  end-of-training dev logits (kind "logits"; merge stacks them into predictions.npz) and its
  per-layer representations (kind "reps"; study/representations.py)."""
  return fs.join(workdir, RUNS, {"json": f"seed_{seed}.json", "npz": f"probe_seed_{seed}.npz",
                                 "jsonl": f"metrics_seed_{seed}.jsonl",
                                 "logits": f"logits_seed_{seed}.npz",
                                 "reps": f"reps_seed_{seed}.npy"}[kind])
