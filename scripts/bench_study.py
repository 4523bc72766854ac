"""Study-level benchmarks: compilations per study, the persistent compilation cache, wall time.

  python scripts/bench_study.py compiles   # a real RTE study, tiny model: compilations by
                                           # function for 1, 2 and 3 seed groups of the same K
  python scripts/bench_study.py cache --shapes=tiny,bert-base-2l
                                           # compile time of a fresh process: no cache, cold
                                           # cache (fills it), warm cache (second process)
  python scripts/bench_study.py wall --seeds=25 --sequential_seeds=5 --k=25,5
                                           # one vmapped process vs one process per seed (the
                                           # reference's way), same machine, same recipe

`compiles` and `wall` run the real CLI / experiment on RTE from --glue with the tiny model,
--max_steps steps at --seq tokens (defaults 30 and 32: feasible on 2 CPU cores). Sequential
wall time measured on --sequential_seeds processes is extrapolated to --seeds, and labelled so.
Everything printed is also written to --json when given.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[1:1] = [HERE, ROOT]  # this checkout's jaxstab, not an installed one
GLUE = os.path.normpath(os.path.join(ROOT, "..", "shared", "glue"))
TRAIN_STEP = "train_step"  # the jitted step's name contains this


def log(s=""):
  print(s, flush=True)


def loadavg():
  return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _recipe(a, seeds_arg):
  return ([f"--config=configs/rte.py:model=tiny-bert,{seeds_arg}",
           f"--config.train.max_steps={a.max_steps}", f"--config.train.max_seq_length={a.seq}",
           f"--config.data.dir={a.glue}"])


# ---------------------------------------------------------------- compiles (in process)

def cmd_compiles(a):
  """Runs experiment.run_setting three times (1, 2, 3 groups of K seeds; the last group of
  the third run is padded) and counts backend compilations by function name in each."""
  from bench_step import CompileEvents  # pylint: disable=import-outside-toplevel
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
  from jaxstab.config import config_lib  # pylint: disable=import-outside-toplevel
  from jaxstab.study import experiment  # pylint: disable=import-outside-toplevel
  absl_logging.set_verbosity(absl_logging.WARNING)
  events = CompileEvents()
  k = a.k_compiles
  out = []
  log(f"compilations per run_setting (RTE, tiny-bert, K={k}, {a.max_steps} steps, seq {a.seq}); "
      f"load average {loadavg()}")
  base = tempfile.mkdtemp(prefix="bench_compiles_")
  try:
    for n_seeds in (k, 2 * k, 2 * k + 1):
      cfg = config_lib.task_config("rte", f"model=tiny-bert,seeds=1-{n_seeds}")
      cfg.train.seeds_per_step = k
      cfg.train.max_steps = a.max_steps
      cfg.train.max_seq_length = a.seq
      cfg.data.dir = a.glue
      before = len(events.backend_compiles)
      t0 = time.perf_counter()
      experiment.run_setting(cfg, os.path.join(base, f"s{n_seeds}"))
      wall = time.perf_counter() - t0
      new = events.backend_compiles[before:]
      by_name = {}
      for name, sec in new:
        c, s = by_name.get(name, (0, 0.0))
        by_name[name] = (c + 1, s + sec)
      groups = -(-n_seeds // k)
      step = {n: v for n, v in by_name.items() if TRAIN_STEP in n}
      rec = dict(seeds=n_seeds, k=k, groups=groups, wall_s=wall, compiles_total=len(new),
                 compile_s_total=sum(s for _, s in new),
                 train_step_compiles=sum(c for c, _ in step.values()),
                 train_step_compile_s=sum(s for _, s in step.values()),
                 by_name={n: dict(count=c, seconds=s) for n, (c, s) in by_name.items()})
      out.append(rec)
      log(f"  {n_seeds} seeds = {groups} group(s) of K={k}: train-step compilations "
          f"{rec['train_step_compiles']} ({rec['train_step_compile_s']:.1f} s); all backend "
          f"compilations {len(new)} ({rec['compile_s_total']:.1f} s); run {wall:.1f} s")
    names = sorted(set().union(*(r["by_name"] for r in out)),
                   key=lambda n: -max(r["by_name"].get(n, {}).get("seconds", 0) for r in out))
    log(f"  by function (count per run, {len(out)} runs; the 12 costliest):")
    for n in names[:12]:
      log(f"    {n[:60]:<60} " + " ".join(f"{r['by_name'].get(n, {}).get('count', 0):>3}" for r in out)
          + f"   {max(r['by_name'].get(n, {}).get('seconds', 0) for r in out):6.2f} s max")
    once = all(r["train_step_compiles"] == 1 for r in out)
    later = len({r["compiles_total"] for r in out[1:]}) == 1
    log("  => " + (f"the train step is compiled once per run whatever the number of groups "
                   f"(1, 2, 3 groups of K={k}): every group reuses that executable"
                   if once else "the train step was compiled more than once in a run: look above"))
    if later:
      log(f"     (the first run's extra compilations are one-off small ops of model init, cached for "
          f"the rest of the process; runs 2 and 3 compile the same {out[1]['compiles_total']} programs)")
  finally:
    shutil.rmtree(base, ignore_errors=True)
  return dict(compiles=out)


# ---------------------------------------------------------------- cache (child processes)

def cmd_cache_child(a):
  """One fresh process: build the step of --shape, lower + compile it, print one JSON line."""
  t_start = time.perf_counter()
  import jax  # pylint: disable=import-outside-toplevel
  if a.cache_dir:
    jax.config.update("jax_compilation_cache_dir", a.cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  from bench_step import CompileEvents, build, make_step  # pylint: disable=import-outside-toplevel
  events = CompileEvents()
  cfg, model = build(a.shape, "bert", a.dtype, a.seq)
  f, state, dev, anchor = make_step(cfg, model, a.k, a.batch, a.seq, 10, 100)
  n0, h0, _ = events.snapshot()
  t0 = time.perf_counter()
  lowered = f.lower(state, dev, anchor)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  n1, h1, m1 = events.snapshot()
  jax.block_until_ready(compiled(state, dev, anchor).step)
  print("RESULT " + json.dumps(dict(
      shape=a.shape, lower_s=t1 - t0, compile_s=t2 - t1,
      step_backend_compiles=n1 - n0, step_cache_hits=h1 - h0,
      process_backend_compiles=n1, process_cache_hits=h1, process_cache_misses=m1,
      process_compile_s=sum(s for _, s in events.backend_compiles),
      to_first_step_s=time.perf_counter() - t_start)), flush=True)


def _child(a, shape, cache_dir):
  cmd = [sys.executable, os.path.abspath(__file__), "cache-child", f"--shape={shape}",
         f"--batch={a.batch}", f"--seq={a.cache_seq}", f"--k={a.k}", f"--dtype={a.dtype}",
         f"--cache_dir={cache_dir}"]
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  wall = time.perf_counter() - t0
  for line in proc.stdout.splitlines():
    if line.startswith("RESULT "):
      return dict(json.loads(line[7:]), process_wall_s=wall)
  raise RuntimeError(f"cache child failed ({proc.returncode}): {proc.stderr[-2000:]}")


def _dir_size(d):
  files = [os.path.join(r, f) for r, _, fs in os.walk(d) for f in fs]
  return len(files), sum(os.path.getsize(f) for f in files)


def cmd_cache(a):
  out = []
  log(f"persistent compilation cache: one train step (K={a.k}, {a.dtype}, probe on, batch "
      f"{a.batch}, seq {a.cache_seq}) compiled in a fresh process; load average {loadavg()}")
  log(f"  {'shape':<13} {'run':<26} {'lower s':>7} {'compile s':>9} {'hits':>4} "
      f"{'all compiles s':>14} {'process s':>9}")
  for shape in a.shapes.split(","):
    d = tempfile.mkdtemp(prefix="jax_cache_")
    try:
      for label, cache in (("no cache", ""), ("cache, 1st process (fills)", d),
                           ("cache, 2nd process", d)):
        r = dict(_child(a, shape, cache), run=label)
        if cache:
          r["cache_files"], r["cache_bytes"] = _dir_size(d)
        out.append(r)
        log(f"  {shape:<13} {label:<26} {r['lower_s']:>7.2f} {r['compile_s']:>9.2f} "
            f"{r['step_cache_hits']:>4} {r['process_compile_s']:>14.2f} {r['process_wall_s']:>9.1f}"
            + (f"   cache: {r['cache_files']} files, {r['cache_bytes'] / 1e6:.1f} MB" if cache else ""))
    finally:
      shutil.rmtree(d, ignore_errors=True)
  return dict(cache=out)


# ---------------------------------------------------------------- wall (CLI processes)

def cmd_cli_child(argv):
  """`python -m jaxstab.main ARGS` with compilations counted (one JSON line on stderr at exit)."""
  import atexit  # pylint: disable=import-outside-toplevel
  from bench_step import CompileEvents  # pylint: disable=import-outside-toplevel
  events = CompileEvents()
  atexit.register(lambda: print("COMPILESTATS " + json.dumps(dict(
      compiles=len(events.backend_compiles), cache_hits=events.cache_hits,
      compile_s=sum(s for _, s in events.backend_compiles))), file=sys.stderr, flush=True))
  sys.argv = ["jaxstab.main"] + argv
  from jaxstab import main as cli  # pylint: disable=import-outside-toplevel
  cli.run()


def _run_cli(args, env_extra=None, instrument=True):
  """Wall seconds of one CLI process (and its compile stats when instrumented)."""
  env = dict(os.environ, **(env_extra or {}))
  cmd = ([sys.executable, os.path.abspath(__file__), "cli-child", "--"] if instrument else
         [sys.executable, "-m", "jaxstab.main"]) + args
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, check=False)
  wall = time.perf_counter() - t0
  if proc.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
  stats = {}
  for line in proc.stderr.splitlines():
    if line.startswith("COMPILESTATS "):
      stats = json.loads(line[len("COMPILESTATS "):])
  return wall, stats


# (label, extra CLI args, extra env): how each process gets (or not) its compiled programs.
# jaxstab.main keeps a persistent cache in the workdir's parent by default (min compile time 1 s,
# JAX's default); each variant below runs in a fresh parent folder, so its first process starts cold.
NO_CACHE = ["--config.compile_cache=off"]
ALL_CACHED = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
              "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
SEQUENTIAL = {
    "off": ("sequential processes, no compilation cache", NO_CACHE, {}),
    "default": ("sequential processes, jaxstab's default cache", [], {}),
    "all": ("sequential processes, cache with min time/size 0", [], ALL_CACHED),
}


def _fmt_est(est, extrapolated):
  return f"≈ {est:.0f} s (EXTRAPOLATED)" if extrapolated else f"{est:.1f} s"


def cmd_wall(a):
  base = tempfile.mkdtemp(prefix="bench_wall_")
  res = dict(seeds=a.seeds, sequential_seeds=a.sequential_seeds, max_steps=a.max_steps,
             seq=a.seq, loadavg_start=os.getloadavg(), runs=[])
  log(f"wall time of a {a.seeds}-seed RTE study, tiny-bert, {a.max_steps} steps, seq {a.seq}, "
      f"batch 16; load average {loadavg()}")
  try:
    for k in [int(x) for x in a.k.split(",") if x]:
      args = _recipe(a, f"seeds=1-{a.seeds}") + [f"--config.train.seeds_per_step={k}",
                                                 f"--workdir={base}/vmap_k{k}/study"]
      wall, st = _run_cli(args, instrument=a.instrument)
      res["runs"].append(dict(kind=f"one process, K={k}", seeds=a.seeds, measured_s=wall,
                              for_all_seeds_s=wall, compile_stats=st,
                              command="python -m jaxstab.main " + " ".join(args)))
      log(f"  one process, {a.seeds} seeds vmapped K={k} (cold cache): {wall:.1f} s (measured)"
          + (f", of which compiling {st['compile_s']:.1f} s ({st['compiles']} programs)" if st else "")
          + f"; load {loadavg()}")
    for name in [x for x in a.sequential.split(",") if x]:
      label, extra, env = SEQUENTIAL[name]
      walls, stats = [], []
      for s in range(1, a.sequential_seeds + 1):
        args = _recipe(a, f"seed={s}") + extra + [f"--workdir={base}/seq_{name}/seed{s}"]
        w, st = _run_cli(args, env, a.instrument)
        walls.append(w)
        stats.append(st)
      total = sum(walls)
      cached = name != "off" and len(walls) > 1  # the first process fills, the others hit
      per = sum(walls[1:]) / (len(walls) - 1) if cached else total / len(walls)
      est = walls[0] + per * (a.seeds - 1) if cached else per * a.seeds
      extrapolated = a.seeds != a.sequential_seeds
      res["runs"].append(dict(kind=label, seeds=a.sequential_seeds, measured_s=total,
                              per_process_s=walls, compile_stats=stats, for_all_seeds_s=est,
                              extrapolated=extrapolated, env=env,
                              command="for s in 1..N: " + " ".join(f"{k}={v}" for k, v in env.items())
                              + (" " if env else "") + "python -m jaxstab.main "
                              + " ".join(_recipe(a, "seed=$s") + extra) + " --workdir=DIR/seed$s"))
      log(f"  {label}: {a.sequential_seeds} processes {total:.1f} s (measured; each "
          f"{', '.join(f'{w:.1f}' for w in walls)} s"
          + (f"; compiling {', '.join(format(x['compile_s'], '.1f') for x in stats)} s, "
             f"persistent-cache hits {', '.join(str(x['cache_hits']) for x in stats)}"
             if all(stats) else "")
          + f") -> {a.seeds} seeds {_fmt_est(est, extrapolated)}; load {loadavg()}")
    seq_runs = [r for r in res["runs"] if not r["kind"].startswith("one process")]
    for r in res["runs"]:
      if r["kind"].startswith("one process"):
        for q in seq_runs:
          log(f"  {r['kind']} is {q['for_all_seeds_s'] / r['for_all_seeds_s']:.1f}x faster than "
              f"{q['kind']} for {a.seeds} seeds" + (" (sequential extrapolated)" if q["extrapolated"] else ""))
  finally:
    shutil.rmtree(base, ignore_errors=True)
  res["loadavg_end"] = os.getloadavg()
  return dict(wall=res)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("mode", choices=("compiles", "cache", "wall", "all", "cache-child", "cli-child"))
  p.add_argument("--glue", default=GLUE)
  p.add_argument("--max_steps", type=int, default=30)
  p.add_argument("--seq", type=int, default=32, help="max_seq_length of the RTE runs")
  p.add_argument("--k_compiles", type=int, default=2, help="K of the compile-count runs")
  p.add_argument("--shapes", default="tiny,bert-base-2l", help="cache: shapes to compile")
  p.add_argument("--cache_seq", type=int, default=128, help="cache: sequence length")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--k", default="", help="cache: K (default 1); wall: comma list of K "
                                         "(default: --seeds and 5)")
  p.add_argument("--dtype", default="float32")
  p.add_argument("--cache_dir", default="")
  p.add_argument("--shape", default="tiny")
  p.add_argument("--seeds", type=int, default=25, help="wall: seeds of the study")
  p.add_argument("--sequential_seeds", type=int, default=5,
                 help="wall: processes actually run one after the other (then extrapolated)")
  p.add_argument("--sequential", default="off,default",
                 help="wall: sequential variants, comma list of off (--config.compile_cache=off: "
                      "every process compiles everything), default (jaxstab's cache in the "
                      "workdirs' parent), all (that cache with min compile time / size 0)")
  p.add_argument("--instrument", type=int, default=1,
                 help="wall: run the CLI through a wrapper that counts its compilations "
                      "(0: plain python -m jaxstab.main)")
  p.add_argument("--json", default="")
  if len(sys.argv) > 1 and sys.argv[1] == "cli-child":
    return cmd_cli_child(sys.argv[3:] if sys.argv[2:3] == ["--"] else sys.argv[2:])
  a = p.parse_args()
  if a.mode == "cache-child":
    a.k = int(a.k or 1)
    return cmd_cache_child(a)
  out = dict(argv=sys.argv, loadavg=os.getloadavg(), cpus=os.cpu_count())
  if a.mode in ("compiles", "all"):
    out.update(cmd_compiles(a))
  if a.mode in ("cache", "all"):
    k_wall, a.k = a.k, int((a.k or "1").split(",")[0])
    out.update(cmd_cache(a))
    a.k = k_wall
  if a.mode in ("wall", "all"):
    a.k = a.k or f"{a.seeds},5"
    out.update(cmd_wall(a))
  if a.json:
    from bench_common import write_json  # pylint: disable=import-outside-toplevel
    write_json(a.json, out)
  return None


if __name__ == "__main__":
  main()
