"""Command line: python -m jaxstab.main --config=configs/rte.py[:args] --workdir=DIR [--config.a.b=v].

Flags, the config (config_lib.load_file plus the `--config.a.b=v` overrides, in the order given),
then studies.run. Every mistake in the config (a ConfigError) reaches the user as one line
`jaxstab: error: ...` and exit status 2, before any file is written; any other exception is
jaxstab's own fault and keeps its traceback, with exit status 1 (jaxstab.infra.cli). A full disk
is one line too (what could not be written, where, how to go on) and exit status 75,
EX_TEMPFAIL: rerun once there is space. `--help` speaks to a user (USAGE) and exits 0; absl's
own flag list is one part of it.
"""
import logging as pylogging
import os
import sys
import time

from absl import app, flags, logging

from jaxstab.config import config_lib
from jaxstab.infra import cli, fs, quiet
from jaxstab.infra.errors import ConfigError, DiskFull

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

USAGE = """\
usage: {prog} --config=CONFIG[:ARGS] --workdir=DIR [--config.KEY=VALUE ...]

Fine-tunes a pretrained encoder on a GLUE task or your own data over many random seeds in one
compiled program, counts the failed runs and writes every result to DIR. Rerunning the same
command resumes; the report and the tables are built from DIR afterwards.

examples:
  {prog} --config=configs/demo.py --workdir=/tmp/demo
      the offline demo: a tiny model on a synthetic task, about a minute on a CPU
  {prog} --config=configs/rte.py:model=roberta-large,setting=ours,seeds=1-25 --workdir=runs/rte
      one of the paper's settings, 25 seeds (ARGS: model, setting, fidelity, lr, seeds, ...)
  {prog} --config=configs/mrpc.py --workdir=runs/mrpc --config.optim.lr=1e-5
      any config key set last, after every preset
  {prog} --config=configs/study_table1.py --workdir=runs/table1
      a study: several settings over the same seeds

then: python -m jaxstab.report --workdir=DIR      figures and an HTML page
      python -m jaxstab.compare DIR [DIR ...]     the paper's Table 1 across workdirs

configs: configs/*.py. Every config key, its default and meaning: docs/configuration.md;
the short ARGS keys and the presets: docs/running.md.

flags:
  --config         config file and its argument: path[:key=value,...]
  --workdir        directory for logs and results (local, or gs://bucket/path)
  --config.KEY=V   set one config key (type-checked; an unknown key names the allowed ones)
  --distributed    auto | on | off: join a multi-process run (auto: with a coordinator or on a
                   TPU VM); with --coordinator_address, --num_processes, --process_id
  --verbosity=0    absl's full log prefix (time, thread, file:line) on every line
  --helpfull       every absl flag
"""
_HELP = ("--help", "-h", "--h", "-help", "-?")
EXIT_DISK_FULL = 75  # sysexits.h EX_TEMPFAIL: not finished, resumable once there is space

_TPU_VM_ENV = ("TPU_WORKER_ID", "CLOUD_TPU_TASK_ID", "TPU_ACCELERATOR_TYPE")
_OVERRIDE = "--config."
_OVERRIDES = []  # (dotted key, value) of every --config.a.b flag, in the order given


def _fail(message: str):
  sys.exit(cli.user_error(message))


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
  """absl parses its own flags; the config overrides are taken out first and applied by us.
  `--help` prints USAGE and exits 0 (absl's own help exits 1 and lists its internals)."""
  if any(a in _HELP for a in argv[1:]):
    print(USAGE.format(prog=cli.prog("jaxstab.main")), end="")
    sys.exit(0)
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
  """Persistent XLA cache, shared by the studies next to this workdir (or the one that
  JAX_COMPILATION_CACHE_DIR names): a rerun compiles nothing."""
  import jax  # pylint: disable=import-outside-toplevel  # after absl has parsed the flags
  where = config.compile_cache
  if where == "off":
    return
  if not where and os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    # jax's own variable names the user's cache: it wins over the default place, and a suite of
    # runs (a sweep, the tests) then shares one cache.
    where = os.environ["JAX_COMPILATION_CACHE_DIR"]
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


class ShortFormatter(pylogging.Formatter):
  """`12:04:31 seeds [1, 2]: step 52/156, ...`: the time and the message, readable at a glance
  like a progress bar; a warning or error says so in a word. The traceback of an internal error
  is kept in full."""

  def format(self, record):
    text = time.strftime("%H:%M:%S ", time.localtime(record.created))
    if record.levelno >= pylogging.WARNING:
      text += record.levelname.lower() + ": "
    text += record.getMessage()
    if record.exc_info:
      text += "\n" + self.formatException(record.exc_info)
    return text


def quiet_library_record(record) -> bool:
  """Whether a log record is orbax's to drop: its INFO chatter about every background save, and
  the errors its threads log (each with a traceback, several per failed save) when the disk is
  full, which the user reads as one DiskFull line instead. Its other warnings and errors stay."""
  if "orbax" not in record.pathname:
    return False
  if record.levelno < pylogging.WARNING:
    return True
  return fs.out_of_space_text(record.getMessage()) or bool(
      record.exc_info and record.exc_info[1] is not None and fs.out_of_space(record.exc_info[1]))


def _log_format():
  """The short format, unless the user asked for absl's own: --verbosity given, or a log file
  (--log_dir), where the full prefix (date, thread, file:line) is what one greps for."""
  if FLAGS["verbosity"].present or FLAGS.log_dir:
    return
  logging.get_absl_handler().setFormatter(ShortFormatter())


def main(argv):
  """absl's main: the study, with its two kinds of failure told apart (jaxstab.infra.cli): a
  ConfigError is one line and exit 2, a full disk one line and exit 75, any other exception its
  traceback and exit 1."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from jaxstab.infra import checkpoint  # pylint: disable=import-outside-toplevel  # after the flags
  try:
    _main()
  except ConfigError as e:
    _fail(str(e))
  except checkpoint.Preempted as e:
    print(f"jaxstab: {e}", file=sys.stderr)
    sys.exit(143)  # 128 + SIGTERM: not finished, resumable
  except Exception as e:  # pylint: disable=broad-except
    if fs.out_of_space(e):  # not a fault of jaxstab's either: one line, resumable
      if not isinstance(e, DiskFull):  # a write no fs.writing wraps: name the workdir
        e = DiskFull(f"into {FLAGS.workdir} ({type(e).__name__}: "
                     f"{(str(e).splitlines() or [''])[0]})")
      print(f"jaxstab: error: {e}", file=sys.stderr)
      sys.exit(EXIT_DISK_FULL)
    sys.exit(cli.internal_error())  # not the user's: keep the traceback


def _main():
  # jax initialises its backends on first use: the study modules come after the flags.
  from jaxstab.engine import parallel  # pylint: disable=import-outside-toplevel
  from jaxstab.study import studies  # pylint: disable=import-outside-toplevel
  logging.set_verbosity(logging.INFO)
  _log_format()
  config = load_config(FLAGS.config, _OVERRIDES)
  on_tpu_vm = any(k in os.environ for k in _TPU_VM_ENV)
  if FLAGS.distributed == "on" or (FLAGS.distributed == "auto" and
                                   (FLAGS.coordinator_address or on_tpu_vm)):
    parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                    FLAGS.process_id)
  logging.get_absl_handler().addFilter(lambda r: not quiet_library_record(r))
  _compilation_cache(config, FLAGS.workdir)
  studies.run(config, FLAGS.workdir)


def run():
  """The command line (console script `jaxstab`)."""
  quiet.install()  # no TPU-probe line, transformers' Flax deprecation said once (quiet.py)
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
