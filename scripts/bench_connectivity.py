"""What the connectivity analysis costs (python -m jaxstab.connectivity): the time of one
interpolation point (a forward pass over `--examples` examples) on this machine, and XLA's
memory analysis of the compiled line program, for random models of BERT shapes (no download).

  python scripts/bench_connectivity.py --shapes=minilm,bert-base --seq=128 --examples=64 \
      --memory=bert-base,bert-large --chunk=5

Time: one chunk of `--time_points` points of the line program (vmapped, as the analysis runs
it) on one batch of `--examples` examples, after a warm-up call; seconds per point per example.
Memory: the program for `--chunk` points, compiled but not run, its arguments (two parameter
sets and the batches) + temporaries (the interpolated copies and activations) as XLA counts
them (jaxstab.engine.memory.footprint).
"""
import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(1, os.path.dirname(HERE))  # this checkout's jaxstab

from bench_common import SHAPES  # pylint: disable=wrong-import-position


class _Vocab:  # what models.load needs of a tokenizer to size a random model
  def __init__(self, size):
    self.size, self.pad_token_id, self.cls_token_id, self.sep_token_id = size, 1, 0, 2

  def __len__(self):
    return self.size


def build(shape):
  import ml_collections  # pylint: disable=import-outside-toplevel
  from jaxstab.config import config_lib  # pylint: disable=import-outside-toplevel
  from jaxstab.engine import models  # pylint: disable=import-outside-toplevel
  hidden, layers, heads, inter, vocab = SHAPES[shape]
  cfg = config_lib.base_config()
  cfg.model.name_or_path = "tiny-bert"
  cfg.model.tiny = ml_collections.ConfigDict(dict(
      hidden_size=hidden, num_layers=layers, num_heads=heads, intermediate_size=inter,
      max_position_embeddings=512, vocab_size=vocab, init_seed=0))
  return models.load(cfg.model, 2, _Vocab(vocab))


def batches(n, seq, nb=1):
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  shape = (nb, n, seq)
  return {"input_ids": rng.integers(5, 1000, shape).astype(np.int32),
          "attention_mask": np.ones(shape, np.int32), "token_type_ids": np.zeros(shape, np.int32),
          "labels": rng.integers(0, 2, (nb, n)).astype(np.int32),
          "weight": np.ones((nb, n), np.float32)}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--shapes", default="minilm,bert-base")
  p.add_argument("--memory", default="bert-base,bert-large")
  p.add_argument("--seq", type=int, default=128)
  p.add_argument("--examples", type=int, default=64)
  p.add_argument("--time_points", type=int, default=2)
  p.add_argument("--chunk", type=int, default=5)
  a = p.parse_args()
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jaxstab.analysis import connectivity as cn  # pylint: disable=import-outside-toplevel
  from jaxstab.engine import memory, models  # pylint: disable=import-outside-toplevel
  for shape in [s for s in a.shapes.split(",") if s]:
    model = build(shape)
    fn = cn.make_line_fn(model, "highest")
    data = batches(a.examples, a.seq)
    coords = np.linspace(0.2, 0.8, a.time_points, dtype=np.float32).reshape(1, -1)
    jax.block_until_ready(fn(model.params, model.params, coords, data))
    t0 = time.perf_counter()
    jax.block_until_ready(fn(model.params, model.params, coords, data))
    sec = (time.perf_counter() - t0) / a.time_points
    print(f"{shape}: {models.param_count(model.params) / 1e6:.1f}M params; one point on "
          f"{a.examples} examples of length {a.seq}: {sec:.2f} s "
          f"({1e3 * sec / a.examples:.1f} ms per example)", flush=True)
  for shape in [s for s in a.memory.split(",") if s]:
    model = build(shape)
    fn = cn.make_line_fn(model, "highest")
    abstract = lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)
    params = jax.tree_util.tree_map(abstract, model.params)
    data = jax.tree_util.tree_map(abstract, batches(a.examples, a.seq, nb=13))
    coords = jax.ShapeDtypeStruct((2, a.chunk), np.float32)
    t0 = time.perf_counter()
    fp = memory.footprint(fn.lower(params, params, coords, data).compile())
    n = models.param_count(model.params)
    print(f"{shape}: {n / 1e6:.1f}M params ({4 * n / 1e9:.2f} GB a set); line program for "
          f"{a.chunk} points a chunk, batches of {a.examples} x {a.seq}: "
          + (f"arguments {fp.argument / 1e9:.2f} GB, temporaries {fp.temp / 1e9:.2f} GB, "
             f"peak {fp.peak / 1e9:.2f} GB " if fp else "no memory analysis ")
          + f"(compiled in {time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
  main()
