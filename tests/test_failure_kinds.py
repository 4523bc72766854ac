"""The two kinds of failure of the command lines, told apart: a user's mistake (ConfigError) is one
line `jaxstab: error: ...` and exit 2; an internal error keeps its traceback and exits 1.
In-process (jaxstab.main.run with an argv), with the internal error planted by a monkeypatch of
the engine. A study whose setting crashes keeps the finished settings: tests/test_study.py."""
import pytest

from jaxstab import main
from jaxstab.analysis import forgetting
from jaxstab.engine import inputs as inputs_lib
from jaxstab.infra import cli
from jaxstab.infra.errors import ConfigError

ERROR = "jaxstab: error:"
INTERNAL = "jaxstab: internal error:"
PLANTED = "planted internal error"

# The demo, cut to one seed and two steps, without the persistent compilation cache (it would
# point this test process's jax at a folder of its own).
CONFIG = '''from jaxstab.config import config_lib


def get_config(arg=""):
  cfg = config_lib.task_config("demo", "model=tiny-bert,fidelity=corrected")
  cfg.data.source = "synthetic"
  cfg.model.tiny.vocab_size = 200
  cfg.train.batch_size = 32
  cfg.train.max_seq_length = 24
  cfg.train.max_steps = 2
  cfg.train.evals_per_epoch = 1
  cfg.seeds = "1"
  cfg.compile_cache = "off"
  return config_lib.apply_arg(cfg, arg)
'''


def _config(tmp_path) -> str:
  path = tmp_path / "my_config.py"
  path.write_text(CONFIG)
  return str(path)


def _run_main(capfd, *args):
  """jaxstab.main as the console script runs it, in this process: (exit status, stderr)."""
  capfd.readouterr()
  with pytest.raises(SystemExit) as done:
    main.run(["jaxstab", *args])
  return done.value.code, capfd.readouterr().err


def _plant(monkeypatch, module, name):
  """module.name, a function of the engine, raises a RuntimeError."""
  def planted(*args, **kwargs):
    raise RuntimeError(PLANTED)
  monkeypatch.setattr(module, name, planted)


def test_a_config_mistake_is_one_line_and_exit_2(tmp_path, capfd):
  work = tmp_path / "work"
  code, err = _run_main(capfd, f"--config={_config(tmp_path)}", f"--workdir={work}",
                        "--config.optim.lr=0")
  assert code == 2
  assert err.strip().splitlines()[-1] == f"{ERROR} optim.lr=0.0 must be positive"
  assert "Traceback" not in err and INTERNAL not in err
  assert not work.exists()


def test_a_batch_larger_than_the_training_set_is_a_config_mistake(tmp_path, capfd, glue_dir):
  """As a new user tried it: RTE's 2,490 training examples in batches of 100000 used to end in
  an out-of-memory error after the workdir was made."""
  work = tmp_path / "work"
  work.mkdir()
  code, err = _run_main(capfd, "--config=configs/rte.py:model=tiny-bert", f"--workdir={work}",
                        f"--config.data.dir={glue_dir}", "--config.train.batch_size=100000")
  assert code == 2 and "Traceback" not in err
  assert err.strip().splitlines()[-1] == (
      f"{ERROR} train.batch_size=100000 is larger than the 2490 training examples of rte; use "
      "at most 2490")
  assert list(work.iterdir()) == []


def test_an_internal_error_keeps_its_traceback_and_exits_1(tmp_path, capfd, monkeypatch):
  _plant(monkeypatch, inputs_lib, "load")  # the setting's first step: nothing is compiled
  code, err = _run_main(capfd, f"--config={_config(tmp_path)}", f"--workdir={tmp_path / 'work'}")
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
