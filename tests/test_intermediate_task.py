"""Starting from a checkpoint fine-tuned on another task (STILTs: RTE from an MNLI model whose head
has 3 outputs): jaxstab loads its encoder exactly and drops its head whatever the head's size,
saying in the log which weights it dropped (jaxstab.engine.models)."""
import logging

import jax
import numpy as np
import pytest
import torch
import transformers as tr

from jaxstab.config import config_lib
from jaxstab.engine import models
from tests import family_torch, guards

SIZES = dict(vocab_size=60, max_position_embeddings=32, num_labels=3)


def _load(folder, caplog, num_labels=2):
  """jaxstab's loader on `folder`, as a setting of `num_labels` classes loads it; (model, what
  it logged)."""
  cfg = config_lib.base_config().model
  cfg.update(dict(name_or_path=str(folder), dtype="float32", dropout=-1.0,
                  attention="reference"))
  caplog.clear()
  with caplog.at_level(logging.INFO, logger="absl"):
    model = models.load(cfg, num_labels)
  return model, caplog.text


def _flat(params):
  return {tuple(guards._names(p)): np.asarray(v)  # pylint: disable=protected-access
          for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}


def test_a_pytorch_bert_with_three_outputs_loads_as_two(tmp_path, caplog):
  """The PyTorch weights (model.safetensors), converted: every encoder weight equals the saved
  tensor exactly; the head is the new size and the log names the dropped one."""
  torch.manual_seed(0)
  saved = tr.BertForSequenceClassification(tr.BertConfig(
      hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, **SIZES))
  saved.save_pretrained(tmp_path)
  model, said = _load(tmp_path, caplog)
  flat, compared = _flat(model.params), 0
  for name, tensor in saved.state_dict().items():
    if name.startswith("classifier.") or "position_ids" in name:
      continue
    _, ours = family_torch.flax_leaf_of(name, flat)
    np.testing.assert_array_equal(ours, tensor.numpy())  # exactly: a copy, no arithmetic
    compared += 1
  assert compared == len(flat) - 2  # every leaf but the head's kernel and bias
  assert flat["classifier", "kernel"].shape == (16, 2) and flat["classifier", "bias"].shape == (2,)
  assert ("the checkpoint's classification head is not used (classifier/bias (3,), "
          "classifier/kernel (16, 3)): each run draws its own head of 2 output(s)") in said


def test_a_distilbert_head_of_two_layers_is_dropped_whole(tmp_path, caplog):
  """The Flax weights (flax_model.msgpack): DistilBERT's head is pre_classifier and classifier;
  both go, the pre_classifier although its size is unchanged."""
  saved = tr.FlaxDistilBertForSequenceClassification(tr.DistilBertConfig(
      dim=16, n_layers=2, n_heads=2, hidden_dim=32, **SIZES), seed=3)
  saved.save_pretrained(tmp_path)
  model, said = _load(tmp_path, caplog)
  ours, theirs = _flat(model.params), _flat(saved.params)
  encoder = [k for k in theirs if k[0] == "distilbert"]
  assert encoder and sorted(k for k in ours if k[0] == "distilbert") == sorted(encoder)
  for k in encoder:
    np.testing.assert_array_equal(ours[k], theirs[k])
  assert ours["classifier", "kernel"].shape == (16, 2)
  assert ours["pre_classifier", "kernel"].shape == (16, 16)
  assert not np.array_equal(ours["pre_classifier", "kernel"], theirs["pre_classifier", "kernel"])
  for dropped in ("classifier/kernel (16, 3)", "pre_classifier/kernel (16, 16)",
                  "pre_classifier/bias (16,)"):
    assert dropped in said, said


def test_a_checkpoint_without_a_head_drops_nothing(tmp_path, caplog):
  torch.manual_seed(0)
  tr.BertModel(tr.BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=32, **SIZES)).save_pretrained(tmp_path)
  model, said = _load(tmp_path, caplog)
  assert model.params["classifier"]["kernel"].shape == (16, 2)
  assert "head is not used" not in said and "newly initialized" not in said


@pytest.mark.parametrize("missing,dropped", [
    (set(), ["classifier/bias (3,)", "classifier/kernel (4, 3)"]),
    ({("classifier", "kernel"), ("classifier", "bias")}, [])])
def test_replace_head_names_only_what_the_checkpoint_held(missing, dropped):
  params = {"bert": {"w": np.ones(2)}, "classifier": {"kernel": np.ones((4, 3)),
                                                     "bias": np.ones(3)}}
  shapes = {"classifier": {"kernel": jax.ShapeDtypeStruct((4, 2), np.float32),
                           "bias": jax.ShapeDtypeStruct((2,), np.float32)}}
  out, said = models.replace_head(params, shapes, "bert", missing)
  assert said == dropped
  assert out["bert"] is params["bert"] and out["classifier"]["kernel"].shape == (4, 2)
