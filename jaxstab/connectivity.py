"""Command line: python -m jaxstab.connectivity --workdir=DIR [--setting=NAME] [--points=8] ...
(console script: jaxstab-connectivity; flags: --help).

Loss and metric on the straight lines between the seeds' kept final parameters, barriers and
basins (linear connectivity): jaxstab/analysis/connectivity.py.
"""
import sys

from jaxstab.analysis.connectivity import main

__all__ = ["main"]

if __name__ == "__main__":
  sys.exit(main())
