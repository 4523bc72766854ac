"""Every config error before the first write; config files and overrides loaded by jaxstab itself;
the user's explicit values win over every preset, in plain configs and in every study setting."""
import hashlib
from pathlib import Path

import pytest

from jaxstab import main
from jaxstab.config import config_lib
from jaxstab.infra.errors import ConfigError
from jaxstab.study import studies, validate
from tests.cli_runs import run_cli

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def _tiny(glue_dir, arch="bert", **values):
  cfg = config_lib.task_config("rte", f"model=tiny-{arch}")
  cfg.data.dir = str(glue_dir)
  cfg.model.tiny.vocab_size = 300
  cfg.train.max_seq_length = 16
  cfg.train.max_steps = 2
  cfg.data.train_examples = 64  # tokenize only these: all of RTE took 13 s at length 16
  for k, v in values.items():
    config_lib.set_path(cfg, k.replace("__", "."), v)
  return cfg


def _tree(path: Path):
  """Every file below `path` with its bytes' hash and mtime: any write shows."""
  if not path.exists():
    return None
  return {str(p.relative_to(path)): (hashlib.sha1(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
          for p in sorted(path.rglob("*")) if p.is_file()}


# Every config error jaxstab knows, each with a fragment its message must hold.
KNOWN_ERRORS = [
    ("bert", {"optim.lr": 0.0}, "optim.lr=0.0"),
    ("bert", {"optim.warmup_ratio": 1.0}, "optim.warmup_ratio=1.0"),
    ("bert", {"optim.b2": 1.0}, "optim.b1, optim.b2"),
    ("bert", {"train.batch_size": 0}, "train.batch_size=0"),
    ("bert", {"train.eval_batch_size": -1}, "train.eval_batch_size=-1"),
    ("bert", {"train.max_seq_length": 0}, "train.max_seq_length=0"),
    ("bert", {"train.evals_per_epoch": 0}, "train.evals_per_epoch=0"),
    ("bert", {"probe.every": 0}, "probe.every=0"),
    ("bert", {"train.max_steps": 0, "train.epochs": 0.0}, "train.epochs > 0"),
    ("bert", {"seeds": "3-1"}, "seeds='3-1'"),
    ("bert", {"seeds": "1-2", "train.seeds_per_step": 3}, "train.seeds_per_step=3"),
    ("bert", {"train.seed_axis": "scan"}, "train.seed_axis='scan'"),
    ("bert", {"model.dtype": "float16"}, "model.dtype='float16'"),
    ("bert", {"model.matmul_precision": "fp32"},
     "model.matmul_precision='fp32' is not allowed; choose one of: highest, high, default"),
    ("bert", {"model.attention": "flash"}, "model.attention='flash'"),
    ("bert", {"optim.eps_mode": "torch"}, "optim.eps_mode='torch'"),
    ("bert", {"optim.moments_dtype": "int8"}, "optim.moments_dtype='int8'"),
    ("bert", {"select": "last"}, "select='last'"),
    ("bert", {"data.source": "parquet"}, "data.source='parquet'"),
    ("bert", {"data.source": "csv"}, "task='rte' is a built-in task"),
    ("bert", {"data.source": "csv", "task": "mine"}, "data.text_a is empty"),
    ("bert", {"data.source": "csv", "task": "mine", "data.text_a": "t", "data.label": "y"},
     "data.source=csv needs data.path"),
    ("bert", {"data.path": "examples/custom"}, "is read only with data.source=csv or jsonl"),
    ("bert", {"task": "boolq"}, "unknown task 'boolq'"),
    ("bert", {"stabilisers.mixout": 1.0}, "stabilisers.mixout=1.0"),
    ("bert", {"stabilisers.llrd": 0.0}, "stabilisers.llrd=0.0"),
    ("bert", {"stabilisers.reinit_layers": -1}, "stabilisers.reinit_layers=-1"),
    # the ones that used to be found only after config.json was written:
    ("bert", {"stabilisers.reinit_layers": 3}, "stabilisers.reinit_layers=3 must be in [0, 2]"),
    ("albert", {"stabilisers.llrd": 0.9}, "undefined for ALBERT"),
    ("albert", {"stabilisers.reinit_layers": 1}, "undefined for ALBERT"),
    # found only by running out of memory after the workdir was made:
    ("bert", {"train.batch_size": 100000, "data.train_examples": 0},
     "train.batch_size=100000 is larger than the 2490 training examples of rte; use at most 2490"),
]


@pytest.mark.parametrize("arch,values,fragment", KNOWN_ERRORS,
                         ids=[f"{a}-{'+'.join(v)}" for a, v, _ in KNOWN_ERRORS])
def test_every_config_error_is_raised_before_the_workdir_is_touched(glue_dir, tmp_path, arch,
                                                                     values, fragment):
  cfg = _tiny(glue_dir, arch, **values)
  fresh = tmp_path / "fresh"
  with pytest.raises(ConfigError, match=__import__("re").escape(fragment)):
    studies.run(cfg, str(fresh))
  assert not fresh.exists()


def test_a_config_error_leaves_an_existing_workdir_unchanged(glue_dir, tmp_path):
  work = tmp_path / "work"
  studies.run(_tiny(glue_dir), str(work))
  before = _tree(work)
  for arch, values, fragment in KNOWN_ERRORS:
    with pytest.raises(ConfigError, match=__import__("re").escape(fragment)):
      studies.run(_tiny(glue_dir, arch, **values), str(work))
    assert _tree(work) == before, (arch, values)


def test_the_fixed_rerun_is_accepted_after_a_late_error(glue_dir, tmp_path):
  """Re-init out of range used to write config.json first; the corrected rerun was then refused
  as 'a different config'."""
  work = tmp_path / "work"
  with pytest.raises(ConfigError):
    studies.run(_tiny(glue_dir, **{"stabilisers.reinit_layers": 5}), str(work))
  summary = studies.run(_tiny(glue_dir, **{"stabilisers.reinit_layers": 1}), str(work))
  assert summary["seeds"] == [1]


def test_a_bad_second_setting_stops_the_study_before_the_first_trains(glue_dir, tmp_path):
  cfg = _tiny(glue_dir)
  with cfg.unlocked():
    cfg.settings = {"good": "setting=devlin", "bad": "model=tiny-albert,setting=llrd"}
  with pytest.raises(ConfigError, match="undefined for ALBERT"):
    studies.run(cfg, str(tmp_path / "study"))
  assert not (tmp_path / "study").exists()


def test_a_batch_larger_than_a_settings_training_subset_names_the_setting(glue_dir, tmp_path):
  """The size checked is the one trained on (data.train_examples), for every setting of a study
  before its first setting trains; the message names the setting."""
  cfg = _tiny(glue_dir, **{"train.batch_size": 64})
  with cfg.unlocked():
    cfg.settings = {"full": "setting=devlin", "small": "setting=devlin,train_examples=48"}
  with pytest.raises(ConfigError) as err:
    studies.run(cfg, str(tmp_path / "study"))
  assert str(err.value) == ("setting 'small': train.batch_size=64 is larger than the 48 training "
                            "examples of rte (data.train_examples=48); use at most 48")
  assert not (tmp_path / "study").exists()
  with pytest.raises(ConfigError, match=r"^train\.batch_size=49 is larger than the 48 "):
    validate.check_data(_tiny(glue_dir, **{"train.batch_size": 49}), 48)
  validate.check_data(_tiny(glue_dir, **{"train.batch_size": 48}), 48)  # one full batch is fine


def test_validation_does_not_change_the_config(glue_dir):
  cfg = _tiny(glue_dir, **{"stabilisers.mixout": 0.9, "model.dropout": 0.1})
  before = cfg.to_dict()
  validate.check_config(cfg)
  validate.check_model(cfg, "bert", 2)
  assert cfg.to_dict() == before
  (_, resolved), = studies.expand(cfg)  # the derived value is set on a copy, in one known place
  assert resolved.model.dropout == 0.0 and cfg.model.dropout == 0.1


# ------------------------------------------------------------ config files and overrides


def _write_config(tmp_path, body: str) -> str:
  path = tmp_path / "my_config.py"
  path.write_text("from jaxstab import config_lib\n\n\n" + body)
  return str(path)


def test_error_inside_get_config_names_the_file_and_line(tmp_path):
  path = _write_config(tmp_path, "def get_config(arg=''):\n  cfg = config_lib.base_config()\n"
                                 "  return cfg.optim.nope\n")
  with pytest.raises(ConfigError, match=r"my_config\.py:6: AttributeError"):
    config_lib.load_file(path)
  path = _write_config(tmp_path, "def get_config(arg=''):\n"
                                 "  return config_lib.task_config('rte', 'setting=bogus')\n")
  with pytest.raises(ConfigError, match=r"unknown setting 'bogus'"):
    config_lib.load_file(path + ":x=1")
  with pytest.raises(ConfigError, match=r"no get_config"):
    config_lib.load_file(_write_config(tmp_path, "X = 1\n"))
  with pytest.raises(ConfigError, match=r"not found"):
    config_lib.load_file(str(tmp_path / "absent.py"))


def test_overrides_are_split_typed_and_checked():
  rest, overrides = main.split_overrides(
      ["prog", "--config=c.py", "--config.optim.lr=1e-5", "--workdir=w", "--config.seeds", "1-3",
       "--config.checkpoint.keep_final_params", "--config.train.epochs=7"])
  assert rest == ["prog", "--config=c.py", "--workdir=w"]
  assert overrides == [("optim.lr", "1e-5"), ("seeds", "1-3"),
                       ("checkpoint.keep_final_params", "true"), ("train.epochs", "7")]
  cfg = main.load_config(str(CONFIGS / "rte.py"), overrides)
  assert cfg.optim.lr == 1e-5 and cfg.seeds == "1-3" and cfg.train.epochs == 7.0
  assert cfg.checkpoint.keep_final_params is True
  with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrr'.*Did you mean 'optim.lr'"):
    main.load_config(str(CONFIGS / "rte.py"), [("optim.lrr", "1")])
  with pytest.raises(ConfigError, match=r"'train.epochs': 'many' is not a valid float"):
    main.load_config(str(CONFIGS / "rte.py"), [("train.epochs", "many")])


def test_cli_reports_an_error_inside_get_config_in_one_line(tmp_path):
  path = _write_config(tmp_path, "def get_config(arg=''):\n  raise RuntimeError('broken file')\n")
  proc = run_cli([f"--config={path}"], tmp_path / "work")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == (
      f"jaxstab: error: {path}:5: RuntimeError: broken file")
  assert "Traceback" not in proc.stderr and not (tmp_path / "work").exists()


# ------------------------------------------------------------ the user's values win


STUDIES = ["study_table1", "study_models", "study_bias_correction", "study_smalldata",
           "study_moments"]


@pytest.mark.parametrize("name", STUDIES)
def test_explicit_values_reach_every_setting_of_a_study(name):
  overrides = [("train.epochs", "7"), ("optim.weight_decay", "0.05"), ("model.dropout", "0.2")]
  cfg = main.load_config(str(CONFIGS / f"{name}.py"), overrides)
  settings = studies.expand(cfg)
  assert len(settings) > 1
  for setting, sub in settings:
    assert sub.train.epochs == 7.0, setting
    assert sub.optim.weight_decay == 0.05, setting
    mixout = sub.stabilisers.mixout > 0
    assert sub.model.dropout == (0.0 if mixout else 0.2), setting  # Mixout replaces dropout


def test_argument_string_values_reach_every_setting_and_flags_come_last():
  cfg = main.load_config(str(CONFIGS / "study_table1.py") + ":epochs=5,lr=1e-5",
                         [("optim.lr", "3e-5")])
  for setting, sub in studies.expand(cfg):
    assert sub.train.epochs == 5.0, setting
    assert sub.optim.lr == 3e-5, setting  # written after the argument string: it wins


def test_presets_still_differ_between_settings_where_the_user_said_nothing():
  cfg = main.load_config(str(CONFIGS / "study_table1.py"), [("optim.weight_decay", "0.05")])
  epochs = {name.split("_", 1)[1]: sub.train.epochs for name, sub in studies.expand(cfg)}
  assert epochs == {"devlin": 3.0, "mixout": 3.0, "ours": 20.0}


def test_plain_config_setting_then_flag(glue_dir, tmp_path):
  cfg = main.load_config(str(CONFIGS / "rte.py") + ":model=tiny-bert,setting=ours",
                         [("train.epochs", "5"), ("data.dir", str(glue_dir)),
                          ("data.train_examples", "32"), ("train.max_seq_length", "16"),
                          ("model.tiny.vocab_size", "300"), ("train.evals_per_epoch", "1")])
  (_, sub), = studies.expand(cfg)
  assert sub.train.epochs == 5.0 and sub.optim.bias_correction is True
  summary = studies.run(cfg, str(tmp_path / "work"))
  assert summary["total_steps"] == 5 * 2  # 32 examples = 2 batches of 16, for 5 epochs
  saved = (tmp_path / "work" / "config.json").read_text()
  assert '"epochs": 5.0' in saved and "train.epochs=5" in saved
