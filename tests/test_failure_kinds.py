"""The two kinds of failure of the command lines, told apart: a user's mistake (ConfigError) is one
line `jaxstab: error: ...` and exit 2; an internal error keeps its traceback and exits 1.
In-process (tests/cli_runs.py), with the internal error planted by a monkeypatch of
the engine. A study whose setting crashes keeps the finished settings: tests/test_study.py."""
import pytest

from jaxstab.analysis import forgetting
from jaxstab.engine import inputs as inputs_lib
from jaxstab.infra import cli
from jaxstab.infra.errors import ConfigError
from tests.cli_runs import run_cli_in_process

ERROR = "jaxstab: error:"
INTERNAL = "jaxstab: internal error:"
PLANTED = "planted internal error"

# The tests' demo config (tests/helpers.py), cut to one seed and two steps, as a config file.
CONFIG = '''from jaxstab.config import config_lib
from tests.helpers import demo_config


def get_config(arg=""):
  return config_lib.apply_arg(demo_config("1", train__max_steps=2), arg)
'''


def _config(tmp_path) -> str:
  path = tmp_path / "my_config.py"
  path.write_text(CONFIG)
  return str(path)


def _run_main(args, workdir):
  """jaxstab.main as the console script runs it, in this process: (exit status, stderr)."""
  done = run_cli_in_process(args, workdir)
  return done.returncode, done.stderr


def _plant(monkeypatch, module, name):
  """module.name, a function of the engine, raises a RuntimeError."""
  def planted(*args, **kwargs):
    raise RuntimeError(PLANTED)
  monkeypatch.setattr(module, name, planted)


def test_a_config_mistake_is_one_line_and_exit_2(tmp_path):
  work = tmp_path / "work"
  code, err = _run_main([f"--config={_config(tmp_path)}", "--config.optim.lr=0"], work)
  assert code == 2
  assert err.strip().splitlines()[-1] == f"{ERROR} optim.lr=0.0 must be positive"
  assert "Traceback" not in err and INTERNAL not in err
  assert not work.exists()


def test_a_batch_larger_than_the_training_set_is_a_config_mistake(tmp_path, glue_dir):
  """As a new user tried it: RTE's 2,490 training examples in batches of 100000 used to end in
  an out-of-memory error after the workdir was made."""
  work = tmp_path / "work"
  work.mkdir()
  code, err = _run_main(["--config=configs/rte.py:model=tiny-bert", f"--config.data.dir={glue_dir}",
                         "--config.train.batch_size=100000"], work)
  assert code == 2 and "Traceback" not in err
  assert err.strip().splitlines()[-1] == (
      f"{ERROR} train.batch_size=100000 is larger than the 2490 training examples of rte; use "
      "at most 2490")
  assert list(work.iterdir()) == []


def test_an_internal_error_keeps_its_traceback_and_exits_1(tmp_path, monkeypatch):
  _plant(monkeypatch, inputs_lib, "load")  # the setting's first step: nothing is compiled
  code, err = _run_main([f"--config={_config(tmp_path)}"], tmp_path / "work")
  assert code == 1
  assert "Traceback (most recent call last)" in err
  assert f"RuntimeError: {PLANTED}" in err and "in run_setting" in err  # where it happened
  assert err.strip().splitlines()[-1].startswith(f"{INTERNAL} RuntimeError: {PLANTED}")
  assert ERROR not in err


def test_the_tools_tell_the_two_kinds_apart(capfd):
  """cli.run, which every tool runs its body through: a ConfigError is 2 and one line, any other
  exception (a ValueError included, which forgetting used to pass as a user's mistake) 1 with
  its traceback."""
  def body_of(error):
    def body(_):
      raise error
    return body
  parser = cli.parser("jaxstab.test", "test")
  capfd.readouterr()
  assert cli.run(parser, body_of(ConfigError("bad --flag")), []) == 2
  err = capfd.readouterr().err
  assert err == f"{ERROR} bad --flag\n"
  assert cli.run(parser, body_of(ValueError("k=7 is outside 0..2")), []) == 1
  err = capfd.readouterr().err
  assert "Traceback (most recent call last)" in err and "ValueError: k=7 is outside 0..2" in err
  assert ERROR not in err
  with pytest.raises(ConfigError, match=r"--seeds='1,x'"):
    forgetting.parse_seeds("1,x")
  assert forgetting.parse_seeds("1, 1002") == [1, 1002] and forgetting.parse_seeds(None) is None
