"""fidelity=reference | corrected: one key switches every known difference from the reference
code, the paper's presets default to reference, and each switch reaches the compiled programs.
(The switches' own behaviour is tested in test_reference_mode.py.)"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstab import main
from jaxstab.config import config_lib, reference
from jaxstab.data import dataset
from jaxstab.engine import train as train_lib
from jaxstab.study import evaluation, studies
from tests.helpers import tiny_setup
from tests.test_config import CONFIG_DIR

QUIRKS = config_lib.FIDELITY["reference"]


def _quirks(cfg):
  return {k: config_lib.get_path(cfg, k) for k in QUIRKS}


@pytest.mark.parametrize("setting,fidelity", [
    ("devlin", "reference"), ("devlin_bc", "reference"), ("ours", "reference"),
    ("mixout", "reference"), ("reinit", "corrected"), ("llrd", "corrected"),
    ("prior_wd", "corrected")])
def test_the_papers_presets_default_to_reference_mode(setting, fidelity):
  cfg = config_lib.task_config("rte", f"setting={setting}")
  assert cfg.fidelity == fidelity
  assert _quirks(cfg) == config_lib.FIDELITY[fidelity]


def test_both_modes_switch_the_same_keys_to_different_values():
  ref, cor = config_lib.FIDELITY["reference"], config_lib.FIDELITY["corrected"]
  assert set(ref) == set(cor) and all(ref[k] != cor[k] for k in ref)
  base = config_lib.base_config()
  assert _quirks(base) == cor  # a bare base config keeps jaxstab's own behaviour


def test_fidelity_argument_flag_and_single_switch_win_in_this_order():
  cfg = config_lib.task_config("rte", "setting=ours,fidelity=corrected")
  assert cfg.fidelity == "corrected" and _quirks(cfg) == config_lib.FIDELITY["corrected"]
  # a flag written after the argument wins; a single switch given by the user beats the preset
  cfg = main.load_config(str(CONFIG_DIR / "rte.py") + ":fidelity=corrected",
                         [("model.pass_segment_ids", "true"), ("fidelity", "reference")])
  (_, sub), = studies.expand(cfg)
  assert sub.fidelity == "reference" and sub.model.head == "reference"
  assert sub.model.pass_segment_ids is True  # the user's own value, applied after every preset


def test_a_fidelity_flag_reaches_every_setting_of_a_study():
  cfg = main.load_config(str(CONFIG_DIR / "study_table1.py"), [("fidelity", "corrected")])
  for name, sub in studies.expand(cfg):
    assert sub.fidelity == "corrected" and _quirks(sub) == config_lib.FIDELITY["corrected"], name
  cfg = main.load_config(str(CONFIG_DIR / "study_table1.py"), [])
  assert {sub.fidelity for _, sub in studies.expand(cfg)} == {"reference"}


def test_unknown_fidelity_names_the_choices():
  with pytest.raises(config_lib.ConfigError, match="unknown fidelity 'exact'.*reference, corrected"):
    config_lib.task_config("rte", "fidelity=exact")


# ------------------------------------------------------------ each switch reaches the programs


def test_reference_mode_feeds_bert_zero_segment_ids(glue_dir):
  """The compiled evaluation (the same logits function the train step uses) ignores the batch's
  segment ids in reference mode and reads them in corrected mode."""
  out = {}
  for fidelity in ("reference", "corrected"):
    cfg, model, arrays = tiny_setup(glue_dir, n=16)
    config_lib.apply_preset(cfg, "fidelity", fidelity)
    programs = train_lib.build_programs(cfg, model, n_train=16, total=4)
    batch = {k: jnp.asarray(arrays[k][:8]) for k in ("input_ids", "attention_mask",
                                                      "token_type_ids")}
    assert int(batch["token_type_ids"].max()) == 1  # real sentence pairs: segment B exists
    zeros = dict(batch, token_type_ids=jnp.zeros_like(batch["token_type_ids"]))
    params = programs.create_one(train_lib.seed_key(1)).params
    as_fed = programs.eval_one(params, jax.tree_util.tree_map(lambda x: x[None], batch))
    zeroed = programs.eval_one(params, jax.tree_util.tree_map(lambda x: x[None], zeros))
    out[fidelity] = float(jnp.max(jnp.abs(as_fed - zeroed)))
  assert out["reference"] == 0.0  # the same program on the same input: exactly equal
  # segment B's embedding moves a random tiny model's logits by 5.1e-4 (measured); 50x below:
  assert out["corrected"] > 1e-5, out


def test_reference_mode_draws_robertas_dense_uniformly_in_training(glue_dir):
  """train.initial_params (what create_train_state starts from) draws RoBERTa's head `dense`
  from U(+-1/sqrt(fan_in)) in reference mode and from N(0, 0.02) in corrected mode."""
  drawn = {}
  for fidelity in ("reference", "corrected"):
    cfg, _, _ = tiny_setup(glue_dir, arch="roberta", n=16)
    config_lib.apply_preset(cfg, "fidelity", fidelity)
    _, model, _ = tiny_setup(glue_dir, arch="roberta", n=16, model__head=cfg.model.head)
    drawn[fidelity] = np.stack([np.asarray(train_lib.initial_params(model, train_lib.seed_key(s))
                                           ["classifier"]["dense"]["kernel"]) for s in range(4)])
  n = drawn["reference"].size                      # 4 seeds x 64 x 64
  bound = 1.0 / np.sqrt(drawn["reference"].shape[1])
  std_u = bound / np.sqrt(3)                        # U(-b, b)
  # the sample std's own std is about std * sqrt((kurtosis - 1) / (4n)); 5 of those:
  assert abs(drawn["reference"].std() - std_u) < 5 * std_u * np.sqrt(0.8 / (4 * n))
  assert np.abs(drawn["reference"]).max() <= bound
  assert abs(drawn["corrected"].std() - 0.02) < 5 * 0.02 * np.sqrt(2 / (4 * n))


def test_reference_mode_mixes_the_classifier(glue_dir):
  """With Mixout, one train step from the same state moves the head differently when Mixout
  reaches it (reference) than when it does not (corrected)."""
  heads = {}
  for fidelity in ("reference", "corrected"):
    cfg, model, arrays = tiny_setup(glue_dir, n=16)
    config_lib.apply_preset(cfg, "setting", "mixout")
    config_lib.apply_preset(cfg, "fidelity", fidelity)
    cfg.optim.warmup_ratio = 0.0  # a non-zero first step
    assert cfg.stabilisers.mixout_head == (fidelity == "reference")
    programs = train_lib.build_programs(cfg, model, n_train=16, total=4)
    state = programs.create_one(train_lib.seed_key(3))
    new = jax.jit(programs.step_one)(state, jax.device_put(arrays), programs.anchor)
    heads[fidelity] = np.asarray(new.params["classifier"]["kernel"])
    before = np.asarray(state.params["classifier"]["kernel"])
    assert np.abs(heads[fidelity] - before).max() > 0  # the head moved in both
  assert np.abs(heads["reference"] - heads["corrected"]).max() > 1e-6


def test_reference_mode_evaluates_when_the_reference_did(glue_dir, tmp_path):
  """A short run in reference mode records dev exactly at reference.reference_eval_steps, which
  here differ from corrected mode's evenly spaced points (those are tested in test_cli)."""
  cfg, _, _ = tiny_setup(glue_dir, task="mrpc", n=16, length=16)
  config_lib.apply_preset(cfg, "fidelity", "reference")
  cfg.data.train_examples = 112       # 7 batches of 16 per epoch
  cfg.train.batch_size, cfg.train.epochs = 16, 2.0
  cfg.train.max_steps = 0
  summary = studies.run(cfg, str(tmp_path / "work"))
  assert summary["total_steps"] == 14
  assert [h["step"] for h in _history(tmp_path / "work")] == [0, 2, 4, 7, 8, 10, 12, 14]
  assert reference.reference_eval_steps("mrpc", 7, 14) == [0, 2, 4, 7, 8, 10, 12, 14]
  assert evaluation.eval_points(7, 14, 3) == [0, 2, 5, 7, 9, 12, 14]
  cfg.train.eval_every_steps = 0  # corrected mode's rule on the same plan
  assert evaluation.eval_steps("mrpc", 7, 14, cfg.train.eval_every_steps,
                               cfg.train.evals_per_epoch) == evaluation.eval_points(7, 14, 3)


def _history(workdir):
  import json  # pylint: disable=import-outside-toplevel
  return [json.loads(l) for l in (workdir / "runs" / "metrics_seed_1.jsonl").read_text().splitlines()]


def test_full_steps_count_follows_the_mode():
  train_cfg = config_lib.task_config("cola", "setting=devlin,steps_of_full_epochs=3").train
  assert train_cfg.full_steps_count == "reference"
  assert train_lib.total_steps(train_cfg, 1000, 535, "cola") == 1602
  train_cfg.full_steps_count = "batches"
  assert train_lib.total_steps(train_cfg, 1000, 535, "cola") == 1605
  assert dataset.num_batches(8551, 16) == 535
