"""The study configs (configs/study_*.py): each loads, expands into the settings it promises, and
every setting passes validation before anything trains."""
import pytest

from jaxstab.config import config_lib
from jaxstab.study import studies, validate, workdir as workdir_lib
from tests.test_config import CONFIG_DIR, load_config

STUDIES = sorted(p.stem for p in CONFIG_DIR.glob("study_*.py"))


def _expanded(name, arg=""):
  return dict(studies.expand(load_config(name, arg)))


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


def test_bias_correction_study_is_the_reference_grid():
  """RTE x {bert, roberta, albert}-large x lr {1,2,3}e-5 x bias correction off/on, 3 epochs,
  end-of-training result: the reference's configs/rte/pooler-*_adamW[_bias-correct].yaml."""
  settings = _expanded("study_bias_correction")
  models = ("bert-large-uncased", "roberta-large", "albert-large-v2")
  want = {f"{m}_rte_{s}_lr{lr}" for m in models for s in ("devlin", "devlin_bc")
          for lr in ("1e-5", "2e-5", "3e-5")}
  assert set(settings) == {w.replace(".", "_") for w in want}
  for name, cfg in settings.items():
    assert cfg.task == "rte" and cfg.train.epochs == 3.0 and cfg.select == "final", name
    assert cfg.optim.bias_correction == ("_devlin_bc_" in name), name
    assert cfg.optim.lr == float(name.rsplit("_lr", 1)[1]), name
    model = cfg.model.name_or_path
    assert name.startswith(model.replace(".", "_")), name
    # each model keeps its own preset (reference yaml: roberta wd 0.1, beta2 0.98, no clipping)
    if model == "roberta-large":
      assert (cfg.optim.weight_decay, cfg.optim.b2, cfg.optim.clip_norm) == (0.1, 0.98, 0.0)
    elif model == "albert-large-v2":
      assert (cfg.optim.weight_decay, cfg.model.dropout) == (0.0, 0.0)
    else:
      assert (cfg.optim.weight_decay, cfg.optim.b2, cfg.optim.clip_norm) == (0.01, 0.999, 1.0)


def test_bias_correction_study_narrows_and_accepts_the_fourth_lr():
  settings = _expanded("study_bias_correction", "models=bert-large-uncased,lrs=2e-5+5e-5")
  assert sorted(settings) == sorted(f"bert-large-uncased_rte_{s}_lr{lr}".replace(".", "_")
                                    for s in ("devlin", "devlin_bc") for lr in ("2e-5", "5e-5"))
  with pytest.raises(config_lib.ConfigError, match="lrs="):
    _expanded("study_bias_correction", "lrs=fast")


def test_devlin_bc_differs_from_devlin_only_in_bias_correction():
  devlin = config_lib.task_config("rte", "setting=devlin").to_dict()
  bc = config_lib.task_config("rte", "setting=devlin_bc").to_dict()
  assert bc["optim"].pop("bias_correction") is True and devlin["optim"].pop("bias_correction") is False
  bc.pop("setting"), devlin.pop("setting")
  assert bc == devlin


def test_peft_study_is_three_methods_per_recipe_with_their_rates():
  """configs/study_peft.py: every task x recipe as full, LoRA (lr 5e-4) and BitFit (lr 4e-4);
  a PEFT setting differs from its full twin only in the method and the rate."""
  settings = _expanded("study_peft", "tasks=rte")
  assert sorted(settings) == [f"rte_{r}_{m}" for r in ("devlin", "ours")
                              for m in ("bitfit", "full", "lora")]
  full, lora = settings["rte_ours_full"], settings["rte_ours_lora"]
  assert workdir_lib.config_diff(full.to_dict(), lora.to_dict()) == [
      f"optim.lr: {full.optim.lr!r} -> 0.0005", "peft.method: 'none' -> 'lora'"]
  assert settings["rte_devlin_bitfit"].peft.method == "bitfit"
  assert settings["rte_devlin_bitfit"].optim.lr == 4e-4
  assert lora.train.epochs == 20 and settings["rte_devlin_lora"].train.epochs == 3
  assert sorted(_expanded("study_peft", "tasks=cola,methods=lora,lora_lr=1e-3")) == [
      "cola_devlin_lora", "cola_ours_lora"]


def test_the_reduced_cpu_studies_script_runs_valid_reduced_settings():
  """scripts/cpu_reduced_studies.sh (PRINT_ONLY=1): each training command's config, with its
  overrides, expands to validated settings of MiniLM on 500 RTE examples at length 64; together
  they cover the stabiliser study's Devlin half (plus devlin_bc, Mixout and re-init) and the PEFT
  study's Devlin half."""
  import os  # pylint: disable=import-outside-toplevel
  import shlex  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  from jaxstab import main  # pylint: disable=import-outside-toplevel
  root = CONFIG_DIR.parent
  out = subprocess.run(["bash", str(root / "scripts" / "cpu_reduced_studies.sh"), "R"],
                       env=dict(os.environ, PRINT_ONLY="1"), capture_output=True, text=True,
                       check=True, cwd=root).stdout
  names, seeds = set(), {}
  minilm = config_lib.task_config("rte", "model=minilm").model.name_or_path
  for argv in (shlex.split(line) for line in out.splitlines()):
    if argv[2] != "jaxstab.main":
      assert argv[2] in ("jaxstab.report", "jaxstab.compare"), argv
      continue
    flags = [a for a in argv[3:] if not a.startswith("--workdir=")]
    spec = flags[0].split("=", 1)[1]
    overrides = [tuple(a[len("--config."):].split("=", 1)) for a in flags[1:]]
    for name, cfg in studies.expand(main.load_config(spec, overrides)):
      validate.check_config(cfg)
      assert (cfg.model.name_or_path, cfg.task, cfg.data.train_examples,
              cfg.train.max_seq_length) == (minilm, "rte", 500, 64), name
      names.add(name)
      seeds[name] = len(config_lib.parse_seeds(cfg))
  later = {"devlin", "r3f", "r4f", "child_tuning_d", "child_tuning_f", "noisytune"}
  zhang = {"devlin_bc", "mixout", "reinit"}
  assert names == ({f"rte_{s}_lr5e-5" for s in later | zhang}
                   | {f"rte_devlin_{m}" for m in ("full", "lora", "bitfit")})
  assert {n for n, k in seeds.items() if k == 3} == {f"rte_{s}_lr5e-5" for s in zhang
                                                     if s != "devlin_bc"}
  assert {seeds[f"rte_devlin_{m}"] for m in ("full", "lora", "bitfit")} == {8}
