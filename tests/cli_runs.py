"""`python -m jaxstab.main ...` for tests: in this process by default, in a subprocess on request.

A subprocess costs a fresh interpreter (jax, transformers, flax imported anew, about 5 s of CPU)
and compiles from its own persistent cache; in-process runs share the test session's XLA cache
(tests/conftest.py). In-process is what most tests need: the same parse_flags and main the
console script calls, the same exit codes and the same stderr. A subprocess is kept where it
proves something more: one test per entry point (the module runs as a program at all), a
different environment (device count, offline hub, fault injection) and kills.
"""
import contextlib
import io
import os
import subprocess
import sys
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ERROR_PREFIX = "jaxstab: error:"


def run_cli(args, workdir, env=None, timeout=300, subprocess_=False):
  """The CLI on `args` with --workdir; a CompletedProcess (returncode, stdout, stderr). A run
  with extra environment variables (read at import time by jax and the hub) or subprocess_=True
  runs in a fresh interpreter."""
  if env is not None or subprocess_:
    return run_cli_subprocess(args, workdir, env, timeout)
  return run_cli_in_process(args, workdir)


def run_cli_subprocess(args, workdir, env=None, timeout=300):
  full_env = dict(os.environ)
  full_env.pop("XLA_FLAGS", None)  # one CPU device unless a test asks for more
  full_env.update({"JAX_PLATFORMS": "cpu", "TOKENIZERS_PARALLELISM": "false"})
  full_env.update(env or {})
  cmd = [sys.executable, "-m", "jaxstab.main", f"--workdir={workdir}", *args]
  return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True,
                        timeout=timeout, check=False)


def run_cli_in_process(args, workdir):
  """jaxstab.main's parse_flags and main, as `jaxstab` runs them, with stdout and stderr (absl's
  log lines included) captured; an uncaught exception gives its traceback on stderr and exit 1,
  as the interpreter would. Only the persistent-cache choice is left out (`main` would point the
  cache at <workdir>/..; the session's shared cache is already in use): the subprocess tests
  keep that path covered."""
  from absl import flags, logging  # pylint: disable=import-outside-toplevel
  from jaxstab import main as entry  # pylint: disable=import-outside-toplevel
  from jaxstab.infra import quiet  # pylint: disable=import-outside-toplevel
  argv = ["jaxstab", f"--workdir={workdir}", *[str(a) for a in args]]
  out, err = io.StringIO(), io.StringIO()
  quiet.install()
  logging.use_absl_handler()
  stream_handler = logging.get_absl_handler().python_handler
  old_stream, old_cwd, old_cache = stream_handler.stream, os.getcwd(), entry._compilation_cache  # pylint: disable=protected-access
  flags.FLAGS.unparse_flags()  # no flag value from an earlier run carries over
  code = 0
  try:
    os.chdir(REPO)
    entry._compilation_cache = lambda config, workdir: None  # pylint: disable=protected-access
    stream_handler.stream = err
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      try:
        entry.main(entry.parse_flags(argv))
      except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
      except Exception:  # pylint: disable=broad-except  # what the interpreter does with it
        traceback.print_exc(file=err)
        code = 1
  finally:
    stream_handler.stream = old_stream
    entry._compilation_cache = old_cache  # pylint: disable=protected-access
    os.chdir(old_cwd)
    flags.FLAGS.unparse_flags()
  return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def assert_ok(proc):
  assert proc.returncode == 0, f"exit {proc.returncode}\nstderr tail:\n{proc.stderr[-4000:]}"


def error_line(proc) -> str:
  """The CLI's one-line error; fails the test if the run succeeded or printed none."""
  assert proc.returncode != 0, "the run should have failed"
  lines = [l for l in proc.stderr.splitlines() if l.startswith(ERROR_PREFIX)]
  assert lines, f"no line starting with {ERROR_PREFIX!r} in stderr:\n{proc.stderr[-4000:]}"
  return lines[0]
