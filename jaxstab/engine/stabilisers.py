"""Recipes that stabilise fine-tuning, each a pure function or a small optax transformation.

- Mixout (Lee et al. 2020): per step, each input unit of each dense kernel is swapped with
  probability p for its pretrained value, then rescaled so the expectation is the current weight.
- Re-initialisation (Zhang et al. 2021) of the pooler and the top k encoder layers.
- Layer-wise learning-rate decay: updates of layer i scaled by gamma^(L - i).
- Weight decay toward the pretrained weights: lambda * (theta - theta_p) instead of lambda * theta.
  Decoupled decay only reads the parameters, so it is ordinary decay applied to theta - theta_p;
  `train.py` passes shifted parameters to the optimizer instead of changing the optimizer.

The anchor theta_p is the pretrained backbone with a zero head (the head has no pretrained value,
so its "decay toward theta_p" is ordinary decay and Mixout leaves it alone). The head is every
top-level subtree in families.HEAD_KEYS (DistilBERT's pre_classifier too).

Every family's encoder layers are separate (all but ALBERT's), so re-initialisation and
layer-wise decay are defined for them; for the families without a pretrained pooler (RoBERTa,
XLM-R, ELECTRA, DistilBERT) `pooler=True` re-draws nothing, as their whole head is drawn per seed.
"""
import jax
import jax.numpy as jnp
import optax

from jaxstab.engine.families import family_of, HEAD_KEYS
from jaxstab.engine.probe import group_of
from jaxstab.infra.errors import ConfigError
from jaxstab.infra.treepath import names as path_names


def anchor_of(pretrained):
  """theta_p for the stabilisers: pretrained backbone, zeros for the classification head."""
  out = dict(pretrained)
  for root in HEAD_KEYS:
    if root in pretrained:
      out[root] = jax.tree_util.tree_map(jnp.zeros_like, pretrained[root])
  return out


def mixout(params, anchor, key, p: float, head_anchor=None):
  """Mixout(p) of every 2-D kernel outside the head, toward `anchor` (pure, differentiable).

  For a Flax kernel W [in, out] and a Bernoulli(p) mask M over its *input units* (rows):
  W_mix = (M * U + (1 - M) * W - p * U) / (1 - p), so E[W_mix] = W.

  `head_anchor` (stabilisers.mixout_head): the head's kernels are mixed too, toward
  head_anchor (a `classifier` subtree: the seed's initial head). Lee et al.'s recipe, as Zhang
  et al. run it (asappresearch/revisit-bert-finetuning run_glue.py, lines 800-814), swaps
  *every* nn.Linear for a MixLinear whose target is that layer's weight at the time of the swap,
  after the head was drawn; the head has no pretrained value, so its target is its initial
  value. Biases are not mixed (MixLinear mixes only the weight). Each leaf keeps its own key,
  so the backbone's masks are the same with and without the head.
  """
  if p <= 0.0:
    return params
  if p >= 1.0:
    raise ConfigError(f"stabilisers.mixout={p}: the probability must be in [0, 1)")
  if head_anchor is not None:
    if any(root in params for root in HEAD_KEYS if root != "classifier"):
      raise ConfigError("stabilisers.mixout_head: this model's head has more than a `classifier` "
                        "(DistilBERT's pre_classifier); Mixout of its head is not supported, "
                        "use stabilisers.mixout_head=False")
    anchor = dict(anchor, classifier=head_anchor)
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  anchors = jax.tree_util.tree_leaves(anchor)
  keys = jax.random.split(key, len(flat))
  out = []
  for (path, w), u, k in zip(flat, anchors, keys):
    names = path_names(path)
    in_head = names[0] in HEAD_KEYS
    if (in_head and head_anchor is None) or names[-1] != "kernel" or w.ndim != 2:
      out.append(w)
      continue
    m = jax.random.bernoulli(k, p, (w.shape[0], 1)).astype(w.dtype)
    out.append((m * u + (1.0 - m) * w - p * u) / (1.0 - p))
  return jax.tree_util.tree_unflatten(treedef, out)


def reinit_top_layers(params, key, arch: str, num_layers: int, k: int, pooler: bool,
                      init_range: float):
  """Pooler (if `pooler`) and encoder layers L-k..L-1 redrawn: N(0, init_range) kernels, zero
  biases, LayerNorm scale 1 and bias 0. Lower layers and embeddings are returned unchanged."""
  if k < 0 or k > num_layers:
    raise ConfigError(f"stabilisers.reinit_layers={k} must be in [0, {num_layers}]")
  fam = family_of(arch)
  if fam.shared_layer and k > 0:
    raise ConfigError(f"stabilisers.reinit_layers > 0 is undefined for {fam.title}: its layers "
                      "share one set of weights; use reinit_layers=0 (pooler only)")
  targets = {f"layer_{i}" for i in range(num_layers - k, num_layers)} | ({"pooler"} if pooler else set())
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  keys = jax.random.split(key, len(flat))
  out = []
  for (path, w), kk in zip(flat, keys):
    names = path_names(path)
    if names[0] in HEAD_KEYS or group_of(path, arch) not in targets:
      out.append(w)
    elif any("norm" in n.lower() for n in names):  # LayerNorm, *_layer_norm, ModernBERT's *_norm
      out.append(jnp.ones_like(w) if names[-1] == "scale" else jnp.zeros_like(w))
    elif names[-1] in ("kernel", "embedding"):
      out.append(init_range * jax.random.normal(kk, w.shape, w.dtype))
    else:
      out.append(jnp.zeros_like(w))
  return jax.tree_util.tree_unflatten(treedef, out)


def layerwise_scales(params, arch: str, num_layers: int, gamma: float):
  """Per-parameter lr multipliers: head and pooler 1, layer_i gamma^(L-i), embeddings gamma^L."""
  fam = family_of(arch)
  if fam.shared_layer and gamma != 1.0:
    raise ConfigError(f"stabilisers.llrd is undefined for {fam.title} (all depths share one layer)")

  def scale(path, _):
    grp = group_of(path, arch)
    if grp in ("classifier", "pooler"):
      return 1.0
    if grp == "embeddings":
      return gamma ** num_layers
    return gamma ** (num_layers - int(grp.split("_")[1]))
  return jax.tree_util.tree_map_with_path(scale, params)


def scale_by_tree(scales) -> optax.GradientTransformation:
  """Multiplies each update leaf by the matching leaf of `scales` (a tree of Python floats)."""
  def init(_):
    return optax.EmptyState()

  def update(updates, state, params=None):
    del params
    return jax.tree_util.tree_map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales), state
  return optax.GradientTransformation(init, update)


def check(mixout: float, llrd: float) -> None:
  """The ranges of stabilisers.mixout and stabilisers.llrd (values, not the config: the engine
  is handed what it needs)."""
  if not 0.0 <= mixout < 1.0:
    raise ConfigError(f"stabilisers.mixout={mixout} must be in [0, 1)")
  if not 0.0 < llrd <= 1.0:
    raise ConfigError(f"stabilisers.llrd={llrd} must be in (0, 1]")


def uses_anchor(mixout: float, prior_wd: bool) -> bool:
  """Whether the step needs the pretrained weights (Mixout's target, prior_wd's centre)."""
  return mixout > 0 or prior_wd

