"""R3F (Aghajanyan et al. 2020, "Better Fine-Tuning by Reducing Representational Collapse"), as
fairseq's criterion runs it (fairseq examples/rxf/rxf_src/sentence_prediction_r3f.py).

Each training step runs the model twice on the batch: once as usual, and once with noise added to
the token embeddings as the embedding table outputs them (before position and segment embeddings,
LayerNorm and dropout), the embeddings *detached* in that second pass (fairseq:
`token_embeddings.detach().clone() + noise`), so the table gets no gradient from it. The loss is

    task loss + r3f_lambda * [KL(p || p_noised) + KL(p_noised || p)] summed over the batch's
    examples and divided by their number,

with gradients through both distributions (fairseq detaches neither). Noise: U(-eps, eps) or
N(0, eps^2) elementwise (`noise_type`, default uniform, eps = 1e-5, lambda = 1.0: the
criterion's argument defaults). Both passes are in training mode, each with its own dropout draw.

Regression heads: fairseq's criterion adds no KL term for a regression target (its MSE branch
ignores the noised pass), so on STS-B R3F would be the plain loss at the cost of a second pass;
jaxstab refuses it instead (validate.check_config).

The token-embedding module is named in the family's record (`Family.token_embeddings`), and is
reached by a flax method interceptor, as jaxstab reaches the attention and RoBERTa's head:
transformers' Flax classifiers take no `inputs_embeds`.
"""
import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxstab.infra.errors import ConfigError

NOISE_TYPES = ("uniform", "normal")


def draw_noise(key, shape, eps: float, noise_type: str, dtype=jnp.float32):
  """fairseq's noise sampler: U(-eps, eps) or N(0, eps^2), elementwise."""
  if noise_type == "uniform":
    return jax.random.uniform(key, shape, dtype, minval=-eps, maxval=eps)
  return eps * jax.random.normal(key, shape, dtype)


@contextlib.contextmanager
def noised_token_embeddings(module_name: str, key, eps: float, noise_type: str):
  """While active, every call of a module named `module_name` (a family's token-embedding
  table) returns its output detached, plus noise. One call per forward pass is expected (the
  one input lookup); a second would get the same noise."""
  def intercept(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name != "__call__" or context.module.name != module_name:
      return out
    return jax.lax.stop_gradient(out) + draw_noise(key, out.shape, eps, noise_type, out.dtype)

  with nn.intercept_methods(intercept):
    yield


def symmetric_kl(noised_logits, logits, weight):
  """fairseq's _get_symm_kl on a padded batch: KL(p || q) + KL(q || p) of the softmaxes of
  `logits` (p) and `noised_logits` (q), in float32, summed over the real examples (weight 1) and
  divided by their number."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  logq = jax.nn.log_softmax(noised_logits.astype(jnp.float32), axis=-1)
  per_example = jnp.sum((jnp.exp(logp) - jnp.exp(logq)) * (logp - logq), axis=-1)
  return jnp.sum(per_example * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def check(stabilisers_cfg, regression: bool) -> None:
  """The R3F keys' values; `regression`: the task's head has one output (refused, see above)."""
  st = stabilisers_cfg
  if st.r4f and not st.r3f:
    raise ConfigError("stabilisers.r4f=True needs stabilisers.r3f=True (R4F is R3F plus the "
                      "spectral norm of the head's output projection); or use setting=r4f")
  if not st.r3f:
    return
  if st.r3f_noise not in NOISE_TYPES:
    raise ConfigError(f"stabilisers.r3f_noise={st.r3f_noise!r}; choose one of "
                      f"{', '.join(NOISE_TYPES)}")
  if not 0.0 <= st.r3f_lambda < float("inf") or not 0.0 < st.r3f_eps < float("inf"):
    raise ConfigError(f"stabilisers.r3f_lambda={st.r3f_lambda} must be >= 0 and "
                      f"stabilisers.r3f_eps={st.r3f_eps} > 0 (fairseq's defaults: 1.0, 1e-5)")
  if regression:
    raise ConfigError("stabilisers.r3f=True on a regression task: fairseq's R3F criterion adds "
                      "no KL term for a regression head (its loss is the plain MSE), so R3F "
                      "would only cost a second forward pass; use a classification task or "
                      "stabilisers.r3f=False")


def spectral_normalised(params, out_proj):
  """R4F's head: params with the kernel of the subtree at path `out_proj` (the family's
  head_out_proj) divided by its spectral norm, its largest singular value, gradients flowing
  through the norm as through torch's spectral_norm.

  fairseq (spectral_norm_classification_head) wraps the output projection in
  torch.nn.utils.spectral_norm, which estimates the norm by one step of power iteration per
  training forward pass, from a vector it keeps between steps. Here the kernel is hidden x
  labels (2 or 3 columns), so the exact norm costs one tiny SVD and needs no stored vector: it is
  what that iteration converges to, and training and evaluation divide by the same value (the
  torch estimate lags one step behind, and starts below the true norm while the vector is
  random)."""
  def divide(node, path):
    if not path:
      kernel = node["kernel"]
      sigma = jnp.linalg.svd(kernel.astype(jnp.float32), compute_uv=False)[0]
      return dict(node, kernel=(kernel / sigma).astype(kernel.dtype))
    return dict(node, **{path[0]: divide(node[path[0]], path[1:])})
  return divide(params, tuple(out_proj))
