"""ModernBERT (transformers model_type `modernbert`) as jaxstab's own Flax linen module.

transformers has no Flax ModernBERT, so this module computes what its PyTorch
ModernBertForSequenceClassification computes with eager attention (tests/test_modernbert.py holds
the two to float32 rounding on padded real RTE pairs), behind own_model.OwnClassifier:
- token embeddings, a LayerNorm and dropout; no absolute positions, no segments;
- pre-norm layers: x + attn(attn_norm(x)), then x + mlp(mlp_norm(x)). Layer 0 has no
  attention norm (the embeddings already end in one), so its attention reads x unchanged;
- rotary positions (RoPE) on queries and keys, built per layer: layer i is global when
  i % global_attn_every_n_layers == 0 and uses `global_rope_theta`; the others are local and
  use `local_rope_theta` (the global one when it is unset);
- a local layer's query i sees the keys j with |i - j| <= local_attention // 2 that are real
  tokens; a global layer's sees every real token. Padded positions are computed on (PyTorch's
  eager path does not unpad) but no real token attends to them, so the logits depend on the
  real tokens only;
- a gated-GELU MLP: Wi gives 2 * intermediate features, split into input and gate,
  act(input) * gate, then Wo;
- a final LayerNorm after the last layer. It is held by the last layer's module
  (`layer/<L-1>/final_norm`), so the probe, layer-wise decay and re-initialisation count it
  with the top layer: it normalises that layer's output and nothing else;
- the head: `cls` (first token) or `mean` (masked mean over real tokens) pooling, then dense,
  activation and LayerNorm (transformers' `head`), dropout and the output layer
  (`classifier`). Both parts are drawn per seed, under one head key: `classifier/dense`,
  `classifier/norm`, `classifier/out_proj`;
- biases only where `attention_bias`, `mlp_bias`, `norm_bias`, `classifier_bias` ask (the
  output layer always has one, as in PyTorch).

`ModernBertMaskedLM` is the masked-LM model of the forgetting analysis: the same backbone with
the checkpoint's prediction head and a decoder tied to the word embeddings.

RoPE tables depend only on the static sequence length: numpy float32 at trace time. The
planted-bug tests patch `is_global`, `half_window`, `rope_theta`, `first_attn_input` and
`pool`, which the modules look up at trace time.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxstab.engine import torch_weights as tw
from jaxstab.engine.own_model import ACTIVATIONS, OwnClassifier, sow_hidden
from jaxstab.infra.errors import ConfigError

POOLINGS = ("cls", "mean")


def check_config(config) -> None:
  """Every field of the public ModernBERT configs is honoured or refused here, by name.

  Fields read only by other kernels or training paths (sparse_prediction,
  sparse_pred_ignore_index, repad_logits_with_grad, deterministic_flash_attn,
  reference_compile) change nothing computed here with eager attention; decoder_bias and
  tie_word_embeddings concern the masked-LM model alone (ModernBertMaskedLM honours the first
  and refuses an untied decoder)."""
  def bad(field, value, why):
    raise ConfigError(f"ModernBERT config {field}={value!r} is not supported by jaxstab's "
                      f"ModernBERT module: {why}")
  if config.hidden_size % config.num_attention_heads:
    bad("num_attention_heads", config.num_attention_heads, "heads must split hidden_size evenly")
  head_dim = getattr(config, "head_dim", None)
  if head_dim and head_dim != config.hidden_size // config.num_attention_heads:
    bad("head_dim", head_dim, "must be hidden_size // num_attention_heads")
  if getattr(config, "rope_scaling", None):
    bad("rope_scaling", config.rope_scaling, "only plain RoPE is implemented")
  if getattr(config, "partial_rotary_factor", 1.0) != 1.0:
    bad("partial_rotary_factor", config.partial_rotary_factor, "RoPE turns every head dim")
  if config.classifier_pooling not in POOLINGS:
    bad("classifier_pooling", config.classifier_pooling, f"use one of {', '.join(POOLINGS)}")
  if int(config.global_attn_every_n_layers) < 1:
    bad("global_attn_every_n_layers", config.global_attn_every_n_layers, "must be >= 1")
  if int(config.local_attention) < 0:
    bad("local_attention", config.local_attention, "must be >= 0")
  if getattr(config, "position_embedding_type", "absolute") not in ("absolute", "rope", None):
    bad("position_embedding_type", config.position_embedding_type, "ModernBERT uses RoPE")
  for field in ("hidden_activation", "classifier_activation"):
    if getattr(config, field) not in ACTIVATIONS:
      bad(field, getattr(config, field), f"use one of {', '.join(ACTIVATIONS)}")


def is_global(i: int, config) -> bool:
  """Layer i attends globally every `global_attn_every_n_layers` layers, from layer 0."""
  return i % int(config.global_attn_every_n_layers) == 0


def half_window(config) -> int:
  """A local layer's query i sees key j when |i - j| <= this."""
  return int(config.local_attention) // 2


def rope_theta(global_layer: bool, config) -> float:
  if global_layer or config.local_rope_theta is None:
    return float(config.global_rope_theta)
  return float(config.local_rope_theta)


def rope_tables(length: int, head_dim: int, theta: float):
  """(cos, sin) [T, head_dim], float32 as PyTorch builds them: frequencies
  1 / theta^(2k / d), each used for both halves of the head (rotate_half's pairing)."""
  exps = np.arange(0, head_dim, 2).astype(np.float32) / np.float32(head_dim)
  inv_freq = np.float32(1.0) / np.power(np.float32(theta), exps, dtype=np.float32)
  angles = np.arange(length, dtype=np.float32)[:, None] * inv_freq[None, :]
  angles = np.concatenate([angles, angles], axis=-1)
  return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def rotate(x, cos, sin):
  """RoPE of x [B, T, H, D]: x * cos + (-x2, x1) * sin, the halves swapped."""
  x1, x2 = jnp.split(x, 2, axis=-1)
  return x * cos[None, :, None, :] + jnp.concatenate([-x2, x1], axis=-1) * sin[None, :, None, :]


def first_attn_input(x):
  """Layer 0's attention reads the embeddings unchanged (they end in a LayerNorm)."""
  return x


def pool(hidden, mask, how: str):
  """[B, H] from [B, T, H]: the first token, or the mean over real tokens only."""
  if how == "cls":
    return hidden[:, 0]
  m = mask.astype(hidden.dtype)[..., None]
  return jnp.sum(hidden * m, axis=1) / jnp.sum(m, axis=1)


def _dense(features, config, dtype, name, bias):
  return nn.Dense(features, dtype=dtype, name=name, use_bias=bool(bias),
                  kernel_init=nn.initializers.normal(config.initializer_range))


def _norm(config, dtype, name):
  # Two-pass variance, as PyTorch's LayerNorm; no bias unless norm_bias.
  return nn.LayerNorm(epsilon=config.norm_eps, dtype=dtype, use_bias=bool(config.norm_bias),
                      use_fast_variance=False, name=name)


class Embeddings(nn.Module):
  config: object
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, input_ids, deterministic):
    c = self.config
    x = nn.Embed(c.vocab_size, c.hidden_size, dtype=self.dtype, name="tok_embeddings",
                 embedding_init=nn.initializers.normal(c.initializer_range))(input_ids)
    x = _norm(c, self.dtype, "norm")(x)
    return nn.Dropout(c.embedding_dropout)(x, deterministic=deterministic)


class Attention(nn.Module):
  config: object
  dtype: object = jnp.float32
  global_layer: bool = True

  @nn.compact
  def __call__(self, x, keep, deterministic):
    c = self.config
    heads = c.num_attention_heads
    size = c.hidden_size // heads
    length = x.shape[1]
    qkv = _dense(3 * c.hidden_size, c, self.dtype, "Wqkv", c.attention_bias)(x)
    q, k, v = jnp.split(qkv.reshape(qkv.shape[:2] + (3, heads, size)), 3, axis=2)
    q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]  # [B, T, H, D]
    cos, sin = rope_tables(length, size, rope_theta(self.global_layer, c))
    cos, sin = jnp.asarray(cos, self.dtype), jnp.asarray(sin, self.dtype)
    q, k = rotate(q, cos, sin), rotate(k, cos, sin)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * jnp.asarray(size ** -0.5, self.dtype)
    allowed = keep[:, None, None, :]  # keys that are real tokens
    if not self.global_layer:
      pos = np.arange(length)
      allowed = allowed & jnp.asarray(np.abs(pos[:, None] - pos[None, :]) <= half_window(c))
    scores = jnp.where(allowed, scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
    probs = nn.Dropout(c.attention_dropout)(probs, deterministic=deterministic)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(x.shape[:2] + (heads * size,))
    out = _dense(c.hidden_size, c, self.dtype, "Wo", c.attention_bias)(out)
    return nn.Dropout(c.attention_dropout)(out, deterministic=deterministic)


class MLP(nn.Module):
  """Gated GELU: Wo(dropout(act(input) * gate)), input and gate the two halves of Wi's output."""
  config: object
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic):
    c = self.config
    inner, gate = jnp.split(_dense(2 * c.intermediate_size, c, self.dtype, "Wi", c.mlp_bias)(x),
                            2, axis=-1)
    h = ACTIVATIONS[c.hidden_activation](inner) * gate
    h = nn.Dropout(c.mlp_dropout)(h, deterministic=deterministic)
    return _dense(c.hidden_size, c, self.dtype, "Wo", c.mlp_bias)(h)


class Layer(nn.Module):
  config: object
  dtype: object = jnp.float32
  index: int = 0
  last: bool = False

  @nn.compact
  def __call__(self, x, keep, deterministic):
    c = self.config
    h = first_attn_input(x) if self.index == 0 else _norm(c, self.dtype, "attn_norm")(x)
    x = x + Attention(c, self.dtype, is_global(self.index, c), name="attn")(h, keep,
                                                                            deterministic)
    x = x + MLP(c, self.dtype, name="mlp")(_norm(c, self.dtype, "mlp_norm")(x), deterministic)
    return _norm(c, self.dtype, "final_norm")(x) if self.last else x


class Layers(nn.Module):
  """The encoder layers, named layer/<i> as the probe's groups expect."""
  config: object
  dtype: object = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x, keep, deterministic):
    # remat: each layer's activations recomputed in the backward pass (train.remat=layers);
    # `deterministic` (argument 3, counting the module) is static.
    cls = nn.remat(Layer, static_argnums=(3,)) if self.remat else Layer
    layers = int(self.config.num_hidden_layers)
    sow_hidden(self, x)  # the embeddings' output (after their LayerNorm): hidden_states[0]
    for i in range(layers):
      x = cls(self.config, self.dtype, i, i == layers - 1, name=str(i))(x, keep, deterministic)
      sow_hidden(self, x)  # the last one after the final norm: what the head reads
    return x


class Backbone(nn.Module):
  config: object
  dtype: object = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, input_ids, mask, deterministic):
    x = Embeddings(self.config, self.dtype, name="embeddings")(input_ids, deterministic)
    return Layers(self.config, self.dtype, self.remat, name="layer")(x, mask > 0, deterministic)


class Head(nn.Module):
  """Pooling, transformers' `head` (dense, activation, LayerNorm), dropout, the output layer."""
  config: object
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, hidden, mask, deterministic):
    c = self.config
    x = pool(hidden, mask, c.classifier_pooling)
    x = ACTIVATIONS[c.classifier_activation](
        _dense(c.hidden_size, c, self.dtype, "dense", c.classifier_bias)(x))
    x = _norm(c, self.dtype, "norm")(x)
    x = nn.Dropout(c.classifier_dropout)(x, deterministic=deterministic)
    return _dense(c.num_labels, c, self.dtype, "out_proj", True)(x)


class Classifier(nn.Module):
  config: object
  dtype: object = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, input_ids, attention_mask, train: bool = False):
    hidden = Backbone(self.config, self.dtype, self.remat, name="modernbert")(
        input_ids, attention_mask, not train)
    head = Head(self.config, self.dtype, name="classifier")
    return head(hidden, attention_mask, not train).astype(jnp.float32)


class PredictionHead(nn.Module):
  """transformers' `head` of the masked-LM model: dense, activation, LayerNorm per token."""
  config: object
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = self.config
    x = ACTIVATIONS[c.classifier_activation](
        _dense(c.hidden_size, c, self.dtype, "dense", c.classifier_bias)(x))
    return _norm(c, self.dtype, "norm")(x)


class DecoderBias(nn.Module):
  """The decoder's own bias (its weight is the word-embedding table)."""
  size: int

  @nn.compact
  def __call__(self):
    return self.param("bias", nn.initializers.zeros, (self.size,), jnp.float32)


class MaskedLMModule(nn.Module):
  """The masked-LM model of the forgetting analysis: the same backbone, the pretrained
  prediction head on every token and the decoder, whose weight is the word-embedding table
  (tied, as in the public checkpoints)."""
  config: object
  dtype: object = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, input_ids, attention_mask, train: bool = False):
    c = self.config
    hidden = Backbone(c, self.dtype, self.remat, name="modernbert")(input_ids, attention_mask,
                                                                    not train)
    x = PredictionHead(c, self.dtype, name="head")(hidden)
    table = self.variables["params"]["modernbert"]["embeddings"]["tok_embeddings"]["embedding"]
    logits = jnp.einsum("bth,vh->btv", x, jnp.asarray(table, self.dtype))
    if c.decoder_bias:
      logits = logits + DecoderBias(c.vocab_size, name="decoder")().astype(self.dtype)
    return logits.astype(jnp.float32)


# One table: PyTorch module name -> Flax path (torch_weights reads the leaves by kind).
_LAYER = r"model\.layers\.(\d+)\."
_FLAX_LAYER = r"modernbert/layer/\1/"
_WEIGHTS = (
    (r"model\.embeddings\.tok_embeddings", "modernbert/embeddings/tok_embeddings", tw.EMBED),
    (r"model\.embeddings\.norm", "modernbert/embeddings/norm", tw.NORM),
    (_LAYER + r"(attn_norm|mlp_norm)", _FLAX_LAYER + r"\2", tw.NORM),
    (_LAYER + r"attn\.(Wqkv|Wo)", _FLAX_LAYER + r"attn/\2", tw.DENSE),
    (_LAYER + r"mlp\.(Wi|Wo)", _FLAX_LAYER + r"mlp/\2", tw.DENSE),
)
# What transformers' ModernBertForSequenceClassification leaves unused (a masked-LM
# checkpoint's decoder), and the checkpoint's head, which every run draws itself.
IGNORED = (
    (r"decoder\..*", "the masked-LM decoder"),
    (r"(head|classifier)\..*", "the checkpoint's head: each run draws its own"),
)


class ModernBertClassifier(OwnClassifier):
  """transformers' ModernBertForSequenceClassification, in Flax (see the module docstring)."""
  module_class = Classifier
  backbone_prefix = "model"
  backbone_key = "modernbert"
  bare_roots = ("embeddings", "layers", "final_norm")

  @classmethod
  def check_config(cls, config) -> None:
    check_config(config)

  @classmethod
  def weight_table(cls, config):
    last = int(config.num_hidden_layers) - 1  # the final norm lives in the top layer's module
    return _WEIGHTS + ((r"model\.final_norm", f"modernbert/layer/{last}/final_norm", tw.NORM),)

  @classmethod
  def ignored_weights(cls, config):
    return IGNORED


class ModernBertMaskedLM(ModernBertClassifier):
  """transformers' ModernBertForMaskedLM in Flax, for the forgetting analysis (families'
  `mlm`): the whole checkpoint is read, the prediction head and decoder bias included."""
  module_class = MaskedLMModule
  loads_head = True

  @classmethod
  def check_config(cls, config) -> None:
    check_config(config)
    if not getattr(config, "tie_word_embeddings", True):
      raise ConfigError("ModernBERT config tie_word_embeddings=False is not supported by "
                        "jaxstab's masked-LM ModernBERT: its decoder is the embedding table")

  @classmethod
  def weight_table(cls, config):
    return super().weight_table(config) + (
        (r"head\.dense", "head/dense", tw.DENSE), (r"head\.norm", "head/norm", tw.NORM),
        (r"decoder", "decoder", tw.DENSE))

  @classmethod
  def ignored_weights(cls, config):
    return ((r"decoder\.weight", "the decoder's weight: tied to the word embeddings"),
            (r"classifier\..*", "a sequence classifier's output layer"))
