"""What a jax.profiler trace says about the device: busy vs idle time and the costliest ops.

  python scripts/trace_summary.py DIR [DIR ...]      (folders written by bench_step --profile_dir)

For each trace it reads the Chrome-format `*.trace.json.gz` jax writes next to the xplane file.
Device time is the union of the op intervals on the accelerator's lanes (`/device:GPU:0`, TPU);
on a CPU backend, the XLA worker threads of `/host:CPU` stand in. Idle = 1 - busy / span, where
span runs from the first to the last device op: the share of the traced steps in which the
device waited for the host (dispatch, input, syncs). Prints one markdown section per trace.
"""
import collections
import glob
import gzip
import json
import os
import sys


def _union_length(intervals):
  total, end = 0.0, None
  for a, b in sorted(intervals):
    if end is None or a > end:
      total += b - a
      end = b
    elif b > end:
      total += b - end
      end = b
  return total


def device_events(trace: dict):
  """(events on the device lanes, which lanes) from a Chrome trace dict."""
  ev = trace.get("traceEvents", [])
  procs = {e["pid"]: e.get("args", {}).get("name", "") for e in ev
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  threads = {(e["pid"], e.get("tid")): e.get("args", {}).get("name", "") for e in ev
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
  dev_pids = {p for p, n in procs.items() if n.startswith("/device:")}
  if dev_pids:
    keep = lambda e: e["pid"] in dev_pids
    lanes = sorted(procs[p] for p in dev_pids)
  else:  # CPU backend: XLA's compute threads
    xla = {k for k, n in threads.items() if n.startswith(("tf_XLAEigen", "XLAEigen"))}
    keep = lambda e: (e["pid"], e.get("tid")) in xla
    lanes = ["host XLA threads"]
  return [e for e in ev if e.get("ph") == "X" and "dur" in e and keep(e)], lanes


def summarize(trace: dict, top: int = 10) -> dict:
  events, lanes = device_events(trace)
  if not events:
    return {"lanes": lanes, "ops": 0}
  spans = [(float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in events]
  start, end = min(a for a, _ in spans), max(b for _, b in spans)
  busy = _union_length(spans)
  by_name = collections.Counter()
  for e in events:  # wrappers around whole executables would top the list: leave them out
    if not e.get("name", "").startswith(("ThunkExecutor", "XlaModule", "TfrtCpuExecutable")):
      by_name[e.get("name", "?")] += float(e["dur"])
  total = sum(by_name.values())
  return {"lanes": lanes, "ops": len(events), "span_ms": (end - start) / 1e3,
          "busy_ms": busy / 1e3, "idle": 1.0 - busy / max(end - start, 1e-9),
          "top": [(n, d / 1e3, d / max(total, 1e-9)) for n, d in by_name.most_common(top)]}


def markdown(name: str, s: dict) -> str:
  if not s.get("ops"):
    return f"### {name}\n\nno device ops found (lanes: {', '.join(s['lanes'])})\n"
  rows = "\n".join(f"| `{n[:70]}` | {ms:.2f} | {share:.1%} |" for n, ms, share in s["top"])
  return (f"### {name}\n\nlanes: {', '.join(s['lanes'])}; {s['ops']} ops; span {s['span_ms']:.1f} "
          f"ms, busy {s['busy_ms']:.1f} ms, **idle {s['idle']:.1%}**\n\n"
          f"| op | total ms | share of op time |\n|---|---|---|\n{rows}\n")


def main(argv) -> int:
  if not argv:
    print(__doc__, file=sys.stderr)
    return 2
  found = 0
  for folder in argv:
    for path in sorted(glob.glob(os.path.join(folder, "**", "*.trace.json.gz"), recursive=True)):
      with gzip.open(path, "rt", encoding="utf-8") as f:
        trace = json.load(f)
      print(markdown(os.path.relpath(path, folder), summarize(trace)))
      found += 1
  if not found:
    print(f"no *.trace.json.gz under {' '.join(argv)}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
