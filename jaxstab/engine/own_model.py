"""The interface a jaxstab-written Flax classifier offers, so the engine treats it like
transformers' Flax classifiers (the paper's families keep those).

`models.Model` calls `flax_model(input_ids, attention_mask=, params=, dropout_rng=, train=)` and
reads `.logits` (with `output_hidden_states=True` also `.hidden_states`: the embeddings' output
and every layer's, which the encoder's loop records with `sow_hidden`); `models.load` builds one with `cls(config, seed=, dtype=)` (random, `.params`)
or `cls.from_pretrained(name, config=, dtype=)` and reads `params_shape_tree`; `with_remat`
rebuilds it with `gradient_checkpointing=True`. `OwnClassifier` implements all of that once
around a linen module; a family's subclass names its module, its config check, its table of
checkpoint names (torch_weights) and the checkpoint weights it leaves unused. The module is
linen (not NNX) for the same reason: the probe's and the tests' flax method interceptors, Mixout
and re-initialisation read a plain nested dict of parameters and intercept linen modules, exactly
as they do for transformers' classes.
"""
import dataclasses
import functools
import re
from typing import Any, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import unfreeze

from jaxstab.engine import torch_weights


# The activations transformers' ACT2FN names, for the own modules' configs (`gelu` is exact).
ACTIVATIONS = {"gelu": functools.partial(nn.gelu, approximate=False),
               "gelu_new": functools.partial(nn.gelu, approximate=True),
               "gelu_pytorch_tanh": functools.partial(nn.gelu, approximate=True),
               "relu": nn.relu, "tanh": jnp.tanh}


@dataclasses.dataclass
class Output:
  logits: Any
  hidden_states: Any = None  # with output_hidden_states: (embeddings, layer 1, ..., layer L)


HIDDEN = "intermediates"  # the collection the encoder layers sow their outputs into


def sow_hidden(module: nn.Module, x) -> None:
  """Records `x` as the next hidden state, as transformers' `output_hidden_states` lists them.
  A module's encoder loop calls it on the embeddings' output and after every layer. Outside an
  `output_hidden_states` call the collection is not mutable, and sow does nothing: training
  and evaluation trace the same program as before."""
  module.sow(HIDDEN, "hidden_states", x)


def _sown(tree):
  """The tuple of hidden states sown anywhere in the `intermediates` tree (one encoder sows)."""
  if isinstance(tree, dict):
    if "hidden_states" in tree:
      return tuple(tree["hidden_states"])
    for v in tree.values():
      found = _sown(v)
      if found is not None:
        return found
  return None


class OwnClassifier:
  """A sequence classifier around `module_class(config=, dtype=, remat=)`, whose __call__ is
  (input_ids, attention_mask, train) -> logits."""
  module_class: Any = None
  backbone_prefix: str = ""  # the checkpoint names' prefix of the encoder (e.g. 'deberta')
  # The encoder's key in the Flax tree (the family's name); the prefix when left empty.
  backbone_key: str = ""
  # First names of a checkpoint saved from the bare encoder (no prefix), which get the prefix.
  bare_roots: Tuple[str, ...] = ("embeddings", "encoder")
  # Read every weight of the tree from the checkpoint, not only the encoder's (a masked-LM
  # model for the forgetting analysis, whose head is pretrained); a classifier's head never is.
  loads_head: bool = False
  # Regexes on checkpoint names of the family's masked-LM head, and why a checkpoint may have
  # none: the forgetting analysis decides from the checkpoint's own names (masked_lm_weights).
  mlm_head: Sequence[str] = ()
  no_mlm_note: str = ""

  @classmethod
  def masked_lm_weights(cls, name: str):
    """The checkpoint weights of `name` (folder or hub id) that belong to a masked-LM head."""
    names = torch_weights.checkpoint_names(torch_weights.resolve(name))
    return [k for k in names if any(re.fullmatch(p, k) for p in cls.mlm_head)]

  @classmethod
  def check_config(cls, config) -> None:
    """Raises ConfigError naming a config field the module does not implement."""

  @classmethod
  def weight_table(cls, config) -> Sequence[Tuple[str, str, str]]:
    """(regex on a checkpoint module name, Flax path template, kind) rows (torch_weights)."""
    raise NotImplementedError

  @classmethod
  def ignored_weights(cls, config) -> Sequence[Tuple[str, str]]:
    """(regex on a checkpoint name, why it is not used) rows."""
    return ()

  def __init__(self, config, dtype=jnp.float32, seed: int = 0, _do_init: bool = True,
               gradient_checkpointing: bool = False):
    self.check_config(config)
    self.config, self.dtype = config, dtype
    self.module = self.module_class(config=config, dtype=dtype, remat=gradient_checkpointing)
    self.params = self.init_weights(jax.random.PRNGKey(seed)) if _do_init else None

  def init_weights(self, key, input_shape=(1, 8)):
    """Random parameters: N(0, initializer_range) kernels and tables, zero biases, LayerNorms
    at 1 and 0 (the initialisers the module declares)."""
    ids = jnp.zeros(input_shape, jnp.int32)
    variables = self.module.init({"params": key, "dropout": key}, ids, jnp.ones_like(ids))
    return unfreeze(variables["params"])

  @property
  def params_shape_tree(self):
    return jax.eval_shape(self.init_weights, jax.random.PRNGKey(0))

  def __call__(self, input_ids, attention_mask=None, params=None, dropout_rng=None,
               train: bool = False, token_type_ids=None, output_hidden_states: bool = False):
    del token_type_ids  # families of own modules say in their record whether they take them
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    rngs = {"dropout": dropout_rng} if train and dropout_rng is not None else {}
    if not output_hidden_states:
      return Output(self.module.apply({"params": params}, input_ids, attention_mask, train=train,
                                      rngs=rngs))
    logits, sown = self.module.apply({"params": params}, input_ids, attention_mask, train=train,
                                     rngs=rngs, mutable=[HIDDEN])
    return Output(logits, _sown(unfreeze(sown).get(HIDDEN, {})))

  @classmethod
  def from_pretrained(cls, name: str, config=None, dtype=jnp.float32, **unused):
    """The checkpoint's encoder (folder or hub id) on this module's tree. The checkpoint's own
    head, if any, is among the ignored weights: every run draws its own (models.replace_head
    adds a placeholder of the new size)."""
    del unused  # from_pt: always PyTorch (safetensors or .bin) for own modules
    folder = torch_weights.resolve(name)
    state, path = torch_weights.read_state(folder)
    state = torch_weights.normalise_names(state, cls.backbone_prefix, cls.bare_roots)
    model = cls(config, dtype=dtype, _do_init=False)
    shapes = model.params_shape_tree
    key = cls.backbone_key or cls.backbone_prefix
    backbone = dict(shapes) if cls.loads_head else {key: shapes[key]}
    params, _ = torch_weights.to_flax(state, cls.weight_table(config), cls.ignored_weights(config),
                                      backbone, path)
    model.params = params
    return model
