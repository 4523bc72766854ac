"""The probe's in-step group norms against norms computed outside jit from the full gradient."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstab import data, probe
from jaxstab import train as train_lib
from tests.helpers import build_step, tiny_setup


def _plain_grads(model, params, batch, weight):
  """Gradient of the weighted loss through transformers' model: no interception, not the step."""
  def loss(p):
    logits = model.logits(p, batch, train=False)
    return train_lib.weighted_xent(logits, batch["labels"], weight)
  return jax.jit(jax.grad(loss))(params)


def _independent_group_sq(grads, num_layers):
  """Squared norms per group, from '/'-joined path strings (written independently of probe.py)."""
  out = {}
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  for path, g in flat:
    s = "/".join(str(getattr(k, "key", k)) for k in path)
    if s.startswith("classifier"):
      name = "classifier"
    elif "/pooler" in s:
      name = "pooler"
    elif "/encoder/layer/" in s:
      name = "layer_" + s.split("/encoder/layer/")[1].split("/")[0]
    elif "albert_layer_groups" in s:
      name = "shared"
    else:
      name = "embeddings"
    out[name] = out.get(name, 0.0) + float(np.sum(np.asarray(g, np.float64) ** 2))
  return out


def _first_batch(state, arrays, batch_size):
  idx, weight = data.batch_indices(jax.random.fold_in(state.key, train_lib.DATA), 0,
                                   len(arrays["labels"]), batch_size)
  return data.gather(arrays, idx), weight


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_group_norms_match_full_gradient(glue_dir, arch):
  cfg, model, arrays = tiny_setup(glue_dir, arch, probe__every=1)
  create, step, groups = build_step(cfg, model, arrays)
  state = jax.jit(create)(train_lib.seed_key(3))
  batch, weight = _first_batch(state, arrays, cfg.train.batch_size)
  grads = _plain_grads(model, state.params, batch, weight)
  expect = _independent_group_sq(grads, model.num_layers)
  new = jax.jit(step)(state, jax.device_put(arrays))
  got = np.asarray(new.probe["grad_norm"][0])
  assert groups == (["embeddings"] + [f"layer_{i}" for i in range(model.num_layers)]
                    + (["pooler"] if arch == "bert" else []) + ["classifier"])
  np.testing.assert_allclose(got, [np.sqrt(expect[g]) for g in groups], rtol=2e-4)
  total = np.sqrt(sum(expect.values()))
  np.testing.assert_allclose(float(new.probe["total_grad_norm"][0]), total, rtol=2e-4)
  assert int(new.probe["step"][0]) == 0


def test_albert_depth_contributions_sum_to_shared_gradient(glue_dir):
  cfg, model, arrays = tiny_setup(glue_dir, "albert", model__tiny__num_layers=3)
  create, step, groups = build_step(cfg, model, arrays)
  state = jax.jit(create)(train_lib.seed_key(5))
  batch, weight = _first_batch(state, arrays, cfg.train.batch_size)
  shared = probe.albert_shared(state.params)
  zeros = jax.tree_util.tree_map(jnp.zeros_like, shared)

  def loss(params, deltas):
    with probe.albert_depth_deltas(deltas):
      logits = model.logits(params, batch, train=False)
    return train_lib.weighted_xent(logits, batch["labels"], weight)

  deltas = [zeros] * 3
  g_params, g_depth = jax.jit(jax.grad(loss, argnums=(0, 1)))(state.params, deltas)
  plain = _plain_grads(model, state.params, batch, weight)
  summed = jax.tree_util.tree_map(lambda *xs: sum(xs), *g_depth)
  plain_shared = probe.albert_shared(plain)
  for a, b in zip(jax.tree_util.tree_leaves(summed), jax.tree_util.tree_leaves(plain_shared)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-4)
  # Depth contributions are genuinely different from one another (not one gradient split 3 ways).
  norms = [float(np.sqrt(sum(np.sum(np.asarray(x) ** 2) for x in jax.tree_util.tree_leaves(d))))
           for d in g_depth]
  assert len(set(np.round(norms, 6))) == 3
  # Interception leaves the forward pass unchanged.
  with probe.albert_depth_deltas(deltas):
    intercepted = model.logits(state.params, batch)
  np.testing.assert_allclose(np.asarray(intercepted), np.asarray(model.logits(state.params, batch)),
                             atol=1e-6)
  # And the train step's per-depth norms are these contributions' norms.
  new = jax.jit(step)(state, jax.device_put(arrays))
  got = dict(zip(groups, np.asarray(new.probe["grad_norm"][0])))
  np.testing.assert_allclose([got[f"layer_{i}"] for i in range(3)], norms, rtol=2e-4)
  expect = _independent_group_sq(plain, 3)
  np.testing.assert_allclose(got["classifier"], np.sqrt(expect["classifier"]), rtol=2e-4)
  np.testing.assert_allclose(got["embeddings"], np.sqrt(expect["embeddings"]), rtol=2e-4)


def test_record_writes_every_nth_step_only():
  buf = probe.init_buffers(total_steps=25, every=10, num_groups=2)
  assert buf["step"].shape == (3,)
  for s in range(25):
    buf = probe.record(buf, jnp.int32(s), 10, {
        "grad_norm": jnp.full((2,), float(s)), "total_grad_norm": s, "param_norm": s,
        "update_norm": s, "loss": s, "lr": s, "bias_correction": s})
  np.testing.assert_array_equal(np.asarray(buf["step"]), [0, 10, 20])
  np.testing.assert_array_equal(np.asarray(buf["loss"]), [0.0, 10.0, 20.0])
  np.testing.assert_array_equal(np.asarray(buf["grad_norm"])[:, 1], [0.0, 10.0, 20.0])
