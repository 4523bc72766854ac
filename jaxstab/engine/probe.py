"""Per-layer gradient norms measured inside the compiled train step.

Groups follow the paper's Fig. 4: `embeddings`, `layer_0` ... `layer_{L-1}`, `pooler`,
`classifier`. `embeddings` holds the embedding tables, their LayerNorm and any projection to the
hidden size (ALBERT's embedding_hidden_mapping_in, ELECTRA's embeddings_project), and DeBERTa's
relative-position table with its LayerNorm (deberta/encoder/rel_embeddings: shared by every
layer, like the embeddings, so no layer's group); `layer_i` is
encoder layer i (DistilBERT's transformer/layer/i); `pooler` is BERT's and ALBERT's pretrained
pooler; `classifier` is the head drawn per seed (families.HEAD_KEYS: RoBERTa's, XLM-R's and
ELECTRA's classifier/dense + out_proj, DistilBERT's pre_classifier + classifier). RoBERTa,
ELECTRA and DistilBERT have no `pooler` group. ALBERT applies one shared layer L times; its per-depth norms are the norms of
each application's contribution to the shared gradient (they sum, as vectors, to it). They come
from `albert_depth_grads`: the shared weights enter application i as `shared + delta_i` with
delta_i = 0, so d loss / d delta_i is exactly application i's contribution.

Records live in fixed-size device buffers in the train state, written at step 0 and every
`every` steps, so nothing is copied to the host while training.
"""
import contextlib
from typing import Dict, List, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxstab.engine.families import family_of, HEAD_KEYS
from jaxstab.infra import treepath

ALBERT_LAYER_GROUP = "FlaxAlbertLayerCollections"  # one application of the shared layer group
SCALARS = ("total_grad_norm", "param_norm", "update_norm", "loss", "lr", "bias_correction")


def group_of(path, arch: str) -> str:
  """The probe group of one parameter, from its path in the transformers Flax tree."""
  names = treepath.names(path)
  if names[0] in HEAD_KEYS:
    return "classifier"
  if "pooler" in names:
    return "pooler"
  if "layer" in names:  # <arch>/encoder/layer/<i>/..., distilbert/transformer/layer/<i>/...
    return f"layer_{names[names.index('layer') + 1]}"
  if "albert_layer_groups" in names:
    return "shared_layers"
  if {"embeddings", "embedding_hidden_mapping_in", "embeddings_project",
      "rel_embeddings"} & set(names):
    return "embeddings"
  raise ValueError(f"parameter {'/'.join(names)} of a {arch} model fits no probe group")


def group_names(params, arch: str, num_layers: int) -> List[str]:
  present = {group_of(p, arch) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
  names = ["embeddings"] + [f"layer_{i}" for i in range(num_layers)] + ["pooler", "classifier"]
  if family_of(arch).shared_layer:  # one layer's parameters, a norm per depth it is applied at
    present |= {f"layer_{i}" for i in range(num_layers)}
  return [n for n in names if n in present]


def sq_norm(tree):
  return sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree_util.tree_leaves(tree))


def group_norms(grads, arch: str, names: Sequence[str], depth_grads=None):
  """[G] vector of L2 norms of `grads` per group (order `names`)."""
  sums: Dict[str, jax.Array] = {n: jnp.zeros([], jnp.float32) for n in names}
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    grp = group_of(path, arch)
    if grp in sums:
      sums[grp] = sums[grp] + jnp.sum(jnp.square(g.astype(jnp.float32)))
  for i, dg in enumerate(depth_grads or []):
    sums[f"layer_{i}"] = sums[f"layer_{i}"] + sq_norm(dg)
  return jnp.sqrt(jnp.stack([sums[n] for n in names]))


def albert_shared(params):
  """ALBERT's shared layer groups ({} where a PEFT run trains nothing in them)."""
  return params["albert"]["encoder"].get("albert_layer_groups", {}) if "albert" in params else {}


def _add_where_present(params, delta):
  """`params` with each leaf of `delta` added at the same path; leaves `delta` lacks stay as they
  are, and leaves `params` lacks (a PEFT run's adapters) are left to `inner`."""
  if not isinstance(delta, dict):
    return params + delta
  out = dict(params)
  for k, v in delta.items():
    if k in params:
      out[k] = _add_where_present(params[k], v)
  return out


@contextlib.contextmanager
def albert_depth_deltas(deltas, inner=None):
  """While active, the i-th application of ALBERT's shared layer group uses shared + deltas[i].

  Implemented with a flax method interceptor, so transformers' modules are used unchanged. The
  layer group is recognised by its class name (transformers' FlaxAlbertLayerCollections), so that
  importing the probe does not load transformers' ALBERT code. `deltas[i]` may cover only part
  of the group (a PEFT run's trainable part: its biases are added here); `inner(delta, group)`,
  when given, is a context entered around the i-th application, where the group's modules see
  paths relative to the group (peft.depth_adapters: the adapters shifted by the delta).
  """
  depth, inside = [0], [False]

  def interceptor(next_fun, args, kwargs, context):
    if (inside[0] or context.method_name != "__call__"
        or type(context.module).__name__ != ALBERT_LAYER_GROUP):
      return next_fun(*args, **kwargs)
    i = depth[0]
    depth[0] += 1
    module = context.module
    group = module.name  # the group index as a string
    delta = deltas[i].get(group, {})
    shifted = _add_where_present(module.variables["params"], delta)
    rngs = {}
    if module.has_rng("dropout"):
      rngs["dropout"] = module.make_rng("dropout")
    inside[0] = True
    try:
      with inner(delta, group) if inner else contextlib.nullcontext():
        return module.clone(parent=None).apply({"params": shifted}, *args, rngs=rngs, **kwargs)
    finally:
      inside[0] = False

  with nn.intercept_methods(interceptor):
    yield


def init_buffers(total_steps: int, every: int, num_groups: int) -> dict:
  """Empty probe records: T = number of recorded steps (0, every, 2*every, ... < total)."""
  t = (max(total_steps, 1) - 1) // every + 1 if every > 0 else 0
  buf = {"step": jnp.full((t,), -1, jnp.int32), "grad_norm": jnp.zeros((t, num_groups), jnp.float32)}
  buf.update({k: jnp.zeros((t,), jnp.float32) for k in SCALARS})
  return buf


def record(buffers: dict, step, every: int, values: dict) -> dict:
  """Writes `values` at row step // every when step is a multiple of `every` (jittable)."""
  t = buffers["step"].shape[0]
  idx = jnp.minimum(step // every, t - 1)
  write = (step % every == 0) & (step // every < t)
  values = dict(values, step=step)
  return {k: buffers[k].at[idx].set(jnp.where(write, jnp.asarray(values[k], buffers[k].dtype),
                                              buffers[k][idx]))
          for k in buffers}
