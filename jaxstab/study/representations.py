"""Each seed's per-layer representations of the first dev examples, kept for the merge's
representation measures (issue #31, part 2: results/representations.py computes CKA, Procrustes
and SVCCA from them).

Seeds train in groups, and a group's parameters leave the device when the next group starts, so
the vectors are taken at the end of each group's training, by the programs' `eval_reps` (the
first-token vector after the embeddings and after every encoder layer), and written per seed as
runs/reps_seed_<s>.npy: [layers + 1, examples, hidden] float16. Float16 halves the disk of
float32, and its 11-bit mantissa (relative rounding 2^-11 = 4.9e-4) is far below the seed to
seed differences the measures read. Hidden states beyond float16's range (65,504) would be
stored as inf; the measures refuse non-finite input by name.

`write` runs before the seed's .json is written, and that .json marks the seed finished: a run
killed in between trains the group again and writes the file again (whole-file writes), so a
finished seed always has its file. Reads only the setting's records (plan.Plan, plan.Engine).
"""
import io
import math
from typing import Optional

import jax
import numpy as np
from absl import logging

from jaxstab.engine import parallel, train as train_lib
from jaxstab.infra import fs
from jaxstab.study import workdir as workdir_lib

STORED = np.float16


def examples(plan) -> int:
  """How many dev examples are captured: the first analysis.rep_examples, or all of a smaller
  dev set (RTE's 277); 0 when the capture is off."""
  return min(int(plan.rep_examples), len(plan.arrays.dev["labels"]))


def capture(programs: train_lib.Programs, params, dev_batches, n: int, seeds: int) -> np.ndarray:
  """[seeds, layers + 1, n, hidden] float32: the first `seeds` slots of a group's `params` on
  the first `n` examples of `dev_batches` ([num_batches, B, ...] on the device). Only the
  batches holding those examples are run."""
  batch = int(dev_batches["input_ids"].shape[1])
  first = jax.tree_util.tree_map(lambda x: x[:math.ceil(n / batch)], dev_batches)
  reps = parallel.to_host(programs.eval_reps(params, first))
  return np.asarray(reps[:seeds, :, :n], np.float32)


def write(plan, engine, state, progress) -> None:
  """Writes runs/reps_seed_<s>.npy of each real seed of a trained group; nothing when the
  capture is off (analysis.rep_examples = 0)."""
  n = examples(plan)
  if n == 0:
    return
  reps = capture(engine.programs, state.params, engine.dev_on_device, n, len(progress.seeds))
  for i, s in enumerate(progress.seeds if parallel.is_primary() else []):
    buf = io.BytesIO()
    np.save(buf, reps[i].astype(STORED))
    fs.write_bytes(workdir_lib.run_path(plan.workdir, s, "reps"), buf.getvalue())


def read(path: str) -> np.ndarray:
  return np.load(io.BytesIO(fs.read_bytes(path)), allow_pickle=False)


def stacked(plan, seeds=None) -> Optional[np.ndarray]:
  """[seeds, layers + 1, examples, hidden] float16 of `seeds` (default: every seed of the
  setting, in plan.seeds' order); None when the capture is off, or when a seed has no file (a workdir begun before the
  capture existed or with it off, or an early stop's stopped runs, which never train to the
  end): the measures compare every seed or none."""
  if examples(plan) == 0:
    return None
  paths = [workdir_lib.run_path(plan.workdir, s, "reps") for s in
           (plan.seeds if seeds is None else seeds)]
  missing = [p for p in paths if not fs.isfile(p)]
  if missing:
    logging.info("%s: %d of %d seeds have no representations (%s ...): no representation "
                 "measures", plan.workdir, len(missing), len(paths), missing[0])
    return None
  return np.stack([read(p) for p in paths])
