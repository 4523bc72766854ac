"""Command line: python -m jaxstab.forgetting --workdir=DIR [--setting=NAME] [--text=FILE]
(console script: jaxstab-forgetting; flags: --help).

Masked-LM perplexity of a run's fine-tuned encoders with their top k layers restored to the
pretrained weights (the paper's forgetting analysis): jaxstab/analysis/forgetting.py.
"""
import sys

from jaxstab.analysis.forgetting import main

__all__ = ["main"]

if __name__ == "__main__":
  sys.exit(main())
