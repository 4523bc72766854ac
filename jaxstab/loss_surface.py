"""Command line: python -m jaxstab.loss_surface --workdir=DIR [--setting=NAME] [--grid=21] ...
(console script: jaxstab-loss-surface; flags: --help).

The training loss on the plane through the pretrained, a failed and a successful model (the
paper's loss-surface analysis): jaxstab/analysis/loss_surface.py.
"""
import sys

from jaxstab.analysis.loss_surface import main

__all__ = ["main"]

if __name__ == "__main__":
  sys.exit(main())
