"""A setting's K (seeds per compiled step): chosen once, compiled, halved on out-of-memory, and
recorded in <workdir>/seeds_per_step.json, which its summary repeats.

engine/memory.py decides from numbers; this module ties that to a setting (it reads the Plan
and values, never the config): it builds the
programs it measures with the setting's own builder (`programs_for`, i.e. train.build_programs),
compiles the chosen K's step before the first group starts (an out-of-memory error there halves
K and compiles the smaller group), and keeps the record. A rerun with the same
train.seeds_per_step on as many devices starts from the K the record holds when an earlier run
had to halve it, so its groups, and their checkpoints, are the ones the earlier run left.
"""
import dataclasses
from typing import Callable, Optional, Tuple

import jax
from absl import logging

from jaxstab.engine import memory, parallel
from jaxstab.infra import fs
from jaxstab.results import outputs
from jaxstab.study import workdir as workdir_lib
from jaxstab.study.plan import Engine, Plan


def record_path(workdir: str) -> str:
  return fs.join(workdir, workdir_lib.SEEDS_PER_STEP)


def read_record(workdir: str) -> Optional[dict]:
  path = record_path(workdir)
  return fs.read_json(path) if fs.isfile(path) else None


def _write(workdir: str, sizing: memory.Sizing) -> None:
  if parallel.is_primary():
    outputs.write_json(record_path(workdir), sizing.to_json())


def choose(requested: int, formula: Tuple[int, int], plan: Plan, layout: parallel.Layout,
           programs_for: Callable[[int], object]) -> memory.Sizing:
  """K for the runs left to train (train.seeds_per_step = `requested`): memory.choose with the
  compiled step measured at one and two seeds per device (`formula`: the fallback's bytes per
  seed and shared), capped by an earlier run's halving; written to the record."""

  def measure(k: int) -> Optional[memory.Footprint]:
    try:
      return memory.footprint(memory.compile_step(programs_for(k), layout, plan.arrays.train))
    except jax.errors.JaxRuntimeError as e:
      if not memory.is_oom(e):
        raise
      logging.warning("out of memory compiling K=%d to measure it; K from the formula", k)
      return None

  sizing = memory.choose(requested, max(len(plan.todo), 1), layout, measure, *formula)
  earlier = read_record(plan.workdir)
  if (earlier and earlier.get("halved") and earlier.get("requested") == sizing.requested
      and earlier.get("devices") == sizing.devices):
    halvings = earlier["halved"]
    if earlier["k"] < sizing.k:
      logging.info("K=%d, as an earlier run of this workdir halved it after running out of "
                   "memory (%s; remove it to choose afresh)", earlier["k"],
                   record_path(plan.workdir))
      sizing = dataclasses.replace(sizing, k=int(earlier["k"]))
    sizing = dataclasses.replace(sizing, halved=halvings)
  _write(plan.workdir, sizing)
  return sizing


def compiled(plan: Plan, layout: parallel.Layout, programs_for: Callable[[int], object],
             sizing: memory.Sizing):
  """(programs, sizing): the programs of K seeds with their step compiled; an out-of-memory
  error while compiling halves K (recorded) and compiles the smaller group."""
  while True:
    programs = programs_for(sizing.k)
    try:
      memory.compile_step(programs, layout, plan.arrays.train)
      return programs, sizing
    except jax.errors.JaxRuntimeError as e:
      if not memory.is_oom(e):
        raise
      error = memory.first_line(e)
    sizing = memory.halved(sizing, "compile", error)
    _write(plan.workdir, sizing)


def smaller(plan: Plan, engine: Engine, error: str) -> Engine:
  """The engine after an out-of-memory error in a train step (`error`, its first line): half
  the seeds per device, recorded, compiled (halving again if that does not compile either)."""
  sizing = memory.halved(engine.sizing, "step", error)
  _write(plan.workdir, sizing)
  programs, sizing = compiled(plan, engine.layout, engine.programs_for, sizing)
  return dataclasses.replace(engine, programs=programs, sizing=sizing)
