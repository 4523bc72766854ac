"""Mixout, re-initialisation, layer-wise lr decay, decay toward the pretrained weights, presets."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstab.config import config_lib
from jaxstab.engine import optim, probe, stabilisers
from jaxstab.infra.errors import ConfigError
from tests import guards
from tests.helpers import tiny_setup, tree_max_abs_diff


@pytest.fixture(scope="module")
def bert(glue_dir):
  return tiny_setup(glue_dir, "bert", model__tiny__num_layers=3)


def _kernel_pairs(params, anchor):
  for (path, w), u in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                          jax.tree_util.tree_leaves(anchor)):
    names = [str(getattr(k, "key", k)) for k in path]
    yield names, np.asarray(w), np.asarray(u)


def test_mixout_zero_is_identity_and_eval_ignores_it(bert, glue_dir):
  cfg, model, arrays = bert
  params = jax.tree_util.tree_map(lambda x: x + 0.01, model.params)
  anchor = stabilisers.anchor_of(model.params)
  assert stabilisers.mixout(params, anchor, jax.random.PRNGKey(0), 0.0) is params
  # Eval never mixes: the eval function takes params as they are.
  from jaxstab.engine import train as train_lib
  batch = {k: v[:4] for k, v in arrays.items()}
  ev = train_lib.make_eval_logits(model)
  one = jax.tree_util.tree_map(lambda v: v[None], {k: batch[k] for k in batch if k != "labels"})
  np.testing.assert_allclose(np.asarray(ev(params, one))[0],  # measured max |d| 5.6e-8
                             np.asarray(model.logits(params, batch)), rtol=0, atol=6e-7)


def test_mixout_mask_picks_whole_input_units(bert):
  _, model, _ = bert
  p = 0.7
  params = jax.tree_util.tree_map(lambda x: x + 1.0, model.params)  # differs from anchor everywhere
  anchor = stabilisers.anchor_of(model.params)
  took, rows, checked = 0, 0, 0
  for key in range(8):  # 8 draws x 1408 input units: the fraction's 5-sigma bound is 0.022
    mixed = stabilisers.mixout(params, anchor, jax.random.PRNGKey(key), p)
    for (names, m, u), (_, w, _) in zip(_kernel_pairs(mixed, anchor),
                                        _kernel_pairs(params, anchor)):
      if names[0] == "classifier" or names[-1] != "kernel" or w.ndim != 2:
        np.testing.assert_array_equal(m, w)  # not a backbone kernel: untouched
        continue
      # Undo the rescaling: m*(1-p) + p*u is u where the mask is 1 and w where it is 0, up to
      # float32 rounding of values ~1-2 (measured max |d| 1.2e-7).
      raw = m * (1 - p) + p * u
      took_anchor = np.all(np.isclose(raw, u, rtol=0, atol=1e-6), axis=1)
      kept = np.all(np.isclose(raw, w, rtol=0, atol=1e-6), axis=1)
      assert np.all(took_anchor ^ kept), names  # each input unit (row) is wholly one or the other
      took, rows = took + int(took_anchor.sum()), rows + len(took_anchor)
      checked += key == 0
  assert checked >= 3 * 6  # q, k, v, attention out, intermediate, output per layer
  fraction, bound = took / rows, 5 * np.sqrt(p * (1 - p) / rows)
  print(f"\nfraction of units taken from the anchor {fraction:.4f}, p = {p} +- {bound:.4f}")
  assert abs(fraction - p) < bound


def test_mixout_expectation_is_the_current_weight():
  w = {"enc": {"kernel": jnp.linspace(-1, 1, 12).reshape(4, 3)},
       "classifier": {"kernel": jnp.ones((3, 2))}}
  u = {"enc": {"kernel": jnp.full((4, 3), 0.5)}, "classifier": {"kernel": jnp.zeros((3, 2))}}
  n, p = 400000, 0.9  # enough draws that even the worst 5-sigma bound (0.036) is under 0.05
  keys = jax.random.split(jax.random.PRNGKey(0), n)
  mixed = np.asarray(jax.vmap(lambda k: stabilisers.mixout(w, u, k, p))(keys)["enc"]["kernel"],
                     np.float64)
  # Each draw is u (probability p) or (w - p u) / (1 - p): standard deviation
  # sqrt(p (1 - p)) |u - w| / (1 - p); the mean of n draws gets a 5-sigma bound from it.
  w_, u_ = np.asarray(w["enc"]["kernel"], np.float64), np.asarray(u["enc"]["kernel"], np.float64)
  sd = np.sqrt(p * (1 - p)) * np.abs(u_ - w_) / (1 - p)
  assert np.all(np.abs(mixed.mean(0) - w_) <= 5 * sd / np.sqrt(n))
  # It really is random, with that spread: a sample std has standard error
  # sd * sqrt((kurtosis - 1) / 4n), and this two-point law's kurtosis is (1 - 3pq) / pq.
  kurtosis = (1 - 3 * p * (1 - p)) / (p * (1 - p))
  assert np.all(np.abs(mixed.std(0) - sd) <= 5 * sd * np.sqrt((kurtosis - 1) / (4 * n)))


def test_reinit_statistics_and_lower_layers_untouched(glue_dir):
  _, model, _ = tiny_setup(glue_dir, "bert", model__tiny__num_layers=4, model__tiny__hidden_size=128,
                           model__tiny__intermediate_size=256)
  params = jax.tree_util.tree_map(lambda x: x + 0.5, model.params)
  out = stabilisers.reinit_top_layers(params, jax.random.PRNGKey(0), "bert", 4, 2, True, 0.02)
  for (path, new), old in zip(jax.tree_util.tree_flatten_with_path(out)[0],
                              jax.tree_util.tree_leaves(params)):
    names = [str(getattr(k, "key", k)) for k in path]
    grp = probe.group_of(path, "bert")
    new, old = np.asarray(new), np.asarray(old)
    if grp in ("layer_2", "layer_3", "pooler"):
      if "LayerNorm" in names:
        np.testing.assert_array_equal(new, np.ones_like(new) if names[-1] == "scale" else 0 * new)
      elif names[-1] == "kernel":  # 5-sigma bounds from the sample size (16384 or 32768)
        guards.check_normal_sample(new, 0.02, "/".join(names))
      else:
        np.testing.assert_array_equal(new, 0 * new)
    else:
      np.testing.assert_array_equal(new, old)


def test_reinit_refuses_albert_layers_and_too_many():
  with pytest.raises(ConfigError, match="ALBERT"):
    stabilisers.reinit_top_layers({}, jax.random.PRNGKey(0), "albert", 4, 1, True, 0.02)
  with pytest.raises(ConfigError, match="reinit_layers=5"):
    stabilisers.reinit_top_layers({}, jax.random.PRNGKey(0), "bert", 4, 5, True, 0.02)


def test_llrd_step_ratios_are_powers_of_gamma(bert):
  cfg, model, _ = bert
  gamma, L = 0.8, model.num_layers
  scales = stabilisers.layerwise_scales(model.params, "bert", L, gamma)
  cfg.optim.weight_decay = 0.0
  cfg.optim.clip_norm = 0.0
  cfg.optim.warmup_ratio = 0.0
  tx, _ = optim.from_config(cfg.optim, 10, scales)
  grads = jax.tree_util.tree_map(lambda x: jnp.full_like(x, 0.3), model.params)
  updates, _ = tx.update(grads, tx.init(model.params), model.params)
  size = {}
  for path, u in jax.tree_util.tree_flatten_with_path(updates)[0]:
    size.setdefault(probe.group_of(path, "bert"), []).append(float(np.abs(np.asarray(u)).max()))
  size = {g: max(v) for g, v in size.items()}
  base = size["classifier"]
  assert size["pooler"] == base  # both scaled by exactly 1
  # float32 scales and updates: measured rel 3.8e-8
  for i in range(L):
    assert size[f"layer_{i}"] / base == pytest.approx(gamma ** (L - i), rel=5e-7)
  assert size["embeddings"] / base == pytest.approx(gamma ** L, rel=5e-7)


def test_prior_wd_pulls_toward_pretrained_and_equals_plain_decay_at_zero(bert):
  cfg, model, arrays = bert
  cfg.optim.lr = 1e-2
  cfg.optim.weight_decay = 0.5
  cfg.optim.warmup_ratio = 0.0
  from jaxstab.engine import train as train_lib

  def programs(prior_wd):
    c = cfg.copy_and_resolve_references()
    c.stabilisers.prior_wd, c.probe.every, c.train.batch_size = prior_wd, 1, 8
    return train_lib.build_programs(c, model, n_train=len(arrays["labels"]), total=4)

  def one_step(prior_wd, anchor, params):
    p = programs(prior_wd)
    state = p.create_one(jax.random.PRNGKey(0)).replace(params=params)
    return jax.jit(p.step_one)(state, jax.device_put(arrays), anchor)

  start = jax.tree_util.tree_map(lambda x: x + 0.2, model.params)
  start["classifier"] = programs(False).create_one(jax.random.PRNGKey(0)).params["classifier"]
  zero = jax.tree_util.tree_map(jnp.zeros_like, model.params)
  plain = one_step(False, zero, start)
  prior_at_zero = one_step(True, zero, start)
  assert tree_max_abs_diff(plain.params, prior_at_zero.params) == 0.0  # theta - 0 is theta
  anchor = stabilisers.anchor_of(model.params)
  prior = one_step(True, anchor, start)
  # Same Adam step; the decay term differs by exactly lr * wd * theta_p on decayed leaves,
  # i.e. prior decay pulls toward theta_p instead of toward 0.
  mask = optim.default_decay_mask(model.params)
  lr_wd = cfg.optim.lr * cfg.optim.weight_decay
  moved = 0
  for a_, b_, t, m in zip(jax.tree_util.tree_leaves(prior.params),
                          jax.tree_util.tree_leaves(plain.params),
                          jax.tree_util.tree_leaves(anchor), jax.tree_util.tree_leaves(mask)):
    want = lr_wd * np.asarray(t) if m else np.zeros_like(np.asarray(t))
    # measured max |d| 2.8e-8 (the weights are ~1, their float32 spacing 1.2e-7)
    np.testing.assert_allclose(np.asarray(a_) - np.asarray(b_), want, rtol=0, atol=2e-7)
    moved += int(m and np.abs(want).max() > 1e-5)
  assert moved > 10


PRESET_TABLE = {  # setting -> values it must resolve to (with bert-large-uncased)
    "devlin": {"optim.bias_correction": False, "train.epochs": 3.0, "optim.weight_decay": 0.01,
               "stabilisers.mixout": 0.0, "select": "final"},
    "ours": {"optim.bias_correction": True, "optim.eps_mode": "hf", "train.epochs": 20.0,
             "select": "best", "stabilisers.mixout": 0.0},
    "mixout": {"stabilisers.mixout": 0.9, "model.dropout": 0.0, "optim.bias_correction": True,
               "train.epochs": 3.0},
    "reinit": {"stabilisers.reinit_layers": 5, "stabilisers.reinit_pooler": True,
               "stabilisers.mixout": 0.0},
    "llrd": {"stabilisers.llrd": 0.95, "stabilisers.reinit_layers": 0},
    "prior_wd": {"stabilisers.prior_wd": True, "optim.weight_decay": 1e-3},
}


@pytest.mark.parametrize("setting", sorted(PRESET_TABLE))
def test_presets_resolve_to_documented_values(setting):
  cfg = config_lib.task_config("rte", f"setting={setting}")
  for key, want in PRESET_TABLE[setting].items():
    assert config_lib.get_path(cfg, key) == want, key
  assert cfg.optim.lr == 2e-5 and cfg.train.batch_size == 16 and cfg.optim.eps == 1e-6
  lr = config_lib.task_config("rte", f"setting={setting},lr=3e-5")
  assert lr.optim.lr == 3e-5


def test_per_model_differences_survive_settings():
  rob = config_lib.task_config("mrpc", "model=roberta-large,setting=mixout")
  assert (rob.optim.weight_decay, rob.optim.b2, rob.optim.clip_norm) == (0.1, 0.98, 0.0)
  alb = config_lib.task_config("cola", "setting=ours,model=albert-large-v2")
  assert (alb.model.dropout, alb.optim.weight_decay, alb.optim.clip_norm) == (0.0, 0.0, 1.0)
  # A later setting does not inherit an earlier one's switches.
  cfg = config_lib.task_config("rte", "setting=mixout")
  config_lib.apply_preset(cfg, "setting", "devlin")
  assert cfg.stabilisers.mixout == 0.0 and not cfg.optim.bias_correction
