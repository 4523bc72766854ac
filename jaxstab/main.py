"""Command line: python -m jaxstab.main --config=configs/rte.py[:args] --workdir=DIR [--config.a.b=v].

A thin absl entry: flags, the config (config_lib.load_file plus the `--config.a.b=v`
overrides, in the order given), then studies.run. Every mistake in the config reaches the user as
one line `jaxstab: error: ...` and exit status 2, before any file is written.
"""
import os
import sys

from absl import app, flags, logging

from jaxstab.config import config_lib
from jaxstab.infra import fs, quiet
from jaxstab.infra.errors import ConfigError

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for logs and results.")
flags.DEFINE_string("config", None, "Config file and its argument: path[:key=value,...]. "
                    "Override any key with --config.a.b=value (applied last, in order).")
flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                  "Multi-process run: 'auto' joins when a coordinator is given or on a TPU VM.")
flags.DEFINE_string("coordinator_address", "", "host:port of process 0 (multi-process runs).")
flags.DEFINE_integer("num_processes", 0, "Number of processes (multi-process runs).")
flags.DEFINE_integer("process_id", -1, "This process's id, 0 .. num_processes-1.")
flags.mark_flags_as_required(["config", "workdir"])

_TPU_VM_ENV = ("TPU_WORKER_ID", "CLOUD_TPU_TASK_ID", "TPU_ACCELERATOR_TYPE")
_OVERRIDE = "--config."
_OVERRIDES = []  # (dotted key, value) of every --config.a.b flag, in the order given


def _fail(message: str):
  print(f"jaxstab: error: {message}", file=sys.stderr)
  sys.exit(2)


def split_overrides(argv):
  """(argv without the --config.a.b flags, [(a.b, value)]). `--config.a.b=v` and
  `--config.a.b v` are both accepted; a bare `--config.a.b` before another flag means True."""
  rest, overrides, i = [], [], 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith(_OVERRIDE):
      key, eq, value = arg[len(_OVERRIDE):].partition("=")
      if not eq:
        if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
          value, i = argv[i + 1], i + 1
        else:
          value = "true"
      if not key:
        raise ConfigError(f"{arg!r}: expected --config.KEY=VALUE")
      overrides.append((key, value))
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def parse_flags(argv):
  """absl parses its own flags; the config overrides are taken out first and applied by us."""
  try:
    rest, overrides = split_overrides(argv)
  except ConfigError as e:
    _fail(str(e))
  _OVERRIDES[:] = overrides
  try:
    return FLAGS(rest)
  except flags.Error as e:
    _fail(str(e))


def load_config(spec: str, overrides):
  """The config file's get_config(argument), then the overrides (raises ConfigError)."""
  cfg = config_lib.load_file(spec)
  config_lib.apply_overrides(cfg, overrides)
  return cfg


def _compilation_cache(config, workdir):
  """Persistent XLA cache, shared by the studies next to this workdir: a rerun compiles nothing."""
  import jax  # pylint: disable=import-outside-toplevel  # after absl has parsed the flags
  where = config.compile_cache
  if where == "off":
    return
  if not where and fs.is_remote(workdir):  # a bucket workdir: keep the cache on this machine
    where = fs.local_cache("xla")
  where = where or os.path.join(os.path.dirname(os.path.abspath(workdir)), ".jaxstab_compile_cache")
  try:
    os.makedirs(where, exist_ok=True)
  except OSError:
    logging.warning("no compilation cache: cannot create %s", where)
    return
  jax.config.update("jax_compilation_cache_dir", where)
  # Cache the small programs too (head init, evaluation): each still costs a compile per process.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  # jax initialises its backends on first use: the study modules come after the flags.
  from jaxstab.infra import checkpoint  # pylint: disable=import-outside-toplevel
  from jaxstab.engine import parallel  # pylint: disable=import-outside-toplevel
  from jaxstab.study import studies  # pylint: disable=import-outside-toplevel
  logging.set_verbosity(logging.INFO)
  try:
    config = load_config(FLAGS.config, _OVERRIDES)
  except ConfigError as e:
    _fail(str(e))
  on_tpu_vm = any(k in os.environ for k in _TPU_VM_ENV)
  if FLAGS.distributed == "on" or (FLAGS.distributed == "auto" and
                                   (FLAGS.coordinator_address or on_tpu_vm)):
    parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                    FLAGS.process_id)
  # orbax reports every background save at INFO; keep its warnings, drop the chatter.
  logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= 30 or "orbax" not in r.pathname)  # 30: python WARNING
  _compilation_cache(config, FLAGS.workdir)
  try:
    studies.run(config, FLAGS.workdir)
  except ConfigError as e:
    _fail(str(e))
  except checkpoint.Preempted as e:
    print(f"jaxstab: {e}", file=sys.stderr)
    sys.exit(143)  # 128 + SIGTERM: not finished, resumable


def run():
  quiet.install()  # no TPU-probe line, transformers' Flax deprecation said once (quiet.py)
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
