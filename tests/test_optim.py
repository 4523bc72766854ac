"""jaxstab.engine.optim against a NumPy transcription of the paper's formulas and against optax."""
import jax
import numpy as np
import optax
import pytest

from jaxstab.config import config_lib
from jaxstab.engine import optim
from jaxstab.infra.errors import ConfigError
from tests import guards
from tests.guards import (ADAM_B1 as B1, ADAM_B2 as B2, ADAM_DECAYED as DECAYED, ADAM_EPS as EPS,
                          ADAM_WD as WD)

schedule = guards.adam_schedule
_problem = guards.adam_problem
reference = guards.adam_reference
run = guards.run_tx


def _first_update(tx, g, params):
  return tx.update(g, tx.init(params), params)[0]


def assert_trees_close(a, b, rtol, atol):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64),
                               rtol=rtol, atol=atol)


@pytest.mark.parametrize("bias_correction", [False, True])
@pytest.mark.parametrize("eps_mode", ["hf", "optax"])
def test_adamw_matches_formulas(bias_correction, eps_mode):
  print(guards.check_adamw_matches_formulas(bias_correction, eps_mode))  # measured 0.16 - 0.22
  # The variants must be far apart at this tolerance, or the check above proves nothing: they
  # differ by 8.9e-4 (the order of decay and step, without correction) to 0.11, >= 400x it.
  params, grads = _problem()
  got = run(optim.adamw(schedule, b1=B1, b2=B2, eps=EPS, weight_decay=WD,
                        bias_correction=bias_correction, eps_mode=eps_mode), params, grads)
  for bc in (False, True):
    for mode in ("hf", "optax"):
      if (bc, mode) != (bias_correction, eps_mode):
        gap = guards.adam_error(got, reference(params, grads, bc, mode))
        assert gap > 100, (bc, mode, gap)


@pytest.mark.parametrize("lr", [3e-2, schedule])
def test_optax_mode_equals_optax_adamw(lr):
  params, grads = _problem(seed=1)
  ours = optim.adamw(lr, b1=B1, b2=B2, eps=EPS, weight_decay=WD, bias_correction=True,
                     eps_mode="optax")
  theirs = optax.adamw(lr, b1=B1, b2=B2, eps=EPS, weight_decay=WD, mask=DECAYED)
  # the same formula in another operation order: measured max |d| 1.2e-7 (params ~ 1), the worst
  # element at 0.10 of this tolerance
  assert_trees_close(run(ours, params, grads), run(theirs, params, grads), 1e-6, 1e-7)


def test_hf_and_optax_eps_differ_early():
  # Gradients ~ eps: hf's effective epsilon eps/sqrt(1-b2^t) is ~30x larger at t=1 (b2=0.999).
  params, grads = _problem(seed=2, grad_scale=1e-6)
  hf, ox = [_first_update(optim.adamw(1e-3, b2=0.999, eps=1e-6, eps_mode=m), grads[0], params)
            for m in ("hf", "optax")]
  assert np.all(np.abs(hf["dense"]["kernel"]) < 0.5 * np.abs(ox["dense"]["kernel"]))
  # With eps negligible next to the gradients, the two forms coincide.
  params, grads = _problem(seed=2, grad_scale=1.0)
  hf, ox = [_first_update(optim.adamw(1e-3, eps=1e-12, eps_mode=m), grads[0], params)
            for m in ("hf", "optax")]
  assert_trees_close(hf, ox, 2.5e-6, 0)  # measured rel 2.3e-7


def test_default_decay_mask_on_flax_bert():
  from flax.traverse_util import flatten_dict
  from transformers import BertConfig, FlaxBertForSequenceClassification
  cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=64)
  params = FlaxBertForSequenceClassification(cfg, seed=0).params
  mask = flatten_dict(optim.default_decay_mask(params), sep="/")
  names = flatten_dict(params, sep="/")
  assert set(mask) == set(names)
  for name, decayed in mask.items():
    parts = name.split("/")
    excluded = parts[-1] == "bias" or "LayerNorm" in parts
    assert decayed is (not excluded), name
  assert mask["bert/embeddings/word_embeddings/embedding"]
  assert mask["bert/encoder/layer/1/attention/self/query/kernel"]
  assert mask["classifier/kernel"] and not mask["classifier/bias"]
  assert not mask["bert/embeddings/LayerNorm/scale"]
  assert not mask["bert/encoder/layer/0/output/LayerNorm/bias"]


def test_linear_warmup_decay():
  peak, w, total = 2e-5, 10, 100
  sched = optim.linear_warmup_decay(peak, w, total)
  s = np.array([float(sched(t)) for t in range(total + 5)])
  assert s[0] == 0.0 and s[total] == 0.0 and np.all(s[total:] == 0.0)
  assert s[w] == np.float32(peak)
  assert np.all(np.diff(s[:w + 1]) > 0) and np.all(np.diff(s[w:total + 1]) < 0)
  guards.check_schedule(s, peak, w, total)  # measured rel 9.8e-8; exact 0 where it is 0
  flat = optim.linear_warmup_decay(peak, 0, total)
  guards.check_schedule([float(flat(t)) for t in range(total + 2)], peak, 0, total)
  assert float(flat(0)) == np.float32(peak) and float(flat(total)) == 0.0


@pytest.mark.parametrize("b1,b2", [(0.9, 0.999), (0.9, 0.98)])
def test_bias_correction_factor(b1, b2):
  t = np.arange(1, 2001)
  expected = np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
  # float32 cancellation in 1 - b2^t limits the agreement for small t: measured rel 1.0e-5 at
  # t = 2 (b2 0.999; 8.2e-7 for 0.98), 6e-6 for t > 100. Deterministic float32 arithmetic, so
  # the bound keeps a 5x margin.
  np.testing.assert_allclose(np.asarray(optim.bias_correction_factor(t, b1, b2)), expected,
                             rtol=5e-5)
  # measured rel 6.7e-6: 0.999 is not a float32 number (1 - 0.999f is off by 1.3e-5)
  assert float(optim.bias_correction_factor(1)) == pytest.approx(np.sqrt(0.001) / 0.1, rel=1e-5)


def _cfg(**kw):
  """The optim group of base_config (every key, its defaults in one place) with these values."""
  cfg = config_lib.base_config().optim
  cfg.update(dict(lr=0.1, b1=0.9, b2=0.999, eps=1.0, eps_mode="hf", bias_correction=True,
                  weight_decay=0.0, warmup_ratio=0.0, clip_norm=1.0))
  cfg.update(kw)
  return cfg



def test_from_config_clips():
  params, grads = _problem(seed=3)
  g = jax.tree_util.tree_map(lambda x: 1e3 * x, grads[0])
  norm = float(optax.tree.norm(g))
  assert norm > 10
  g_unit = jax.tree_util.tree_map(lambda x: x / norm, g)
  tx, _ = optim.from_config(_cfg(), total_steps=100)
  plain = optim.adamw(0.1, b1=0.9, b2=0.999, eps=1.0, weight_decay=0.0)
  clipped = _first_update(tx, g, params)
  assert_trees_close(clipped, _first_update(plain, g_unit, params), 1e-6, 0)  # measured 8.9e-8
  # eps=1 makes the step depend on the gradient's scale, so no clipping gives another update
  unclipped = _first_update(optim.from_config(_cfg(clip_norm=0.0), 100)[0], g, params)
  assert not np.allclose(unclipped["dense"]["kernel"], clipped["dense"]["kernel"], rtol=1e-2)


def test_from_config_schedule_and_warmup_ratio():
  _, sched = optim.from_config(_cfg(warmup_ratio=0.1), total_steps=200)
  assert float(sched(0)) == 0.0 and float(sched(20)) == np.float32(0.1)
  guards.check_schedule([float(sched(t)) for t in range(205)], 0.1, 20, 200)
  for bad in (-0.1, 1.0, 1.5):
    with pytest.raises(ConfigError, match="warmup_ratio"):
      optim.from_config(_cfg(warmup_ratio=bad), total_steps=100)


def test_unknown_eps_mode():
  with pytest.raises(ConfigError) as e:
    optim.adamw(1e-3, eps_mode="torch")
  assert "torch" in str(e.value) and "hf" in str(e.value) and "optax" in str(e.value)
