"""Command line: python -m jaxstab.main --config=configs/rte.py[:args] --workdir=DIR [--config.a.b=v]."""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jaxstab.errors import ConfigError

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
config_flags.DEFINE_config_file("config", None, "Config file (path[:argument]).", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
  from jaxstab import study  # pylint: disable=import-outside-toplevel
  logging.set_verbosity(logging.INFO)
  try:
    study.run(FLAGS.config, FLAGS.workdir)
  except ConfigError as e:
    print(f"jaxstab: error: {e}", file=sys.stderr)
    sys.exit(2)


def run():
  app.run(main)


if __name__ == "__main__":
  run()
