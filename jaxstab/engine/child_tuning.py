"""Child-Tuning (Xu et al. 2021, EMNLP, "Raise a Child in Large Language Model"): each update
changes only a "child network" of the parameters, by masking the gradient inside the optimizer.

As the authors' code runs it (alibaba/AliceMind ChildTuning/ChildTuningOptimizer.py, `step`):
the mask multiplies the gradient the optimizer receives, i.e. after the trainer's global-norm
clipping and before Adam's moments see it.

- Child-Tuning-F (task-free): a fresh Bernoulli(reserve_p) mask on every element of every
  gradient at every step, rescaled by 1 / reserve_p (`random_mask`).
- Child-Tuning-D (task-driven): a fixed mask from a Fisher-information estimate made once before
  training (ChildTuning/ChildTuningD.py, `calculate_fisher`): over one pass of the training set,
  in training mode (dropout on), each batch's gradient of every parameter whose name contains
  "layer" (the encoder layers; 'LayerNorm' does not match, the name test is case-sensitive) is
  clipped to norm `clip` tensor by tensor, squared and summed, divided by the number of batches.
  One global threshold, the (1 - reserve_p) percentile of all those values, keeps the top
  reserve_p fraction (values >= the threshold); every other parameter is never masked and no
  rescaling is applied (`fixed_mask`, `fisher`, `mask_from_fisher`).

Both are optax GradientTransformations whose state is explicit: Child-Tuning-F's holds its key
and a step count (the seed's own key is put in by `seeded`), Child-Tuning-D's holds the mask (all
ones until `with_mask` puts in the Fisher pass's).
"""
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxstab.data import dataset as data_lib
from jaxstab.engine.losses import task_loss
from jaxstab.infra.errors import ConfigError
from jaxstab.infra.treepath import names as path_names

MODES = ("off", "f", "d")


class RandomMaskState(NamedTuple):
  key: jax.Array    # raw uint32[2]: the seed's Child-Tuning key (`seeded`)
  count: jax.Array  # masks drawn so far (int32): step t's mask is drawn from fold_in(key, t)


class FixedMaskState(NamedTuple):
  mask: Any  # a bool per parameter element: True = the gradient passes


def random_mask(reserve_p: float) -> optax.GradientTransformation:
  """Child-Tuning-F: g * Bernoulli(reserve_p) / reserve_p, element by element, a new mask per
  update. One uniform draw covers every tensor (each takes its own slice), as in noisytune."""
  def init(params):
    del params
    return RandomMaskState(jnp.zeros((2,), jnp.uint32), jnp.zeros([], jnp.int32))

  def update(updates, state, params=None):
    del params
    leaves, treedef = jax.tree_util.tree_flatten(updates)
    u = jax.random.uniform(jax.random.fold_in(state.key, state.count),
                           (sum(g.size for g in leaves),), jnp.float32)
    out, start = [], 0
    for g in leaves:
      keep, start = u[start:start + g.size].reshape(g.shape) < reserve_p, start + g.size
      out.append(jnp.where(keep, g / reserve_p, jnp.zeros_like(g)))
    return (jax.tree_util.tree_unflatten(treedef, out),
            RandomMaskState(state.key, state.count + 1))
  return optax.GradientTransformation(init, update)


def fixed_mask() -> optax.GradientTransformation:
  """Child-Tuning-D: g * mask with the mask held in the state (all True until with_mask)."""
  def init(params):
    return FixedMaskState(jax.tree_util.tree_map(lambda p: jnp.ones(p.shape, bool), params))

  def update(updates, state, params=None):
    del params
    masked = jax.tree_util.tree_map(lambda g, m: jnp.where(m, g, jnp.zeros_like(g)), updates,
                                    state.mask)
    return masked, state
  return optax.GradientTransformation(init, update)


def from_config(stabilisers_cfg):
  """The mask transformation a config asks for, or None (stabilisers.child_tuning = 'off')."""
  mode = stabilisers_cfg.child_tuning
  if mode == "f":
    return random_mask(float(stabilisers_cfg.child_tuning_reserve_p))
  if mode == "d":
    return fixed_mask()
  return None


def _is(kind):
  return lambda x: isinstance(x, kind)


def seeded(opt_state, key):
  """opt_state with every Child-Tuning-F state's key set to `key` (raw uint32[2])."""
  return jax.tree_util.tree_map(lambda s: s._replace(key=jnp.asarray(key, jnp.uint32))
                                if isinstance(s, RandomMaskState) else s, opt_state,
                                is_leaf=_is(RandomMaskState))


def with_mask(opt_state, mask):
  """opt_state with every Child-Tuning-D state holding `mask` (a bool tree like the params)."""
  return jax.tree_util.tree_map(lambda s: FixedMaskState(mask)
                                if isinstance(s, FixedMaskState) else s, opt_state,
                                is_leaf=_is(FixedMaskState))


def in_fisher(path) -> bool:
  """Whether a parameter takes part in Child-Tuning-D's Fisher estimate and mask: its name
  contains 'layer' (the authors' test on torch names; jaxstab's parameter paths spell the
  encoder layers the same way: bert/encoder/layer/3/..., albert_layer_groups, layers)."""
  return any("layer" in n for n in path_names(path))


def clip_tensor(g, max_norm: float):
  """torch.nn.utils.clip_grad_norm_ on one tensor: scaled by max_norm / (norm + 1e-6) when that
  is below 1. max_norm <= 0 (jaxstab's 'no clipping') leaves it as it is."""
  if max_norm <= 0:
    return g
  coef = max_norm / (jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float32)))) + 1e-6)
  return g * jnp.minimum(coef, 1.0).astype(g.dtype)


def fisher(grad_of: Callable, params, num_batches: int, clip: float):
  """The Fisher estimate: sum over batches i < num_batches of clip_tensor(grad_of(params, i))^2,
  divided by num_batches, for the parameters `in_fisher` (zeros elsewhere). `grad_of(params, i)`
  is batch i's gradient (jittable; one lax.fori_loop)."""
  def add(i, acc):
    grads = grad_of(params, i)
    return jax.tree_util.tree_map_with_path(
        lambda path, a, g: a + jnp.square(clip_tensor(g, clip)) / num_batches
        if in_fisher(path) else a, acc, grads)
  zeros = jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
  return jax.lax.fori_loop(0, num_batches, add, zeros)


def mask_from_fisher(fisher_tree, reserve_p: float):
  """The fixed mask: True where a parameter is not `in_fisher`, else its Fisher value >= the
  (1 - reserve_p) x 100 percentile of all in_fisher values (numpy's default linear
  interpolation, as the authors' np.percentile)."""
  flat = jax.tree_util.tree_flatten_with_path(fisher_tree)[0]
  values = jnp.concatenate([f.reshape(-1) for path, f in flat if in_fisher(path)])
  threshold = jnp.percentile(values, (1.0 - reserve_p) * 100.0)
  return jax.tree_util.tree_map_with_path(
      lambda path, f: f >= threshold if in_fisher(path) else jnp.ones(f.shape, bool),
      fisher_tree)


def make_prepare(model, spec, clip: float, reserve_p: float, stream: int):
  """Returns prepare(state, train_arrays) -> state for one seed (a TrainState, jittable):
  Child-Tuning-D's Fisher pass over the seed's own first-epoch batches (its data order, its
  head), in training mode with dropout keys folded from fold_in(state.key, stream), and the
  resulting mask put into the optimizer state. `model` is the step's (with_remat) model and
  `spec` the StepSpec: the same batches, padding weights and segment-id rule as training."""
  def prepare(state, train_arrays):
    order = spec.draw_order(state.data_key, 0)
    keys = jax.random.fold_in(state.key, stream)

    def grad_of(params, i):
      idx, weight = data_lib.batch_of_order(order, i, spec.n_train, spec.batch_size)
      batch = data_lib.gather(train_arrays, idx)

      def loss(p):
        logits = model.logits(p, batch, train=True, dropout_key=jax.random.fold_in(keys, i),
                              pass_segment_ids=spec.pass_segment_ids)
        return task_loss(logits, batch["labels"], weight)
      return jax.grad(loss)(params)
    mask = mask_from_fisher(fisher(grad_of, state.params, spec.steps_per_epoch, clip), reserve_p)
    return state.replace(opt_state=with_mask(state.opt_state, mask))
  return prepare


def check(stabilisers_cfg) -> None:
  """stabilisers.child_tuning in MODES and child_tuning_reserve_p in (0, 1]."""
  mode, p = stabilisers_cfg.child_tuning, stabilisers_cfg.child_tuning_reserve_p
  if mode not in MODES:
    raise ConfigError(f"stabilisers.child_tuning={mode!r}; choose one of {', '.join(MODES)}")
  if not 0.0 < p <= 1.0:
    raise ConfigError(f"stabilisers.child_tuning_reserve_p={p} must be in (0, 1] (the fraction "
                      "of gradient elements kept; the authors' default: 0.3)")
