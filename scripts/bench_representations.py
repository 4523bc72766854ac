"""Times the merge's representation measures (results/representations.py) on random float16 data
of one shape, and scales them to a whole setting (BUILD_NOTES, "Instability: per-layer
representations").

    python scripts/bench_representations.py                       # 5 seeds x 5 layers, MNLI shape
    python scripts/bench_representations.py --seeds=5 --layers=5 --examples=277 --to_seeds=25

Two figures per measure: `matrices` on [seeds, layers, examples, dims] as the merge calls it, and
the split into one seed's layer prepared once and one pair of seeds compared, timed on one layer,
from which a setting of `to_seeds` seeds x `to_layers` layers costs
to_layers x (to_seeds x prepare + pairs x pair).
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from jaxstab.results import representations as reps_lib  # noqa: E402  pylint: disable=wrong-import-position


def timed(fn):
  t = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - t


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--seeds", type=int, default=5)
  p.add_argument("--layers", type=int, default=5)
  p.add_argument("--examples", type=int, default=1000)
  p.add_argument("--dims", type=int, default=1024)
  p.add_argument("--to_seeds", type=int, default=25)
  p.add_argument("--to_layers", type=int, default=25)
  a = p.parse_args()
  rng = np.random.default_rng(0)
  reps = rng.standard_normal((a.seeds, a.layers, a.examples, a.dims),
                             dtype=np.float32).astype(np.float16)
  pairs, to_pairs = a.seeds * (a.seeds - 1) // 2, a.to_seeds * (a.to_seeds - 1) // 2
  for m in reps_lib.MEASURES:
    _, whole = timed(lambda m=m: reps_lib.matrices(reps, m))
    # pylint: disable=protected-access
    prepared, prep = timed(lambda m=m: [reps_lib._prepare(r, m, "unbiased") for r in reps[:, 0]])
    _, between = timed(lambda m=m, pr=prepared: [reps_lib._between(pr[i], pr[j], m, "unbiased")
                                                 for i in range(a.seeds)
                                                 for j in range(i + 1, a.seeds)])
    prep, between = prep / a.seeds, between / max(pairs, 1)
    scaled = a.to_layers * (a.to_seeds * prep + to_pairs * between)
    print(f"{m}: matrices {whole:.1f} s ({a.seeds} seeds x {a.layers} layers, {pairs} pairs); "
          f"{prep:.3f} s a seed-layer + {between:.3f} s a pair-layer; {a.to_seeds} seeds x "
          f"{a.to_layers} layers: {scaled / 60:.1f} min", flush=True)


if __name__ == "__main__":
  main()
