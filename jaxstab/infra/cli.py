"""The command-line convention of jaxstab's tools (report, compare, loss_surface, forgetting).

Each tool is a module `jaxstab.<tool>` with `main(argv=None) -> int`, so it runs the same three
ways: `python -m jaxstab.<tool>`, the console script `jaxstab-<tool>` (pyproject.toml), and
`jaxstab.<tool>.main([...])` in a test. Flags are argparse's, written `--flag=value` as in
`python -m jaxstab.main`; a user error prints one line `jaxstab: error: ...` and exits 2.

jaxstab.main itself stays on absl: it owns `--config` and the `--config.a.b=value` overrides of
ml_collections' config_flags, which exist only for absl. The tools take no config, take
positional arguments (compare's workdirs) and must run in one pytest process together, which
argparse gives without absl's global flag registry.
"""
import argparse
import os
import sys
from typing import Callable, Tuple, Type

from jaxstab.infra import quiet
from jaxstab.infra.errors import ConfigError


def prog(module: str) -> str:
  """The tool's name as the user called it: its console script (`jaxstab`, `jaxstab-<tool>`),
  or `python -m <module>`."""
  called = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
  return called if called == "jaxstab" or called.startswith("jaxstab-") else f"python -m {module}"


def parser(module: str, description: str) -> argparse.ArgumentParser:
  return argparse.ArgumentParser(prog=prog(module), description=description)


def run(parser_: argparse.ArgumentParser, body: Callable[[argparse.Namespace], None], argv=None,
        errors: Tuple[Type[Exception], ...] = (ConfigError,)) -> int:
  """Parses argv, runs body(args); an error of `errors` is one line on stderr and exit code 2."""
  quiet.install()
  args = parser_.parse_args(argv)
  try:
    body(args)
  except errors as e:
    print(f"jaxstab: error: {e}", file=sys.stderr)
    return 2
  return 0
