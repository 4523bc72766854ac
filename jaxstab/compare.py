"""Command line: python -m jaxstab.compare WORKDIR [WORKDIR ...] [--out=FILE.md] [--paper]
(console script: jaxstab-compare; flags: --help).

Table 1 across workdirs, side by side: jaxstab/report/compare.py.
"""
import sys

from jaxstab.report.compare import main

__all__ = ["main"]

if __name__ == "__main__":
  sys.exit(main())
