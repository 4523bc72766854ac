"""The probe's in-step group norms against norms computed outside jit from the full gradient
(tests.guards: the checks, with bounds at float32 rounding)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstab.engine import probe, train as train_lib
from tests import guards
from tests.helpers import build_step, tiny_setup


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_group_norms_match_full_gradient(glue_dir, arch):
  cfg, model, arrays = tiny_setup(glue_dir, arch, probe__every=1)
  create, step, groups = build_step(cfg, model, arrays)
  assert groups == (["embeddings"] + [f"layer_{i}" for i in range(model.num_layers)]
                    + (["pooler"] if arch == "bert" else []) + ["classifier"])
  rec, grads = guards.probe_first_step(model, create, step, arrays, 3, cfg.train.batch_size)
  errors = guards.check_probe_matches_full_gradient(rec["grad_norm"][0], rec["total_grad_norm"][0],
                                                    groups, grads)
  errors.update(guards.check_probe_sums_to_total(rec["grad_norm"][:1], rec["total_grad_norm"][:1]))
  print(f"\n[{arch}] {errors}")


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_groups_cover_every_parameter(glue_dir, arch):
  """Real gradients cannot show a dropped tensor (an attention key bias holds 1e-21 of its
  group's squared norm); an all-ones gradient can: each group's norm^2 is its parameter count."""
  _, model, _ = tiny_setup(glue_dir, arch)
  print(f"\n[{arch}]", guards.check_probe_covers_all_params(model.params, model.arch,
                                                          model.num_layers))


def test_albert_depth_contributions_sum_to_shared_gradient(glue_dir):
  cfg, model, arrays = tiny_setup(glue_dir, "albert", model__tiny__num_layers=3)
  create, step, groups = build_step(cfg, model, arrays)
  state = jax.jit(create)(train_lib.seed_key(5))
  batch, weight = guards.first_batch(state, arrays, cfg.train.batch_size)
  shared = probe.albert_shared(state.params)
  zeros = jax.tree_util.tree_map(jnp.zeros_like, shared)

  def loss(params, deltas):
    with probe.albert_depth_deltas(deltas):
      logits = model.logits(params, batch, train=False)
    return train_lib.weighted_xent(logits, batch["labels"], weight)

  deltas = [zeros] * 3
  g_params, g_depth = jax.jit(jax.grad(loss, argnums=(0, 1)))(state.params, deltas)
  plain = guards.plain_grads(model, state.params, batch, weight)
  summed = jax.tree_util.tree_map(lambda *xs: sum(xs), *g_depth)
  plain_shared = probe.albert_shared(plain)
  # measured max |d| 1.9e-9 (gradients up to 0.03)
  for a, b in zip(jax.tree_util.tree_leaves(summed), jax.tree_util.tree_leaves(plain_shared)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-8, rtol=0)
  # Depth contributions are genuinely different from one another (not one gradient split 3 ways).
  norms = [float(np.sqrt(sum(np.sum(np.asarray(x) ** 2) for x in jax.tree_util.tree_leaves(d))))
           for d in g_depth]
  assert len(set(np.round(norms, 6))) == 3
  # Interception leaves the forward pass unchanged: shared + 0 is the same weights, bit for bit.
  with probe.albert_depth_deltas(deltas):
    intercepted = model.logits(state.params, batch)
  np.testing.assert_array_equal(np.asarray(intercepted),
                                np.asarray(model.logits(state.params, batch)))
  # And the train step's per-depth norms are these contributions' norms.
  new = jax.jit(step)(state, jax.device_put(arrays))
  got = dict(zip(groups, np.asarray(new.probe["grad_norm"][0])))
  # measured rel: depths 5.3e-8, classifier 2.5e-8, embeddings 1.9e-8
  np.testing.assert_allclose([got[f"layer_{i}"] for i in range(3)], norms,
                             rtol=guards.PROBE_GROUP_RTOL)
  expect = guards.independent_group_sq(plain)
  np.testing.assert_allclose(got["classifier"], np.sqrt(expect["classifier"]),
                             rtol=guards.PROBE_GROUP_RTOL)
  np.testing.assert_allclose(got["embeddings"], np.sqrt(expect["embeddings"]),
                             rtol=guards.PROBE_GROUP_RTOL)


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


@pytest.mark.parametrize("method", ["lora", "bitfit"])
def test_albert_depth_contributions_under_peft(glue_dir, method):
  """ALBERT under PEFT: the train step's per-depth norms of the shared layer are the depth
  contributions to the gradient of what a seed trains (LoRA's A and B, or the biases), which sum
  to that gradient; interception leaves the forward pass unchanged. A LoRA whose adapters were
  lost inside the re-applied layer group (group-relative module paths) fails it (tried by
  hand: peft.depth_adapters returning None)."""
  from jaxstab.engine import peft  # pylint: disable=import-outside-toplevel
  from tests.lora_twin import lora_cfg, nonzero_adapters  # pylint: disable=import-outside-toplevel
  cfg, model, arrays = tiny_setup(glue_dir, "albert", model__tiny__num_layers=3, probe__every=1)
  cfg = lora_cfg(cfg, "query,value,ffn") if method == "lora" else cfg
  cfg.peft.method = method
  create, step, groups = build_step(cfg, model, arrays)
  bitfit = method == "bitfit"  # (BitFit also trains the embeddings' and the pooler's biases)
  assert groups == (["embeddings"] * bitfit + ["layer_0", "layer_1", "layer_2"]
                    + ["pooler"] * bitfit + ["classifier"])
  state = jax.jit(create)(train_lib.seed_key(5))
  state = state.replace(params=nonzero_adapters(state.params, jax.random.PRNGKey(2)))
  batch, weight = guards.first_batch(state, arrays, cfg.train.batch_size)
  pm = peft.adapt(model, peft.spec_of(cfg.peft))
  backbone = model.params  # the step's shared argument under PEFT (Programs.anchor)

  def logits_of(t, deltas=None):
    inputs = peft.inputs(pm, t, backbone)
    if deltas is None:
      return pm.logits(inputs, batch, train=False)
    with probe.albert_depth_deltas(deltas, peft.depth_adapters(pm, t)):
      return pm.logits(inputs, batch, train=False)

  loss = lambda t, deltas=None: train_lib.weighted_xent(logits_of(t, deltas), batch["labels"],
                                                         weight)
  zeros = jax.tree_util.tree_map(jnp.zeros_like, probe.albert_shared(state.params))
  _, g_depth = jax.jit(jax.grad(loss, argnums=(0, 1)))(state.params, [zeros] * 3)
  plain = jax.jit(jax.grad(loss))(state.params)
  summed = jax.tree_util.tree_map(lambda *xs: sum(xs), *g_depth)
  pairs = list(zip(jax.tree_util.tree_leaves(summed),
                   jax.tree_util.tree_leaves(probe.albert_shared(plain))))
  worst = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in pairs)
  top = max(float(np.max(np.abs(np.asarray(b)))) for _, b in pairs)
  moved = float(np.max(np.abs(np.asarray(jax.jit(logits_of)(state.params, [zeros] * 3))
                              - np.asarray(jax.jit(logits_of)(state.params)))))
  print(f"\n[albert {method}] depth sum vs gradient {worst:.2g} (max |g| {top:.2g}); "
        f"logits moved by interception {moved:.2g}")
  assert worst <= 2e-8  # measured 4.7e-10 (LoRA, max |g| 0.009) and 1.9e-9 (BitFit, 0.03)
  assert moved == 0.0   # trainable + 0, bit for bit
  norms = [float(np.sqrt(sum(np.sum(np.asarray(x) ** 2) for x in jax.tree_util.tree_leaves(d))))
           for d in g_depth]
  assert len(set(np.round(norms, 6))) == 3 and min(norms) > 0
  new = jax.jit(step)(state, jax.device_put(arrays), backbone)
  got = dict(zip(groups, np.asarray(new.probe["grad_norm"][0])))
  np.testing.assert_allclose([got[f"layer_{i}"] for i in range(3)], norms,
                             rtol=guards.PROBE_GROUP_RTOL)
