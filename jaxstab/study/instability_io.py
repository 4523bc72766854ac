"""A setting's predictions.npz and the `instability` block of its summary, from the dev logits
each seed left in runs/ at the end of training (groups.write).

The std of the metric says how far the seeds' scores spread; the block says how far their
predictions do (jaxstab.results.instability computes it; this module only finds its inputs).
predictions.npz keeps those inputs, so anyone can recompute the block or another measure
without training again. Reads only the plan's records, never the config.
"""
from typing import Optional, Tuple

import numpy as np

from jaxstab.infra import fs
from jaxstab.results import finite, instability
from jaxstab.study import representations, workdir as workdir_lib


def gather(plan, runs) -> Tuple[Optional[dict], Optional[str]]:
  """(predictions, None): the arrays of predictions.npz for `runs` (the runs that trained to the
  end, in their order): `logits` [seeds, dev examples, outputs] float32, the dev `labels` and
  the `seeds` (run numbers). (None, reason) when a run has no logits file: it finished before
  the logits were kept, and a setting's predictions are all its runs' or none."""
  seeds = [int(r["seed"]) for r in runs]
  paths = [workdir_lib.run_path(plan.workdir, s, "logits") for s in seeds]
  missing = [s for s, p in zip(seeds, paths) if not fs.isfile(p)]
  if missing:
    return None, (f"no end-of-training dev logits for run(s) {missing} (runs/logits_seed_N.npz: "
                  "they finished before jaxstab kept them); rerun the setting with "
                  "--config.overwrite=True to get them")
  logits = np.stack([fs.load_npz(p)["logits"] for p in paths]).astype(np.float32)
  return {"logits": logits, "labels": np.asarray(plan.arrays.dev["labels"]),
          "seeds": np.asarray(seeds, np.int64)}, None


def successful(runs) -> np.ndarray:
  """Boolean mask over `runs`: trained to the end and not failed (a diverged run is failed).
  Failed runs that all predict the majority class agree perfectly with one another, and would
  make a setting whose runs mostly failed read as stable: hence a block over these alone."""
  return np.asarray([r.get("failed") is False for r in runs], bool)


def block(predictions: dict, runs, regression: bool, representations=None) -> dict:
  """The summary's `instability` block (jaxstab.results.instability.instability) of the
  predictions `gather` found: over every run, and over the successful ones under
  `successful`; the representation measures too when `representations` [seeds, layers,
  examples, dims] are given."""
  return instability.instability(
      predictions["logits"], "logits", successful=successful(runs),
      representations=representations,
      task_type="regression" if regression else "classification")


def add(out: dict, plan, runs) -> Optional[dict]:
  """Puts the `instability` block into the summary `out` (null with the reason under `out`'s
  `undefined` when the runs have no logits) and returns the arrays for predictions.npz (None
  then)."""
  predictions, why = gather(plan, runs)
  if predictions is None:
    finite.put(out, "instability", finite.Undefined(why))
    return None
  reps = representations.stacked(plan, [int(r["seed"]) for r in runs])  # None: not captured
  out["instability"] = block(predictions, runs, plan.task.regression, reps)
  return predictions
