"""The `families.Family` records (jaxstab/engine/families.py): what each says of its family must
be true of the Flax model built from its tiny config, and code must follow the record, not the
family's name. (Beside tests/test_families.py, which holds the PyTorch parity of the families
and is near the length limit; nothing here needs PyTorch or GLUE data.)"""
import dataclasses
import inspect
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstab.config import config_lib
from jaxstab.engine import attention, families, models, probe, stabilisers
from jaxstab.infra.errors import ConfigError
from jaxstab.study import validate

LAYERS = 2


def tiny_flax(model_type):
  """A tiny random classifier of `model_type` from its record's classes and tiny config (no
  tokenizer: padding id 1, as RoBERTa's, so that a position offset shows), and 2 x 6 tokens."""
  tiny = types.SimpleNamespace(hidden_size=32, num_layers=LAYERS, num_heads=2,
                               intermediate_size=64, max_position_embeddings=40)
  tok = types.SimpleNamespace(pad_token_id=1, cls_token_id=0, sep_token_id=2)
  config_cls, model_cls = families.classes(model_type)
  config = config_cls(**families.tiny_config_kwargs(model_type, tiny, 50, 2, tok))
  ids = jnp.arange(3, 15).reshape(2, 6)
  batch = {"input_ids": ids, "attention_mask": jnp.ones_like(ids), "token_type_ids": ids % 2}
  return model_cls(config, seed=0), config, batch


def forward_modules_and_grads(model, batch):
  """The module classes a forward pass runs (and the names of those called), and
  d sum(logits^2) / d params."""
  seen = set()

  def spy(next_fun, args, kwargs, context):
    seen.add(type(context.module))
    seen.add(context.module.name)
    return next_fun(*args, **kwargs)
  with nn.intercept_methods(spy):  # a TypeError here: the record's segment_ids is wrong
    grads = jax.grad(lambda p: jnp.sum(model.logits(p, batch) ** 2))(model.params)
  return seen, grads


@pytest.mark.parametrize("model_type", list(families.TINY.values()))
def test_each_record_matches_its_flax_model(model_type):
  flax_model, config, batch = tiny_flax(model_type)
  fam, params = families.family_of(config), flax_model.params
  model = models.Model(flax_model, params, fam.name, LAYERS, config, model_type)
  assert set(params) == {fam.backbone, *fam.head_keys}
  assert ("pooler" in params[fam.backbone]) == fam.pooler
  assert (config.hidden_size, config.num_hidden_layers) == (32, LAYERS)  # fam.sizes
  assert set(fam.dropout_keys) <= set(type(config)().to_dict()) | set(config.to_dict())
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  assert ("layer_0" not in {probe.group_of(p, fam.name) for p, _ in flat}) == fam.shared_layer
  assert any("token_type" in jax.tree_util.keystr(p) for p, _ in flat) == fam.segment_ids
  seen, grads = forward_modules_and_grads(model, batch)
  bert_like, albert = attention._self_attention_classes()  # pylint: disable=protected-access
  assert bool(seen & {*bert_like, albert}) == fam.fused_attention
  # train.remat=layers rebuilds the classifier with gradient_checkpointing=True (with_remat).
  takes = "gradient_checkpointing" in inspect.signature(type(flax_model).__init__).parameters
  assert takes == fam.remat
  # The first position embedding that gets a gradient is the family's position offset.
  # (DeBERTa-v3 has relative positions only: no table unless position_biased_input;
  # ModernBERT's are rotary, in every layer.)
  table = grads[fam.backbone]["embeddings"].get("position_embeddings")
  assert (table is None) == (fam.rotary_positions
                             or not getattr(config, "position_biased_input", True))
  if table is not None:
    rows = np.asarray(table["embedding"])
    assert int(np.argmax(np.any(rows != 0, axis=1))) == fam.position_offset(config)
  assert fam.position_offset(config) == (2 if fam.positions_after_pad else 0)
  assert fam.token_embeddings in seen  # R3F's noise has a module to land on
  out_proj = params
  for key in fam.head_out_proj:  # R4F's output projection: hidden -> the 2 labels
    out_proj = out_proj[key]
  assert out_proj["kernel"].shape == (config.hidden_size, 2)
  if fam.segment_ids:  # they reach the model
    assert not np.allclose(model.logits(params, batch),
                           model.logits(params, batch, pass_segment_ids=False))
  if fam.mlm:  # the forgetting analysis's masked-LM model holds the same backbone
    mlm = families.mlm_class(fam.name)(config, seed=0)
    assert fam.backbone in mlm.params and fam.backbone == families.MODEL_TYPES[model_type]


def test_head_keys_cover_every_family_classifier_first():
  assert families.HEAD_KEYS[0] == "classifier"
  assert {k for f in families.FAMILIES.values() for k in f.head_keys} == set(families.HEAD_KEYS)
  assert [f.name for f in families.FAMILIES.values() if not f.mixout_head] == ["distilbert"]


def test_a_planted_record_drives_behaviour(monkeypatch):
  """A BERT with a record saying what DistilBERT's and ALBERT's say is treated as they are."""
  flax_model, config, batch = tiny_flax("bert")
  bert = models.Model(flax_model, flax_model.params, "bert", LAYERS, config, "b")
  monkeypatch.setitem(families.FAMILIES, "fake", dataclasses.replace(
      families.FAMILIES["bert"], name="fake", title="FakeBERT", segment_ids=False,
      shared_layer=True, fused_attention=False, head_keys=("classifier", "pre_classifier"),
      remat=False))
  fake = dataclasses.replace(bert, arch="fake")
  np.testing.assert_array_equal(fake.logits(fake.params, batch),
                                bert.logits(bert.params, batch, pass_segment_ids=False))
  assert not np.allclose(fake.logits(fake.params, batch), bert.logits(bert.params, batch))
  for key, value in (("model.attention", "xla"), ("stabilisers.llrd", 0.9),
                     ("stabilisers.reinit_layers", 1), ("stabilisers.mixout", 0.5),
                     ("train.remat", "layers")):
    cfg = config_lib.task_config("rte", "model=tiny-bert,setting=mixout" if "mixout" in key
                                 else "model=tiny-bert")
    config_lib.set_path(cfg, key, value)
    validate.check_model(cfg, "bert", LAYERS)
    with pytest.raises(ConfigError, match="for FakeBERT"):
      validate.check_model(cfg, "fake", LAYERS)
  with pytest.raises(ConfigError, match="not available for FakeBERT"):
    models.with_remat(fake, "layers")
  with pytest.raises(ConfigError, match="undefined for FakeBERT"):
    stabilisers.layerwise_scales(bert.params, "fake", LAYERS, 0.9)
  with pytest.raises(ConfigError, match="undefined for FakeBERT"):
    stabilisers.reinit_top_layers(bert.params, jax.random.PRNGKey(0), "fake", LAYERS, 1, True,
                                  0.02)
  # A shared layer has a probe norm per depth it is applied at, whatever its parameters say.
  assert "layer_2" in probe.group_names(bert.params, "fake", LAYERS + 1)
  assert "layer_2" not in probe.group_names(bert.params, "bert", LAYERS + 1)
