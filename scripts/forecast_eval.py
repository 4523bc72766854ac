"""Prints how well the probe forecasts the failed seeds, per setting and fraction of training.

  python scripts/forecast_eval.py WORKDIR [WORKDIR ...] [--stored] [--scores]

WORKDIR: a finished run or study, one setting folder, or a study still running (its finished
settings), as for `python -m jaxstab.compare`. By default each setting's forecast is recomputed
from its probe.npz with the current rule (jaxstab.results.forecast.evaluate), falling back to the one
stored in its summary.json when there is no probe; --stored prefers the stored one. --scores adds
every seed's score at each fraction. The first table is markdown, ready to paste.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxstab.report import compare  # pylint: disable=wrong-import-position
from jaxstab.results import forecast  # pylint: disable=wrong-import-position
from jaxstab.infra.errors import ConfigError  # pylint: disable=wrong-import-position


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("workdirs", nargs="+", metavar="WORKDIR")
  parser.add_argument("--stored", action="store_true",
                      help="use summary.json's stored forecast when there is one")
  parser.add_argument("--scores", action="store_true", help="also print each seed's score")
  args = parser.parse_args(argv)
  try:
    settings = compare.gather(args.workdirs)
  except ConfigError as e:
    print(f"forecast_eval: {e}", file=sys.stderr)
    return 2
  named, missing = [], []
  for s in settings:
    f = compare.setting_forecast(s, stored=args.stored) or (
        None if args.stored else compare.setting_forecast(s, stored=True))
    (named if f else missing).append((s.name, s.task, f))
  table = forecast.markdown(named)
  print(table or "No setting has a probe.npz or a stored forecast.")
  for name, _, _ in missing:
    print(f"\n{name}: no probe.npz with gradient norms and no stored forecast; left out.")
  if args.scores:
    for name, _, f in named:
      print(f"\n{name}: seeds {f['seeds']}, failed {[s for s, x in zip(f['seeds'], f['failed']) if x]}")
      for row in f["fractions"]:
        cells = ", ".join("—" if x is None else f"{x:+.2f}" for x in row["scores"])
        print(f"  {row['fraction']:.0%} (step {row['step']}, {row['records']} records): {cells}"
              + (f"; diverged {row['diverged']}" if row["diverged"] else ""))
  return 0


if __name__ == "__main__":
  sys.exit(main())
