"""jaxstab.optim against a NumPy transcription of the paper's formulas and against optax."""
import jax
import ml_collections
import numpy as np
import optax
import pytest

from jaxstab import optim
from jaxstab.errors import ConfigError

B1, B2, EPS, WD = 0.9, 0.99, 1e-3, 0.1
STEPS = 10
# leaf name -> shape; only the kernel is decayed under BERT's convention
SHAPES = {"dense": {"kernel": (3, 4), "bias": (4,)}, "LayerNorm": {"scale": (4,)}}
DECAYED = {"dense": {"kernel": True, "bias": False}, "LayerNorm": {"scale": False}}


def schedule(count):  # works on numpy ints and traced jnp ints alike
  return 0.05 * (count + 1) / STEPS


def _problem(seed=0, grad_scale=1e-2):
  rng = np.random.default_rng(seed)
  params = jax.tree_util.tree_map(lambda s: rng.normal(size=s).astype(np.float32), SHAPES,
                                  is_leaf=lambda x: isinstance(x, tuple))
  grads = [jax.tree_util.tree_map(lambda p: (grad_scale * rng.normal(size=p.shape)).astype(np.float32),
                                  params) for _ in range(STEPS)]
  return params, grads


def reference(params, grads, bias_correction, eps_mode, lr_fn=schedule, b1=B1, b2=B2, eps=EPS,
              wd=WD, decayed=DECAYED):
  """The update rules written out in float64, one leaf at a time."""
  def run_leaf(p, d, gs):
    p = p.astype(np.float64)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(gs, 1):
      lr = lr_fn(t - 1)
      m = b1 * m + (1 - b1) * g
      v = b2 * v + (1 - b2) * g * g
      wd_t = wd if d else 0.0
      if eps_mode == "hf":
        step = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t) if bias_correction else lr
        p_mid = p - step * m / (np.sqrt(v) + eps)
        p = p_mid - lr * wd_t * p_mid
      else:
        m_hat, v_hat = (m / (1 - b1 ** t), v / (1 - b2 ** t)) if bias_correction else (m, v)
        p = p - lr * (m_hat / (np.sqrt(v_hat) + eps) + wd_t * p)
    return p

  return jax.tree_util.tree_map(lambda p, d, *gs: run_leaf(p, d, [np.float64(g) for g in gs]),
                                params, decayed, *grads)


def run(tx, params, grads):
  update = jax.jit(tx.update)
  state = tx.init(params)
  for g in grads:
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
  return params


def _first_update(tx, g, params):
  return tx.update(g, tx.init(params), params)[0]


def assert_trees_close(a, b, rtol, atol):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64),
                               rtol=rtol, atol=atol)


@pytest.mark.parametrize("bias_correction", [False, True])
@pytest.mark.parametrize("eps_mode", ["hf", "optax"])
def test_adamw_matches_formulas(bias_correction, eps_mode):
  params, grads = _problem()
  tx = optim.adamw(schedule, b1=B1, b2=B2, eps=EPS, weight_decay=WD,
                   bias_correction=bias_correction, eps_mode=eps_mode)
  got = run(tx, params, grads)
  assert_trees_close(got, reference(params, grads, bias_correction, eps_mode), 1e-6, 1e-7)
  # The variants must be far apart at this tolerance, or the check above proves nothing.
  for bc in (False, True):
    for mode in ("hf", "optax"):
      if (bc, mode) != (bias_correction, eps_mode):
        other = reference(params, grads, bc, mode)
        gap = max(float(np.max(np.abs(x - y))) for x, y in
                  zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(other)))
        assert gap > 1e-5, (bc, mode)


@pytest.mark.parametrize("lr", [3e-2, schedule])
def test_optax_mode_equals_optax_adamw(lr):
  params, grads = _problem(seed=1)
  ours = optim.adamw(lr, b1=B1, b2=B2, eps=EPS, weight_decay=WD, bias_correction=True,
                     eps_mode="optax")
  theirs = optax.adamw(lr, b1=B1, b2=B2, eps=EPS, weight_decay=WD, mask=DECAYED)
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
  assert_trees_close(hf, ox, 1e-5, 0)


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
  assert s[w] == pytest.approx(peak)
  assert np.all(np.diff(s[:w + 1]) > 0) and np.all(np.diff(s[w:total + 1]) < 0)
  expected = np.where(np.arange(total + 5) < w, peak * np.arange(total + 5) / w,
                      peak * np.clip((total - np.arange(total + 5)) / (total - w), 0, 1))
  np.testing.assert_allclose(s, expected, rtol=1e-5, atol=1e-12)
  flat = optim.linear_warmup_decay(peak, 0, total)
  assert float(flat(0)) == pytest.approx(peak)
  assert float(flat(total // 2)) == pytest.approx(peak / 2)
  assert float(flat(total)) == 0.0


@pytest.mark.parametrize("b1,b2", [(0.9, 0.999), (0.9, 0.98)])
def test_bias_correction_factor(b1, b2):
  t = np.arange(1, 2001)
  expected = np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
  # float32 cancellation in 1 - b2^t limits the agreement for small t
  np.testing.assert_allclose(np.asarray(optim.bias_correction_factor(t, b1, b2)), expected,
                             rtol=5e-5)
  assert float(optim.bias_correction_factor(1)) == pytest.approx(np.sqrt(0.001) / 0.1, rel=1e-5)


def _cfg(**kw):
  base = dict(lr=0.1, b1=0.9, b2=0.999, eps=1.0, eps_mode="hf", bias_correction=True,
              weight_decay=0.0, warmup_ratio=0.0, clip_norm=1.0)
  base.update(kw)
  return ml_collections.ConfigDict(base)



def test_from_config_clips():
  params, grads = _problem(seed=3)
  g = jax.tree_util.tree_map(lambda x: 1e3 * x, grads[0])
  norm = float(optax.tree.norm(g))
  assert norm > 10
  g_unit = jax.tree_util.tree_map(lambda x: x / norm, g)
  tx, _ = optim.from_config(_cfg(), total_steps=100)
  plain = optim.adamw(0.1, b1=0.9, b2=0.999, eps=1.0, weight_decay=0.0)
  clipped = _first_update(tx, g, params)
  assert_trees_close(clipped, _first_update(plain, g_unit, params), 1e-5, 1e-9)
  # eps=1 makes the step depend on the gradient's scale, so no clipping gives another update
  unclipped = _first_update(optim.from_config(_cfg(clip_norm=0.0), 100)[0], g, params)
  assert not np.allclose(unclipped["dense"]["kernel"], clipped["dense"]["kernel"], rtol=1e-2)


def test_from_config_schedule_and_warmup_ratio():
  _, sched = optim.from_config(_cfg(warmup_ratio=0.1), total_steps=200)
  assert float(sched(0)) == 0.0 and float(sched(20)) == pytest.approx(0.1)
  assert float(sched(200)) == 0.0
  for bad in (-0.1, 1.0, 1.5):
    with pytest.raises(ConfigError, match="warmup_ratio"):
      optim.from_config(_cfg(warmup_ratio=bad), total_steps=100)


def test_unknown_eps_mode():
  with pytest.raises(ConfigError) as e:
    optim.adamw(1e-3, eps_mode="torch")
  assert "torch" in str(e.value) and "hf" in str(e.value) and "optax" in str(e.value)
