"""The precision of float32 matrix products, a recorded part of the recipe (model.matmul_precision).

XLA may compute a float32 matmul with fewer mantissa bits than float32 has, and by default it
does so on the accelerators this project targets: TF32 on NVIDIA A100 / H100 / H200, a single
bfloat16 pass on TPU. The parity tests, the PyTorch baseline and the paper's GPUs computed true
float32 products. In a study where a seed's fate can turn on rounding, which of the two ran is a
part of the recipe, so it is chosen by a config key and written into config.json and the
summary, never left to the platform.

The values are JAX's own names (jax.default_matmul_precision):
  highest: full float32 (GPU: no TF32; TPU: six bfloat16 passes). PyTorch's default for matmuls.
  high:    GPU: TF32; TPU: three bfloat16 passes (bf16_3x).
  default: GPU: TF32; TPU: one bfloat16 pass.
On a CPU all three compute float32. Operands that are already bfloat16 (model.dtype=bfloat16)
are multiplied in bfloat16 whatever the value.

JAX reads the setting when an operation is traced and stores it in each dot_general (its
`precision` parameter, which the backward pass's products inherit), so wrapping a function's
body (`at_precision`) fixes the precision of everything that function compiles to, whoever
traces it: jit, vmap, lax.map, or jax.export.
"""
import functools
from typing import Callable

import jax

MATMUL_PRECISIONS = ("highest", "high", "default")


def at_precision(fn: Callable, precision: str) -> Callable:
  """`fn` whose body is traced under jax.default_matmul_precision(precision): every float32
  matmul it (and its gradient) contains carries that precision in the compiled program."""
  if precision not in MATMUL_PRECISIONS:  # validate.check_config names the key for a user
    raise ValueError(f"matmul precision {precision!r} is not one of {MATMUL_PRECISIONS}")

  @functools.wraps(fn)
  def traced(*args, **kwargs):
    with jax.default_matmul_precision(precision):
      return fn(*args, **kwargs)
  return traced
