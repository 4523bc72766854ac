"""Memory of a seed group's compiled train step, as XLA's memory analysis counts it, against
what jaxstab predicts. Random weights of the requested shape (no download); nothing is run,
only lowered and compiled, so a CPU can estimate what a GPU step will hold.

  # Is the prediction right? BERT-base at K = 1, 2, 4 (batch 16, length 128): the formula
  # (parallel.bytes_per_seed) and the analysis's line through K = 1, 2, against the measured
  # analysis of each K.
  python scripts/bench_memory.py --mode=validate --json=docs/results/memory/validate_bert_base.json

  # Seeds per device, estimated: BERT-large and RoBERTa-large, fp32 / bf16 Adam moments, remat
  # off / on, each compiled at K = 1 and 2; K for the devices in DEVICES.
  python scripts/bench_memory.py --mode=table --json=docs/results/memory/seeds_per_device.json

  # Parameter-efficient fine-tuning: bytes per seed (state and temporaries) of full, LoRA and
  # BitFit groups (--methods), remat off and on (--remats), MiniLM and BERT-large shapes, each at
  # K = 1 and 2, and the seeds per device that follow.
  python scripts/bench_memory.py --mode=peft --models=minilm,bert-large \
      --json=docs/results/memory/peft_per_seed.json

"Measured" is XLA's memory analysis of the compiled program (arguments + outputs - aliased
outputs + temporaries: what the step holds while it runs), not a process's resident memory.
Each program is saved to the JSON as soon as it is compiled, and a rerun with the same --json
skips the ones already there (BERT-large compiles take minutes on a small CPU).

The estimate is a CPU's: XLA:CPU upcasts bf16 matmuls and assigns buffers its own way, and the
programs here compute in float32 (model.dtype=bfloat16 is left for a GPU run to measure).
"""
import argparse
import datetime
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(1, os.path.dirname(HERE))  # this checkout's jaxstab

from bench_common import write_json  # pylint: disable=wrong-import-position

# name -> memory the device gives XLA (bytes_limit), as assumed for the table. JAX preallocates
# 75% of a GPU's memory by default (XLA_PYTHON_CLIENT_MEM_FRACTION; raise it to fit more); a
# TPU core's HBM is taken whole.
DEVICES = {"H100 80GB": 0.75 * 80e9, "H200 141GB": 0.75 * 141e9, "A100 40GB": 0.75 * 40e9,
           "TPU v5e 16GB": 16 * 2**30}
SHAPES = {  # hidden, layers, heads, intermediate, vocab, arch
    "tiny": (64, 2, 2, 128, 2000, "bert"),  # a quick check of the script itself
    "bert-base": (768, 12, 12, 3072, 30522, "bert"),
    "bert-large": (1024, 24, 16, 4096, 30522, "bert"),
    "roberta-large": (1024, 24, 16, 4096, 50265, "roberta"),
    "minilm": (384, 6, 12, 1536, 30522, "bert"),  # MiniLM-L6-H384's shape
}
PEFT_METHODS = ("none", "lora", "bitfit")  # peft.method; LoRA at its defaults (r=8, query,value)


class _Vocab:  # what models.load needs of a tokenizer to size a random model
  def __init__(self, size):
    self.size, self.pad_token_id, self.cls_token_id, self.sep_token_id = size, 1, 0, 2

  def __len__(self):
    return self.size


def build(shape, seq):
  """A random model of `shape` (float32) and a base config for it."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  from jaxstab.config import config_lib  # pylint: disable=import-outside-toplevel
  from jaxstab.engine import models  # pylint: disable=import-outside-toplevel
  hidden, layers, heads, inter, vocab, arch = SHAPES[shape]
  cfg = config_lib.base_config()
  cfg.model.name_or_path = f"tiny-{arch}"
  cfg.model.tiny = ml_collections.ConfigDict(dict(
      hidden_size=hidden, num_layers=layers, num_heads=heads, intermediate_size=inter,
      max_position_embeddings=514 if arch == "roberta" else 512, vocab_size=vocab, init_seed=0))
  return cfg, models.load(cfg.model, 2, _Vocab(vocab))


def footprint(cfg, model, k, batch, seq, total):
  """The Footprint of the vmapped group step of K seeds, from train.build_programs."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  # pylint: disable-next=import-outside-toplevel
  from jaxstab.engine import memory, parallel, train as train_lib
  cfg = cfg.copy_and_resolve_references()
  cfg.train.batch_size, cfg.train.max_seq_length = batch, seq
  n = batch * 8
  rng = np.random.default_rng(0)
  arrays = {"input_ids": rng.integers(5, 1000, (n, seq)).astype(np.int32),
            "attention_mask": np.ones((n, seq), np.int32),
            "token_type_ids": np.zeros((n, seq), np.int32),
            "labels": rng.integers(0, 2, (n,)).astype(np.int32)}
  layout = parallel.Layout.create()
  programs = train_lib.build_programs(cfg, model, n_train=n, total=total, layout=layout,
                                      seeds_per_group=k, seed_axis="vmap")
  t0 = time.perf_counter()
  fp = memory.footprint(memory.compile_step(programs, layout, arrays))
  return dict(fp.to_json(), compile_s=round(time.perf_counter() - t0, 1))


def formula(model, batch, seq):
  """(per seed, shared) bytes of the formula, as experiment/sizing use it."""
  from jaxstab.engine import models, parallel  # pylint: disable=import-outside-toplevel
  c, n = model.config, models.param_count(model.params)
  return (parallel.bytes_per_seed(n, batch, seq, c.hidden_size, c.num_hidden_layers,
                                  c.num_attention_heads, 4), 8 * n)


def seeds_per_device(per, fixed, pretrained, limit, headroom):
  """K per device that memory.choose would pick when the device gives XLA `limit` bytes and the
  pretrained weights are already on it."""
  return max(int((headroom * (limit - pretrained) - fixed) // per), 0)


def validate(a, out, save, log):
  cfg, model = build(a.shape, a.seq)
  rows = out.setdefault("validate", {}).setdefault("rows", {})
  per_f, shared_f = formula(model, a.batch, a.seq)
  for k in [int(x) for x in a.ks.split(",")]:
    if str(k) not in rows:
      rows[str(k)] = footprint(cfg, model, k, a.batch, a.seq, a.total)
      save()
    log(f"K={k}: measured peak {rows[str(k)]['peak'] / 1e9:.3f} GB (temp "
        f"{rows[str(k)]['temp'] / 1e9:.3f}), formula {(shared_f + k * per_f) / 1e9:.3f} GB, "
        f"compile {rows[str(k)]['compile_s']} s")
  one, two = rows["1"]["peak"], rows["2"]["peak"]
  per, fixed = two - one, 2 * one - two
  lines = []
  for k in sorted(int(x) for x in rows):
    got = rows[str(k)]["peak"]
    lines.append(dict(k=k, measured=got, analysis_line=fixed + k * per,
                      formula=shared_f + k * per_f))
  out["validate"].update(model=a.shape, batch=a.batch, seq=a.seq, per_seed_analysis=per,
                         fixed_analysis=fixed, per_seed_formula=per_f, shared_formula=shared_f,
                         compare=lines)
  save()
  log("| K | measured (analysis) | line through K=1,2 | formula |")
  log("|---|---|---|---|")
  for r in lines:
    log(f"| {r['k']} | {r['measured'] / 1e9:.2f} GB | {r['analysis_line'] / 1e9:.2f} GB "
        f"({100 * (r['analysis_line'] / r['measured'] - 1):+.1f}%) | {r['formula'] / 1e9:.2f} GB "
        f"({100 * (r['formula'] / r['measured'] - 1):+.1f}%) |")


def table(a, out, save, log):
  from jaxstab.engine import memory, models  # pylint: disable=import-outside-toplevel
  rows = out.setdefault("table", {}).setdefault("rows", {})
  for shape in a.models.split(","):
    cfg, model = build(shape, a.seq)
    pretrained = 4 * models.param_count(model.params)
    for moments in ("float32", "bfloat16"):
      for remat in ("none", "layers"):
        key = f"{shape}/{moments}/{remat}"
        row = rows.setdefault(key, dict(model=shape, moments=moments, remat=remat,
                                        pretrained_bytes=pretrained, measured={}))
        c = cfg.copy_and_resolve_references()
        c.optim.moments_dtype, c.train.remat = moments, remat
        measure_one_and_two(row, key, c, model, a, save, log)
        one, two = row["measured"]["1"]["peak"], row["measured"]["2"]["peak"]
        row["per_seed_bytes"], row["fixed_bytes"] = two - one, 2 * one - two
        row["k"] = {name: seeds_per_device(two - one, 2 * one - two, pretrained, limit,
                                           memory.HEADROOM) for name, limit in DEVICES.items()}
        save()
  out["table"].update(devices=DEVICES, headroom=memory.HEADROOM, batch=a.batch, seq=a.seq)
  save()
  log("| model | Adam moments | remat | per seed | fixed | " + " | ".join(DEVICES) + " |")
  log("|---|---|---|---|---|" + "---|" * len(DEVICES))
  for r in rows.values():
    if "k" in r:
      ks = " | ".join(str(r["k"][d]) for d in DEVICES)
      log(f"| {r['model']} | {r['moments']} | {r['remat']} | {r['per_seed_bytes'] / 1e9:.2f} GB | "
          f"{r['fixed_bytes'] / 1e9:.2f} GB | {ks} |")


def measure_one_and_two(row, key, cfg, model, a, save, log):
  """The compiled step's footprint at K = 1 and 2 into row["measured"] (kept across reruns:
  a row measured before is not compiled again), saved after each."""
  for k in (1, 2):
    if str(k) not in row["measured"]:
      row["measured"][str(k)] = footprint(cfg, model, k, a.batch, a.seq, a.total)
      save()
    log(f"{key} K={k}: peak {row['measured'][str(k)]['peak'] / 1e9:.3f} GB, "
        f"compile {row['measured'][str(k)]['compile_s']} s")


def peft_table(a, out, save, log):
  """Per seed, from K = 1 and 2: the state (argument bytes: weights or the trainable part, Adam's
  moments, the probe) and the temporaries (activations, gradients); the backbone is fixed."""
  from jaxstab.engine import memory, models  # pylint: disable=import-outside-toplevel
  rows = out.setdefault("peft", {}).setdefault("rows", {})
  for shape in a.models.split(","):
    cfg, model = build(shape, a.seq)
    pretrained = 4 * models.param_count(model.params)
    for method in a.methods.split(","):
      for remat in a.remats.split(","):
        key = f"{shape}/{method}" + ("" if remat == "none" else f"/remat-{remat}")
        row = rows.setdefault(key, dict(model=shape, method=method, measured={}))
        c = cfg.copy_and_resolve_references()
        c.peft.method, c.train.remat = method, remat
        measure_one_and_two(row, key, c, model, a, save, log)
        one, two = row["measured"]["1"], row["measured"]["2"]
        per, fixed = two["peak"] - one["peak"], 2 * one["peak"] - two["peak"]
        row.update(remat=remat, per_seed_bytes=per, state_bytes=two["argument"] - one["argument"],
                   temp_bytes=two["temp"] - one["temp"], fixed_bytes=fixed,
                   k={name: seeds_per_device(per, fixed, pretrained, limit, memory.HEADROOM)
                      for name, limit in DEVICES.items()})
        save()
  out["peft"].update(batch=a.batch, seq=a.seq, devices=DEVICES, headroom=memory.HEADROOM)
  save()
  log("| model | method | remat | per seed | state | temporaries | fixed | "
      + " | ".join(DEVICES) + " |")
  log("|---|---|---|---|---|---|---|" + "---|" * len(DEVICES))
  for r in rows.values():
    if "per_seed_bytes" in r:
      ks = " | ".join(str(r.get("k", {}).get(d, "")) for d in DEVICES)
      log(f"| {r['model']} | {r['method']} | {r.get('remat', 'none')} | "
          f"{r['per_seed_bytes'] / 1e9:.3f} GB | {r['state_bytes'] / 1e9:.3f} GB | "
          f"{r['temp_bytes'] / 1e9:.3f} GB | {r['fixed_bytes'] / 1e9:.3f} GB | {ks} |")


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--mode", choices=("validate", "table", "peft"), default="validate")
  p.add_argument("--methods", default=",".join(PEFT_METHODS), help="peft mode's peft.method values")
  p.add_argument("--remats", default="none,layers", help="peft mode's train.remat values")
  p.add_argument("--shape", default="bert-base", choices=tuple(SHAPES), help="validate's model")
  p.add_argument("--ks", default="1,2,4", help="validate's group sizes (1 and 2 needed)")
  p.add_argument("--models", default="bert-large,roberta-large", help="the table's models")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--seq", type=int, default=128)
  p.add_argument("--total", type=int, default=3120, help="steps (sizes the probe's buffers)")
  p.add_argument("--json", default="", help="results file; a rerun skips what it holds")
  a = p.parse_args()
  import json  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  out = {}
  if a.json and os.path.isfile(a.json):
    with open(a.json, encoding="utf-8") as f:
      out = json.load(f)
  out.update(command="python " + " ".join(sys.argv), machine=platform.processor() or
             platform.machine(), cpus=os.cpu_count(), jax=jax.__version__,
             backend=jax.default_backend(), date=datetime.date.today().isoformat(),
             measured="XLA memory analysis of the compiled step: argument + output - alias + "
                      "temp bytes (per device)")

  def save():
    if a.json:
      os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
      write_json(a.json, out)

  log = lambda line: print(line, flush=True)
  {"validate": validate, "table": table, "peft": peft_table}[a.mode](a, out, save, log)


if __name__ == "__main__":
  main()
