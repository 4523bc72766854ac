"""Fused attention for transformers' Flax self-attention modules, without forking them.

transformers computes softmax(QK^T + bias) and the product with V as separate einsums, and
applies dropout to the attention weights in between. `jax.nn.dot_product_attention` computes the
same thing as one op that XLA ('xla') or cuDNN's flash attention ('cudnn', GPU, bf16/fp16) can
fuse, but it has no dropout on the weights. So the fused path is taken only where that dropout is
inactive: evaluation, and training of models whose attention dropout is 0 (the ALBERT v2
presets, the `mixout` setting, or `--config.model.dropout=0`). Everywhere else the module's own
code runs, so training with the reference's attention dropout is unchanged.

The swap is a flax method interceptor on the self-attention modules; their parameters (query,
key, value, and for ALBERT dense/LayerNorm) are used as they are.
"""
import contextlib
import inspect

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxstab.infra.errors import ConfigError

IMPLEMENTATIONS = ("reference", "xla", "cudnn")


def check(implementation: str, dtype: str) -> None:
  """Raises ConfigError when `model.attention` cannot run here."""
  if implementation not in IMPLEMENTATIONS:
    raise ConfigError(f"model.attention={implementation!r}; choose one of "
                      f"{', '.join(IMPLEMENTATIONS)}")
  if implementation == "cudnn":
    if jax.default_backend() != "gpu":
      raise ConfigError(f"model.attention='cudnn' needs a GPU (this backend is "
                        f"{jax.default_backend()}); use 'xla' or 'reference'")
    if dtype != "bfloat16":
      raise ConfigError(f"model.attention='cudnn' needs model.dtype='bfloat16' (cuDNN flash "
                        f"attention has no fp32 kernel), not {dtype!r}")


def _self_attention_classes():
  # Deferred: transformers takes seconds to import, and only a fused implementation needs these.
  # pylint: disable=import-outside-toplevel
  from transformers.models.albert import modeling_flax_albert as albert
  from transformers.models.bert import modeling_flax_bert as bert
  from transformers.models.electra import modeling_flax_electra as electra
  from transformers.models.roberta import modeling_flax_roberta as roberta
  from transformers.models.xlm_roberta import modeling_flax_xlm_roberta as xlm_roberta
  # ELECTRA's and XLM-R's self-attention are BERT's, copied (same fields, same call); DistilBERT's
  # is another module (validate.check_model refuses a fused attention for it).
  return ((bert.FlaxBertSelfAttention, roberta.FlaxRobertaSelfAttention,
           electra.FlaxElectraSelfAttention, xlm_roberta.FlaxXLMRobertaSelfAttention),
          albert.FlaxAlbertSelfAttention)


def _attend(module, hidden, attention_mask, implementation, head_mask=None):
  """softmax(QK^T / sqrt(d) + mask) V with the module's own projections; [B, T, hidden].

  transformers always passes a head mask (ones unless the caller gives one); it scales each
  head's weights, which is the same as scaling that head's output.
  """
  cfg = module.config
  heads = cfg.num_attention_heads
  split = lambda x: x.reshape(x.shape[:2] + (heads, cfg.hidden_size // heads))
  q, k, v = split(module.query(hidden)), split(module.key(hidden)), split(module.value(hidden))
  if implementation == "cudnn":
    # cuDNN takes padding as lengths; jaxstab's batches are right-padded, so the valid keys of
    # each example are a prefix of length sum(mask).
    lengths = None if attention_mask is None else jnp.sum(attention_mask, -1).astype(jnp.int32)
    out = jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths,
                                       implementation="cudnn")
  else:
    mask = None if attention_mask is None else (attention_mask > 0)[:, None, None, :]
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")
  if head_mask is not None:
    out = out * head_mask.astype(out.dtype)[:, None]
  return out.reshape(out.shape[:2] + (cfg.hidden_size,))


def _bound(fn, module, args, kwargs):
  a = inspect.signature(fn).bind(module, *args, **kwargs)
  a.apply_defaults()
  return a.arguments


def interceptor(implementation: str):
  """A flax interceptor that routes eligible self-attention calls through the fused op."""
  bert_like, albert_cls = _self_attention_classes()

  def intercept(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != "__call__" or not isinstance(module, bert_like + (albert_cls,)):
      return next_fun(*args, **kwargs)
    a = _bound(type(module).__call__, module, args, kwargs)
    dropout_on = not a["deterministic"] and module.config.attention_probs_dropout_prob > 0
    if dropout_on or a["output_attentions"]:
      return next_fun(*args, **kwargs)
    if isinstance(module, bert_like):
      if module.causal or a["key_value_states"] is not None or a["init_cache"]:
        return next_fun(*args, **kwargs)
      return (_attend(module, a["hidden_states"], a["attention_mask"], implementation,
                      a["layer_head_mask"]),)
    # ALBERT's attention module also holds the output projection, dropout and LayerNorm.
    hidden = a["hidden_states"]
    out = module.dense(_attend(module, hidden, a["attention_mask"], implementation))
    out = module.dropout(out, deterministic=a["deterministic"])
    return (module.LayerNorm(out + hidden),)

  return intercept


@contextlib.contextmanager
def fused(implementation: str):
  """While active, eligible self-attention calls use `jax.nn.dot_product_attention`."""
  if implementation == "reference":
    yield
    return
  with nn.intercept_methods(interceptor(implementation)):
    yield
