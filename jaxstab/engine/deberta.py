"""DeBERTa-v2 and -v3 (transformers model_type `deberta-v2`) as jaxstab's own Flax linen module.

transformers has no Flax DeBERTa, so this module computes what its PyTorch
DebertaV2ForSequenceClassification computes (tests/test_deberta.py holds the two to float32
rounding on real RTE pairs), behind own_model.OwnClassifier's interface:
- disentangled attention: content-to-content plus the content-to-position (`c2p`: the query
  against the relative-position keys) and position-to-content (`p2c`: the key against the
  relative-position queries) terms named in `pos_att_type`, each divided by
  sqrt(head size * (1 + number of those terms)), so the sum keeps the scale of one term;
- relative positions i - j put in `position_buckets` buckets that are exact near 0 and
  logarithmic beyond half the bucket count, up to `max_relative_positions`. They depend only on
  the (static) sequence length, so they are a numpy table built in float32 at trace time,
  whatever the compute dtype, and the log bucket edges agree with PyTorch's float32 ones;
- `share_att_key`: the relative embeddings go through the layer's own query/key projections
  (v3's layout; separate projections are refused);
- the relative-embedding table with its LayerNorm (`norm_rel_ebd` = 'layer_norm');
- the embedding LayerNorm, then the output multiplied by the attention mask;
- absolute positions only when `position_biased_input`; no segment embeddings (v3 has
  type_vocab_size 0; a config with segments is refused, the family record says it has none);
- the head: a context pooler (dropout, dense, activation on the first token) and the output
  layer. Public v3 checkpoints have no pooler weights, so both are the per-seed head
  (`classifier/dense`, `classifier/out_proj`, as ELECTRA's head is named).

The planted-bug tests patch `c2p_term`, `p2c_term`, `attention_scale` and `log_buckets`, which
the modules look up at trace time.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxstab.engine import torch_weights as tw
from jaxstab.engine.own_model import ACTIVATIONS, OwnClassifier, sow_hidden
from jaxstab.infra.errors import ConfigError

TERMS = ("c2p", "p2c")
REL_NORMS = ("none", "layer_norm")


def terms(config):
  return tuple(t.strip().lower() for t in (config.pos_att_type or ()))


def rel_norms(config):
  return tuple(x.strip() for x in str(getattr(config, "norm_rel_ebd", "none")).lower().split("|"))


def check_config(config) -> None:
  """Every field of the public v3 (and v2) configs is honoured or refused here, by name."""
  def bad(field, value, why):
    raise ConfigError(f"DeBERTa config {field}={value!r} is not supported by jaxstab's DeBERTa "
                      f"module: {why}")
  if not getattr(config, "relative_attention", False):
    bad("relative_attention", False, "only relative attention (v2/v3's) is implemented")
  unknown = [t for t in terms(config) if t not in TERMS]
  if unknown:
    bad("pos_att_type", config.pos_att_type, f"only {' and '.join(TERMS)} are implemented")
  if not getattr(config, "share_att_key", False):
    bad("share_att_key", False, "only shared position projections (v2/v3's) are implemented")
  if [n for n in rel_norms(config) if n not in REL_NORMS]:
    bad("norm_rel_ebd", config.norm_rel_ebd, f"use one of {', '.join(REL_NORMS)}")
  if getattr(config, "conv_kernel_size", 0) > 0:
    bad("conv_kernel_size", config.conv_kernel_size, "the convolution layer (v2-xlarge/xxlarge) "
        "is not implemented")
  if config.type_vocab_size > 0:
    bad("type_vocab_size", config.type_vocab_size, "segment embeddings are not implemented (v3 "
        "has none)")
  if getattr(config, "embedding_size", config.hidden_size) != config.hidden_size:
    bad("embedding_size", config.embedding_size, "embeddings narrower than the hidden size")
  head_size = config.hidden_size // config.num_attention_heads
  if getattr(config, "attention_head_size", head_size) != head_size or (
      config.hidden_size % config.num_attention_heads):
    bad("attention_head_size", getattr(config, "attention_head_size", None),
        "heads must split hidden_size evenly")
  if getattr(config, "pooler_hidden_size", config.hidden_size) != config.hidden_size:
    bad("pooler_hidden_size", config.pooler_hidden_size, "must equal hidden_size")
  for field in ("hidden_act", "pooler_hidden_act"):
    if getattr(config, field) not in ACTIVATIONS:
      bad(field, getattr(config, field), f"use one of {', '.join(ACTIVATIONS)}")


def span_of(config):
  """(half the relative-embedding table, the largest relative position)."""
  max_rel = config.max_relative_positions
  max_rel = max_rel if max_rel >= 1 else config.max_position_embeddings
  return (config.position_buckets if config.position_buckets > 0 else max_rel), max_rel


def log_buckets(rel: np.ndarray, buckets: int, max_position: int) -> np.ndarray:
  """Bucket of each relative position: itself while |rel| <= buckets // 2, beyond that
  half + ceil(log(|rel| / half) / log((max_position - 1) / half) * (half - 1)), signed.
  float32, as PyTorch computes it, so the bucket edges fall on the same positions."""
  half = buckets // 2
  size = np.abs(rel)
  safe = np.where(size < half, half - 1, size).astype(np.float32)
  ratio = np.log(safe / np.float32(half)) / np.log(np.float32((max_position - 1) / half))
  far = np.ceil(ratio * np.float32(half - 1)) + np.float32(half)
  return np.where(safe <= half, rel, far * np.sign(rel)).astype(np.int64)


def relative_index(length: int, config) -> np.ndarray:
  """[T, T] row of the relative-embedding table for query i and key j: bucket(i - j) + span,
  clipped to the table."""
  span, max_rel = span_of(config)
  pos = np.arange(length)
  rel = pos[:, None] - pos[None, :]
  if config.position_buckets > 0:
    rel = log_buckets(rel, config.position_buckets, max_rel)
  return np.clip(rel + span, 0, 2 * span - 1).astype(np.int32)


def attention_scale(head_size: int, num_terms: int) -> float:
  """Each score term is divided by sqrt(d * (1 + number of position terms))."""
  return float(np.sqrt(np.float32(head_size * (1 + num_terms)), dtype=np.float32))


def c2p_term(query, pos_key, index):
  """[B, H, Tq, Tk] query_i . pos_key[index[i, j]] (query [B,T,H,D], pos_key [2S,H,D])."""
  full = jnp.einsum("bqhd,rhd->bhqr", query, pos_key)
  return jnp.take_along_axis(full, jnp.broadcast_to(index, full.shape[:2] + index.shape), -1)


def p2c_term(key, pos_query, index):
  """[B, H, Tq, Tk] key_j . pos_query[index[i, j]]. The products are made per key row
  ([B, H, Tk, 2S]), so the gather runs over the key's rows with the index transposed."""
  full = jnp.einsum("bkhd,rhd->bhkr", key, pos_query)
  idx_t = jnp.broadcast_to(index.T, full.shape[:2] + index.shape)
  return jnp.swapaxes(jnp.take_along_axis(full, idx_t, -1), -1, -2)


def _dense(features, config, dtype, name):
  return nn.Dense(features, dtype=dtype, name=name,
                  kernel_init=nn.initializers.normal(config.initializer_range))


def _norm(config, dtype, name):
  # Two-pass variance, as PyTorch's LayerNorm: the one-pass form loses digits at eps 1e-7.
  return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=dtype, use_fast_variance=False,
                      name=name)


class Embeddings(nn.Module):
  config: object
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, input_ids, mask, deterministic):
    c = self.config
    init = nn.initializers.normal(c.initializer_range)
    x = nn.Embed(c.vocab_size, c.hidden_size, embedding_init=init, dtype=self.dtype,
                 name="word_embeddings")(input_ids)
    if c.position_biased_input:
      pos = nn.Embed(c.max_position_embeddings, c.hidden_size, embedding_init=init,
                     dtype=self.dtype, name="position_embeddings")
      x = x + pos(jnp.arange(input_ids.shape[1]))[None]
    x = _norm(c, self.dtype, "LayerNorm")(x) * mask[..., None].astype(self.dtype)
    return nn.Dropout(c.hidden_dropout_prob)(x, deterministic=deterministic)


class RelativeEmbeddings(nn.Module):
  """The [2 * span, hidden] table of relative-position embeddings, LayerNormed (norm_rel_ebd)."""
  config: object
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self):
    c = self.config
    span, _ = span_of(c)
    table = self.param("embedding", nn.initializers.normal(c.initializer_range),
                       (2 * span, c.hidden_size), jnp.float32).astype(self.dtype)
    if "layer_norm" in rel_norms(c):
      table = _norm(c, self.dtype, "LayerNorm")(table)
    return table


class SelfAttention(nn.Module):
  config: object
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, hidden, pair_mask, rel, index, deterministic):
    c = self.config
    heads = c.num_attention_heads
    size = c.hidden_size // heads
    split = lambda x: x.reshape(x.shape[:-1] + (heads, size))
    q_proj, k_proj = _dense(c.hidden_size, c, self.dtype, "query_proj"), _dense(
        c.hidden_size, c, self.dtype, "key_proj")
    v_proj = _dense(c.hidden_size, c, self.dtype, "value_proj")
    q, k, v = split(q_proj(hidden)), split(k_proj(hidden)), split(v_proj(hidden))
    used = terms(c)
    scale = jnp.asarray(attention_scale(size, len(used)), self.dtype)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / scale
    rel = nn.Dropout(c.hidden_dropout_prob)(rel, deterministic=deterministic)
    if "c2p" in used:
      scores = scores + c2p_term(q, split(k_proj(rel)), index) / scale
    if "p2c" in used:
      scores = scores + p2c_term(k, split(q_proj(rel)), index) / scale
    scores = jnp.where(pair_mask, scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
    probs = nn.Dropout(c.attention_probs_dropout_prob)(probs, deterministic=deterministic)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
    return out.reshape(out.shape[:2] + (heads * size,))


class AddNorm(nn.Module):
  """dense, dropout, then LayerNorm of the sum with the residual."""
  config: object
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, x, residual, deterministic):
    c = self.config
    x = _dense(c.hidden_size, c, self.dtype, "dense")(x)
    x = nn.Dropout(c.hidden_dropout_prob)(x, deterministic=deterministic)
    return _norm(c, self.dtype, "LayerNorm")(x + residual)


class Attention(nn.Module):
  config: object
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, hidden, pair_mask, rel, index, deterministic):
    ctx = SelfAttention(self.config, self.dtype, name="self")(hidden, pair_mask, rel, index,
                                                               deterministic)
    return AddNorm(self.config, self.dtype, name="output")(ctx, hidden, deterministic)


class Intermediate(nn.Module):
  config: object
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = self.config
    return ACTIVATIONS[c.hidden_act](_dense(c.intermediate_size, c, self.dtype, "dense")(x))


class Layer(nn.Module):
  config: object
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, hidden, pair_mask, rel, index, deterministic):
    a = Attention(self.config, self.dtype, name="attention")(hidden, pair_mask, rel, index,
                                                            deterministic)
    m = Intermediate(self.config, self.dtype, name="intermediate")(a)
    return AddNorm(self.config, self.dtype, name="output")(m, a, deterministic)


class Layers(nn.Module):
  config: object
  dtype: object = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, hidden, pair_mask, rel, index, deterministic):
    # remat: each layer's activations recomputed in the backward pass (train.remat=layers);
    # `deterministic` (argument 5, counting the module) is static.
    cls = nn.remat(Layer, static_argnums=(5,)) if self.remat else Layer
    sow_hidden(self, hidden)  # the embeddings' output: hidden_states[0], as transformers'
    for i in range(self.config.num_hidden_layers):
      hidden = cls(self.config, self.dtype, name=str(i))(hidden, pair_mask, rel, index,
                                                         deterministic)
      sow_hidden(self, hidden)
    return hidden


class Encoder(nn.Module):
  config: object
  dtype: object = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, hidden, mask, deterministic):
    index = jnp.asarray(relative_index(hidden.shape[1], self.config))
    rel = RelativeEmbeddings(self.config, self.dtype, name="rel_embeddings")()
    keep = mask > 0  # a score counts only where query and key are both real tokens
    pair_mask = keep[:, None, :, None] & keep[:, None, None, :]
    return Layers(self.config, self.dtype, self.remat, name="layer")(hidden, pair_mask, rel,
                                                                     index, deterministic)


class Backbone(nn.Module):
  config: object
  dtype: object = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, input_ids, mask, deterministic):
    x = Embeddings(self.config, self.dtype, name="embeddings")(input_ids, mask, deterministic)
    return Encoder(self.config, self.dtype, self.remat, name="encoder")(x, mask, deterministic)


class Head(nn.Module):
  """The context pooler and the output layer: both drawn per seed."""
  config: object
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, hidden, deterministic):
    c = self.config
    x = nn.Dropout(c.pooler_dropout)(hidden[:, 0], deterministic=deterministic)
    x = ACTIVATIONS[c.pooler_hidden_act](_dense(c.hidden_size, c, self.dtype, "dense")(x))
    drop = c.hidden_dropout_prob if getattr(c, "cls_dropout", None) is None else c.cls_dropout
    x = nn.Dropout(drop)(x, deterministic=deterministic)
    return _dense(c.num_labels, c, self.dtype, "out_proj")(x)


class Classifier(nn.Module):
  config: object
  dtype: object = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, input_ids, attention_mask, train: bool = False):
    hidden = Backbone(self.config, self.dtype, self.remat, name="deberta")(
        input_ids, attention_mask, not train)
    return Head(self.config, self.dtype, name="classifier")(hidden, not train).astype(jnp.float32)


# One table: PyTorch module name -> Flax path (torch_weights reads the leaves by kind).
_LAYER = r"deberta\.encoder\.layer\.(\d+)\."
_FLAX_LAYER = r"deberta/encoder/layer/\1/"
WEIGHTS = (
    (r"deberta\.embeddings\.word_embeddings", "deberta/embeddings/word_embeddings", tw.EMBED),
    (r"deberta\.embeddings\.position_embeddings", "deberta/embeddings/position_embeddings",
     tw.EMBED),
    (r"deberta\.embeddings\.LayerNorm", "deberta/embeddings/LayerNorm", tw.NORM),
    (_LAYER + r"attention\.self\.(query_proj|key_proj|value_proj)",
     _FLAX_LAYER + r"attention/self/\2", tw.DENSE),
    (_LAYER + r"attention\.output\.dense", _FLAX_LAYER + "attention/output/dense", tw.DENSE),
    (_LAYER + r"attention\.output\.LayerNorm", _FLAX_LAYER + "attention/output/LayerNorm",
     tw.NORM),
    (_LAYER + r"intermediate\.dense", _FLAX_LAYER + "intermediate/dense", tw.DENSE),
    (_LAYER + r"output\.dense", _FLAX_LAYER + "output/dense", tw.DENSE),
    (_LAYER + r"output\.LayerNorm", _FLAX_LAYER + "output/LayerNorm", tw.NORM),
    (r"deberta\.encoder\.rel_embeddings", "deberta/encoder/rel_embeddings", tw.EMBED),
    (r"deberta\.encoder\.LayerNorm", "deberta/encoder/rel_embeddings/LayerNorm", tw.NORM),
)
# What transformers' DebertaV2ForSequenceClassification leaves unused, and the head.
IGNORED = (
    (r"lm_predictions\..*", "the masked-LM head"),
    (r"cls\..*", "the masked-LM head"),
    (r"mask_predictions\..*", "the replaced-token-detection head"),
    (r"(pooler|classifier)\..*", "the checkpoint's head: each run draws its own"),
    (r"deberta\.embeddings\.position_ids", "a buffer of position numbers"),
)
MLM_HEAD = (r"lm_predictions\..*", r"cls\..*")


class DebertaV2Classifier(OwnClassifier):
  """transformers' DebertaV2ForSequenceClassification, in Flax (see the module docstring)."""
  module_class = Classifier
  backbone_prefix = "deberta"
  mlm_head = MLM_HEAD
  no_mlm_note = ("DeBERTa-v3 was pretrained by replaced-token detection, and its public "
                 "checkpoints carry no masked-LM head")

  @classmethod
  def check_config(cls, config) -> None:
    check_config(config)

  @classmethod
  def weight_table(cls, config):
    return WEIGHTS

  @classmethod
  def ignored_weights(cls, config):
    if config.position_biased_input:
      return IGNORED
    return IGNORED + ((r"deberta\.embeddings\.position_embeddings\.weight",
                       "absolute positions, unused when position_biased_input is false"),)

