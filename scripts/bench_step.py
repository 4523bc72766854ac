"""Benchmark jaxstab's train step against a plain PyTorch AdamW loop of the same shape.

Random weights and random tokens of the requested shape, so it needs no download:

  python scripts/bench_step.py --shape=tiny --batch=16 --seq=128 --seeds=1,4 --steps=20
  python scripts/bench_step.py --shape=minilm --seeds=1,4,16 --peft=lora --torch=off  # LoRA
  python scripts/bench_step.py --shape=bert-large --batch=16 --seq=128 --seeds=1,4,8 \
      --dtypes=float32,bfloat16 --peak_tflops=790 --json=out.json   # one H200, dense bf16

jaxstab: each configuration (K seeds vmapped x compute dtype x probe on/off, or the explicit
`--configs` list, in its order) is compiled once (timed apart), run `--warmup` steps, then timed
over `--steps` steps with a single device sync at the end (the step itself never syncs).

PyTorch (`--torch=auto|on|off`): when torch and transformers' BertForSequenceClassification
import, scripts/bench_torch.py times fp32 / TF32 / bf16-autocast eager loops of the same BERT
config, batch and length, in a subprocess run *before* JAX initialises the device (so the two
frameworks' CUDA libraries never share a process and each gets the whole GPU). Ratios are
jaxstab examples/s over PyTorch examples/s (> 1: jaxstab faster).
"""
import argparse
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
# This checkout's jaxstab, not whichever one is pip-installed (an editable install elsewhere).
sys.path.insert(1, os.path.dirname(HERE))

from bench_common import SHAPES, fmt, gemm_tflops, make_row, skipped_row, train_flops_per_example, write_json  # pylint: disable=unused-import

SINGLE_SEED_TARGET = 2.0   # target: single seed >= 2x PyTorch eager TF32
SUMMED_TARGET_EX_S = 1650  # target: BERT-large b16 l128, summed over vmapped seeds (one H200)


class _Vocab:  # what models.load needs of a tokenizer to size a random model
  def __init__(self, size):
    self.size, self.pad_token_id, self.cls_token_id, self.sep_token_id = size, 0, 101, 102

  def __len__(self):
    return self.size


def build(shape, arch, dtype, seq, attention="reference", dropout=-1.0, matmul_precision=None):
  """A random model of `shape` and its config (base_config's values unless given here)."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  from jaxstab.config import config_lib  # pylint: disable=import-outside-toplevel
  from jaxstab.engine import models  # pylint: disable=import-outside-toplevel
  hidden, layers, heads, inter, vocab = SHAPES[shape]
  cfg = config_lib.base_config()
  cfg.model.name_or_path = f"tiny-{arch}"
  cfg.model.dtype = dtype
  cfg.model.attention, cfg.model.dropout = attention, dropout
  if matmul_precision:
    cfg.model.matmul_precision = matmul_precision
  cfg.model.tiny = ml_collections.ConfigDict(dict(
      hidden_size=hidden, num_layers=layers, num_heads=heads, intermediate_size=inter,
      max_position_embeddings=max(512, seq + 2), vocab_size=vocab, init_seed=0))
  model = models.load(cfg.model, 2, _Vocab(vocab))
  return cfg, model


def recast(built, dtype):
  """The same random model computing in another dtype, without a second (eager, slow on a GPU
  for BERT-large) random initialisation: same params, a transformers module built with
  _do_init=False (jaxstab always passes params explicitly)."""
  from jaxstab.engine import models  # pylint: disable=import-outside-toplevel
  cfg, model = built
  cfg = cfg.copy_and_resolve_references()
  cfg.model.dtype = dtype
  flax_model = type(model.flax_model)(model.config, dtype=models.DTYPES[dtype], _do_init=False)
  return cfg, dataclasses.replace(model, flax_model=flax_model)


class CompileEvents:
  """Counts backend compilations and persistent-cache hits through jax.monitoring."""

  def __init__(self):
    import jax  # pylint: disable=import-outside-toplevel
    self.backend_compiles, self.cache_hits, self.cache_misses = [], 0, 0
    jax.monitoring.register_event_duration_secs_listener(self._duration)
    jax.monitoring.register_event_listener(self._event)

  def _duration(self, event, duration, **kw):
    if event == "/jax/core/compile/backend_compile_duration":
      self.backend_compiles.append((kw.get("fun_name", "?"), duration))

  def _event(self, event, **_):
    if event == "/jax/compilation_cache/cache_hits":
      self.cache_hits += 1
    elif event == "/jax/compilation_cache/cache_misses":
      self.cache_misses += 1

  def snapshot(self):
    return len(self.backend_compiles), self.cache_hits, self.cache_misses


def random_arrays(batch, seq, n=0):
  """n random training examples (0: 8 batches); a large n (393k: MNLI) shows what of the step's
  work grows with the training set (the data order: BUILD_NOTES "Data order once per epoch")."""
  n = n or batch * 8
  rng = np.random.default_rng(0)
  return {"input_ids": rng.integers(1000, 2000, (n, seq)).astype(np.int32),
          "attention_mask": np.ones((n, seq), np.int32),
          "token_type_ids": np.zeros((n, seq), np.int32),
          "labels": rng.integers(0, 2, (n,)).astype(np.int32)}


def make_step(cfg, model, k, batch, seq, probe_every, total, seed_axis="vmap", n_train=0):
  """(jitted step over K seeds, initial K-seed state, device arrays, anchor): the programs of
  train.build_programs, the builder a study uses (the benchmark measures what a study runs)."""
  import jax  # pylint: disable=import-outside-toplevel
  from jaxstab.engine import train as train_lib  # pylint: disable=import-outside-toplevel
  arrays = random_arrays(batch, seq, n_train)
  cfg = cfg.copy_and_resolve_references()
  cfg.train.batch_size = batch
  cfg.probe.every = max(int(probe_every), 0)  # 0: probe off
  programs = train_lib.build_programs(cfg, model, n_train=len(arrays["labels"]), total=total,
                                      seeds_per_group=k, seed_axis=seed_axis)
  state = programs.create(np.stack([np.asarray(train_lib.seed_key(s)) for s in range(k)]))
  return programs.step, state, jax.device_put(arrays), programs.anchor


def time_config(cfg, model, k, batch, seq, probe_every, steps, warmup, events=None,
                profile=("", 0), seed_axis="vmap", n_train=0):
  """(seconds per step, {lower_s, compile_s, backend_compiles, cache_hits, cpu_ms_per_step});
  with profile = (folder, n) it then traces n more steps into folder (TensorBoard / Perfetto)."""
  import jax  # pylint: disable=import-outside-toplevel
  f, state, dev, anchor = make_step(cfg, model, k, batch, seq, probe_every, steps + warmup + 1,
                                    seed_axis, n_train)
  before = events.snapshot() if events else (0, 0, 0)
  t0 = time.perf_counter()
  lowered = f.lower(state, dev, anchor)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  after = events.snapshot() if events else (0, 0, 0)
  info = dict(lower_s=t1 - t0, compile_s=t2 - t1, backend_compiles=after[0] - before[0],
              cache_hits=after[1] - before[1])
  for _ in range(warmup):
    state = compiled(state, dev, anchor)
  jax.block_until_ready(state.step)
  t0, c0 = time.perf_counter(), time.process_time()
  for _ in range(steps):
    state = compiled(state, dev, anchor)
  jax.block_until_ready(state.step)
  sec = (time.perf_counter() - t0) / steps
  # CPU seconds of this process (all its threads) per step: on a CPU shared with other work it
  # moves far less than the wall time, which counts the waits for a core.
  info["cpu_ms_per_step"] = 1e3 * (time.process_time() - c0) / steps
  if profile[0] and profile[1] > 0:
    with jax.profiler.trace(profile[0]):
      for _ in range(profile[1]):
        state = compiled(state, dev, anchor)
      jax.block_until_ready(state.step)
    info["profile"] = profile[0]
  if int(np.asarray(state.diverged_at).max()) >= 0:
    info["note"] = "a seed diverged (non-finite loss)"
  return sec, info


def time_probe_norms(model, reps=10):
  """Median (wall, process CPU) seconds of what the probe adds to a step's arithmetic, alone: the per-group gradient
  norms (probe.group_norms) and the parameter and update global norms, on three distinct trees
  of the model's shape (its parameters and two copies, standing in for the gradient and the
  update). The global gradient norm is left out: the step needs it anyway."""
  import jax  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from jaxstab.engine import probe  # pylint: disable=import-outside-toplevel
  names = probe.group_names(model.params, model.arch, model.num_layers)
  f = jax.jit(lambda g, p, u: (probe.group_norms(g, model.arch, names), optax.global_norm(p),
                               optax.global_norm(u)))
  trees = [jax.tree_util.tree_map(lambda x, i=i: x + i, model.params) for i in range(3)]
  jax.block_until_ready(f(*trees))
  out = []
  for _ in range(reps):
    t0, c0 = time.perf_counter(), time.process_time()
    jax.block_until_ready(f(*trees))
    out.append((time.perf_counter() - t0, time.process_time() - c0))
  return tuple(float(x) for x in np.median(out, axis=0))


def parse_configs(a):
  """[(K, dtype, probe 'on'|'off')] in run order: --configs if given, else the product."""
  if a.configs:
    out = []
    for item in a.configs.split(","):
      k, dtype, pr = item.split(":")
      out.append((int(k), {"fp32": "float32", "bf16": "bfloat16"}.get(dtype, dtype), pr))
    return out
  return [(int(k), d, pr) for d in a.dtypes.split(",") for k in a.seeds.split(",")
          for pr in a.probe.split(",")]


def run_torch(a, log):
  """PyTorch rows from bench_torch.py in a subprocess; (rows, device, note)."""
  if a.torch == "off":
    return [], None, "torch comparison off (--torch=off)"
  if a.arch != "bert":
    return [], None, f"torch comparison is BERT-only (--arch={a.arch})"
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "torch.json")
    cmd = [sys.executable, os.path.join(HERE, "bench_torch.py"), f"--shape={a.shape}",
           f"--batch={a.batch}", f"--seq={a.seq}", f"--modes={a.torch_modes}",
           f"--steps={a.torch_steps or a.steps}",
           f"--warmup={a.torch_warmup if a.torch_warmup >= 0 else a.warmup}",
           f"--peak_tflops={a.peak_tflops}", f"--attn={a.torch_attn}",
           f"--threads={a.torch_threads}", f"--json={out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
      log(line)
    if os.path.isfile(out):
      with open(out, encoding="utf-8") as f:
        res = json.load(f)
      if proc.returncode == 3 and a.torch == "on":
        sys.exit(f"bench_step: --torch=on but {res['note']}")
      return res["rows"], res["device"], res["note"]
    note = f"torch benchmark failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}"
    if a.torch == "on":
      sys.exit(f"bench_step: {note}")
    return [], None, note


def ratios(rows):
  """jaxstab/torch examples/s for every jaxstab row x every timed torch mode."""
  ok = lambda r: r.get("examples_per_s") is not None and r["examples_per_s"] == r["examples_per_s"]
  torch = {r["mode"]: r for r in rows if r["impl"] == "torch" and ok(r)}
  out = []
  for r in rows:
    if r["impl"] == "jaxstab" and ok(r):
      for mode, t in torch.items():
        out.append(dict(k=r["k"], dtype=r["mode"], probe=r["probe"], torch=mode,
                        ratio=r["examples_per_s"] / t["examples_per_s"]))
  return out


def headline(rows, shape, log):
  """The speed targets (BUILD_NOTES), from whatever rows exist."""
  ok = lambda r: r.get("examples_per_s") is not None and r["examples_per_s"] == r["examples_per_s"]
  jx = [r for r in rows if r["impl"] == "jaxstab" and ok(r)]
  th = {r["mode"]: r for r in rows if r["impl"] == "torch" and ok(r)}
  ref = th.get("tf32") or th.get("fp32")
  single = [r for r in jx if r["k"] == 1]
  if single and ref:
    best = max(single, key=lambda r: r["examples_per_s"])
    x = best["examples_per_s"] / ref["examples_per_s"]
    log(f"single seed: best jaxstab K=1 ({best['mode']}, probe {best['probe']}) "
        f"{best['examples_per_s']:.1f} ex/s = {x:.2f}x PyTorch {ref['mode']} "
        f"({ref['examples_per_s']:.1f} ex/s); target >= {SINGLE_SEED_TARGET:.0f}x PyTorch TF32"
        + ("" if ref["mode"] == "tf32" else " (no TF32 here: compared with fp32)"))
  if jx:
    best = max(jx, key=lambda r: r["examples_per_s"])
    log(f"summed over seeds: best {best['examples_per_s']:.1f} ex/s (K={best['k']}, {best['mode']}, "
        f"probe {best['probe']})" + (f"; target >= {SUMMED_TARGET_EX_S} ex/s on one H100/H200"
                                     if shape == "bert-large" else ""))


def probe_overhead(rows, dtype, k, repeats, log):
  """The probe's cost: on / off - 1 per round (the two measured side by side), and with several
  rounds the median of the rounds and each setting's median ms/step."""
  per_round, cpu_round, ms = [], [], {"on": [], "off": []}
  for rnd in range(repeats):
    sel = {r["probe"]: r for r in rows if r["impl"] == "jaxstab" and r["mode"] == dtype
           and r["k"] == k and r.get("round", 0) == rnd and "skipped" not in r}
    if "on" in sel and "off" in sel:
      per_round.append(sel["on"]["ms_per_step"] / sel["off"]["ms_per_step"] - 1)
      cpu_round.append(sel["on"]["cpu_ms_per_step"] / sel["off"]["cpu_ms_per_step"] - 1)
      ms["on"].append(sel["on"]["ms_per_step"])
      ms["off"].append(sel["off"]["ms_per_step"])
  if not per_round:
    return
  if len(per_round) == 1:
    log(f"probe overhead K={k} {dtype}: {per_round[0]:+.1%} (target <= +2%)")
    return
  log(f"probe overhead K={k} {dtype}, {len(per_round)} rounds: median {np.median(per_round):+.2%} "
      f"(rounds {' '.join(f'{x:+.2%}' for x in per_round)}); median ms/step on "
      f"{np.median(ms['on']):.2f}, off {np.median(ms['off']):.2f} (target <= +2%); in process "
      f"CPU time: median {np.median(cpu_round):+.2%} (rounds "
      f"{' '.join(f'{x:+.2%}' for x in cpu_round)})")


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--shape", default="tiny", choices=list(SHAPES))
  p.add_argument("--arch", default="bert", choices=("bert", "roberta", "albert"))
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--seq", type=int, default=128)
  p.add_argument("--seeds", default="1", help="comma list of K (seeds per vmapped step)")
  p.add_argument("--dtypes", default="float32", help="comma list: float32,bfloat16")
  p.add_argument("--probe", default="on,off", help="comma list: on,off")
  p.add_argument("--configs", default="",
                 help="explicit K:dtype:probe list run in this order, e.g. 1:bf16:off,8:bf16:on "
                      "(overrides --seeds/--dtypes/--probe)")
  p.add_argument("--attention", default="reference", choices=("reference", "xla", "cudnn"),
                 help="model.attention: fused only where attention dropout is off (--dropout=0)")
  p.add_argument("--matmul_precision", default="highest",
                 choices=("highest", "high", "default"),
                 help="model.matmul_precision of jaxstab's step (float32 matmuls: highest = "
                      "full fp32; default = TF32 on a GPU, as every run before the key)")
  p.add_argument("--dropout", type=float, default=-1.0,
                 help="model.dropout for jaxstab's step (-1: the model's own, 0.1)")
  p.add_argument("--seed_axis", default="auto", choices=("auto", "vmap", "map"),
                 help="train.seed_axis: vmap the K seeds, or map them one at a time (auto: map "
                      "on one CPU device, as a study does)")
  p.add_argument("--probe_every", type=int, default=10)
  p.add_argument("--n_train", type=int, default=0,
                 help="random training examples the step draws its batches from (0: 8 batches; "
                      "392702 = MNLI's training set)")
  p.add_argument("--repeats", type=int, default=1,
                 help="run the configuration list this many rounds, one after the other (a "
                      "noisy machine: each round's probe on/off pair is measured side by side, "
                      "the medians are reported); use --compile_cache so that rounds after the "
                      "first read their programs back")
  p.add_argument("--norms_alone", action="store_true",
                 help="also time the probe's norms by themselves on the model's parameter tree "
                      "(median of 10), beside the steps' ms")
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--peak_tflops", type=float, default=0.0, help="chip peak for MFU (0: skip)")
  p.add_argument("--torch", default="auto", choices=("auto", "on", "off"),
                 help="also time PyTorch eager AdamW (auto: when torch+transformers import)")
  p.add_argument("--torch_modes", default="fp32,tf32,bf16")
  p.add_argument("--torch_steps", type=int, default=0, help="0: --steps")
  p.add_argument("--torch_warmup", type=int, default=-1, help="-1: --warmup")
  p.add_argument("--torch_attn", default="default", help="default (sdpa) | sdpa | eager")
  p.add_argument("--torch_threads", type=int, default=0,
                 help="PyTorch CPU threads (0: torch's default); use 1 on a loaded CPU")
  p.add_argument("--time_budget_s", type=float, default=0.0,
                 help="start no new jaxstab configuration after this many seconds (0: no limit)")
  p.add_argument("--compile_cache", default="",
                 help="persistent compilation cache folder (min time/size 0); '' = off")
  p.add_argument("--profile_dir", default="",
                 help="also trace --profile_steps steps of every configuration into "
                      "DIR/<K>_<dtype>_probe-<on|off> (jax.profiler; view in TensorBoard/Perfetto)")
  p.add_argument("--profile_steps", type=int, default=5)
  p.add_argument("--gemm", type=int, default=0,
                 help="N > 0: first time an N x N matmul per dtype (the chip's reachable rate); "
                      "rows then carry `of_gemm`, their TFLOP/s over it")
  p.add_argument("--peft", default="none", choices=("none", "lora", "bitfit"),
                 help="peft.method at its defaults (TFLOP/s and MFU still count full training)")
  p.add_argument("--label", default="", help="free text stored in the JSON")
  p.add_argument("--json", default="", help="write {meta, rows, ratios} here (after every row)")
  a = p.parse_args()
  start = time.perf_counter()
  log = lambda s: print(s, flush=True)
  configs = parse_configs(a)

  # PyTorch first, in its own process, before JAX initialises (and preallocates) the device.
  torch_rows, torch_dev, torch_note = run_torch(a, log)
  if torch_note:
    log(torch_note)

  import jax  # pylint: disable=import-outside-toplevel
  if a.compile_cache:
    jax.config.update("jax_compilation_cache_dir", a.compile_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  events = CompileEvents()
  from jaxstab.engine import train as train_lib  # pylint: disable=import-outside-toplevel
  seed_axis = train_lib.seed_axis_for(a.seed_axis, jax.default_backend(), jax.device_count())
  dev = jax.devices()[0]
  kind = f"{dev.device_kind} x{jax.device_count()} ({jax.default_backend()})"
  meta = dict(device=kind, torch_device=torch_dev, torch_note=torch_note, jax=jax.__version__,
              shape=a.shape, dims=dict(zip(("hidden", "layers", "heads", "intermediate", "vocab"),
                                           SHAPES[a.shape])),
              batch=a.batch, seq=a.seq, steps=a.steps, warmup=a.warmup, n_train=a.n_train,
              repeats=a.repeats,
              probe_every=a.probe_every, peak_tflops=a.peak_tflops, label=a.label, peft=a.peft,
              attention=a.attention, dropout=a.dropout, seed_axis=seed_axis,
              matmul_precision=a.matmul_precision,
              compile_cache=a.compile_cache, argv=sys.argv, host=platform.node(),
              date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              loadavg=os.getloadavg(), cpus=os.cpu_count(),
              xla_flags=os.environ.get("XLA_FLAGS", ""))
  rows = list(torch_rows)
  gemm = {}
  if a.gemm > 0:
    for dt in ("float32", "bfloat16"):
      gemm[dt] = gemm_tflops(dt, a.gemm)
      log(f"{a.gemm}x{a.gemm} matmul, {dt}: {gemm[dt]:.3f} TFLOP/s")
    meta["gemm_tflops"] = dict(gemm, n=a.gemm)
    for r in rows:  # PyTorch's rows, against the same chip's matmul rate
      dt = "bfloat16" if r["mode"] == "bf16" else "float32"
      if r.get("tflops") == r.get("tflops") and r.get("tflops") is not None:
        r["of_gemm"] = r["tflops"] / gemm[dt]

  def dump():
    if a.json:
      write_json(a.json, dict(meta=meta, rows=rows, ratios=ratios(rows)))

  dump()
  log(f"device: {kind}, jax {jax.__version__}, shape {a.shape} {SHAPES[a.shape][:4]}, "
      f"batch {a.batch}, seq {a.seq}, peak {a.peak_tflops or '-'} TFLOP/s, "
      f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
  load = os.getloadavg()[0]
  if jax.default_backend() == "cpu" and load > 0.75 * (os.cpu_count() or 1):
    log(f"note: load average {load:.1f} on {os.cpu_count()} CPUs: other processes compete, figures "
        "are noisy; PyTorch's OpenMP threads suffer most (compare --torch_threads=1)")
  log(f"{'impl':>7} {'K':>3} {'mode':>9} {'probe':>5} {'ms/step':>9} {'ex/s':>9} {'TFLOP/s':>8} "
      f"{'MFU':>6} {'lower s':>7} {'compile s':>9}")
  for r in torch_rows:
    log(f"{'torch':>7} {1:>3} {r['mode']:>9} {'-':>5} {fmt(r['ms_per_step'], '9.2f')} "
        f"{fmt(r['examples_per_s'], '9.1f')} {fmt(r['tflops'], '8.3f')} {fmt(r['mfu'], '6.1%')}"
        + (f"  ({r['skipped']})" if "skipped" in r else ""))
  models_by_dtype = {}
  for rnd, (k, dtype, pr) in ((r, c) for r in range(a.repeats) for c in configs):
    extra = dict(probe=pr, device=kind, round=rnd)
    if a.time_budget_s and time.perf_counter() - start > a.time_budget_s:
      rows.append(skipped_row("jaxstab", dtype, k, a.batch, a.seq, a.shape,
                              f"time budget {a.time_budget_s:.0f}s spent", **extra))
      log(f"{'jaxstab':>7} {k:>3} {dtype:>9} {pr:>5}  skipped: time budget spent")
      dump()
      continue
    try:
      if dtype not in models_by_dtype:
        first = next(iter(models_by_dtype.values()), None)
        models_by_dtype[dtype] = (recast(first, dtype) if first else
                                  build(a.shape, a.arch, dtype, a.seq, a.attention,
                                        a.dropout, a.matmul_precision))
      cfg, model = models_by_dtype[dtype]
      if a.peft != "none":  # the trainable part only (train.build_programs adapts the model)
        cfg = cfg.copy_and_resolve_references()
        cfg.peft.method = a.peft
      if a.norms_alone and rnd == 0 and "norms_ms" not in meta.setdefault("norms", {}).get(dtype, {}):
        wall, cpu = time_probe_norms(model)
        meta["norms"][dtype] = dict(norms_ms=1e3 * wall, norms_cpu_ms=1e3 * cpu)
        log(f"probe norms alone ({dtype}): {1e3 * wall:.2f} ms, CPU {1e3 * cpu:.2f} ms "
            "(per-group gradient norms + parameter and update global norms)")
      sec, info = time_config(cfg, model, k, a.batch, a.seq,
                              a.probe_every if pr == "on" else 0, a.steps, a.warmup, events,
                              (os.path.join(a.profile_dir, f"{k}_{dtype}_probe-{pr}")
                               if a.profile_dir else "", a.profile_steps), seed_axis,
                              a.n_train)
      rows.append(make_row("jaxstab", dtype, k, a.batch, a.seq, a.shape, sec, a.peak_tflops,
                           **extra, **info))
      r = rows[-1]
      if dtype in gemm:
        r["of_gemm"] = r["tflops"] / gemm[dtype]
      log(f"{'jaxstab':>7} {k:>3} {dtype:>9} {pr:>5} {r['ms_per_step']:>9.2f} "
          f"{r['examples_per_s']:>9.1f} {r['tflops']:>8.3f} {fmt(r['mfu'], '6.1%')} "
          f"{r['lower_s']:>7.1f} {r['compile_s']:>9.1f}"
          + (f"  (persistent cache hits {r['cache_hits']})" if r["cache_hits"] else "")
          + (f"  {r['note']}" if "note" in r else "")
          + (f"  {r['of_gemm']:.0%} of the matmul rate" if "of_gemm" in r else ""))
    except Exception as e:  # pylint: disable=broad-except  (out of memory etc.: go on)
      why = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
      rows.append(skipped_row("jaxstab", dtype, k, a.batch, a.seq, a.shape, why, **extra))
      log(f"{'jaxstab':>7} {k:>3} {dtype:>9} {pr:>5}  FAILED: {why}")
    dump()

  if a.repeats > 1:
    for k, dtype, pr in configs:
      mine = [r for r in rows if r["impl"] == "jaxstab" and "skipped" not in r
              and (r["k"], r["mode"], r["probe"]) == (k, dtype, pr)]
      ms, cpu = [r["ms_per_step"] for r in mine], [r["cpu_ms_per_step"] for r in mine]
      if ms:
        log(f"K={k} {dtype} probe {pr}: median {np.median(ms):.2f} ms/step over {len(ms)} rounds "
            f"({' '.join(f'{x:.2f}' for x in ms)}); process CPU median {np.median(cpu):.2f} "
            f"ms/step ({' '.join(f'{x:.2f}' for x in cpu)})")
  for dtype in dict.fromkeys(d for _, d, _ in configs):
    for k in dict.fromkeys(k for k, _, _ in configs):
      probe_overhead(rows, dtype, k, a.repeats, log)
  rat = ratios(rows)
  if rat:
    modes = list(dict.fromkeys(x["torch"] for x in rat))
    log("jaxstab / PyTorch examples/s (> 1: jaxstab faster):")
    log(f"  {'K':>3} {'dtype':>9} {'probe':>5} " + " ".join(f"{'vs ' + m:>9}" for m in modes))
    for key in dict.fromkeys((x["k"], x["dtype"], x["probe"]) for x in rat):
      vals = {x["torch"]: x["ratio"] for x in rat if (x["k"], x["dtype"], x["probe"]) == key}
      log(f"  {key[0]:>3} {key[1]:>9} {key[2]:>5} "
          + " ".join(f"{fmt(vals.get(m), '9.2f')}" for m in modes))
  headline(rows, a.shape, log)
  meta["wall_s"] = time.perf_counter() - start
  meta["backend_compiles_total"] = len(events.backend_compiles)
  dump()


if __name__ == "__main__":
  main()
