"""The train step: it learns, it is deterministic, and a seed group (vmapped or mapped) equals
seeds alone."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstab.data import dataset
from jaxstab.engine import models, probe, train as train_lib
from tests import guards
from tests.helpers import build_step, tiny_setup, tree_max_abs_diff


_run = guards.run_alone


def test_tiny_model_reduces_training_loss(glue_dir):
  cfg, model, arrays = tiny_setup(glue_dir, "bert", n=32, probe__every=1, optim__lr=2e-3,
                                  optim__bias_correction=True, optim__warmup_ratio=0.1)
  create, step, _ = build_step(cfg, model, arrays, total_steps=64)
  state = _run(create, step, arrays, 1, 64)
  loss = np.asarray(state.probe["loss"])
  assert loss[-8:].mean() < 0.5 * loss[:8].mean(), loss


def test_same_seed_is_bit_identical_and_seeds_differ(glue_dir):
  cfg, model, arrays = tiny_setup(glue_dir, "bert", model__dropout=0.1, probe__every=2)
  create, step, _ = build_step(cfg, model, arrays)
  a = _run(create, step, arrays, 7, 6)
  b = _run(create, step, arrays, 7, 6)
  c = _run(create, step, arrays, 8, 6)
  assert tree_max_abs_diff(a.params, b.params) == 0.0
  for k in a.probe:
    np.testing.assert_array_equal(np.asarray(a.probe[k]), np.asarray(b.probe[k]))
  assert tree_max_abs_diff(a.params["classifier"], c.params["classifier"]) > 0
  assert not np.array_equal(np.asarray(a.probe["loss"]), np.asarray(c.probe["loss"]))


@pytest.mark.parametrize("axis", ["vmap", "map"])
def test_seed_group_equals_each_seed_alone(glue_dir, axis):
  """map: bit for bit (each seed runs the very program it runs alone); vmap: within float32
  rounding (tests.guards.SEED_GROUP_BOUNDS, with the measured figures)."""
  cfg, model, arrays = tiny_setup(glue_dir, "bert", model__dropout=0.1, probe__every=1)
  create, step, _ = build_step(cfg, model, arrays)
  errors, moved = guards.check_seed_group_equals_alone(create, step, arrays, [3, 11], axis)
  print(f"\n[{axis}] {errors}; params moved by up to {moved:.2e}")
  # Not vacuous: 5 steps moved the parameters by ~3e-4, >= 1000x the vmap bound on them, so an
  # update wrong by a fraction of a percent fails.
  assert moved >= 1000 * guards.SEED_GROUP_BOUNDS["vmap"]["params"]


def _per_step_permutation_batch(data_key, step, n, bs):
  """The batch (indices, weights) of `step` as the step drew it when it sorted a fresh
  permutation on every step: the formula every committed result was trained with, written out
  here apart from jaxstab's code."""
  per_epoch = -(-n // bs)
  epoch, pos = divmod(step, per_epoch)
  perm = np.asarray(jax.random.permutation(jax.random.fold_in(data_key, epoch), n))
  pad = per_epoch * bs - n
  order = np.concatenate([perm, np.zeros(pad, perm.dtype)])
  weight = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
  return order[pos * bs:(pos + 1) * bs], weight[pos * bs:(pos + 1) * bs]


def _watch_batches(monkeypatch):
  """A list that receives every batch the compiled step cuts, (indices, weights), as its
  program computed them: data.batch_of_order's outputs pass through a host callback on their
  way to the gather and the loss (under vmap one call for the whole group, [K, B])."""
  seen, real = [], dataset.batch_of_order

  def note(idx, weight):
    seen.append((np.array(idx), np.array(weight)))
    return idx, weight

  def watched(order, step, n, bs):
    idx, weight = real(order, step, n, bs)
    shapes = (jax.ShapeDtypeStruct(idx.shape, idx.dtype),
              jax.ShapeDtypeStruct(weight.shape, weight.dtype))
    return jax.pure_callback(note, shapes, idx, weight, vmap_method="expand_dims")
  monkeypatch.setattr(dataset, "batch_of_order", watched)
  return seen


def _batches_drawn(programs, create, arrays, seeds, data_keys, steps, how, seen):
  """Runs `steps` steps of `seeds` (alone: step_one jitted; else programs.step, the group's
  program) and returns the batches the step cut, indices and weights [steps, seeds, B], and the
  final state. The group's state is stacked from `create` (one compile for every program)."""
  del seen[:]
  dev = jax.device_put(arrays)
  states = [create(train_lib.seed_key(s), key) for s, key in zip(seeds, data_keys)]
  if how == "alone":
    state, step = states[0], jax.jit(programs.step_one)
  else:
    state, step = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *states), programs.step
  for _ in range(steps):
    state = step(state, dev, programs.anchor)
  jax.block_until_ready(state)
  shape = (steps, len(seeds), -1)
  return (np.concatenate([i for i, _ in seen]).reshape(shape),
          np.concatenate([w for _, w in seen]).reshape(shape), state)


def test_order_drawn_once_per_epoch_equals_the_per_step_permutation(glue_dir, monkeypatch):
  """The order kept in the state and redrawn when an epoch begins gives the very batches of the
  per-step permutation, across two epoch boundaries (20 examples, batches of 8: 3 steps an
  epoch, the last padded), for a seed alone and for both group programs build_programs
  compiles (seeds with data seeds of their own, as a data_seeds grid runs them)."""
  n, bs, steps = 20, 8, 7
  cfg, model, arrays = tiny_setup(glue_dir, "bert", n=n, length=8, probe__every=0)
  seeds, data_seeds = [3, 11], [5, 3]
  data_keys = [jax.random.fold_in(jax.random.PRNGKey(d), 1) for d in data_seeds]  # DATA = 1
  seen = _watch_batches(monkeypatch)
  create = None
  for how in ("alone", "map", "vmap"):
    k = 1 if how == "alone" else len(seeds)
    programs = train_lib.build_programs(cfg, model, n_train=n, total=steps, seeds_per_group=k,
                                        seed_axis="map" if how == "alone" else how)
    create = create or jax.jit(programs.create_one)  # the same program for all three
    idx, weight, state = _batches_drawn(programs, create, arrays, seeds[:k], data_keys[:k],
                                        steps, how, seen)
    for t in range(steps):
      for i, key in enumerate(data_keys[:k]):
        want_idx, want_w = _per_step_permutation_batch(key, t, n, bs)
        np.testing.assert_array_equal(idx[t, i], want_idx, err_msg=f"{how}: step {t}, seed {i}")
        np.testing.assert_array_equal(weight[t, i], want_w, err_msg=f"{how}: step {t}, seed {i}")
    assert np.asarray(state.order_epoch).ravel().tolist() == [steps // 3] * k, how


def test_padded_batch_loss_is_mean_over_real_examples():
  logits = jnp.array([[2.0, 0.0], [0.0, 1.0], [5.0, -5.0], [9.0, 9.0]])
  labels = jnp.array([0, 1, 1, 0])
  weight = jnp.array([1.0, 1.0, 1.0, 0.0])
  ce = -jax.nn.log_softmax(logits)[jnp.arange(4), labels]
  # measured |d| / loss = 2.7e-8 (float32 log-softmax)
  np.testing.assert_allclose(float(train_lib.weighted_xent(logits, labels, weight)),
                             float(ce[:3].mean()), rtol=3e-7, atol=0)


def test_head_is_drawn_from_the_seed(glue_dir):
  _, model, _ = tiny_setup(glue_dir, "roberta")
  a = models.init_head(model.params, jax.random.PRNGKey(1), 0.02)
  b = models.init_head(model.params, jax.random.PRNGKey(2), 0.02)
  kernels = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(a["classifier"])[0]:
    name = str(getattr(path[-1], "key", path[-1]))
    if name == "bias":
      assert float(jnp.abs(leaf).max()) == 0.0
    else:  # 5-sigma bounds from the sample size: dense 64x64 std 0.0202 (bound 0.02 +- 0.0011),
      # out_proj 64x2 std 0.0191 (bound 0.02 +- 0.0063)
      guards.check_normal_sample(leaf, 0.02, f"head {jax.tree_util.keystr(path)}")
      kernels += 1
  assert kernels == 2
  assert tree_max_abs_diff(a["classifier"], b["classifier"]) > 0
  assert tree_max_abs_diff(a["roberta"], model.params["roberta"]) == 0.0


def test_lr_and_bias_correction_are_recorded(glue_dir):
  cfg, model, arrays = tiny_setup(glue_dir, "bert", probe__every=1, optim__warmup_ratio=0.25)
  create, step, _ = build_step(cfg, model, arrays, total_steps=8)
  state = guards.run_alone(create, step, arrays, 1, 8)
  # lr(0) = 0 exactly, then 2 warmup steps and a decay to 0 at step 8 (measured rel 2.5e-8)
  guards.check_schedule(np.asarray(state.probe["lr"]), cfg.optim.lr, 2, 8)
  # float32 cancellation in 1 - b2^t: measured rel 1.0e-5 (at t = 2)
  np.testing.assert_allclose(np.asarray(state.probe["bias_correction"]),
                             [np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) for t in range(1, 9)],
                             rtol=1e-4)
  assert set(probe.SCALARS) | {"step", "grad_norm"} == set(state.probe)


def test_seed_axis_choice():
  assert train_lib.seed_axis_for("auto", "cpu", 1) == "map"
  assert train_lib.seed_axis_for("auto", "cpu", 8) == "vmap"  # the seed axis is split over them
  assert train_lib.seed_axis_for("auto", "gpu", 1) == "vmap"
  assert train_lib.seed_axis_for("vmap", "cpu", 1) == "vmap"


def test_step_spec_is_resolved_from_the_config_once(glue_dir):
  """step_spec reads every value of the step from the config (and the probe's groups from the
  model); a step made from that spec by hand is the program build_programs compiles."""
  import dataclasses  # pylint: disable=import-outside-toplevel
  cfg, model, arrays = tiny_setup(glue_dir, "bert", probe__every=2, stabilisers__mixout=0.1,
                                  stabilisers__prior_wd=True, optim__b1=0.8)
  spec = train_lib.step_spec(cfg, model, n_train=len(arrays["labels"]))
  assert spec == train_lib.StepSpec(
      n_train=len(arrays["labels"]), batch_size=8, probe_every=2,
      group_names=tuple(probe.group_names(model.params, model.arch, model.num_layers)),
      b1=0.8, b2=cfg.optim.b2, pass_segment_ids=True, mixout=0.1, mixout_head=False,
      prior_wd=True)
  with pytest.raises(dataclasses.FrozenInstanceError):
    spec.batch_size = 16
  cfg.probe.every = -3
  assert train_lib.step_spec(cfg, model, n_train=4).probe_every == 0  # negative: off
  cfg.probe.every = 2
  programs = train_lib.build_programs(cfg, model, n_train=len(arrays["labels"]), total=6)
  assert programs.spec == spec and programs.group_names == list(spec.group_names)
  by_hand = train_lib.make_train_step(model, programs.tx, programs.schedule, spec)
  state = programs.create_one(train_lib.seed_key(3))
  a = jax.jit(programs.step_one)(state, arrays, programs.anchor)
  b = jax.jit(by_hand)(state, arrays, programs.anchor)
  assert tree_max_abs_diff(a, b) == 0.0
