"""The study configs (configs/study_*.py): each loads, expands into the settings it promises, and
every setting passes validation before anything trains."""
import pytest

from jaxstab import config_lib, study, validate
from jaxstab import workdir as workdir_lib
from tests.test_config import CONFIG_DIR, load_config

STUDIES = sorted(p.stem for p in CONFIG_DIR.glob("study_*.py"))


def _expanded(name, arg=""):
  return dict(study.expand(load_config(name, arg)))


@pytest.mark.parametrize("name", STUDIES)
def test_study_config_expands_and_every_setting_validates(name):
  settings = _expanded(name)
  assert len(settings) >= 2, name
  for setting_name, cfg in settings.items():
    validate.check_config(cfg)
    assert setting_name.startswith(cfg.task) or "_" + cfg.task + "_" in setting_name, setting_name
    assert config_lib.parse_seeds(cfg) == list(range(1, 26)), setting_name


def test_table1_is_three_tasks_by_three_recipes():
  settings = _expanded("study_table1")
  assert sorted(settings) == sorted(f"{t}_{s}" for t in ("rte", "mrpc", "cola")
                                    for s in ("devlin", "mixout", "ours"))
  assert settings["rte_ours"].train.epochs == 20 and settings["rte_ours"].optim.bias_correction
  assert settings["cola_mixout"].stabilisers.mixout == 0.9


def test_minilm_study_has_the_lr_ablation_and_a_labelled_short_ours():
  settings = _expanded("study_minilm", "tasks=rte")
  assert sorted(settings) == ["rte_devlin_lr1e-5", "rte_devlin_lr2e-5", "rte_devlin_lr3e-5",
                              "rte_devlin_lr5e-5", "rte_ours"]
  assert [settings[f"rte_devlin_lr{x}"].optim.lr for x in ("1e-5", "2e-5", "3e-5", "5e-5")] == [
      1e-5, 2e-5, 3e-5, 5e-5]
  assert all(not c.optim.bias_correction and c.train.epochs == 3 for n, c in settings.items()
             if "devlin" in n)
  assert settings["rte_ours"].train.epochs == 20
  assert settings["rte_ours"].model.name_or_path == config_lib.minilm_folder()

  short = _expanded("study_minilm", "tasks=rte,seeds=1-5,lrs=2e-5,ours_epochs=3")
  assert sorted(short) == ["rte_devlin_lr2e-5", "rte_ours_3ep"]  # never named plain "ours"
  ours = short["rte_ours_3ep"]
  assert (ours.train.epochs, ours.optim.bias_correction, ours.select) == (3.0, True, "best")
  assert config_lib.parse_seeds(ours) == [1, 2, 3, 4, 5]


def test_minilm_study_loads_from_a_given_folder_without_the_package(monkeypatch):
  def no_package():
    raise AssertionError("the installed MiniLM package was asked for")
  monkeypatch.setattr(config_lib, "minilm_folder", no_package)
  settings = _expanded("study_minilm", "tasks=rte+cola,lrs=2e-5,model=carry/minilm_fp16")
  assert sorted(settings) == ["cola_devlin_lr2e-5", "cola_ours", "rte_devlin_lr2e-5", "rte_ours"]
  assert {c.model.name_or_path for c in settings.values()} == {"carry/minilm_fp16"}


def test_moments_study_pairs_differ_only_in_the_moments_dtype():
  settings = _expanded("study_moments", "model=minilm,epochs=3,train_examples=1000")
  fp32, bf16 = settings["cola_ours_moments_fp32"], settings["cola_ours_moments_bf16"]
  assert workdir_lib.config_diff(fp32.to_dict(), bf16.to_dict()) == [
      "optim.moments_dtype: 'float32' -> 'bfloat16'"]
  assert fp32.train.epochs == 3 and fp32.data.train_examples == 1000
  assert fp32.optim.bias_correction
