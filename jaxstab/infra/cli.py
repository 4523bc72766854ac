"""The command-line convention of jaxstab's tools (report, compare, loss_surface, forgetting).

Each tool is a module `jaxstab.<tool>` with `main(argv=None) -> int`, so it runs the same three
ways: `python -m jaxstab.<tool>`, the console script `jaxstab-<tool>` (pyproject.toml), and
`jaxstab.<tool>.main([...])` in a test. Flags are argparse's, written `--flag=value` as in
`python -m jaxstab.main`. Two kinds of failure, told apart by type and nothing else: a mistake of
the user's (ConfigError) prints one line `jaxstab: error: ...` and exits 2; any other exception
is jaxstab's own fault, so its traceback is printed in full, then one line saying so, and the
status is 1 (`internal_error`). Treating an internal error as a user's mistake would hide where
it happened and send the user looking for a typo that is not there.

jaxstab.main itself stays on absl: it owns `--config` and the `--config.a.b=value` overrides of
ml_collections' config_flags, which exist only for absl. The tools take no config, take
positional arguments (compare's workdirs) and must run in one pytest process together, which
argparse gives without absl's global flag registry.
"""
import argparse
import os
import sys
import traceback
from typing import Callable

from jaxstab.infra import quiet
from jaxstab.infra.errors import ConfigError


def prog(module: str) -> str:
  """The tool's name as the user called it: its console script (`jaxstab`, `jaxstab-<tool>`),
  or `python -m <module>`."""
  called = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
  return called if called == "jaxstab" or called.startswith("jaxstab-") else f"python -m {module}"


def parser(module: str, description: str) -> argparse.ArgumentParser:
  return argparse.ArgumentParser(prog=prog(module), description=description)


def user_error(message: str) -> int:
  """A mistake of the user's: one line on stderr, no traceback; returns the exit status 2."""
  print(f"jaxstab: error: {message}", file=sys.stderr)
  return 2


def internal_error() -> int:
  """The exception being handled is not the user's mistake: its traceback in full on stderr, then
  one line that says so; returns the exit status 1. Call it from an `except` block."""
  kind, value, _ = sys.exc_info()
  traceback.print_exc()
  name = kind.__name__ if kind else "error"
  print(f"jaxstab: internal error: {name}: {value} (a fault in jaxstab, not in the config or the "
        "data: the traceback above shows where)", file=sys.stderr)
  return 1


def run(parser_: argparse.ArgumentParser, body: Callable[[argparse.Namespace], None],
        argv=None) -> int:
  """Parses argv, runs body(args): 0; a ConfigError is one line and 2 (user_error), any other
  exception its traceback and 1 (internal_error)."""
  quiet.install()
  args = parser_.parse_args(argv)
  try:
    body(args)
  except ConfigError as e:
    return user_error(str(e))
  except Exception:  # pylint: disable=broad-except  # not the user's: keep the traceback
    return internal_error()
  return 0
