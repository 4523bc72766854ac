"""R3F / R4F, Child-Tuning (D and F) and NoisyTune: each against a direct computation of what
its authors' code does (docs/running.md, "Later stabilisers"), on tiny models."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstab.config import config_lib
from jaxstab.data import dataset as data_lib
from jaxstab.engine import child_tuning, noisytune, rxf, train as train_lib
from jaxstab.infra.errors import ConfigError
from tests import guards
from tests.helpers import demo_config, tiny_setup


@pytest.fixture(scope="module")
def bert(glue_dir):
  return tiny_setup(glue_dir, "bert", n=32, length=16)


def _programs(cfg, model, arrays, total=4, **switches):
  cfg = cfg.copy_and_resolve_references()
  cfg.probe.every = 0  # no probe: a smaller program to compile
  for k, v in switches.items():
    config_lib.set_path(cfg, "stabilisers." + k, v)
  return train_lib.build_programs(cfg, model, n_train=len(arrays["labels"]), total=total)


def test_noisytune_noise_scale_per_tensor(bert):
  """Each tensor moves by (U(0,1) - 0.5) * lambda * std(W, ddof=1) of its own start: the head,
  biases and LayerNorm included; a seed's noise is its own and the same on every call."""
  cfg, model, arrays = bert
  lam = 0.15
  # A "pretrained" model whose every tensor has a spread (the tiny model's biases and LayerNorm
  # start constant, so noise scaled by their std would be 0 and prove nothing).
  leaves, treedef = jax.tree_util.tree_flatten(model.params)
  rng = np.random.default_rng(0)
  spread = [w + np.float32(0.05) * rng.standard_normal(w.shape, np.float32) for w in leaves]
  model = dataclasses.replace(model, params=jax.tree_util.tree_unflatten(treedef, spread))
  plain = jax.jit(lambda key: _programs(cfg, model, arrays).create_one(key).params)(
      train_lib.seed_key(3))
  noisy = _programs(cfg, model, arrays, noisytune=True, noisytune_lambda=lam)
  create = jax.jit(lambda key: noisy.create_one(key).params)
  params, again, other = (create(train_lib.seed_key(s)) for s in (3, 3, 4))
  kinds = set()
  flat = jax.tree_util.tree_flatten_with_path(plain)[0]
  leaves = jax.tree_util.tree_leaves
  for (path, w), p, p2, q in zip(flat, leaves(params), leaves(again), leaves(other)):
    w, p = np.asarray(w, np.float64), np.asarray(p, np.float64)
    np.testing.assert_array_equal(p, np.asarray(p2))
    scale = lam * np.std(w, ddof=1) if w.size > 1 else 0.0
    if scale == 0.0:  # zero biases (the head's), one-element tensors: nothing to scale by
      np.testing.assert_array_equal(p, w)
      continue
    u = (p - w) / scale + 0.5  # U(0, 1) if the noise is right
    names = "/".join(str(getattr(k, "key", k)) for k in path)
    kinds.add("head" if names.startswith("classifier") else "LayerNorm" if "LayerNorm" in names
              else names.rsplit("/", 1)[-1])
    # float32 rounding of p - w at |w| <= ~1 is ~1e-7, i.e. < 2e-3 of the smallest scale here
    # (std ~ 0.02 x 0.15 = 3e-3; measured extremes of u: -1e-4 .. 1 + 1e-4).
    assert u.min() >= -2e-3 and u.max() <= 1 + 2e-3, names
    if w.size >= 1000:  # a uniform's mean is 0.5 +- 0.29 / sqrt(n): 5 sigma at n >= 1000 is 0.046
      assert abs(u.mean() - 0.5) < 0.046, names
      assert abs(u.std() - np.sqrt(1 / 12)) < 0.03, names  # 0.289; measured |d| < 0.01
    assert not np.array_equal(p, np.asarray(q)), names  # another seed, other noise
  assert {"head", "LayerNorm", "bias", "kernel", "embedding"} <= kinds


def test_noisytune_lambda_must_be_finite_and_not_negative():
  cfg = config_lib.task_config("rte", "setting=noisytune")
  assert cfg.stabilisers.noisytune and cfg.stabilisers.noisytune_lambda == 0.15
  cfg.stabilisers.noisytune_lambda = -0.1
  with pytest.raises(ConfigError, match="noisytune_lambda=-0.1"):
    noisytune.check(cfg.stabilisers)


def _ones_like(params):
  return jax.tree_util.tree_map(jnp.ones_like, params)


def test_child_tuning_f_mask_rate_and_rescale(bert):
  """Child-Tuning-F keeps each gradient element with probability reserve_p, rescaled by
  1 / reserve_p; a new mask every step, another for another seed's key."""
  _, model, _ = bert
  p = 0.3
  tx = child_tuning.random_mask(p)
  grads = _ones_like(model.params)
  update = jax.jit(tx.update)

  def masks(key, steps):
    state, out = child_tuning.seeded(tx.init(grads), key), []
    for _ in range(steps):
      g, state = update(grads, state)
      out.append(np.concatenate([np.asarray(x).ravel() for x in jax.tree_util.tree_leaves(g)]))
    return out
  first, second = masks(jax.random.PRNGKey(1), 2)
  other, = masks(jax.random.PRNGKey(2), 1)
  n = first.size  # ~100k elements: the kept fraction's 5-sigma bound is 5 * sqrt(.21 / n) = 0.007
  assert set(np.unique(first)) == {0.0, np.float32(1 / p)}
  assert abs(np.mean(first != 0) - p) < 5 * np.sqrt(p * (1 - p) / n)
  # Independent masks agree on p^2 + (1-p)^2 = 0.58 of the elements (same 5-sigma bound).
  for m in (second, other):
    assert abs(np.mean((first != 0) == (m != 0)) - (p * p + (1 - p) ** 2)) < 0.01


@pytest.mark.parametrize("mode", ["f", "d"])
def test_child_tuning_mask_applies_to_the_clipped_gradient(mode):
  """A two-tensor tree (the chain is the same for any tree; the tiny BERT's 40 tensors only made
  the two programs slower to compile: 27 s and 14 s against 3 s and 2 s)."""
  rng = np.random.default_rng(0)
  params = {"dense": {"kernel": jnp.asarray(rng.standard_normal((32, 16)), jnp.float32),
                      "bias": jnp.asarray(rng.standard_normal(16), jnp.float32)}}
  grads = jax.tree_util.tree_map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype),
                                 params)  # global norm ~23: clipping to 1 is active
  guards.check_mask_on_clipped_gradient(mode, params, grads)


def test_child_tuning_d_mask_matches_a_plain_loop_fisher(bert):
  """Child-Tuning-D's compiled Fisher pass against a plain loop: each of the seed's first-epoch
  batches' gradient, every 'layer' tensor clipped to norm 1 on its own, squared, averaged; the
  mask keeps the top reserve_p of them (numpy's percentile), every other parameter unmasked."""
  cfg, model, arrays = bert
  p = 0.3
  programs = _programs(cfg, model, arrays, child_tuning="d", child_tuning_reserve_p=p)
  key = train_lib.seed_key(5)
  state = programs.prepare(programs.create(key[None]), arrays)
  got = jax.tree_util.tree_map(lambda m: np.asarray(m[0]), _fixed(state.opt_state).mask)
  spec = programs.spec
  order = spec.draw_order(train_lib.data_key_of(key), 0)
  params = jax.tree_util.tree_map(lambda x: x[0], state.params)
  grad = jax.jit(jax.grad(lambda q, b, w: train_lib.task_loss(
      model.logits(q, b, train=False, pass_segment_ids=spec.pass_segment_ids), b["labels"], w)))
  n = spec.steps_per_epoch
  fisher = {}
  for i in range(n):
    idx, weight = data_lib.batch_of_order(order, i, spec.n_train, spec.batch_size)
    batch = {k: np.asarray(v)[np.asarray(idx)] for k, v in arrays.items()}
    for path, g in jax.tree_util.tree_flatten_with_path(grad(params, batch, weight))[0]:
      name = "/".join(str(getattr(k, "key", k)) for k in path)
      if "layer" not in name:
        continue
      g = np.asarray(g, np.float64)
      g = g * min(1.0, 1.0 / (np.linalg.norm(g) + 1e-6))
      fisher[name] = fisher.get(name, 0.0) + g * g / n
  threshold = np.percentile(np.concatenate([f.ravel() for f in fisher.values()]), (1 - p) * 100)
  flips, total, kept = 0, 0, 0
  for path, m in jax.tree_util.tree_flatten_with_path(got)[0]:
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    if name not in fisher:
      assert m.all(), name  # outside the encoder layers: never masked
      continue
    flips += int(np.sum(m != (fisher[name] >= threshold)))
    total, kept = total + m.size, kept + int(m.sum())
  assert {"bert/embeddings/LayerNorm/scale", "classifier/kernel"}.isdisjoint(fisher)
  # float32 (compiled) vs float64 (here) sums may order the values at the threshold differently:
  # measured 0 flips of ~100k elements; allowed 1e-4 of them.
  assert flips <= 1e-4 * total
  assert abs(kept / total - p) < 1e-3


def _fixed(opt_state):
  found = [s for s in jax.tree_util.tree_leaves(
      opt_state, is_leaf=lambda x: isinstance(x, child_tuning.FixedMaskState))
           if isinstance(s, child_tuning.FixedMaskState)]
  assert len(found) == 1
  return found[0]


def test_child_tuning_checks():
  cfg = config_lib.task_config("rte", "setting=child_tuning_f")
  assert cfg.stabilisers.child_tuning == "f" and cfg.stabilisers.child_tuning_reserve_p == 0.3
  assert config_lib.task_config("rte", "setting=ours_child_tuning_d").train.epochs == 20.0
  cfg.stabilisers.child_tuning_reserve_p = 0.0
  with pytest.raises(ConfigError, match="child_tuning_reserve_p=0.0"):
    child_tuning.check(cfg.stabilisers)
  cfg.stabilisers.child_tuning = "x"
  with pytest.raises(ConfigError, match="child_tuning='x'"):
    child_tuning.check(cfg.stabilisers)


def test_r3f_symmetric_kl_against_a_direct_computation():
  rng = np.random.default_rng(0)
  logits, noised = rng.standard_normal((6, 3)) * 2, rng.standard_normal((6, 3)) * 2
  weight = np.array([1, 1, 1, 1, 0, 0], np.float32)  # a padded last batch: 4 real examples

  def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
  p, q = softmax(logits), softmax(noised)
  want = sum(np.sum(p[i] * np.log(p[i] / q[i])) + np.sum(q[i] * np.log(q[i] / p[i]))
             for i in range(4)) / 4
  got = float(rxf.symmetric_kl(jnp.asarray(noised, jnp.float32), jnp.asarray(logits, jnp.float32),
                               jnp.asarray(weight)))
  assert got == pytest.approx(want, rel=1e-5)  # float32 vs float64: measured rel 4e-8


def test_r3f_noise_lands_on_the_detached_token_embeddings(bert):
  _, model, arrays = bert
  batch = {k: jnp.asarray(v[:4]) for k, v in arrays.items()}
  guards.check_r3f_noise_on_token_embeddings(model, model.params, batch, jax.random.PRNGKey(3),
                                             eps=0.1)


def test_r3f_lambda_zero_is_devlins_step_and_lambda_one_is_not(glue_dir):
  """With r3f_lambda = 0 the second pass adds 0 x its KL: the step is the plain one to float32
  rounding; with lambda = 1 (eps raised to 0.1 so that the KL's gradient stands far above that
  rounding) it is not. A one-layer model and one compiled program: three steps to compile."""
  cfg, model, arrays = tiny_setup(glue_dir, "bert", n=16, length=8, model__tiny__num_layers=1)
  key = train_lib.seed_key(2)
  steps = [_programs(cfg, model, arrays, **switches).step_one for switches in (
      {}, dict(r3f=True, r3f_lambda=0.0), dict(r3f=True, r3f_lambda=1.0, r3f_eps=0.1))]
  create = _programs(cfg, model, arrays).create_one

  @jax.jit
  def differences():
    start = create(key)
    plain, zero, one = (step(start, arrays).params for step in steps)
    diff = lambda a, b: jnp.max(jnp.stack([jnp.max(jnp.abs(x - y)) for x, y in zip(
        jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))]))
    return diff(zero, plain), diff(one, plain)
  zero, one = map(float, differences())
  # Measured: lambda 0 vs plain 0.0 (0 x KL adds exact zeros); lambda 1 vs plain 1.2e-4.
  # Bounds: 1e-7 (float32 rounding of weights ~1) and 1e-6.
  assert zero <= 1e-7
  assert one > 1e-6


def test_r3f_refused_on_regression_and_r4f_alone():
  from jaxstab.study import validate  # pylint: disable=import-outside-toplevel
  cfg = config_lib.task_config("stsb", "setting=r3f")
  with pytest.raises(ConfigError, match="regression"):
    validate.check_config(cfg)
  cfg = config_lib.task_config("rte", "setting=devlin")
  cfg.stabilisers.r4f = True
  with pytest.raises(ConfigError, match="r4f=True needs stabilisers.r3f=True"):
    rxf.check(cfg.stabilisers, False)


def test_r4f_divides_the_heads_output_projection_by_its_spectral_norm(bert):
  """R4F's model is the same model with the head's output projection W replaced by W / sigma_max
  (numpy's SVD here), in training and evaluation alike; the gradient reaches W through sigma."""
  _, model, arrays = bert
  batch = {k: jnp.asarray(v[:4]) for k, v in arrays.items()}
  spectral = dataclasses.replace(model, spectral_head=True)
  assert model.family.head_out_proj == ("classifier",)
  kernel = np.asarray(model.params["classifier"]["kernel"], np.float64)
  sigma = np.linalg.svd(kernel, compute_uv=False)[0]
  by_hand = dict(model.params, classifier=dict(model.params["classifier"],
                                               kernel=jnp.asarray(kernel / sigma, jnp.float32)))
  logits = jax.jit(lambda p: spectral.logits(p, batch))(model.params)
  want = jax.jit(lambda p: model.logits(p, batch))(by_hand)
  # float32 SVD vs float64: measured max |d| 6e-8 on logits ~0.1; bound 1e-6.
  np.testing.assert_allclose(np.asarray(logits), np.asarray(want), rtol=0, atol=1e-6)
  # Scaling W does not change W / sigma: the normalised head's output is scale-free.
  scaled = dict(model.params, classifier=dict(model.params["classifier"],
                                              kernel=3.0 * model.params["classifier"]["kernel"]))
  np.testing.assert_allclose(np.asarray(jax.jit(lambda p: spectral.logits(p, batch))(scaled)),
                             np.asarray(logits), rtol=0, atol=1e-6)


# The later stabilisers' randomness and state belong to a run, not to its place in a group: an
# init x data-order grid (data_seeds) stopped early and regrouped trains its survivors exactly as
# the uninterrupted runs (the early stop's own guard, tests/test_seed_grid_and_early_stop.py).
# One setting holds them all (they compose; one compile instead of three): R4F (R3F's noise, per
# step, and the head's power-iteration vector, per run), Child-Tuning (F: a mask per step from
# the run's key; D: the run's fixed mask from its own Fisher pass, each mode once) and NoisyTune
# (the run's own start). Any one of them keyed by the slot, or left behind when the rows are
# taken, breaks the equality: a take that gave every survivor the first row's keys failed it,
# and one that gave every survivor the first row's Child-Tuning-D mask failed the `d` case
# (both checked by hand).
LATER = {"r3f": True, "r4f": True, "r3f_eps": 1e-2, "noisytune": True}


@pytest.mark.parametrize("child_tuning", ["f", "d"])
def test_with_data_seeds_and_early_stop_survivors_train_as_if_never_stopped(child_tuning, tmp_path,
                                                                            monkeypatch):
  """Init seeds 1-2 x data seeds 3,4 (runs 1003, 1004, 2003, 2004) in groups of 2, 8 steps; at
  step 4 runs 1004 and 2003, one from each group and each in another slot than before, go on
  together. Their gradient-norm records and final dev results equal the uninterrupted grid's
  bit for bit (map over seeds), and the setting records the grid and the stop."""
  from tests.test_seed_grid_and_early_stop import (  # pylint: disable=import-outside-toplevel
      _probe, _row)
  from jaxstab.study import early_stop, experiment  # pylint: disable=import-outside-toplevel
  over = {f"stabilisers__{k}": v for k, v in dict(LATER, child_tuning=child_tuning).items()}

  def config(**stop):
    return demo_config("1-2", data_seeds="3,4", train__max_steps=8, train__seed_axis="map",
                       train__seeds_per_step=2, probe__every=1, **over, **stop)

  plain = experiment.run_setting(config(), str(tmp_path / "plain"))
  monkeypatch.setattr(early_stop, "choose", lambda scores, keep: ([1004, 2003], [1003, 2004]))
  stopped = experiment.run_setting(config(train__early_stop__at=0.5, train__early_stop__keep=2),
                                   str(tmp_path / "es"))
  want, got = _probe(str(tmp_path / "plain")), _probe(str(tmp_path / "es"))
  for n in (1004, 2003):
    np.testing.assert_array_equal(got["grad_norm"][_row(got, n)], want["grad_norm"][_row(want, n)])
    final = lambda s: next(r for r in s["runs"] if r["seed"] == n)["final"]  # pylint: disable=cell-var-from-loop
    assert final(stopped) == final(plain)
  assert [r["seed"] for r in stopped["runs"]] == [1004, 2003]
  assert [(r["seed"], r["stopped_at"]) for r in stopped["stopped_runs"]] == [(1003, 4), (2004, 4)]
  assert plain["decomposition"]["grid"] == [2, 2]
