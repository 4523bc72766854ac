"""The PyTorch side of bench_step.py: a plain eager AdamW fine-tuning loop of the same shape.

transformers' BertForSequenceClassification, randomly initialised from the same BertConfig
sizes as the JAX benchmark, random tokens (ids 1000..1999, full attention mask), train mode
(dropout 0.1), torch.optim.AdamW (lr 2e-5, eps 1e-6, weight decay 0.01 off biases/LayerNorm),
a linear schedule, clip_grad_norm_(1.0) — what the reference code does each step, minus the
data loader. No host sync inside the loop; one sync at the end of the timed steps.

Modes:  fp32   CUDA: TF32 off for matmul and cuDNN (the reference's precision)
        tf32   CUDA only: torch.backends.cuda.matmul.allow_tf32 = cudnn.allow_tf32 = True
        bf16   torch.autocast(bfloat16), TF32 off; on CPU only if autocast('cpu') works

Run on its own (bench_step.py runs it as a subprocess, before JAX touches the device):

  python scripts/bench_torch.py --shape=tiny --batch=16 --seq=128 --modes=fp32,bf16

Exit status 3 (and a one-line note) when torch or transformers' PyTorch BERT is missing.
"""
import argparse
import gc
import sys
import time

from bench_common import SHAPES, fmt, make_row, skipped_row, write_json

UNAVAILABLE = 3


def _import():
  try:
    import torch  # pylint: disable=import-outside-toplevel
    from transformers import BertConfig, BertForSequenceClassification  # pylint: disable=import-outside-toplevel
  except Exception as e:  # pylint: disable=broad-except
    return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
  return (torch, BertConfig, BertForSequenceClassification), ""


def device_kind(torch, device):
  if device.type == "cuda":
    return torch.cuda.get_device_name(device)
  return f"cpu ({torch.get_num_threads()} threads)"


def _set_tf32(torch, on: bool):
  """TF32 for fp32 matmuls / convolutions on or off; returns what torch then reports."""
  try:
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on
  except Exception:  # pylint: disable=broad-except  (a torch where only the new API is left)
    torch.backends.cuda.matmul.fp32_precision = "tf32" if on else "ieee"
    torch.backends.cudnn.conv.fp32_precision = "tf32" if on else "ieee"
  return str(getattr(torch.backends.cuda.matmul, "fp32_precision", None)
             or torch.get_float32_matmul_precision())


def build(mods, shape, seq, device, attn):
  torch, config_cls, model_cls = mods
  hidden, layers, heads, inter, vocab = SHAPES[shape]
  kw = {} if attn == "default" else {"attn_implementation": attn}
  cfg = config_cls(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                   num_attention_heads=heads, intermediate_size=inter,
                   max_position_embeddings=max(512, seq + 2), num_labels=2, type_vocab_size=2,
                   **kw)
  torch.manual_seed(0)
  model = model_cls(cfg).to(device).train()
  used = getattr(model.config, "_attn_implementation", "?")
  no_decay = ("bias", "LayerNorm.weight")
  groups = [{"params": [p for n, p in model.named_parameters() if not any(x in n for x in no_decay)],
             "weight_decay": 0.01},
            {"params": [p for n, p in model.named_parameters() if any(x in n for x in no_decay)],
             "weight_decay": 0.0}]
  opt = torch.optim.AdamW(groups, lr=2e-5, eps=1e-6)
  return model, opt, used


def batches(torch, device, batch, seq, n_batches=8):
  g = torch.Generator().manual_seed(0)
  out = []
  for _ in range(n_batches):
    out.append({"input_ids": torch.randint(1000, 2000, (batch, seq), generator=g).to(device),
                "attention_mask": torch.ones(batch, seq, dtype=torch.long).to(device),
                "token_type_ids": torch.zeros(batch, seq, dtype=torch.long).to(device),
                "labels": torch.randint(0, 2, (batch,), generator=g).to(device)})
  return out


def time_mode(mods, mode, shape, batch, seq, steps, warmup, device, attn):
  """Seconds per step of one mode, or raises. Returns (sec, "attention kind, fp32 matmul precision")."""
  torch = mods[0]
  cuda = device.type == "cuda"
  precision = _set_tf32(torch, mode == "tf32") if cuda else "cpu"
  model, opt, used = build(mods, shape, seq, device, attn)
  total = steps + warmup
  sched = torch.optim.lr_scheduler.LambdaLR(
      opt, lambda t: min((t + 1) / max(total // 10, 1), max(total - t, 0) / max(total * 0.9, 1)))
  data = batches(torch, device, batch, seq)
  if mode == "bf16":
    ctx = lambda: torch.autocast(device.type, dtype=torch.bfloat16)
  else:
    import contextlib  # pylint: disable=import-outside-toplevel
    ctx = contextlib.nullcontext

  def step(i):
    with ctx():
      loss = model(**data[i % len(data)]).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return loss

  sync = torch.cuda.synchronize if cuda else (lambda: None)
  for i in range(warmup):
    step(i)
  sync()
  t0 = time.perf_counter()
  for i in range(steps):
    loss = step(i)
  sync()
  sec = (time.perf_counter() - t0) / steps
  if not torch.isfinite(loss.detach().float()).item():
    raise FloatingPointError("non-finite loss")
  del model, opt, data
  gc.collect()
  if cuda:
    torch.cuda.empty_cache()
  return sec, f"{used}, fp32 matmul {precision}"


def cpu_bf16_autocast_works(torch):
  """autocast('cpu', bfloat16) runs a Linear in bf16 and its backward (else: why not)."""
  try:
    lin = torch.nn.Linear(8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
      y = lin(torch.randn(2, 8))
    if y.dtype != torch.bfloat16:
      return f"autocast('cpu') left the matmul in {y.dtype}"
    y.float().sum().backward()
    return ""
  except Exception as e:  # pylint: disable=broad-except
    return f"autocast('cpu', bfloat16) failed: {type(e).__name__}: {e}"


def run(shape, batch, seq, modes, steps, warmup, peak_tflops, device="auto", attn="default",
        threads=0, log=print):
  """Rows for every requested mode (skipped ones carry the reason); (rows, device kind, note)."""
  mods, why = _import()
  if mods is None:
    return None, None, f"torch comparison unavailable ({why})"
  torch = mods[0]
  if threads > 0:
    torch.set_num_threads(threads)
  dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                     (device if device != "auto" else "cpu"))
  kind = device_kind(torch, dev)
  rows = []
  extra = dict(device=kind, torch_version=torch.__version__)
  for mode in modes:
    if mode not in ("fp32", "tf32", "bf16"):
      raise ValueError(f"unknown torch mode {mode!r}; choose from fp32, tf32, bf16")
    cpu_bf16 = cpu_bf16_autocast_works(torch) if mode == "bf16" and dev.type == "cpu" else ""
    if mode == "tf32" and dev.type != "cuda":
      rows.append(skipped_row("torch", mode, 1, batch, seq, shape, "TF32 is CUDA-only", **extra))
    elif cpu_bf16:
      rows.append(skipped_row("torch", mode, 1, batch, seq, shape, cpu_bf16, **extra))
    else:
      try:
        sec, used = time_mode(mods, mode, shape, batch, seq, steps, warmup, dev, attn)
        rows.append(make_row("torch", mode, 1, batch, seq, shape, sec, peak_tflops,
                             probe="-", attn=used, **extra))
      except Exception as e:  # pylint: disable=broad-except  (e.g. out of memory: keep going)
        rows.append(skipped_row("torch", mode, 1, batch, seq, shape,
                                f"{type(e).__name__}: {str(e).splitlines()[0][:200]}", **extra))
        if dev.type == "cuda":
          gc.collect()
          torch.cuda.empty_cache()
    r = rows[-1]
    log(f"torch {mode:>5}  {fmt(r['ms_per_step'], '9.2f')} ms  {fmt(r['examples_per_s'], '9.1f')} "
        f"ex/s  {fmt(r['tflops'], '8.3f')} TFLOP/s  MFU {fmt(r['mfu'], '6.1%')}"
        + (f"  attn={r['attn']}" if "attn" in r else "")
        + (f"  skipped: {r['skipped']}" if "skipped" in r else ""))
  return rows, kind, ""


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--seq", type=int, default=128)
  p.add_argument("--modes", default="fp32,tf32,bf16")
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--peak_tflops", type=float, default=0.0)
  p.add_argument("--device", default="auto", help="auto (cuda if available) | cuda | cpu")
  p.add_argument("--attn", default="default",
                 help="attn_implementation: default (transformers' choice, sdpa) | sdpa | eager")
  p.add_argument("--threads", type=int, default=0,
                 help="torch.set_num_threads (0: torch's default). On a loaded CPU, OpenMP threads "
                      "oversubscribe the cores and slow PyTorch down many-fold: try 1")
  p.add_argument("--json", default="", help="write {device, rows, note} here")
  a = p.parse_args()
  rows, kind, note = run(a.shape, a.batch, a.seq, [m for m in a.modes.split(",") if m], a.steps,
                         a.warmup, a.peak_tflops, a.device, a.attn, a.threads,
                         log=lambda s: print(s, flush=True))
  if a.json:
    write_json(a.json, dict(device=kind, rows=rows or [], note=note))
  if rows is None:
    print(note, file=sys.stderr)
    sys.exit(UNAVAILABLE)


if __name__ == "__main__":
  main()
