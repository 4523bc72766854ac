"""Planted bugs: each test plants one bug the suite exists to catch (by monkeypatching a function
or a model config; the package itself is never edited) and runs the guard that the ordinary
test runs (tests/guards.py). The guard must fail, and by a margin: the error the bug causes is at
least MIN_MARGIN times the guard's bound. Each test prints the margin (pytest -s shows it;
BUILD_NOTES.md, "Planted bugs", lists them).
"""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstab.config import config_lib
from jaxstab.data import dataset, metrics, tasks
from jaxstab.engine import models, optim, probe, train as train_lib
from jaxstab.study import studies
from tests import guards
from tests.helpers import build_step, tiny_setup

MIN_MARGIN = 10.0


def _times(err, bound):
  if bound > 0 and math.isfinite(err):
    return f"{err / bound:.3g}x the bound"
  return "exact check"


def assert_caught(bug: str, guard, *args, **kwargs) -> dict:
  """Runs guard(*args, **kwargs), which must raise GuardFailed by >= MIN_MARGIN x its bound."""
  try:
    passed = guard(*args, **kwargs)
  except guards.GuardFailed as failed:
    q, err, bound, ratio = guards.margin(failed.errors)
    msg = f"planted {bug}: guard '{failed.guard}' failed: " + "; ".join(
        f"{k} {e:.3g} vs bound {b:.3g} ({_times(e, b)})"
        for k, (e, b) in failed.errors.items() if not e <= b)
    print("\n" + msg)
    assert ratio >= MIN_MARGIN, msg + f"; a margin of at least {MIN_MARGIN:g}x is required"
    return failed.errors
  pytest.fail(f"planted {bug} went unnoticed by {guard.__name__}: {passed}")


# ============================================================ the model: PyTorch parity, one batch

@pytest.fixture(scope="module")
def parity(minilm_dir, glue_dir):
  """The one-batch parity setting of tests/test_parity.py (RTE, head seed 11): jaxstab's model,
  its inputs, and PyTorch's answers (computed once; the planted bugs are on the JAX side)."""
  mini = guards.minilm(minilm_dir)
  model = mini["model"]
  arrays = guards.glue_examples(glue_dir, "rte", "dev", 8, mini["tok"], 128)
  params = models.init_head(model.params, jax.random.PRNGKey(11), 0.02)
  tmodel = guards.new_torch_bert(minilm_dir)
  guards.copy_into_torch(tmodel, guards.jax_as_torch(params), prefix="classifier.")
  import torch  # pylint: disable=import-outside-toplevel
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  try:
    reference = guards.torch_one_batch(tmodel, arrays)
  finally:
    torch.set_num_threads(threads)
  return model, params, arrays, reference


@pytest.mark.parametrize("bug,key,value", [
    ("GELU tanh approximation", "hidden_act", "gelu_new"),
    ("LayerNorm eps 1e-5 (BERT's is 1e-12)", "layer_norm_eps", 1e-5),
])
def test_model_bug_fails_one_batch_parity(parity, monkeypatch, bug, key, value):
  model, params, arrays, reference = parity
  monkeypatch.setattr(model.config, key, value)  # the Flax modules read this config object
  assert_caught(bug, guards.check_parity_one_batch,
                guards.jax_one_batch(model, params, arrays), reference)


# ============================================================ the optimizer

def _flip(monkeypatch, **flips):
  """optim.adamw with some arguments replaced by a function of what the caller passed."""
  real = optim.adamw

  def planted(learning_rate, **kw):
    for name, f in flips.items():
      kw[name] = f(kw.get(name, {"bias_correction": True, "eps_mode": "hf"}[name]))
    return real(learning_rate, **kw)
  monkeypatch.setattr(optim, "adamw", planted)


@pytest.mark.parametrize("asked", [False, True], ids=["applied-when-off", "missing-when-on"])
def test_bias_correction_flipped_fails_adam_formulas(monkeypatch, asked):
  _flip(monkeypatch, bias_correction=lambda bc: not bc)
  assert_caught(f"bias correction {'missing' if asked else 'applied'} when asked "
                f"{'on' if asked else 'off'}", guards.check_adamw_matches_formulas, asked, "hf")


@pytest.mark.parametrize("asked", ["hf", "optax"])
def test_eps_inside_vs_outside_the_root_fails_adam_formulas(monkeypatch, asked):
  """eps added outside the bias-corrected root (hf, the reference) vs inside it (optax), swapped."""
  _flip(monkeypatch, eps_mode=lambda m: {"hf": "optax", "optax": "hf"}[m])
  assert_caught(f"eps_mode {asked!r} computed as the other", guards.check_adamw_matches_formulas,
                True, asked)


def test_weight_decay_on_layernorm_and_bias_fails_adam_formulas(monkeypatch):
  monkeypatch.setattr(optim, "default_decay_mask",
                      lambda params: jax.tree_util.tree_map(lambda _: True, params))
  assert_caught("weight decay on LayerNorm and biases", guards.check_adamw_matches_formulas,
                True, "hf")


def test_warmup_off_by_one_step_fails_the_schedule_check(monkeypatch):
  """The schedule one step ahead: the first update would use lr(1) > 0 instead of lr(0) = 0."""
  real = optim.linear_warmup_decay
  monkeypatch.setattr(optim, "linear_warmup_decay",
                      lambda peak, warmup, total: (lambda s, f=real(peak, warmup, total): f(s + 1)))
  cfg = config_lib.base_config().optim
  cfg.lr, cfg.warmup_ratio = 0.1, 0.1
  _, schedule = optim.from_config(cfg, total_steps=200)
  assert_caught("warmup off by one step", guards.check_schedule,
                [float(schedule(t)) for t in range(205)], 0.1, 20, 200)


# ============================================================ the probe

@pytest.fixture(scope="module")
def tiny_bert(glue_dir):
  return tiny_setup(glue_dir, "bert", probe__every=1)


def _drop_from_probe(monkeypatch, dropped):
  """probe.group_norms that never sees the gradient leaves whose path `dropped` accepts."""
  real = probe.group_norms

  def planted(grads, arch, names, depth_grads=None):
    grads = jax.tree_util.tree_map_with_path(
        lambda p, g: jnp.zeros_like(g) if dropped(jax.tree_util.keystr(p)) else g, grads)
    return real(grads, arch, names, depth_grads)
  monkeypatch.setattr(probe, "group_norms", planted)


def test_probe_dropping_any_one_tensor_fails_the_coverage_check(tiny_bert, monkeypatch):
  """Every tensor of the tiny BERT in turn; the margin reported is the smallest over them."""
  _, model, _ = tiny_bert
  paths = [jax.tree_util.keystr(p)
           for p, _ in jax.tree_util.tree_flatten_with_path(model.params)[0]]
  worst = None
  for path in paths:
    with monkeypatch.context() as m:
      _drop_from_probe(m, lambda p, path=path: p == path)
      with pytest.raises(guards.GuardFailed) as failed:
        guards.check_probe_covers_all_params(model.params, model.arch, model.num_layers)
    ratio = guards.margin({"group": failed.value.errors["group"]})[3]
    if worst is None or ratio < worst[0]:
      worst = (ratio, path)
  print(f"\n{len(paths)} tensors dropped one at a time; the least visible is {worst[1]}")
  _drop_from_probe(monkeypatch, lambda p: p == worst[1])
  assert_caught(f"probe dropping {worst[1]}", guards.check_probe_covers_all_params,
                model.params, model.arch, model.num_layers)


def test_probe_dropping_a_layer_fails_the_gradient_and_sum_checks(tiny_bert, monkeypatch):
  cfg, model, arrays = tiny_bert
  _drop_from_probe(monkeypatch, lambda p: "['encoder']['layer']['0']" in p)
  create, step, groups = build_step(cfg, model, arrays)
  rec, grads = guards.probe_first_step(model, create, step, arrays, 3, cfg.train.batch_size)
  assert_caught("probe dropping layer_0 (vs the full gradient)",
                guards.check_probe_matches_full_gradient, rec["grad_norm"][0],
                rec["total_grad_norm"][0], groups, grads)
  assert_caught("probe dropping layer_0 (groups vs the global norm)",
                guards.check_probe_sums_to_total, rec["grad_norm"][:1], rec["total_grad_norm"][:1])


# ============================================================ seed groups

def _plant_shifted_data_order(monkeypatch, seeds):
  """Inside a seed group (train.over_seeds), the k-th seed draws its batches with the data key of
  seed k+1 (the last with the first's); a seed trained alone is unaffected."""
  real_over, real_order = train_lib.over_seeds, dataset.epoch_order
  keys = jnp.stack([jax.random.fold_in(train_lib.seed_key(s), train_lib.DATA) for s in seeds])
  in_group = [False]

  def over_seeds(fn, in_axes, how):
    def flagged(*args):  # runs while the group's program is traced
      in_group[0] = True
      try:
        return fn(*args)
      finally:
        in_group[0] = False
    return real_over(flagged, in_axes, how)

  def epoch_order(data_key, epoch, n, batch_size):
    if in_group[0]:
      k = jnp.argmax(jnp.all(keys == data_key, axis=-1))
      data_key = keys[(k + 1) % len(seeds)]
    return real_order(data_key, epoch, n, batch_size)
  monkeypatch.setattr(train_lib, "over_seeds", over_seeds)
  monkeypatch.setattr(dataset, "epoch_order", epoch_order)


def test_seed_using_the_next_seeds_data_order_fails_group_vs_alone(glue_dir, monkeypatch):
  """Both seed axes; one build, so the seeds alone compile once for the two."""
  cfg, model, arrays = tiny_setup(glue_dir, "bert", model__dropout=0.1, probe__every=1)
  create, step, _ = build_step(cfg, model, arrays)
  seeds = [3, 11]  # tests/test_train.py's
  _plant_shifted_data_order(monkeypatch, seeds)
  for axis in ("vmap", "map"):
    assert_caught(f"k-th seed of a {axis} group on seed k+1's data order",
                  guards.check_seed_group_equals_alone, create, step, arrays, seeds, axis)


# ============================================================ resume and the failed-run baseline

def _plant_resume_one_too_early(monkeypatch):
  """restore_latest skips the newest checkpoint (orbax lists every step but the newest)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  from jaxstab.infra import checkpoint  # pylint: disable=import-outside-toplevel
  restore = checkpoint.GroupCheckpointer.restore_latest
  all_steps = ocp.CheckpointManager.all_steps

  def one_too_early(self, like):
    with monkeypatch.context() as m:
      m.setattr(ocp.CheckpointManager, "all_steps",
                lambda mgr, *a, **k: sorted(all_steps(mgr, *a, **k))[:-1])
      return restore(self, like)
  monkeypatch.setattr(checkpoint.GroupCheckpointer, "restore_latest", one_too_early)


def test_resume_from_one_checkpoint_too_early_fails_the_resume_check(killed_at_step_7,
                                                                    monkeypatch):
  workdir = killed_at_step_7("planted_resume_too_early")
  committed = guards.committed_checkpoints(workdir)
  assert len(committed) >= 2, committed  # an older checkpoint to fall back to
  _plant_resume_one_too_early(monkeypatch)
  resumed = guards.checkpoint_cli(workdir)  # in this process, with the plant
  print(f"\ncomplete checkpoints {committed}; resumed from {guards.resume_steps(resumed.stderr)}")
  assert_caught("resume from one checkpoint too early", guards.check_resumed_at,
                resumed.stderr, committed[-1])


def test_majority_baseline_on_train_labels_fails_the_majority_check(glue_dir, tmp_path,
                                                                    monkeypatch):
  """metrics.majority handed RTE's training labels instead of the dev labels it was given."""
  train_labels = dataset.load_split(tasks.get_task("rte"), "train", "tsv", glue_dir).labels
  real = metrics.majority
  monkeypatch.setattr(metrics, "majority", lambda metric, labels: real(metric, train_labels))
  cfg = config_lib.task_config("rte", "model=tiny-bert")
  cfg.data.dir = glue_dir
  cfg.data.train_examples = 32  # one step of 8; only these are tokenized (the plant reads them all)
  cfg.model.tiny.vocab_size = 300
  cfg.train.max_steps = 1
  cfg.train.max_seq_length = 16
  cfg.train.batch_size = 8
  cfg.train.eval_batch_size = 280
  cfg.probe.every = 1
  studies.run(cfg, str(tmp_path))
  summary = json.loads((tmp_path / "summary.json").read_text())
  print(f"\nmajority on train: {np.bincount(train_labels).max() / len(train_labels):.4f}")
  assert_caught("majority baseline on the training labels", guards.check_majority, summary)


# ============================================================ linear connectivity

def test_barrier_over_the_endpoint_mean_fails_the_connectivity_loop(monkeypatch):
  """results.connectivity.barrier measuring the rise above the mean of the two endpoint losses
  instead of above the chord between them (the same only when the endpoints' losses are equal)."""
  from jaxstab.results import connectivity as conn  # pylint: disable=import-outside-toplevel
  from tests.helpers import ToyModel, toy_arrays, toy_params  # pylint: disable=import-outside-toplevel

  def over_the_mean(loss, alpha):  # pylint: disable=unused-argument
    y = np.asarray(loss, np.float64)
    return float(np.max(y - (y[0] + y[-1]) / 2))
  monkeypatch.setattr(conn, "barrier", over_the_mean)
  model, arrays = ToyModel(), toy_arrays()
  a, b = toy_params(2.0, 2.0), toy_params(-1.0, -0.8, 0.3)   # the ordinary test's pair
  want = guards.connectivity_loop(model, a, b, arrays, 3)
  assert_caught("barrier over the endpoint mean", guards.check_connectivity_matches_loop,
                guards.connectivity_package(model, a, b, arrays, 3), want)

# ============================================================ Child-Tuning: where the mask sits

@pytest.mark.parametrize("mode", ["f", "d"])
def test_child_tuning_mask_after_adam_fails_the_clipped_gradient_check(monkeypatch, mode):
  """The mask applied to Adam's update instead of to the clipped gradient Adam receives."""
  import optax  # pylint: disable=import-outside-toplevel
  real = optim.from_config

  def after_adam(optim_cfg, total_steps, lr_scales=None, grad_mask=None):
    tx, schedule = real(optim_cfg, total_steps, lr_scales)
    return optax.chain(tx, grad_mask), schedule
  monkeypatch.setattr(optim, "from_config", after_adam)
  rng = np.random.default_rng(0)
  params = {"dense": {"kernel": jnp.asarray(rng.standard_normal((32, 16)), jnp.float32),
                      "bias": jnp.asarray(rng.standard_normal(16), jnp.float32)}}
  grads = jax.tree_util.tree_map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype),
                                 params)
  assert_caught(f"Child-Tuning-{mode.upper()}'s mask after Adam",
                guards.check_mask_on_clipped_gradient, mode, params, grads)


# ============================================================ R3F: where the noise goes

@pytest.mark.parametrize("module", ["position_embeddings", "embeddings"],
                         ids=["noise-on-the-positions", "noise-after-the-layernorm"])
def test_r3f_noise_on_the_wrong_tensor_fails_the_token_embeddings_check(glue_dir, monkeypatch,
                                                                        module):
  import dataclasses  # pylint: disable=import-outside-toplevel
  from jaxstab.engine import families  # pylint: disable=import-outside-toplevel
  _, model, arrays = tiny_setup(glue_dir, "bert", n=8, length=8, model__tiny__num_layers=1)
  monkeypatch.setitem(families.FAMILIES, "bert", dataclasses.replace(
      families.FAMILIES["bert"], token_embeddings=module))
  batch = {k: jnp.asarray(v[:4]) for k, v in arrays.items()}
  assert_caught(f"R3F noise on {module}", guards.check_r3f_noise_on_token_embeddings, model,
                model.params, batch, jax.random.PRNGKey(3), 0.1)
