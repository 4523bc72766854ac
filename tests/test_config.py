"""Configs, argument strings, seeds, evaluation points and validation (fast, in-process)."""
import importlib.util
from pathlib import Path

import pytest

from jaxstab.config import config_lib
from jaxstab.infra.errors import ConfigError
from jaxstab.study import evaluation, validate

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIG_NAMES = ("default", "rte", "mrpc", "cola", "demo")

REQUIRED_KEYS = (
    "task", "seed", "data.source", "data.dir", "model.name_or_path", "model.dtype", "optim.lr",
    "optim.bias_correction", "optim.eps", "optim.eps_mode", "optim.warmup_ratio",
    "optim.weight_decay", "optim.clip_norm", "train.epochs", "train.max_steps",
    "train.batch_size", "train.eval_batch_size", "train.max_seq_length", "train.evals_per_epoch",
    "probe.every", "seeds", "train.seeds_per_step",
)


def load_config(name: str, arg: str = ""):
  """configs/<name>.py imported by path, as ml_collections' config flag does."""
  path = CONFIG_DIR / f"{name}.py"
  spec = importlib.util.spec_from_file_location(f"jaxstab_test_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def has_key(cfg, dotted: str) -> bool:
  node = cfg
  for part in dotted.split("."):
    if not hasattr(node, "keys") or part not in node.keys():
      return False
    node = node[part]
  return True


# ---------------------------------------------------------------- every config file loads


def test_config_dir_holds_the_expected_files():
  assert {p.stem for p in CONFIG_DIR.glob("*.py")} >= set(CONFIG_NAMES)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_loads_and_has_every_key(name):
  cfg = load_config(name)
  missing = [k for k in REQUIRED_KEYS if not has_key(cfg, k)]
  assert not missing, f"configs/{name}.py lacks {missing}"


@pytest.mark.parametrize("name,task", [("rte", "rte"), ("mrpc", "mrpc"), ("cola", "cola"),
                                       ("demo", "demo")])
def test_task_configs_name_their_task_and_validate(name, task):
  cfg = load_config(name)
  assert cfg.task == task
  validate.check_config(cfg)  # a shipped config must pass its own validation


def test_demo_config_is_offline_and_multi_seed():
  cfg = load_config("demo")
  assert cfg.data.source == "synthetic"
  assert cfg.model.name_or_path.startswith("tiny-")
  assert len(config_lib.parse_seeds(cfg)) > 1


def test_default_config_accepts_an_argument():
  cfg = load_config("default", "lr=4e-5,seed=9")
  assert cfg.optim.lr == pytest.approx(4e-5)
  assert cfg.seed == 9
  assert config_lib.parse_seeds(cfg) == [9]


# ---------------------------------------------------------------- argument strings


def test_base_defaults_differ_from_the_presets():
  """The preset tests below can only fail if the defaults are not already the preset values."""
  cfg = load_config("rte")
  assert (cfg.optim.weight_decay, cfg.optim.b2, cfg.optim.clip_norm) == (0.01, 0.999, 1.0)
  assert cfg.model.dropout < 0
  assert cfg.optim.bias_correction is False and cfg.train.epochs == 3.0


def test_model_roberta_large_preset():
  cfg = load_config("rte", "model=roberta-large")
  assert cfg.model.name_or_path == "roberta-large"
  assert cfg.optim.weight_decay == pytest.approx(0.1)
  assert cfg.optim.b2 == pytest.approx(0.98)
  assert cfg.optim.clip_norm == 0.0


def test_model_albert_large_preset():
  cfg = load_config("rte", "model=albert-large-v2")
  assert cfg.model.name_or_path == "albert-large-v2"
  assert cfg.model.dropout == 0.0
  assert cfg.optim.weight_decay == 0.0
  assert cfg.optim.clip_norm == 1.0  # not touched by the albert preset


def test_unknown_model_is_taken_as_a_hub_id_or_folder():
  cfg = load_config("rte", "model=/some/local/folder")
  assert cfg.model.name_or_path == "/some/local/folder"
  assert cfg.optim.weight_decay == pytest.approx(0.01)  # no preset applied


def test_setting_ours():
  cfg = load_config("mrpc", "setting=ours")
  assert cfg.optim.bias_correction is True
  assert cfg.train.epochs == 20.0
  assert cfg.setting == "ours"
  assert cfg.select == "best"


def test_setting_devlin_resets_a_config_with_other_values():
  # demo sets epochs=20 before applying its argument, so devlin has something to change
  cfg = load_config("demo", "setting=devlin")
  assert cfg.optim.bias_correction is False
  assert cfg.train.epochs == 3.0
  # and on top of an `ours` config
  cfg = config_lib.apply_arg(load_config("rte", "setting=ours"), "setting=devlin")
  assert cfg.optim.bias_correction is False
  assert cfg.train.epochs == 3.0
  assert cfg.setting == "devlin"
  assert cfg.select == "final"


def test_lr_override():
  cfg = load_config("rte", "lr=1e-5")
  assert isinstance(cfg.optim.lr, float)
  assert cfg.optim.lr == pytest.approx(1e-5)


@pytest.mark.parametrize("arg", ["model=roberta-large,setting=ours,lr=3e-5",
                                 "lr=3e-5,setting=ours,model=roberta-large"])
def test_combined_arguments_explicit_values_win(arg):
  cfg = load_config("rte", arg)
  assert cfg.model.name_or_path == "roberta-large"
  assert cfg.optim.weight_decay == pytest.approx(0.1)
  assert cfg.optim.b2 == pytest.approx(0.98)
  assert cfg.optim.clip_norm == 0.0
  assert cfg.optim.bias_correction is True
  assert cfg.train.epochs == 20.0
  assert cfg.optim.lr == pytest.approx(3e-5)


def test_explicit_epochs_beat_the_setting_preset():
  cfg = load_config("rte", "epochs=5,setting=ours")
  assert cfg.train.epochs == 5.0
  assert cfg.optim.bias_correction is True


def test_seeds_list_continues_over_bare_tokens():
  cfg = load_config("rte", "seeds=1,3,7,lr=2e-5")
  assert cfg.seeds == "1,3,7"
  assert cfg.optim.lr == pytest.approx(2e-5)
  assert config_lib.parse_seeds(cfg) == [1, 3, 7]


def test_parse_arg_pairs():
  assert config_lib.parse_arg("a=1,b=x,seeds=1,3") == [("a", "1"), ("b", "x"), ("seeds", "1,3")]
  assert config_lib.parse_arg("") == []


def test_parse_arg_rejects_a_bare_first_token():
  with pytest.raises(ConfigError, match="key=value"):
    config_lib.parse_arg("model")


def test_seed_range():
  cfg = load_config("rte", "seeds=1-25")
  seeds = config_lib.parse_seeds(cfg)
  assert len(seeds) == 25
  assert seeds == list(range(1, 26))


def test_seeds_empty_falls_back_to_seed():
  cfg = load_config("rte", "seed=42")
  assert cfg.seeds == ""
  assert config_lib.parse_seeds(cfg) == [42]


def test_seeds_mixed_range_and_list():
  cfg = load_config("rte", "seeds=1-3,10")
  assert config_lib.parse_seeds(cfg) == [1, 2, 3, 10]


@pytest.mark.parametrize("spec", ["1,3,1", "1-5,3"])
def test_duplicated_seed_is_an_error(spec):
  cfg = load_config("rte", f"seeds={spec}")
  with pytest.raises(ConfigError, match="twice"):
    config_lib.parse_seeds(cfg)


@pytest.mark.parametrize("spec", ["5-1", "a,b", "1-x"])
def test_malformed_seeds_are_an_error(spec):
  cfg = load_config("rte")
  cfg.seeds = spec
  with pytest.raises(ConfigError, match="seeds="):
    config_lib.parse_seeds(cfg)


def test_unknown_argument_key_lists_allowed_keys():
  with pytest.raises(ConfigError) as e:
    load_config("rte", "foo=1")
  msg = str(e.value)
  assert "'foo'" in msg
  for key in ("model", "setting", "lr", "epochs", "seeds"):
    assert key in msg


def test_unknown_setting_lists_choices():
  with pytest.raises(ConfigError) as e:
    load_config("rte", "setting=bogus")
  msg = str(e.value)
  assert "'bogus'" in msg
  assert "devlin" in msg and "ours" in msg


def test_set_path_unknown_key_names_key_and_siblings():
  cfg = config_lib.base_config()
  with pytest.raises(ConfigError) as e:
    config_lib.set_path(cfg, "optim.lrr", 1.0)
  msg = str(e.value)
  assert "optim.lrr" in msg
  for sibling in ("lr", "b1", "b2", "eps", "weight_decay", "clip_norm"):
    assert sibling in msg.split(":", 1)[1]
  assert "batch_size" not in msg  # siblings only, not keys of other sections


def test_set_path_unknown_top_level_key():
  cfg = config_lib.base_config()
  with pytest.raises(ConfigError) as e:
    config_lib.set_path(cfg, "trian.epochs", 1)
  msg = str(e.value)
  assert "trian.epochs" in msg
  assert "train" in msg and "optim" in msg


def test_set_path_converts_strings_to_the_old_type():
  cfg = config_lib.base_config()
  config_lib.set_path(cfg, "train.batch_size", "24")
  config_lib.set_path(cfg, "optim.bias_correction", "true")
  config_lib.set_path(cfg, "optim.lr", "1e-4")
  assert cfg.train.batch_size == 24 and isinstance(cfg.train.batch_size, int)
  assert cfg.optim.bias_correction is True
  assert cfg.optim.lr == pytest.approx(1e-4)


def test_set_path_through_a_leaf_is_a_config_error():
  cfg = config_lib.base_config()
  with pytest.raises(ConfigError, match="optim.lr.x"):
    config_lib.set_path(cfg, "optim.lr.x", 1)


def test_non_numeric_value_is_a_config_error_naming_the_key():
  with pytest.raises(ConfigError, match="optim.lr"):
    load_config("rte", "lr=abc")


# ---------------------------------------------------------------- eval_points


def _check_eval_points(spe, total, per_epoch, pts):
  assert pts == sorted(set(pts)), "sorted and unique"
  assert pts[0] == 0 and pts[-1] == total
  assert all(0 <= p <= total for p in pts)
  full_epochs = total // spe
  for e in range(full_epochs):
    assert (e + 1) * spe in pts, f"end of epoch {e} missing"
    inside = [p for p in pts if e * spe < p <= (e + 1) * spe]
    assert len(inside) == per_epoch, f"epoch {e}: {inside}"


def test_eval_points_exact_example():
  pts = evaluation.eval_points(156, 468, 3)
  expected = [0] + [e * 156 + k * 52 for e in range(3) for k in range(1, 4)]
  assert pts == expected
  assert pts == [0, 52, 104, 156, 208, 260, 312, 364, 416, 468]


@pytest.mark.parametrize("spe,total,per_epoch", [
    (156, 468, 3), (100, 300, 4), (38, 76, 1), (10, 30, 3), (7, 21, 2), (156, 500, 3),
    (312, 937, 3), (50, 50, 5),
])
def test_eval_points_properties(spe, total, per_epoch):
  _check_eval_points(spe, total, per_epoch, evaluation.eval_points(spe, total, per_epoch))


def test_eval_points_divisible_cases_match_an_independent_formula():
  for spe, epochs, per_epoch in [(12, 2, 3), (20, 3, 4), (9, 1, 3), (30, 5, 1)]:
    total = spe * epochs
    expected = sorted({0} | {e * spe + k * (spe // per_epoch)
                             for e in range(epochs) for k in range(1, per_epoch + 1)})
    assert evaluation.eval_points(spe, total, per_epoch) == expected


def test_eval_points_partial_last_epoch_ends_at_total():
  pts = evaluation.eval_points(156, 500, 3)
  assert pts[-1] == 500
  assert [p for p in pts if p > 468] == [500]  # 520 clipped to the end; no point past total
  assert 468 in pts


def test_eval_points_max_steps_shorter_than_an_epoch():
  assert evaluation.eval_points(312, 12, 3) == [0, 12]


# ---------------------------------------------------------------- validate


def _rte():
  return load_config("rte")


@pytest.mark.parametrize("key,bad,allowed", [
    ("model.dtype", "float16", ("float32", "bfloat16")),
    ("optim.eps_mode", "torch", ("hf", "optax")),
    ("data.source", "parquet", ("tsv", "hf", "tfds", "synthetic", "csv", "jsonl")),
])
def test_validate_rejects_bad_enum_values(key, bad, allowed):
  cfg = _rte()
  validate.check_config(cfg)  # fine before the change
  section, leaf = key.split(".")
  cfg[section][leaf] = bad
  with pytest.raises(ConfigError) as e:
    validate.check_config(cfg)
  msg = str(e.value)
  assert key in msg and repr(bad) in msg
  for a in allowed:
    assert a in msg


@pytest.mark.parametrize("key", ["train.batch_size", "train.eval_batch_size",
                                 "train.max_seq_length", "probe.every"])
@pytest.mark.parametrize("value", [0, -8])
def test_validate_rejects_non_positive_sizes(key, value):
  cfg = _rte()
  section, leaf = key.split(".")
  cfg[section][leaf] = value
  with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
    validate.check_config(cfg)


def test_validate_rejects_unknown_task():
  cfg = _rte()
  cfg.task = "boolq"  # not a GLUE task
  with pytest.raises(ConfigError) as e:
    validate.check_config(cfg)
  msg = str(e.value)
  assert "'boolq'" in msg
  for t in ("rte", "mrpc", "cola"):
    assert t in msg


def test_validate_rejects_no_training_length():
  cfg = _rte()
  cfg.train.epochs = 0.0
  cfg.train.max_steps = 0
  with pytest.raises(ConfigError, match="epochs"):
    validate.check_config(cfg)
  cfg.train.max_steps = 5
  validate.check_config(cfg)


def test_validate_rejects_duplicated_seeds():
  cfg = _rte()
  cfg.seeds = "1,2,2"
  with pytest.raises(ConfigError, match="twice"):
    validate.check_config(cfg)
