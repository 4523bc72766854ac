"""Fused attention (model.attention='xla') against transformers' own attention code."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstab.engine import attention, models, train as train_lib
from jaxstab.infra.errors import ConfigError
from tests import guards
from tests.helpers import build_step, tiny_setup

# The fused op sums in another order than transformers' einsum + softmax; the differences are
# float32 rounding. Bounds about 10x the measured figures (tiny models, logits ~ 0.02 - 0.2):
LOGIT_ATOL = 3e-7  # max |d logit|: bert 3.4e-8, roberta 3.7e-9, albert 3.0e-8, head mask 5.6e-9,
                   # electra 1.2e-7 (its tiny logits are larger), xlm-roberta 3.7e-9,
                   # albert with hidden dropout 1.7e-8
GRAD_ATOL = 5e-7   # max |d gradient| (gradients up to 0.036): 4.5e-8


@pytest.fixture
def fused_calls(monkeypatch):
  """Counts (at trace time) the self-attention calls that took the fused op."""
  calls = []
  real = jax.nn.dot_product_attention

  def counting(*args, **kwargs):
    calls.append(kwargs.get("implementation"))
    return real(*args, **kwargs)
  monkeypatch.setattr(attention.jax.nn, "dot_product_attention", counting)
  return calls


def _batch(arrays, n=8):
  return {k: jnp.asarray(v[:n]) for k, v in arrays.items()}


@pytest.mark.parametrize("arch", ["bert", "roberta", "albert", "electra", "xlm-roberta"])
def test_eval_logits_match_reference(glue_dir, arch, fused_calls):
  _, model, arrays = tiny_setup(glue_dir, arch=arch, length=48)
  batch = _batch(arrays)
  assert int(jnp.min(jnp.sum(batch["attention_mask"], -1))) < 48, "want padded rows"
  ref = model.logits(model.params, batch)
  fused = dataclasses.replace(model, attention="xla").logits(model.params, batch)
  assert len(fused_calls) == model.num_layers and set(fused_calls) == {"xla"}
  np.testing.assert_allclose(np.asarray(fused), np.asarray(ref), rtol=0, atol=LOGIT_ATOL)


def test_head_mask_is_applied_per_head(glue_dir):
  """transformers' head_mask argument (which jaxstab never sets) still masks the right heads."""
  _, model, arrays = tiny_setup(glue_dir, arch="roberta", length=40)
  batch = _batch(arrays)
  head_mask = jnp.ones((model.num_layers, model.config.num_attention_heads)).at[0, 1].set(0.0)

  def run():
    return model.flax_model(batch["input_ids"], attention_mask=batch["attention_mask"],
                            token_type_ids=batch["token_type_ids"], head_mask=head_mask,
                            params=model.params).logits
  ref = run()
  with attention.fused("xla"):
    fused = run()
  np.testing.assert_allclose(np.asarray(fused), np.asarray(ref), rtol=0, atol=LOGIT_ATOL)
  # the mask matters: it moves the logits by 2.2e-4, ~700x LOGIT_ATOL
  assert float(jnp.max(jnp.abs(ref - model.logits(model.params, batch)))) > 1e-4


def test_gradients_match_when_attention_dropout_is_off(glue_dir, fused_calls):
  """Dropout 0 (tiny_setup's default): training uses the fused op and its gradient agrees."""
  _, model, arrays = tiny_setup(glue_dir, arch="bert", length=40)
  batch = _batch(arrays)
  key = jax.random.PRNGKey(0)

  def grad_of(m):
    def loss(p):
      logits = m.logits(p, batch, train=True, dropout_key=key)
      return train_lib.weighted_xent(logits, batch["labels"], jnp.ones(8))
    return jax.grad(loss)(model.params)
  ref, fused = grad_of(model), grad_of(dataclasses.replace(model, attention="xla"))
  assert len(fused_calls) == model.num_layers
  for g_ref, g_fused in zip(jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(fused)):
    np.testing.assert_allclose(np.asarray(g_fused), np.asarray(g_ref), rtol=0, atol=GRAD_ATOL)


def test_training_with_attention_dropout_keeps_the_reference_code(glue_dir, fused_calls):
  """The fused op has no dropout on the attention weights, so those calls must not be swapped."""
  _, model, arrays = tiny_setup(glue_dir, arch="bert", length=40, model__dropout=0.1)
  batch = _batch(arrays)
  key = jax.random.PRNGKey(3)
  ref = model.logits(model.params, batch, train=True, dropout_key=key)
  fused = dataclasses.replace(model, attention="xla").logits(model.params, batch, train=True,
                                                              dropout_key=key)
  assert fused_calls == []
  np.testing.assert_array_equal(np.asarray(fused), np.asarray(ref))
  # ... while evaluation of the same model is fused.
  dataclasses.replace(model, attention="xla").logits(model.params, batch)
  assert len(fused_calls) == model.num_layers


def test_albert_hidden_dropout_draws_the_same_mask_when_fused(glue_dir, fused_calls):
  """ALBERT's attention module also applies hidden dropout; the fused path must draw the same
  dropout mask from the same rng stream (attention dropout 0, hidden dropout 0.1)."""
  _, model, arrays = tiny_setup(glue_dir, arch="albert", length=40, model__dropout=0.1)
  model.config.attention_probs_dropout_prob = 0.0  # the module reads this same config object
  batch = _batch(arrays)
  key = jax.random.PRNGKey(5)
  ref = model.logits(model.params, batch, train=True, dropout_key=key)
  fused = dataclasses.replace(model, attention="xla").logits(model.params, batch, train=True,
                                                              dropout_key=key)
  assert len(fused_calls) == model.num_layers
  assert float(jnp.max(jnp.abs(ref - model.logits(model.params, batch)))) > 1e-3  # dropout on
  np.testing.assert_allclose(np.asarray(fused), np.asarray(ref), rtol=0, atol=LOGIT_ATOL)


def test_train_step_with_fused_attention_matches_and_probes_albert(glue_dir):
  """A jitted ALBERT train step (probe on: its own interceptor is active too) is unchanged.
  No warmup and lr 1e-3, so this one step moves the parameters (by up to 3e-3)."""
  cfg, model, arrays = tiny_setup(glue_dir, arch="albert", length=32, optim__warmup_ratio=0.0,
                                  optim__lr=1e-3, probe__every=1)
  results = []
  for m in (model, dataclasses.replace(model, attention="xla")):
    create, step, _ = build_step(cfg, m, arrays)
    start = create(jax.random.PRNGKey(1))
    results.append(jax.jit(step)(start, {k: jnp.asarray(v) for k, v in arrays.items()}))
  ref, fused = results
  assert float(ref.probe["lr"][0]) == np.float32(cfg.optim.lr)  # the first update has lr > 0
  moved = guards.tree_max_abs_diff(ref.params, start.params)
  # measured rel 1.2e-7 per group
  np.testing.assert_allclose(np.asarray(fused.probe["grad_norm"][0]),
                             np.asarray(ref.probe["grad_norm"][0]), rtol=1e-6)
  # measured: max |d param| 1.7e-7 (one float32 ulp of a LayerNorm scale near 1), the update of
  # every tensor that moves within 3.1e-5 of its norm. The attention key bias is left out: softmax
  # ignores it, so its exact gradient is 0 and only rounding moves it.
  assert guards.tree_max_abs_diff(ref.params, fused.params) <= 2e-6 <= moved / 1000
  worst = 0.0
  for (path, a), b, p0 in zip(jax.tree_util.tree_flatten_with_path(ref.params)[0],
                              jax.tree_util.tree_leaves(fused.params),
                              jax.tree_util.tree_leaves(start.params)):
    a, b, p0 = (np.asarray(x, np.float64) for x in (a, b, p0))
    if "['key']['bias']" not in jax.tree_util.keystr(path):
      assert np.linalg.norm(a - p0) > 0, jax.tree_util.keystr(path)
      worst = max(worst, float(np.linalg.norm(b - a) / np.linalg.norm(a - p0)))
  assert worst <= 3e-4, worst


def test_bad_attention_setting_is_refused(glue_dir):
  cfg, _, _ = tiny_setup(glue_dir, arch="bert")
  cfg.model.attention = "flash"
  with pytest.raises(ConfigError, match=r"model.attention='flash'; choose one of reference, xla"):
    models.load(cfg.model, 2, _tokenizer(cfg))
  if jax.default_backend() != "gpu":
    cfg.model.attention = "cudnn"
    with pytest.raises(ConfigError, match="needs a GPU"):
      models.load(cfg.model, 2, _tokenizer(cfg))


def test_distilbert_refuses_a_fused_attention(glue_dir):
  from jaxstab.study import validate  # pylint: disable=import-outside-toplevel
  cfg, _, _ = tiny_setup(glue_dir, arch="distilbert")
  cfg.model.attention = "xla"
  with pytest.raises(ConfigError, match="not available for DistilBERT"):
    validate.check_model(cfg, "distilbert", 2)


def _tokenizer(cfg):
  from jaxstab.data import vocab  # pylint: disable=import-outside-toplevel
  return vocab.load(cfg.model, lambda: ["a few words of text", "and some more"])
