"""What bench_step.py (JAX) and bench_torch.py (PyTorch) share: shapes, FLOP count, row format.

Imports nothing heavy, so the PyTorch benchmark can run in its own process without loading JAX
(JAX's and PyTorch's CUDA libraries are kept out of one process, and the GPU is free for JAX
once the PyTorch process has exited).
"""
import json
import math
import os
import re

SHAPES = {  # hidden, layers, heads, intermediate, vocab
    "tiny": (64, 2, 2, 128, 2000),
    "bert-base-2l": (768, 2, 12, 3072, 30522),   # "small": BERT-base widths, 2 layers
    "minilm": (384, 6, 12, 1536, 30522),          # MiniLM-L6-H384, the real proxy model
    "bert-base": (768, 12, 12, 3072, 30522),
    "bert-large": (1024, 24, 16, 4096, 30522),
}


def train_flops_per_example(hidden, layers, inter, seq):
  """Matmul FLOPs of forward + backward (3x forward) for one example of length seq
  (encoder only: the embedding gather and the 2-way head are negligible)."""
  per_token = layers * (2 * 4 * hidden * hidden + 2 * 2 * hidden * inter)
  attention = layers * 2 * 2 * seq * seq * hidden
  return 3 * (per_token * seq + attention)


def make_row(impl, mode, k, batch, seq, shape, sec, peak_tflops, **extra):
  """One result row: ms/step, examples/s (summed over the k seeds), TFLOP/s and MFU."""
  hidden, layers, _, inter, _ = SHAPES[shape]
  ex = k * batch / sec
  tflops = ex * train_flops_per_example(hidden, layers, inter, seq) / 1e12
  mfu = tflops / peak_tflops if peak_tflops else float("nan")
  return dict(impl=impl, mode=mode, k=k, shape=shape, batch=batch, seq=seq,
              ms_per_step=sec * 1e3, examples_per_s=ex, tflops=tflops, mfu=mfu, **extra)


def skipped_row(impl, mode, k, batch, seq, shape, why, **extra):
  nan = float("nan")
  return dict(impl=impl, mode=mode, k=k, shape=shape, batch=batch, seq=seq, ms_per_step=nan,
              examples_per_s=nan, tflops=nan, mfu=nan, skipped=why, **extra)


def fmt(x, spec):
  """format(x, spec), or a '-' of the same width for a missing / NaN value."""
  if x is None or (isinstance(x, float) and math.isnan(x)):
    width = re.match(r"\d*", spec).group()
    return "-".rjust(int(width)) if width else "-"
  return format(x, spec)


def _strict(x):
  if isinstance(x, float) and not math.isfinite(x):
    return None
  if isinstance(x, dict):
    return {k: _strict(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_strict(v) for v in x]
  return x


def write_json(path, obj):
  """Atomic write (a run killed mid-way leaves the last complete file); NaN written as null."""
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(_strict(obj), f, indent=2, default=str)
  os.replace(tmp, path)


def gemm_tflops(dtype_name, n, reps=5):
  """TFLOP/s of one square n x n matmul on jax's default device: the rate the chip actually
  reaches on the kind of op a transformer step is made of (a measured roofline for MFU)."""
  import time  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype_name]
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
  f = jax.jit(lambda x, y: x @ y)
  f(a, b).block_until_ready()
  t = time.perf_counter()
  for _ in range(reps):
    out = f(a, b)
  out.block_until_ready()
  return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e12
