"""Command line: python -m jaxstab.main --config=configs/rte.py[:args] --workdir=DIR [--config.a.b=v]."""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jaxstab.errors import ConfigError

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for logs and results.")
config_flags.DEFINE_config_file("config", None, "Config file (path[:argument]).", lock_config=True)
flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                  "Multi-process run: 'auto' joins when a coordinator is given or on a TPU VM.")
flags.DEFINE_string("coordinator_address", "", "host:port of process 0 (multi-process runs).")
flags.DEFINE_integer("num_processes", 0, "Number of processes (multi-process runs).")
flags.DEFINE_integer("process_id", -1, "This process's id, 0 .. num_processes-1.")
flags.mark_flags_as_required(["config", "workdir"])

_TPU_VM_ENV = ("TPU_WORKER_ID", "CLOUD_TPU_TASK_ID", "TPU_ACCELERATOR_TYPE")

_OVERRIDE = "--config."


def _fail(message: str):
  print(f"jaxstab: error: {message}", file=sys.stderr)
  sys.exit(2)


def _explain_override(argv):
  """Names the first `--config.a.b=v` whose key does not exist, with the keys that do."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  from jaxstab import config_lib  # pylint: disable=import-outside-toplevel
  spec = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")][-1]
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("jaxstab_user_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  cfg = module.get_config(arg) if arg else module.get_config()
  for a in argv:
    if a.startswith(_OVERRIDE):
      key = a[len(_OVERRIDE):].split("=", 1)[0]
      config_lib.set_path(cfg, key, config_lib.get_path(cfg, key))  # raises naming the key


def parse_flags(argv):
  """absl flag parsing, with bad configs and overrides reported in one line, not a traceback."""
  try:
    return FLAGS(argv)
  except ConfigError as e:
    _fail(str(e))
  except Exception as e:  # pylint: disable=broad-except
    text = str(e)
    marker = "jaxstab.errors.ConfigError: "
    if marker in text:  # raised inside a config file's get_config
      _fail(text.split(marker, 1)[1].strip().splitlines()[0])
    try:
      _explain_override(argv)
    except ConfigError as bad_key:
      _fail(str(bad_key))
    except Exception:  # pylint: disable=broad-except
      pass
    _fail(text.replace("\\n", " ").replace("\n", " "))


def _compilation_cache(config, workdir):
  """Persistent XLA cache, shared by the studies next to this workdir: a rerun compiles nothing."""
  where = config.get("compile_cache", "")
  if where == "off":
    return
  import jax  # pylint: disable=import-outside-toplevel
  from jaxstab import fs  # pylint: disable=import-outside-toplevel
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
  os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
  from jaxstab import parallel, study  # pylint: disable=import-outside-toplevel
  logging.set_verbosity(logging.INFO)
  on_tpu_vm = any(k in os.environ for k in _TPU_VM_ENV)
  if FLAGS.distributed == "on" or (FLAGS.distributed == "auto" and
                                   (FLAGS.coordinator_address or on_tpu_vm)):
    parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                    FLAGS.process_id)
  # orbax reports every background save at INFO; keep its warnings, drop the chatter.
  logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= 30 or "orbax" not in r.pathname)  # 30: python WARNING
  path = config_flags.get_config_filename(FLAGS["config"]).split(":", 1)[0]
  if not os.path.isfile(path):
    _fail(f"config file {path!r} not found (flag --config); the configs are in configs/*.py")
  config = FLAGS.config
  from jaxstab.checkpoint import Preempted  # pylint: disable=import-outside-toplevel
  _compilation_cache(config, FLAGS.workdir)
  try:
    study.run(config, FLAGS.workdir)
  except ConfigError as e:
    _fail(str(e))
  except Preempted as e:
    print(f"jaxstab: {e}", file=sys.stderr)
    sys.exit(143)  # 128 + SIGTERM: not finished, resumable


def run():
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
