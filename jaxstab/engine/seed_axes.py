"""How the K seeds of a group share one compiled program: vmapped, or mapped one at a time
(train.py builds every program over them; train re-exports these names)."""
from typing import Callable, Sequence

import jax


SEED_AXES = ("auto", "vmap", "map")


def seed_axis_for(requested: str, backend: str, num_devices: int) -> str:
  """'auto': vmap on accelerators (K seeds fill the chip); a sequential map on a single CPU
  device, where a vmapped step is slower per example than K single-seed steps (BUILD_NOTES)."""
  if requested != "auto":
    return requested
  return "map" if backend == "cpu" and num_devices == 1 else "vmap"


def over_seeds(fn: Callable, in_axes: Sequence, how: str) -> Callable:
  """`jax.vmap(fn, in_axes)`, or with how='map' the same signature computed one seed at a time
  by `lax.map` (each seed runs the unbatched program; still one compiled function per group)."""
  if how == "vmap":
    return jax.vmap(fn, in_axes=tuple(in_axes))

  def mapped(*args):
    seeded = tuple(a for a, ax in zip(args, in_axes) if ax == 0)

    def one(xs):
      it = iter(xs)
      return fn(*[next(it) if ax == 0 else a for a, ax in zip(args, in_axes)])
    return jax.lax.map(one, seeded)
  return mapped
