"""Markdown tables from bench_step.py --json files (for BUILD_NOTES.md).

  python scripts/bench_summary.py OUT/*.json > OUT/summary.md
"""
import json
import sys

from bench_common import fmt


def table(path):
  with open(path, encoding="utf-8") as f:
    d = json.load(f)
  if not isinstance(d, dict) or "rows" not in d or "meta" not in d:
    return ""
  m = d["meta"]
  lines = [f"### {m.get('label') or m['shape']}: {m['shape']} {tuple(m['dims'].values())[:4]}, "
           f"batch {m['batch']}, seq {m['seq']} — {m['device']}"
           + (f" / torch on {m['torch_device']}" if m.get("torch_device") else "")
           + f", jax {m['jax']}, {m['date']}, peak {m['peak_tflops'] or '-'} TFLOP/s",
           "", f"`{' '.join(m['argv'])}`", ""]
  if m.get("gemm_tflops"):
    g = m["gemm_tflops"]
    lines += [f"{g['n']}² matmul on this device: fp32 {g['float32']:.3f}, bf16 {g['bfloat16']:.3f} "
              "TFLOP/s (each row's note gives its share of it)", ""]
  lines += [
           "| impl | K | mode | probe | ms/step | examples/s | TFLOP/s | MFU | compile s | note |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for r in d["rows"]:
    note = r.get("skipped") or r.get("note") or (f"attn={r['attn']}" if "attn" in r else "")
    if r.get("of_gemm") is not None:
      note = (note + "; " if note else "") + f"{r['of_gemm']:.0%} of the matmul rate"
    if r.get("cache_hits"):
      note = (note + "; " if note else "") + f"persistent cache hits {r['cache_hits']}"
    comp = (r.get("lower_s") or 0) + (r.get("compile_s") or 0) if "compile_s" in r else None
    lines.append(f"| {r['impl']} | {r['k']} | {r['mode']} | {r.get('probe', '-')} | "
                 f"{fmt(r['ms_per_step'], '.2f')} | {fmt(r['examples_per_s'], '.1f')} | "
                 f"{fmt(r['tflops'], '.3f')} | {fmt(r['mfu'], '.1%')} | {fmt(comp, '.1f')} | {note} |")
  if d.get("ratios"):
    modes = list(dict.fromkeys(x["torch"] for x in d["ratios"]))
    lines += ["", "jaxstab / PyTorch examples/s:", "",
              "| K | dtype | probe | " + " | ".join(f"vs torch {x}" for x in modes) + " |",
              "|---|---|---|" + "---|" * len(modes)]
    for key in dict.fromkeys((x["k"], x["dtype"], x["probe"]) for x in d["ratios"]):
      vals = {x["torch"]: x["ratio"] for x in d["ratios"] if (x["k"], x["dtype"], x["probe"]) == key}
      lines.append(f"| {key[0]} | {key[1]} | {key[2]} | "
                   + " | ".join(fmt(vals.get(x), ".2f") for x in modes) + " |")
  return "\n".join(lines) + "\n"


def main():
  print("\n".join(t for t in (table(p) for p in sys.argv[1:]) if t))


if __name__ == "__main__":
  main()
