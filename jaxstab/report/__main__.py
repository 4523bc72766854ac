"""Command line: python -m jaxstab.report --workdir=DIR [--out=DIR/report]."""
import argparse
import os
import sys

from jaxstab import fs
from jaxstab.errors import ConfigError


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m jaxstab.report",
      description="Build the figures and index.html of a finished jaxstab run or study.")
  parser.add_argument("--workdir", required=True, help="the --workdir of a finished run or study")
  parser.add_argument("--out", default=None, help="output folder (default: WORKDIR/report)")
  args = parser.parse_args(argv)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # only a few schedule values are computed
  from jaxstab.report import build  # pylint: disable=import-outside-toplevel
  try:
    fs.require_local(args.workdir, "python -m jaxstab.report")
    report = build(args.workdir, args.out)
  except ConfigError as e:
    print(f"jaxstab: error: {e}", file=sys.stderr)
    return 2
  print(f"report: {report.index} ({len(report.figures)} figures)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
