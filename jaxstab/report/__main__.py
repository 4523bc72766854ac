"""Command line: python -m jaxstab.report --workdir=DIR [--out=DIR/report]
(console script: jaxstab-report)."""
import os
import sys

import jax

from jaxstab.infra import cli, fs
from jaxstab.infra.errors import ConfigError
from jaxstab.report.builder import build


def main(argv=None) -> int:
  parser = cli.parser("jaxstab.report",
                      "Build the figures and index.html of a finished jaxstab run or study.")
  parser.add_argument("--workdir", required=True, help="the --workdir of a finished run or study")
  parser.add_argument("--out", default=None, help="output folder (default: WORKDIR/report; "
                      "a local folder for a workdir in a bucket)")

  def body(args):
    if fs.is_remote(args.workdir) and (args.out is None or fs.is_remote(args.out)):
      # The workdir is read in place (results.records); the figures need a local folder.
      raise ConfigError(f"{parser.prog} reads {args.workdir} in place but writes the report to "
                        f"a local folder: pass --out=DIR, or copy the workdir first, e.g. "
                        f"`gsutil -m cp -r {args.workdir} .`, and pass the local folder")
    if not os.environ.get("JAX_PLATFORMS"):
      # Only a few schedule values are computed: never take (or wait for) an accelerator.
      jax.config.update("jax_platforms", "cpu")
    report = build(args.workdir, args.out)
    print(f"report: {report.index} ({len(report.figures)} figures)")
  return cli.run(parser, body, argv)


if __name__ == "__main__":
  sys.exit(main())
