"""Adam with the switches the paper studies, as plain optax GradientTransformations.

Usable outside jaxstab:

    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     jaxstab.engine.optim.adamw(linear_warmup_decay(2e-5, 100, 1000),
                                         weight_decay=0.01, bias_correction=False))

`bias_correction=False` is BERTAdam (the "Devlin" recipe): p -= lr * m / (sqrt(v) + eps).
With correction there are two epsilon forms, which differ early in training:
  eps_mode="hf"    the reference code's (old transformers AdamW): step = lr*sqrt(1-b2^t)/(1-b1^t),
                   p -= step * m / (sqrt(v) + eps), i.e. m_hat / (sqrt(v_hat) + eps/sqrt(1-b2^t));
  eps_mode="optax" optax's and torch's: p -= lr * m_hat / (sqrt(v_hat) + eps).
Weight decay is decoupled. In "hf" mode it is applied after the Adam step, as the reference
does (p -= lr*wd*p on the already-updated p); in "optax" mode before it, as optax.adamw does,
so that mode matches optax.adamw exactly.
"""
from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

from jaxstab.engine.stabilisers import scale_by_tree
from jaxstab.infra import treepath
from jaxstab.infra.errors import ConfigError

EPS_MODES = ("hf", "optax")
ScalarOrSchedule = Union[float, Callable[[Any], Any]]


class AdamState(NamedTuple):
  count: jax.Array  # number of updates applied so far (int32)
  mu: Any
  nu: Any


def bias_correction_factor(t, b1: float = 0.9, b2: float = 0.999):
  """sqrt(1 - b2^t) / (1 - b1^t) for the t-th update (t >= 1): the paper's implicit warmup."""
  t = jnp.asarray(t, jnp.float32)
  return jnp.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)


def linear_warmup_decay(peak: float, warmup_steps: int, total_steps: int):
  """0 at step 0, `peak` at step warmup_steps, linearly down to 0 at total_steps.

  Step t is the number of updates already applied, so the very first update uses lr(0) = 0
  when there is warmup, exactly as transformers' get_linear_schedule_with_warmup.
  """
  warmup_steps, total_steps = int(warmup_steps), int(total_steps)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    up = step / max(warmup_steps, 1)
    down = (total_steps - step) / max(total_steps - warmup_steps, 1)
    frac = jnp.where(step < warmup_steps, up, down)
    return peak * jnp.clip(frac, 0.0, 1.0)

  return schedule


def check_warmup(warmup_ratio: float) -> None:
  """optim.warmup_ratio must be in [0, 1): warmup shorter than training."""
  if not 0.0 <= warmup_ratio < 1.0:
    raise ConfigError(f"optim.warmup_ratio={warmup_ratio} must be in [0, 1)")


def warmup_steps(warmup_ratio: float, total_steps: int) -> int:
  """Updates of linear warmup: int(ratio x total) (from_config, and the report's schedule)."""
  return int(float(warmup_ratio) * int(total_steps))


def _is_decayed(path) -> bool:
  names = treepath.names(path)
  if names and names[-1] == "bias":
    return False
  return not any("layernorm" in n.lower().replace("_", "") for n in names)


def default_decay_mask(params):
  """True for every parameter except biases and LayerNorm scales/biases (BERT's convention)."""
  return jax.tree_util.tree_map_with_path(lambda p, _: _is_decayed(p), params)


def adamw(learning_rate: ScalarOrSchedule, *, b1: float = 0.9, b2: float = 0.999,
          eps: float = 1e-6, weight_decay: float = 0.0,
          mask: Optional[Union[Any, Callable[[Any], Any]]] = None,
          bias_correction: bool = True, eps_mode: str = "hf",
          mu_dtype: Optional[Any] = None) -> optax.GradientTransformation:
  """AdamW returning full updates (already scaled by -lr); see the module docstring."""
  if eps_mode not in EPS_MODES:
    raise ConfigError(f"unknown eps_mode {eps_mode!r} (optim.eps_mode); choose one of {EPS_MODES}")
  lr_fn = learning_rate if callable(learning_rate) else (lambda _: learning_rate)
  mask_fn = default_decay_mask if mask is None else (mask if callable(mask) else (lambda _: mask))

  def init(params):
    zeros = lambda p: jnp.zeros_like(p, dtype=mu_dtype or p.dtype)
    return AdamState(jnp.zeros([], jnp.int32), jax.tree_util.tree_map(zeros, params),
                     jax.tree_util.tree_map(zeros, params))

  def update(grads, state, params=None):
    if params is None:
      raise ValueError("jaxstab.engine.optim.adamw needs params (for weight decay)")
    t = state.count + 1
    lr = lr_fn(state.count)
    mu = jax.tree_util.tree_map(lambda m, g: (b1 * m + (1 - b1) * g).astype(m.dtype), state.mu, grads)
    nu = jax.tree_util.tree_map(lambda v, g: (b2 * v + (1 - b2) * g * g).astype(v.dtype), state.nu, grads)
    tf = t.astype(jnp.float32)
    c1, c2 = 1.0 - b1 ** tf, 1.0 - b2 ** tf
    decayed = mask_fn(params)

    def one(m, v, p, d):
      m, v = m.astype(p.dtype), v.astype(p.dtype)
      if not bias_correction:
        adam = -lr * m / (jnp.sqrt(v) + eps)
      elif eps_mode == "hf":
        adam = -(lr * jnp.sqrt(c2) / c1) * m / (jnp.sqrt(v) + eps)
      else:
        adam = -lr * (m / c1) / (jnp.sqrt(v / c2) + eps)
      if not d or weight_decay == 0.0:
        return adam
      if eps_mode == "hf":  # decay the already-updated weight, as the reference does
        return adam - lr * weight_decay * (p + adam)
      return adam - lr * weight_decay * p

    updates = jax.tree_util.tree_map(one, mu, nu, params, decayed)
    return updates, AdamState(t, mu, nu)

  return optax.GradientTransformation(init, update)


def total_train_steps(train_cfg, steps_per_epoch: int) -> int:
  """train.max_steps when > 0, else epochs x batches per epoch."""
  if train_cfg.max_steps > 0:
    return int(train_cfg.max_steps)
  return int(round(train_cfg.epochs * steps_per_epoch))


def from_config(optim_cfg, total_steps: int, lr_scales=None, grad_mask=None):
  """The full chain the recipe describes: [clip] -> [grad_mask] -> adamw(schedule) [-> per-layer
  lr scales]. `grad_mask` (Child-Tuning's, engine/child_tuning.py) masks the clipped gradient
  before Adam's moments see it, where the authors' optimizer applies it. Returns (tx, schedule)."""
  check_warmup(optim_cfg.warmup_ratio)
  schedule = linear_warmup_decay(optim_cfg.lr, warmup_steps(optim_cfg.warmup_ratio, total_steps),
                                 total_steps)
  parts = []
  if optim_cfg.clip_norm and optim_cfg.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(optim_cfg.clip_norm))
  if grad_mask is not None:
    parts.append(grad_mask)
  parts.append(adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                     weight_decay=optim_cfg.weight_decay, bias_correction=optim_cfg.bias_correction,
                     eps_mode=optim_cfg.eps_mode,
                     mu_dtype=jnp.bfloat16 if optim_cfg.moments_dtype == "bfloat16" else None))
  if lr_scales is not None:
    parts.append(scale_by_tree(lr_scales))
  return optax.chain(*parts), schedule
