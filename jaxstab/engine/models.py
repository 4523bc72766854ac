"""Load transformers' Flax sequence classifiers and call them as pure functions of params.

A model here is a `Model` record: the transformers object (used only as a function, never for
its stored params), the pretrained parameter tree, the architecture family and the layer count.
Built-in tiny architectures (`tiny-bert`, `tiny-roberta`, `tiny-xlm-roberta`, `tiny-albert`,
`tiny-electra`, `tiny-distilbert`) are randomly initialised and need no download; they are what
tests and the offline demo use. The families and their differences: jaxstab.engine.families.
"""
import contextlib
import dataclasses
import logging
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging as absl_logging

from jaxstab.engine import attention as attention_lib, families, rxf
from jaxstab.infra import treepath
from jaxstab.infra.errors import ConfigError

ARCHS = families.ARCHS
TINY = families.TINY  # name -> transformers model_type
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# model.head: 'transformers' = transformers 4.x's Flax heads; 'reference' = the heads the paper's
# code ran (uds-lsv/bert-stable-fine-tuning, transformers 2.5.1). They differ for RoBERTa only:
# see `reference_roberta_head` and `init_head`. BERT's and ALBERT's heads are the same in both;
# the paper ran no ELECTRA or DistilBERT, so `load` gives them the transformers head always.
HEADS = ("transformers", "reference")
# train.remat: 'layers' recomputes each encoder layer's activations in the backward pass instead
# of keeping them (transformers' gradient_checkpointing: flax's remat around every layer).
REMAT = ("none", "layers")


@dataclasses.dataclass
class Model:
  flax_model: Any          # transformers FlaxPreTrainedModel, used as a function
  params: Any              # pretrained (or random) parameters, float32
  arch: str                # one of families.ARCHS (XLM-R: 'roberta')
  num_layers: int
  config: Any              # transformers PretrainedConfig
  name: str
  attention: str = "reference"  # 'reference' | 'xla' | 'cudnn' (jaxstab.engine.attention)
  head: str = "transformers"   # one of HEADS (model.head)
  spectral_head: bool = False  # R4F: the head's output projection divided by its spectral norm
                               # in every forward pass (stabilisers.r4f; rxf.spectral_normalised)

  @property
  def family(self) -> families.Family:
    """The family's record: what this model has (segment ids, a pooler, ...), by `arch`."""
    return families.family_of(self.arch)

  def logits(self, params, batch, *, train: bool = False, dropout_key=None,
             pass_segment_ids: bool = True):
    """Forward pass; `batch` holds input_ids, attention_mask, token_type_ids. Logits in fp32.
    DistilBERT has no segment embeddings: it is never given token_type_ids."""
    return self._forward(params, batch, train, dropout_key,
                         pass_segment_ids).logits.astype(jnp.float32)

  def first_token_states(self, params, batch, *, pass_segment_ids: bool = True):
    """[L+1, B, hidden] float32: the first token's vector ([CLS] / <s>) after the embeddings
    and after each of the L encoder layers, deterministic (no dropout), for the representation
    measures of issue #31. Every family lists them through `output_hidden_states`, transformers'
    classes and jaxstab's own alike, each at the hidden size (ALBERT's and ELECTRA's embeddings
    are listed after their projection). The first token whatever the head pools: ModernBERT's
    CLS vector also under classifier_pooling='mean'."""
    out = self._forward(params, batch, False, None, pass_segment_ids, hidden=True)
    return jnp.stack([h[:, 0, :] for h in out.hidden_states]).astype(jnp.float32)

  def _forward(self, params, batch, train, dropout_key, pass_segment_ids, hidden=False):
    kw = {"output_hidden_states": True} if hidden else {}
    if self.family.segment_ids:
      kw["token_type_ids"] = (batch["token_type_ids"] if pass_segment_ids
                              else jnp.zeros_like(batch["input_ids"]))
    reference_head = self.head == "reference" and self.family.reference_head
    if self.spectral_head:
      params = rxf.spectral_normalised(params, self.family.head_out_proj)
    with attention_lib.fused(self.attention), \
        (reference_roberta_head() if reference_head else contextlib.nullcontext()):
      return self.flax_model(batch["input_ids"], attention_mask=batch["attention_mask"],
                             params=params, dropout_rng=dropout_key if train else None,
                             train=train, **kw)


@contextlib.contextmanager
def reference_roberta_head():
  """While active, RoBERTa's classification head computes what the reference's head computed.

  transformers 4.x (FlaxRobertaClassificationHead) applies dropout twice: to the <s> vector
  before `dense` and again after `tanh`. The reference swaps in its own head
  (pooling_roberta.py, RobertaClassificationHeadWithPooler.forward, lines 48-68) whose
  `pooler_dropout` is false in every RoBERTa config (configs/rte/pooler-roberta-large_*.yaml,
  line 36), so dropout runs once, after tanh: out_proj(dropout(tanh(dense(h_<s>)))). A flax
  method interceptor runs that with the head's own dense, dropout and out_proj submodules, so
  transformers' modules are used unchanged and the parameter tree is the same.
  """
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  from transformers.models.roberta import modeling_flax_roberta  # pylint: disable=import-outside-toplevel
  from transformers.models.xlm_roberta import modeling_flax_xlm_roberta  # pylint: disable=import-outside-toplevel
  head_cls = (modeling_flax_roberta.FlaxRobertaClassificationHead,
              modeling_flax_xlm_roberta.FlaxXLMRobertaClassificationHead)

  def intercept(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != "__call__" or not isinstance(module, head_cls):
      return next_fun(*args, **kwargs)
    hidden = args[0] if args else kwargs["hidden_states"]
    deterministic = kwargs.get("deterministic", args[1] if len(args) > 1 else True)
    x = nn.tanh(module.dense(hidden[:, 0, :]))
    x = module.dropout(x, deterministic=deterministic)
    return module.out_proj(x)

  with nn.intercept_methods(intercept):
    yield


def _arch_of(config, name: str = "") -> str:
  return families.arch_of(config, name)


def _config_overrides(model_cfg, arch):
  p = model_cfg.dropout
  if p is not None and p >= 0:
    return families.dropout_overrides(arch, float(p))
  return {}


def _tiny(model_cfg, model_type, num_labels, tokenizer, dtype):
  config_cls, model_cls = families.classes(model_type)
  kw = families.tiny_config_kwargs(model_type, model_cfg.tiny, len(tokenizer), num_labels,
                                   tokenizer)
  # (Special-token ids agree with the tokenizer: RoBERTa derives position ids from padding.)
  kw.update(_config_overrides(model_cfg, families.arch_of_type(model_type)))
  config = config_cls(**kw)
  flax_model = model_cls(config, seed=int(model_cfg.tiny.init_seed), dtype=dtype)
  return flax_model, config


def _has_flax_weights(folder):
  return os.path.isfile(os.path.join(folder, "flax_model.msgpack"))


def load(model_cfg, num_labels: int, tokenizer=None) -> Model:
  """Loads `model.name_or_path` (tiny-*, a local folder or a hub id) as a Flax classifier."""
  name = model_cfg.name_or_path
  if model_cfg.dtype not in DTYPES:
    raise ConfigError(f"model.dtype={model_cfg.dtype!r}; choose one of {', '.join(DTYPES)}")
  dtype = DTYPES[model_cfg.dtype]
  attention = model_cfg.attention
  attention_lib.check(attention, model_cfg.dtype)
  head = model_cfg.head
  if head not in HEADS:
    raise ConfigError(f"model.head={head!r}; choose one of {', '.join(HEADS)}")
  if name in TINY:
    if tokenizer is None:
      raise ValueError("a tiny model is sized by its tokenizer; pass one")
    flax_model, config = _tiny(model_cfg, TINY[name], num_labels, tokenizer, dtype)
    params = flax_model.params
  else:
    flax_model, config, params = _pretrained(model_cfg, num_labels, dtype)
  arch = _arch_of(config)
  if not families.family_of(arch).reference_head:  # its reference head is transformers' one
    head = "transformers"
  params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), params)
  return Model(flax_model, params, arch, int(config.num_hidden_layers), config, name, attention,
               head)


def _pretrained(model_cfg, num_labels: int, dtype):
  """(Flax classifier of `num_labels` outputs, used as a function; its config; its parameters) of
  a folder or hub id: the checkpoint's encoder, and a placeholder head of the new size.

  The checkpoint is loaded as it was saved, with its own head size, so that a model fine-tuned
  on an intermediate task loads too (STILTs, Phang et al. 2018: RTE from an MNLI model whose head
  has 3 outputs; transformers refuses a head of another size). Its head is then dropped, whatever
  its size: every run draws its own (train.initial_params), so a kept head would never be used
  anyway. The log names the head weights the checkpoint held and jaxstab dropped."""
  import transformers as tr  # pylint: disable=import-outside-toplevel
  name = model_cfg.name_or_path
  local = os.path.isdir(name)
  if local and not os.path.isfile(os.path.join(name, "config.json")):
    raise ConfigError(f"model folder {name} has no config.json (model.name_or_path)")
  try:
    saved = tr.AutoConfig.from_pretrained(name)  # the checkpoint's own head size
    config = tr.AutoConfig.from_pretrained(name, num_labels=num_labels)
  except (OSError, ValueError) as e:
    raise ConfigError(
        f"cannot load model {name!r} (model.name_or_path): {str(e).splitlines()[0]}. "
        "If this machine is offline, pass a local folder holding config.json and the weights "
        "(flax_model.msgpack or model.safetensors / pytorch_model.bin): "
        "--config.model.name_or_path=/path/to/folder") from e
  arch = _arch_of(config, name)
  for k, v in _config_overrides(model_cfg, arch).items():
    setattr(config, k, v)
  _, model_cls = families.classes(config.model_type)
  from_pt = local and not _has_flax_weights(name)
  with _no_load_noise() as missing:
    try:
      loaded = model_cls.from_pretrained(name, config=saved, dtype=dtype, from_pt=from_pt)
    except OSError as e:
      if local or from_pt:
        raise ConfigError(f"cannot load weights of {name!r}: {e}") from e
      loaded = model_cls.from_pretrained(name, config=saved, dtype=dtype, from_pt=True)
  # The classifier actually run: no random init (its weights are the ones built below).
  flax_model = model_cls(config, dtype=dtype, _do_init=False)
  params, dropped = replace_head(dict(loaded.params), dict(flax_model.params_shape_tree), arch,
                                 missing, config.initializer_range)
  if dropped:
    absl_logging.info("%s: the checkpoint's classification head is not used (%s): each run "
                      "draws its own head of %d output(s)", name, ", ".join(dropped), num_labels)
  return flax_model, config, params


def replace_head(params, shapes, arch: str, missing=frozenset(), init_range: float = 0.02):
  """(params with the family's head replaced by a placeholder of the shapes in `shapes` (the
  new model's params_shape_tree), drawn as a seed's head is drawn; the dropped head weights,
  as 'path shape', those in `missing` (not in the checkpoint) left out)."""
  head_keys = families.family_of(arch).head_keys
  dropped = []
  for root in head_keys:
    if root not in params:
      continue
    for path, leaf in jax.tree_util.tree_flatten_with_path(params[root])[0]:
      key = (root,) + tuple(treepath.names(path))
      if key not in missing:
        dropped.append(f"{'/'.join(key)} {tuple(int(d) for d in leaf.shape)}")
  out = {k: v for k, v in params.items() if k not in head_keys}
  new_head = {root: jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, jnp.float32), shapes[root])
              for root in head_keys if root in shapes}
  out.update(init_head(new_head, jax.random.PRNGKey(0), init_range))
  return out, dropped


def _missing_keys(text: str):
  """The parameter keys transformers lists as 'newly initialized' (not in the checkpoint), as
  tuples of names, from its warning's text."""
  listed = text.split("newly initialized", 1)[1].split("\n", 1)[0]
  return {tuple(re.findall(r"'([^']*)'", inner)) for inner in re.findall(r"\(([^()]*)\)", listed)}


def check_remat(remat: str, family: families.Family, name: str) -> None:
  """train.remat must be one of REMAT, and 'layers' needs a family whose record says `remat`."""
  if remat not in REMAT:
    raise ConfigError(f"train.remat={remat!r}; choose one of {', '.join(REMAT)}")
  if remat != "none" and not family.remat:
    raise ConfigError(f"train.remat={remat!r} is not available for {family.title} ({name}): "
                      "its Flax classes have no gradient checkpointing; use train.remat='none'")


def with_remat(model: Model, remat: str) -> Model:
  """The same model (same params, same numbers up to rounding) whose encoder layers are
  rematerialised in the backward pass when remat='layers': activations of a layer are recomputed
  from its input instead of being kept, so a seed needs less memory for about one more forward
  pass of compute. A second transformers module is built around the same config (_do_init=False:
  no second random initialisation; jaxstab always passes the params)."""
  check_remat(remat, model.family, model.name)
  if remat == "none":
    return model
  fm = model.flax_model
  flax_model = type(fm)(fm.config, dtype=fm.dtype, _do_init=False, gradient_checkpointing=True)
  return dataclasses.replace(model, flax_model=flax_model)


def _not_load_noise(record) -> bool:
  """Drops two of transformers' loading warnings that say nothing true about a jaxstab run:
  - the list of every fp16/bf16 tensor of a half-precision checkpoint (the copy carried to a GPU
    machine): jaxstab casts them all to float32 right after loading;
  - "Some weights ... newly initialized: {classifier ...} You should probably TRAIN this model"
    when only the classification head (families.HEAD_KEYS) is missing: jaxstab draws that
    head per seed itself
    (models.init_head). Any other missing weight is still reported."""
  text = record.getMessage()
  if "precision from the model checkpoint" in text:
    return False
  if "newly initialized" in text:
    missing = _missing_keys(text)
    return not (missing and all(m[0] in families.HEAD_KEYS for m in missing))
  return True


@contextlib.contextmanager
def _no_load_noise():
  """While loading: transformers' loader without the noise above; yields the set of keys it
  reports missing from the checkpoint (filled in as it loads). Its warnings are made while
  inside even where transformers' verbosity is lower, so that the set is complete, and shown
  only as that verbosity allows."""
  log = logging.getLogger("transformers.modeling_flax_utils")
  missing, shown_from, level = set(), log.getEffectiveLevel(), log.level

  def keep(record):
    if "newly initialized" in record.getMessage():
      missing.update(_missing_keys(record.getMessage()))
    return record.levelno >= shown_from and _not_load_noise(record)
  log.addFilter(keep)
  log.setLevel(min(shown_from, logging.WARNING))
  try:
    yield missing
  finally:
    log.removeFilter(keep)
    log.setLevel(level)


def check_fit(model: Model, tokenizer, max_seq_length: int) -> None:
  """The tokenizer's ids and the sequence length must fit the model's embedding tables."""
  vocab = int(model.config.vocab_size)
  if len(tokenizer) > vocab:
    raise ConfigError(f"the tokenizer has {len(tokenizer)} tokens but model {model.name!r} only "
                      f"{vocab} embeddings: tokenizer and model do not match (model.tokenizer)")
  # RoBERTa numbers positions from padding_idx + 1, so it loses padding_idx + 1 positions.
  offset = model.family.position_offset(model.config)
  limit = int(model.config.max_position_embeddings) - offset
  if max_seq_length > limit:
    raise ConfigError(f"train.max_seq_length={max_seq_length} exceeds the {limit} positions of "
                      f"model {model.name!r}")


def init_head(params, key, init_range: float, head: str = "transformers"):
  """Re-draws the classification head from `key`: N(0, init_range) kernels, zero biases.

  transformers initialises a missing head from one fixed seed; the paper's seeds differ in
  exactly this draw (and data order and dropout), so each run draws its own head here. The head
  is every top-level subtree named in families.HEAD_KEYS: `classifier` (BERT and ALBERT: one
  dense; RoBERTa, XLM-R and ELECTRA: classifier/dense + classifier/out_proj), and DistilBERT's
  `pre_classifier` with its `classifier` (the pretrained checkpoint holds neither).

  head='reference' draws RoBERTa's `classifier/dense` (the only head layer named `dense`; BERT
  and ALBERT heads have none, so they are drawn as above) the way the reference left it:
  transformers 2.5.1's RobertaForSequenceClassification never calls init_weights
  (src/transformers/modeling_roberta.py, lines 282-287), the reference replaces its head after
  construction (pooling_roberta.py, line 92) and re-draws only `out_proj` (pooling_roberta.py,
  lines 130-134, called at run_finetuning.py line 981; `re_init_pooler` is false in the RoBERTa
  configs), so `dense` keeps PyTorch's nn.Linear default: weight and bias
  uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn from the run's seed (set_seed at
  run_finetuning.py line 903 comes before the model is built). The keys per leaf are the same in
  both modes, so `out_proj` is the same draw either way. Only a tree holding the backbone of a
  family with `reference_head` (a `roberta` backbone: RoBERTa, XLM-R) is drawn this way;
  ELECTRA's classifier/dense is N(0, init_range).

  A LayerNorm in the head (ModernBERT's `classifier/norm`) starts at scale 1, bias 0.
  `classifier` is drawn from `key` itself and DistilBERT's `pre_classifier` from
  fold_in(key, 1), so the families with a one-part head draw it from `key` alone.
  """
  reference = head == "reference" and any(f.reference_head and f.backbone in params
                                           for f in families.FAMILIES.values())
  out = dict(params)
  for i, root in enumerate(families.HEAD_KEYS):
    if root in params:
      out[root] = _draw_head(params[root], key if i == 0 else jax.random.fold_in(key, i),
                             init_range, reference)
  return out


def _draw_head(head_params, key, init_range, reference):
  leaves, treedef = jax.tree_util.tree_flatten_with_path(head_params)
  keys = jax.random.split(key, len(leaves))
  new = []
  for (path, leaf), k in zip(leaves, keys):
    names = treepath.names(path)
    if reference and names[0] == "dense":
      fan_in = head_params["dense"]["kernel"].shape[0]  # a Flax kernel is [in, out]
      bound = 1.0 / float(np.sqrt(fan_in))
      new.append(jax.random.uniform(k, leaf.shape, leaf.dtype, -bound, bound))
    elif names[-1] == "kernel":
      new.append(init_range * jax.random.normal(k, leaf.shape, leaf.dtype))
    elif names[-1] == "scale":  # a LayerNorm in the head (ModernBERT's head/norm): scale 1
      new.append(jnp.ones_like(leaf))
    else:
      new.append(jnp.zeros_like(leaf))
  return jax.tree_util.tree_unflatten(treedef, new)


def param_count(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


def takes_roberta_prefix_space(model_cfg) -> bool:
  """Whether model.roberta_prefix_space applies to `model.name_or_path`: only where its family
  says so (RoBERTa's: the reference's tokenizer quirk). Read from the config before the
  tokenizer is loaded; a config that cannot be read here keeps the flag (models.load then says
  why it cannot load the model)."""
  name = model_cfg.name_or_path
  if name in TINY:
    return families.family_of(TINY[name]).roberta_tokenizer
  if os.path.isdir(name) and not os.path.isfile(os.path.join(name, "config.json")):
    return True  # AutoConfig would guess a config from the folder's name; models.load refuses it
  import transformers as tr  # pylint: disable=import-outside-toplevel  # heavy; only when needed
  try:
    config = tr.AutoConfig.from_pretrained(name)
  except (OSError, ValueError):
    return True
  return families.family_of(config, name).roberta_tokenizer


def shape_of(model_cfg):
  """(arch, num_layers) of `model.name_or_path` from its config alone, without the weights or
  the network (a folder, or a hub id already in the local cache); None when it cannot be read
  that way (the full load then checks, and reports why). A config of a family jaxstab does not
  handle raises ConfigError naming the ones it does."""
  name = model_cfg.name_or_path
  if name in TINY:
    return families.arch_of_type(TINY[name]), int(model_cfg.tiny.num_layers)
  if os.path.isdir(name) and not os.path.isfile(os.path.join(name, "config.json")):
    return None
  import transformers as tr  # pylint: disable=import-outside-toplevel  # heavy; only when needed
  try:
    config = tr.AutoConfig.from_pretrained(name, local_files_only=True)
    layers = int(config.num_hidden_layers)
  except (OSError, ValueError, AttributeError):
    return None
  return _arch_of(config, name), layers  # a family jaxstab does not handle: ConfigError, here already
