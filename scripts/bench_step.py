"""Benchmark jaxstab's train step: ms/step, examples/s, TFLOP/s and MFU, probe on vs off.

Random weights and random tokens of the requested shape, so it needs no download:

  python scripts/bench_step.py --shape=tiny --batch=16 --seq=128 --seeds=1,4 --steps=20
  python scripts/bench_step.py --shape=bert-large --batch=16 --seq=128 --seeds=1,4,8 \
      --dtypes=float32,bfloat16 --peak_tflops=790      # one H200, dense bf16

Each configuration is compiled once (not timed), run `--warmup` steps, then timed over
`--steps` steps with a single device sync at the end (the step itself never syncs).
"""
import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxstab import config_lib, models, optim, probe
from jaxstab import train as train_lib

SHAPES = {  # hidden, layers, heads, intermediate, vocab
    "tiny": (64, 2, 2, 128, 2000),
    "bert-base": (768, 12, 12, 3072, 30522),
    "bert-large": (1024, 24, 16, 4096, 30522),
}


@dataclasses.dataclass
class _Vocab:  # what models.load needs of a tokenizer to size a random model
  size: int
  pad_token_id: int = 0
  cls_token_id: int = 101
  sep_token_id: int = 102

  def __len__(self):
    return self.size


def train_flops_per_example(hidden, layers, inter, seq):
  """Matmul FLOPs of forward + backward (3x forward) for one example of length seq."""
  per_token = layers * (2 * 4 * hidden * hidden + 2 * 2 * hidden * inter)
  attention = layers * 2 * 2 * seq * seq * hidden
  return 3 * (per_token * seq + attention)


def build(shape, arch, dtype, seq):
  hidden, layers, heads, inter, vocab = SHAPES[shape]
  cfg = config_lib.base_config()
  cfg.model.name_or_path = f"tiny-{arch}"
  cfg.model.dtype = dtype
  cfg.model.tiny = ml_collections.ConfigDict(dict(
      hidden_size=hidden, num_layers=layers, num_heads=heads, intermediate_size=inter,
      max_position_embeddings=max(512, seq + 2), vocab_size=vocab, init_seed=0))
  model = models.load(cfg.model, 2, _Vocab(vocab))
  return cfg, model, (hidden, layers, inter, vocab)


def time_config(cfg, model, k, batch, seq, probe_every, steps, warmup):
  n = batch * 8
  rng = np.random.default_rng(0)
  arrays = {"input_ids": rng.integers(1000, 2000, (n, seq)).astype(np.int32),
            "attention_mask": np.ones((n, seq), np.int32),
            "token_type_ids": np.zeros((n, seq), np.int32),
            "labels": rng.integers(0, 2, (n,)).astype(np.int32)}
  total = steps + warmup + 1
  tx, schedule = optim.from_config(cfg.optim, total)
  groups = probe.group_names(model.params, model.arch, model.num_layers)
  every = probe_every if probe_every > 0 else 0
  step = train_lib.make_train_step(model, tx, schedule, n_train=n, batch_size=batch,
                                   probe_every=every, group_names=groups, b1=0.9, b2=0.999)
  create = lambda key: train_lib.create_train_state(model, tx, key, total, every, groups)
  state = jax.jit(jax.vmap(create))(jnp.stack([train_lib.seed_key(s) for s in range(k)]))
  f = jax.jit(jax.vmap(step, in_axes=(0, None)), donate_argnums=0)
  dev = jax.device_put(arrays)
  t0 = time.perf_counter()
  compiled = f.lower(state, dev).compile()
  compile_s = time.perf_counter() - t0
  for _ in range(warmup):
    state = compiled(state, dev)
  jax.block_until_ready(state.step)
  t0 = time.perf_counter()
  for _ in range(steps):
    state = compiled(state, dev)
  jax.block_until_ready(state.step)
  return (time.perf_counter() - t0) / steps, compile_s


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
  p.add_argument("--arch", default="bert", choices=models.ARCHS)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--seq", type=int, default=128)
  p.add_argument("--seeds", default="1", help="comma list of K (seeds per vmapped step)")
  p.add_argument("--dtypes", default="float32", help="comma list: float32,bfloat16")
  p.add_argument("--probe", default="on,off", help="comma list: on,off")
  p.add_argument("--probe_every", type=int, default=10)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--peak_tflops", type=float, default=0.0, help="chip peak for MFU (0: skip)")
  p.add_argument("--json", default="", help="also write the rows to this JSON file")
  a = p.parse_args()
  rows = []
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, shape {a.shape}, "
        f"batch {a.batch}, seq {a.seq}")
  print(f"{'K':>3} {'dtype':>9} {'probe':>5} {'ms/step':>9} {'ex/s':>9} {'TFLOP/s':>8} "
        f"{'MFU':>6} {'compile s':>9}")
  for dtype in a.dtypes.split(","):
    cfg, model, (hidden, layers, inter, _) = build(a.shape, a.arch, dtype, a.seq)
    flops = train_flops_per_example(hidden, layers, inter, a.seq)
    for k in [int(x) for x in a.seeds.split(",")]:
      for pr in a.probe.split(","):
        sec, comp = time_config(cfg, model, k, a.batch, a.seq,
                                a.probe_every if pr == "on" else 0, a.steps, a.warmup)
        ex = k * a.batch / sec
        tflops = ex * flops / 1e12
        mfu = tflops / a.peak_tflops if a.peak_tflops else float("nan")
        rows.append(dict(k=k, dtype=dtype, probe=pr, ms_per_step=sec * 1e3, examples_per_s=ex,
                         tflops=tflops, mfu=mfu, compile_s=comp))
        print(f"{k:>3} {dtype:>9} {pr:>5} {sec * 1e3:>9.2f} {ex:>9.1f} {tflops:>8.3f} "
              f"{mfu:>6.1%} {comp:>9.1f}", flush=True)
  for dtype in a.dtypes.split(","):
    for k in [int(x) for x in a.seeds.split(",")]:
      on = [r for r in rows if r["dtype"] == dtype and r["k"] == k and r["probe"] == "on"]
      off = [r for r in rows if r["dtype"] == dtype and r["k"] == k and r["probe"] == "off"]
      if on and off:
        print(f"probe overhead K={k} {dtype}: {on[0]['ms_per_step'] / off[0]['ms_per_step'] - 1:+.1%}")
  if a.json:
    with open(a.json, "w", encoding="utf-8") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  main()
