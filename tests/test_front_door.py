"""What a newcomer meets on the command line: `--help` that exits 0 and speaks to a user, and a
progress line whose time left excludes compilation (jaxstab/study/progress.py)."""
import logging
import os
import re
import subprocess
import sys

import pytest

from jaxstab import main
from jaxstab.study import progress

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_exits_0_with_an_example_and_where_the_keys_are(flag, capsys, monkeypatch):
  monkeypatch.setattr(sys, "argv", ["/venv/bin/jaxstab"])
  with pytest.raises(SystemExit) as done:
    main.parse_flags(["/venv/bin/jaxstab", "--config=configs/demo.py", flag])
  assert done.value.code == 0
  out = capsys.readouterr().out
  assert out.startswith("usage: jaxstab --config=CONFIG[:ARGS] --workdir=DIR")
  assert "jaxstab --config=configs/demo.py --workdir=" in out     # an example to copy
  assert "docs/configuration.md" in out and "A thin absl entry" not in out
  for path in re.findall(r"(docs/[\w./-]+\.md|configs/\w+\.py)", out):
    assert os.path.isfile(os.path.join(REPO, path)), path          # every file it names exists


def test_python_m_help_in_a_process():
  """The real entry point, as a user types it (absl's own --help exits 1)."""
  done = subprocess.run([sys.executable, "-m", "jaxstab.main", "--help"], cwd=REPO,
                        capture_output=True, text=True, timeout=120, check=False)
  assert done.returncode == 0, done.stderr
  assert done.stdout.startswith("usage: python -m jaxstab.main --config=CONFIG")


def test_short_log_format():
  fmt = main.ShortFormatter()
  info = logging.LogRecord("absl", logging.INFO, "experiment.py", 105, "seeds %s: step %d",
                           ([1, 2], 52), None)
  assert re.fullmatch(r"\d\d:\d\d:\d\d seeds \[1, 2\]: step 52", fmt.format(info))
  warn = logging.LogRecord("absl", logging.WARNING, "x.py", 1, "no cache", (), None)
  assert re.fullmatch(r"\d\d:\d\d:\d\d warning: no cache", fmt.format(warn))


def test_eta_excludes_compilation():
  """A group starts at t=0, its first step call compiles for 90 s and returns at t=90 with the
  step queued; steps 1-11 then take 1 s each, and one evaluation 1 s (the first, at step 0, took
  6 s: it compiled the evaluation). 100 steps in all, 2 evaluations still to come: 89 s of steps
  and 2 s of evaluation are left. Counting from the group's start (the old estimate) would say
  (100 - 11) * 102 / 11 = 825 s."""
  clock = progress.Clock()
  clock.evaluated(6.0)                    # the step-0 evaluation, before any step
  assert clock.eta(0, 100, 3, now=5.0) is None
  assert clock.line(0, 100, 3, 32, now=5.0) == "ETA after the first steps (compiling)"
  clock.stepped(1, now=90.0)
  for step in range(2, 12):
    clock.stepped(step, now=90.0 + step)  # later calls do not move the start
  clock.evaluated(1.0)                    # an evaluation after the start: not training time
  eta = clock.eta(11, 100, 2, now=90.0 + 11 + 1.0)
  assert eta == pytest.approx(89 * 1.0 + 2 * 1.0)
  assert clock.line(11, 100, 2, 32, now=102.0) == "32.0 examples/s, ETA 1m31s"


def test_duration():
  assert [progress.duration(s) for s in (0, 42.4, 187, 7500)] == ["0s", "42s", "3m07s", "2h05m"]


@pytest.fixture
def restored_cache_dir():
  import jax  # pylint: disable=import-outside-toplevel
  old = jax.config.jax_compilation_cache_dir
  yield
  jax.config.update("jax_compilation_cache_dir", old)


def test_compile_cache_follows_jax_own_variable(tmp_path, monkeypatch, restored_cache_dir):  # pylint: disable=redefined-outer-name,unused-argument
  """compile_cache '' takes JAX_COMPILATION_CACHE_DIR when the user set it (a sweep, the tests),
  else the folder next to the workdir; an explicit compile_cache wins over both."""
  import jax  # pylint: disable=import-outside-toplevel
  from jaxstab.config import config_lib  # pylint: disable=import-outside-toplevel
  key = "jax_compilation_cache_dir"
  cfg, workdir = config_lib.base_config(), str(tmp_path / "runs" / "work")
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
  main._compilation_cache(cfg, workdir)  # pylint: disable=protected-access
  assert getattr(jax.config, key) == str(tmp_path / "mine")
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
  main._compilation_cache(cfg, workdir)  # pylint: disable=protected-access
  assert getattr(jax.config, key) == str(tmp_path / "runs" / ".jaxstab_compile_cache")
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
  cfg.compile_cache = str(tmp_path / "explicit")
  main._compilation_cache(cfg, workdir)  # pylint: disable=protected-access
  assert getattr(jax.config, key) == str(tmp_path / "explicit")
