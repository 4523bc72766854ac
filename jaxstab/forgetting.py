"""Command line: python -m jaxstab.forgetting --workdir=DIR [--setting=NAME] [--text=FILE].

Masked-LM perplexity of a run's fine-tuned encoders with their top k layers restored to the
pretrained weights (the paper's forgetting analysis); see jaxstab/analysis/forgetting.py.
"""
import os
import sys


def main(argv=None) -> int:
  os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
  from jaxstab.analysis import forgetting  # pylint: disable=import-outside-toplevel
  return forgetting.main(argv)


if __name__ == "__main__":
  sys.exit(main())
