"""The train step: it learns, it is deterministic, and a seed group (vmapped or mapped) equals
seeds alone."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
