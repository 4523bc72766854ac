"""How many seeds share one compiled step (K), from XLA's own memory analysis of that step, and
what to do when a group does not fit after all.

Why the compiled program and not a formula: the formula (parallel.bytes_per_seed) counts
parameters, gradients, Adam moments and BERT-shaped activations; it knows nothing of a model's
own attention, of remat, of bf16 moments or of how XLA reuses buffers. XLA knows exactly what the
step it compiled will hold: its arguments (the group's train state, the data, the anchor), its
outputs (the new state, aliased to the donated old one) and its temporaries. Compiling the step
for one and for two seeds per device gives the fixed part and the cost of each further seed; K is
then the largest multiple of the device count whose step fits in HEADROOM of the device's free
memory. Where the platform reports no memory (CPU) K stays what it was: every seed in one group.
Where the analysis is unavailable the formula is the fallback, and the log and the setting's
summary say which one chose K.

An out-of-memory error can still come (other programs' buffers, fragmentation, an allocator that
reserves more than XLA asked for): the caller halves K (`halved`) and goes on; a group restarts
from its newest checkpoint. When even one seed per device does not fit, `DoesNotFit` stops the
run with one line saying what to lower.
"""
import dataclasses
from typing import Callable, List, Optional

import jax
from absl import logging

from jaxstab.engine import parallel
from jaxstab.infra.errors import ConfigError

HEADROOM = 0.9  # fraction of a device's free memory a group step may plan to use
GB = 1e9
# What XLA puts in the message of an allocation it cannot make, at compile or at run time.
OOM_MARKS = ("RESOURCE_EXHAUSTED", "Out of memory")
LOWER = ("lower train.batch_size or train.max_seq_length, or set train.remat=layers, "
         "model.dtype=bfloat16 or optim.moments_dtype=bfloat16")


class DoesNotFit(ConfigError):
  """Not even one seed per device fits: the run stops with one line (a ConfigError: the remedy
  is a config change)."""


def size(n: float) -> str:
  """Bytes for a log line: GB, or MB below a gigabyte (the tiny models of tests and the demo)."""
  return f"{n / GB:.2f} GB" if abs(n) >= GB / 10 else f"{n / 1e6:.1f} MB"


def is_oom(error: BaseException) -> bool:
  """An XLA allocation failure (jax.errors.JaxRuntimeError with RESOURCE_EXHAUSTED), as the
  compiler or the runtime raises it; any other error is not ours to handle."""
  return isinstance(error, jax.errors.JaxRuntimeError) and any(m in str(error)
                                                               for m in OOM_MARKS)


@dataclasses.dataclass(frozen=True)
class Footprint:
  """Bytes of one compiled program per device, from `compiled.memory_analysis()`."""
  argument: int
  output: int
  alias: int      # output bytes that reuse a donated argument's buffer
  temp: int

  @property
  def peak(self) -> int:
    """What the program holds while it runs: its arguments, its outputs that are not written
    over a donated argument, and its temporaries."""
    return self.argument + self.output - self.alias + self.temp

  def to_json(self) -> dict:
    return dict(dataclasses.asdict(self), peak=self.peak)


def footprint(compiled) -> Optional[Footprint]:
  """The compiled program's Footprint, or None where the backend does not analyse memory."""
  try:
    stats = compiled.memory_analysis()
  except (NotImplementedError, RuntimeError, AttributeError):
    return None
  if stats is None:
    return None
  return Footprint(int(stats.argument_size_in_bytes), int(stats.output_size_in_bytes),
                   int(stats.alias_size_in_bytes), int(stats.temp_size_in_bytes))


def abstract_state(programs, layout: parallel.Layout):
  """A group state of `programs` as shapes, dtypes and shardings (its seeds over the devices),
  with nothing allocated: what a step is lowered for, and what a checkpoint is restored into."""
  k = programs.seeds_per_group
  keys = jax.ShapeDtypeStruct((k, 2), jax.numpy.uint32)
  seeds = layout.seed_sharding(k)
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=seeds),
                                jax.eval_shape(programs.create, keys, keys))


def abstract_args(programs, layout: parallel.Layout, train_arrays: dict):
  """The step's arguments, abstract: the group's state, the data replicated, the anchor as it
  is. They are what a study passes, so the program compiled here is the one the study's first
  step runs (jax finds it in its in-memory cache and does not compile it again)."""
  data = {n: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=layout.replicated)
          for n, v in train_arrays.items()}
  return abstract_state(programs, layout), data, programs.anchor


def compile_step(programs, layout: parallel.Layout, train_arrays: dict):
  """Lowers and compiles the group step of `programs` (an OOM here is a compile-time one)."""
  return programs.step.lower(*abstract_args(programs, layout, train_arrays)).compile()


@dataclasses.dataclass
class Sizing:
  """How K was chosen, and what happened to it since: the record a setting keeps in
  seeds_per_step.json and its summary."""
  k: int
  how: str                       # requested | memory_analysis | formula | no memory report
  requested: int                 # train.seeds_per_step (0: as many as fit)
  devices: int
  free_bytes: int = 0            # free memory per device when K was chosen (0: not reported)
  fixed_bytes: Optional[int] = None     # what the step holds besides its seeds
  per_seed_bytes: Optional[int] = None  # what one more seed per device adds
  measured: dict = dataclasses.field(default_factory=dict)  # seeds per device -> Footprint
  halved: List[dict] = dataclasses.field(default_factory=list)  # each OOM: from, to, at, error

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def choose(requested: int, num_seeds: int, layout: parallel.Layout,
           measure: Callable[[int], Optional[Footprint]], formula_bytes: int,
           shared_bytes: int) -> Sizing:
  """K for a setting of `num_seeds` runs. `requested` > 0 is taken as it is (rounded up to the
  device count); else, with the device's free memory known, from `measure(k)` (the compiled
  step's Footprint for a group of k, None when unavailable) at one and two seeds per device,
  or from the formula's `formula_bytes` per seed and `shared_bytes` besides."""
  d = layout.num_devices
  if requested > 0:
    return Sizing(parallel.seeds_per_step(requested, num_seeds, layout, formula_bytes,
                                          shared_bytes), "requested", requested, d)
  free = parallel.free_bytes(layout.mesh.devices.flat[0])
  if not free:
    k = parallel.seeds_per_step(0, num_seeds, layout, formula_bytes, shared_bytes)
    logging.info("seeds_per_step=0: the device reports no free memory (%s); every seed in one "
                 "group, K=%d", jax.default_backend(), k)
    return Sizing(k, "no memory report", requested, d)
  most = -(-num_seeds // d)  # seeds per device that hold every run
  one = measure(d)
  two = measure(2 * d) if one is not None and most > 1 else None
  if one is not None and (two is not None or most == 1):
    per = max(two.peak - one.peak, 1) if two is not None else one.peak
    fixed = one.peak - per
    measured = {"1": one.to_json(), **({"2": two.to_json()} if two is not None else {})}
    how = "memory_analysis"
  else:
    per, fixed, measured, how = formula_bytes, shared_bytes, {}, "formula"
  sizing = Sizing(0, how, requested, d, free, fixed, per, measured)
  fit = int((HEADROOM * free - fixed) // per)
  if fit < 1 and how == "memory_analysis":
    raise DoesNotFit(no_fit_line(sizing))
  fit = max(fit, 1)  # the formula may overstate: one seed per device is tried, an OOM decides
  sizing.k = min(fit, most) * d
  logging.info("seeds_per_step=0 (%s): %s free per device; a group step holds %s plus %s per "
               "seed on each device -> K=%d (%d per device)", how, size(free), size(fixed),
               size(per), sizing.k, sizing.k // d)
  return sizing


def no_fit_line(sizing: Sizing, error: str = "") -> str:
  """The one line a run stops with when one seed per device does not fit."""
  if sizing.per_seed_bytes is not None:
    need = (f"one seed per device needs {size(sizing.fixed_bytes + sizing.per_seed_bytes)} "
            f"({size(sizing.per_seed_bytes)} for the seed itself, by {sizing.how})")
  else:
    need = "one seed per device does not fit"
  has = (f"the device has {size(sizing.free_bytes)} free" if sizing.free_bytes
         else "the device ran out of memory")
  why = f" ({error})" if error else ""
  return f"{need}, {has}{why}; {LOWER}"


def first_line(error: BaseException) -> str:
  """An error's first line, short enough for a log line and the record."""
  text = str(error).strip()
  return text.splitlines()[0][:200] if text else type(error).__name__


def halved(sizing: Sizing, at: str, error: str) -> Sizing:
  """The sizing after an out-of-memory error (`error`, its first line) at `at` ('compile' or
  'step') time: half as many seeds per device, so K stays a multiple of the device count. With
  one seed per device already: DoesNotFit."""
  per_device = sizing.k // sizing.devices
  if per_device <= 1:
    raise DoesNotFit(no_fit_line(sizing, error))
  k = (per_device // 2) * sizing.devices
  logging.warning("out of memory at %s time with K=%d (%s); halving to K=%d", at, sizing.k,
                  error, k)
  return dataclasses.replace(sizing, k=k, halved=sizing.halved + [
      {"from": sizing.k, "to": k, "at": at, "error": error}])


def step_compiler_options(remat: str, platform: str) -> Optional[dict]:
  """XLA options of the train step. XLA:CPU expands the optimization barriers that keep a
  remat's recomputation apart early in its pipeline, and its common-subexpression pass then
  merges the recomputation back into the forward pass: remat would cost nothing and save
  nothing there. The GPU and TPU compilers expand them only after scheduling. With remat on a
  CPU the step is compiled without that expansion (bit-identical results, tested), so remat
  saves memory there too and the CPU's memory analysis shows what it saves on an accelerator."""
  if remat != "none" and platform == "cpu":
    return {"xla_disable_hlo_passes": "cse_barrier_expander"}
  return None
