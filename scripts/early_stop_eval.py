"""What starting N runs and continuing the best `keep` would have found, replayed on a finished
setting that trained every run to the end, for both ranking criteria of train.early_stop.

A continued run trains exactly as if nothing had stopped (tests/test_seed_grid_and_early_stop.py
checks this bit for bit), so the replay is what an early-stopped study of the same runs gives,
provided the stop step is one of the setting's evaluation steps (the dev criterion needs a dev
result there). Ranking uses the engine's own functions (early_stop.score_dev, score_probe,
choose). Prints one Markdown row per criterion and one for training every run to the end.

  python scripts/early_stop_eval.py WORKDIR --at 0.21 --keep 4
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from jaxstab.study import early_stop  # noqa: E402  pylint: disable=wrong-import-position
from jaxstab.results import records  # noqa: E402  pylint: disable=wrong-import-position


def replay(workdir: str, at: float, keep: int):
  setting = records.load(workdir).settings[0]  # a plain run, or a study's first setting
  probe, metric, select = setting.probe, setting.metric, setting.select
  total = setting.summary.total_steps
  step = min(max(1, int(round(at * total))), total - 1)
  dev = {}  # seed -> its dev evaluations (metrics.jsonl)
  for r in setting.records:
    if r.get("kind") == "dev":
      dev.setdefault(int(r["seed"]), []).append(r)
  runs = {int(r.seed): r for r in setting.runs}
  evaluated = {r["step"] for rs in dev.values() for r in rs}
  if step not in evaluated:
    raise SystemExit(f"step {step} (at={at} of {total}) is not an evaluation step of {workdir}; "
                     f"choose `at` from {sorted(evaluated)} / {total}")
  seeds = [int(s) for s in probe["seeds"]]
  probe_scores = early_stop.score_probe({k: probe[k] for k in ("grad_norm", "step", "loss")},
                                        [str(g) for g in probe["groups"]], step)
  scores = {
      "dev": {n: early_stop.score_dev(dev[n], metric, step) for n in runs},
      "probe": {n: float(probe_scores[seeds.index(n)]) for n in runs},
  }
  value = lambda n: runs[n].value(select, metric)
  rows = []
  for by, sc in scores.items():
    continued, _ = early_stop.choose(sc, keep)
    cost = early_stop.steps_trained(len(runs), keep, step, total)["fraction_of_compute"]
    rows.append((f"stop at step {step}, keep {keep}, by {by}", cost, continued))
  rows.append(("every run to the end", 1.0, sorted(runs)))
  print(f"{workdir}: {len(runs)} runs, {total} steps; reported dev {metric} ×100 ({select})\n")
  print("| runs continued | compute | best found | mean of continued | failed among continued "
        "| continued |")
  print("|---|---|---|---|---|---|")
  for name, cost, continued in rows:
    vals = [value(n) for n in continued]
    failed = sum(bool(runs[n].failed) for n in continued)
    print(f"| {name} | {100 * cost:.0f}% | {100 * max(vals):.1f} | {100 * np.mean(vals):.1f} | "
          f"{failed}/{len(continued)} | {', '.join(map(str, continued))} |")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("workdir")
  parser.add_argument("--at", type=float, required=True, help="fraction of the total steps")
  parser.add_argument("--keep", type=int, required=True, help="runs continued")
  args = parser.parse_args(argv)
  replay(args.workdir, args.at, args.keep)


if __name__ == "__main__":
  main()
