"""DeBERTa-v3 on jaxstab's own Flax module (jaxstab/engine/deberta.py).

1. PyTorch parity: transformers' DebertaV2ForSequenceClassification with random weights in v3's
   layout, saved with save_pretrained (safetensors, and a pytorch_model.bin holding the extra
   weights a public checkpoint holds), loaded by models.load as a user's folder is; logits, loss
   and per-group gradient norms on 8 padded RTE dev pairs of 64 tokens, float32, dropout off.
   8 position buckets, so relative distances beyond 4 fall in the log buckets;
2. planted bugs (the house style of tests/test_planted_bugs.py): p2c dropped, buckets without
   the log part, the scale factor of one term, the relative embeddings without their LayerNorm
   each miss parity by far more than the bound;
3. the bucket table equals PyTorch's exactly, at v3's sizes too;
4. the loader: a pickle that would run code is refused and runs nothing; unexpected and missing
   weights are named; config fields the module does not implement are refused by name;
5. the family in jaxstab: probe groups, head per seed, stabilisers, reinit_pooler refused.
"""
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstab.config import config_lib
from jaxstab.engine import deberta, families, models, probe, stabilisers, torch_weights
from jaxstab.infra.errors import ConfigError
from jaxstab.study import validate
from tests import guards
from tests.helpers import tiny_setup

N, LENGTH, LAYERS = 8, 64, 2
MIN_MARGIN = 10.0  # a planted bug must miss parity by at least this many times the bound
# Bounds ~6-10x the worst error measured on 2 CPU cores (safetensors and .bin folder alike, head
# seed 11; `pytest -s tests/test_deberta.py` prints them). Each planted bug misses by > 5000x.
BOUNDS = {
    "logits": 3e-6,           # max |d logit| (max |logit| 1.37): measured 4.8e-7
    "loss": 5e-7,             # |d loss| / loss: measured 0 (bit-equal in float32)
    "group_grad_norm": 1.5e-6,  # max over groups |d norm| / norm: measured 1.5e-7
    "total_grad_norm": 4e-7,  # |d norm| / norm: measured 4.0e-8
}
GROUPS = ["embeddings", "layer_0", "layer_1", "classifier"]
# The PyTorch config: v3's layout at small width.
V3_LAYOUT = dict(hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=4,
                 intermediate_size=64, max_position_embeddings=128, relative_attention=True,
                 position_buckets=8, max_relative_positions=-1, pos_att_type=["p2c", "c2p"],
                 share_att_key=True, norm_rel_ebd="layer_norm", position_biased_input=False,
                 type_vocab_size=0, layer_norm_eps=1e-7, hidden_dropout_prob=0.0,
                 attention_probs_dropout_prob=0.0, num_labels=2)
# What a public v3 checkpoint holds beyond the encoder (named in the log, not used).
EXTRA = ("lm_predictions.lm_head.dense.weight", "mask_predictions.dense.weight",
         "deberta.embeddings.position_embeddings.weight")


@pytest.fixture(scope="module")
def torch_mod():
  torch = pytest.importorskip("torch")
  before = torch.get_num_threads()
  torch.set_num_threads(1)
  yield torch
  torch.set_num_threads(before)


@pytest.fixture(scope="module")
def folders(glue_dir, torch_mod, tmp_path_factory):
  """The PyTorch model, the RTE arrays (the tiny models' tokenizer), and its two saved folders."""
  import transformers  # pylint: disable=import-outside-toplevel
  torch = torch_mod
  cfg, tiny, arrays = tiny_setup(glue_dir, "deberta-v3", n=N, length=LENGTH)
  assert arrays["attention_mask"].min() == 0  # padded pairs
  torch.manual_seed(0)
  config = transformers.DebertaV2Config(vocab_size=tiny.config.vocab_size,
                                        pad_token_id=tiny.config.pad_token_id, **V3_LAYOUT)
  tmodel = transformers.DebertaV2ForSequenceClassification(config).eval()
  with torch.no_grad():  # away from the init so every weight matters, LayerNorms included
    for name, p in tmodel.named_parameters():
      if "LayerNorm" in name:
        p.add_(0.2 * torch.randn_like(p))
      else:
        p.mul_(3.0)
  root = tmp_path_factory.mktemp("deberta")
  safe, pickled = root / "safetensors", root / "bin"
  tmodel.save_pretrained(safe)
  tmodel.save_pretrained(pickled, safe_serialization=False)
  state = torch.load(pickled / "pytorch_model.bin", weights_only=True)
  for name in EXTRA:  # as in the public checkpoints
    state[name] = torch.randn(4, 4)
  torch.save(state, pickled / "pytorch_model.bin")
  assert not (pickled / "model.safetensors").exists()
  return dict(cfg=cfg, arrays=arrays, tmodel=tmodel, safe=str(safe), bin=str(pickled))


def load(folders, which):
  cfg = config_lib.task_config("rte", f"model={folders[which]},fidelity=corrected")
  cfg.model.dropout = 0.0
  return models.load(cfg.model, 2)


def torch_group(name: str) -> str:
  """The probe group of a PyTorch DeBERTa parameter, from transformers' names."""
  m = re.match(r"deberta\.encoder\.layer\.(\d+)\.", name)
  if m:
    return f"layer_{m.group(1)}"
  if name.startswith(("deberta.embeddings.", "deberta.encoder.rel_embeddings.",
                      "deberta.encoder.LayerNorm.")):
    return "embeddings"
  assert name.startswith(("pooler.", "classifier.")), name
  return "classifier"


def torch_one_batch(torch, tmodel, arrays, params):
  """PyTorch's logits, loss and group norms with the seed's head copied in."""
  head = params["classifier"]
  with torch.no_grad():
    for tname, (layer, leaf) in {"pooler.dense.weight": ("dense", "kernel"),
                                 "pooler.dense.bias": ("dense", "bias"),
                                 "classifier.weight": ("out_proj", "kernel"),
                                 "classifier.bias": ("out_proj", "bias")}.items():
      value = np.asarray(head[layer][leaf])
      tmodel.get_parameter(tname).copy_(torch.from_numpy(np.array(value.T if leaf == "kernel"
                                                                  else value)))
  tb = {k: torch.from_numpy(np.asarray(v).astype(np.int64)) for k, v in arrays.items()}
  tmodel.zero_grad(set_to_none=True)
  logits = tmodel(input_ids=tb["input_ids"], attention_mask=tb["attention_mask"]).logits
  loss = torch.nn.functional.cross_entropy(logits, tb["labels"])
  loss.backward()
  sums = dict.fromkeys(GROUPS, 0.0)
  for name, p in tmodel.named_parameters():
    sums[torch_group(name)] += float(torch.sum(p.grad.double() ** 2))
  norms = np.sqrt([sums[g] for g in GROUPS])
  return dict(loss=float(loss.detach()), logits=logits.detach().numpy(), group_grad_norm=norms,
              total_grad_norm=float(np.sqrt(np.sum(norms ** 2))))


def parity_errors(ours, theirs) -> dict:
  return {"logits": (float(np.max(np.abs(ours["logits"] - theirs["logits"]))), BOUNDS["logits"]),
          **{q: (guards.rel_max(ours[q], theirs[q]), BOUNDS[q])
             for q in ("loss", "group_grad_norm", "total_grad_norm")}}


def seed_head(model):
  """A seed's head (head seed 11), its kernels scaled by 10 so that the logits vary across
  examples (at N(0, 0.02) they differ by ~1e-4) and every group's gradient matters."""
  params = models.init_head(model.params, jax.random.PRNGKey(11), 0.02)
  params["classifier"] = jax.tree_util.tree_map(lambda x: 10.0 * x, params["classifier"])
  return params


@pytest.fixture(scope="module")
def parity(folders, torch_mod):
  """jaxstab's model loaded from the safetensors folder, a seed's head, PyTorch's answers."""
  model = load(folders, "safe")
  params = seed_head(model)
  theirs = torch_one_batch(torch_mod, folders["tmodel"], folders["arrays"], params)
  return model, params, theirs


def check_parity(model, params, arrays, theirs, what="PyTorch parity"):
  return guards.enforce(what, parity_errors(guards.jax_one_batch(model, params, arrays), theirs))


# --------------------------------------------------------------------------- 1. parity

@pytest.mark.parametrize("which", ["safe", "bin"])
def test_parity_with_pytorch(folders, parity, which):
  model, params, theirs = parity
  if which == "bin":  # the same weights through the pickle path (extra weights ignored)
    model = load(folders, "bin")
    params = seed_head(model)
  assert (model.arch, model.num_layers, type(model.flax_model)) == (
      "deberta", LAYERS, deberta.DebertaV2Classifier)
  assert probe.group_names(params, model.arch, LAYERS) == GROUPS
  assert np.all(theirs["group_grad_norm"] > 0) and np.min(np.std(theirs["logits"], 0)) > 1e-3
  errors = check_parity(model, params, folders["arrays"], theirs)
  print(f"\n[deberta {which}] max |logit| {np.max(np.abs(theirs['logits'])):.3g}; " + ", ".join(f"{k} {e:.2e} (bound {b:.0e})"
                                             for k, (e, b) in errors.items()))


def test_the_test_length_reaches_the_log_buckets():
  config = load_config_only()
  rel = np.arange(LENGTH)[:, None] - np.arange(LENGTH)[None, :]
  buckets = deberta.log_buckets(rel, config.position_buckets, config.max_position_embeddings)
  assert np.any(np.abs(buckets) > config.position_buckets // 2)  # log part in use
  assert np.any(buckets != rel)


def load_config_only():
  import transformers  # pylint: disable=import-outside-toplevel
  return transformers.DebertaV2Config(vocab_size=100, **V3_LAYOUT)


# --------------------------------------------------------------------------- 2. planted bugs

def _unchanged_rel_norm(next_fun, args, kwargs, context):
  if isinstance(context.module, nn.LayerNorm) and isinstance(context.module.parent,
                                                            deberta.RelativeEmbeddings):
    return args[0]
  return next_fun(*args, **kwargs)


PLANTS = {
    "p2c dropped": ("p2c_term", lambda key, pos_query, index: 0.0),
    "buckets without the log part": ("log_buckets", lambda rel, buckets, max_position: rel),
    "the scale factor of a single term": (
        "attention_scale", lambda size, n, real=deberta.attention_scale: real(size, 0)),
    "relative embeddings without their LayerNorm": (None, None),
}


@pytest.mark.parametrize("bug", list(PLANTS))
def test_planted_bug_misses_parity(folders, parity, bug, monkeypatch):
  model, params, theirs = parity
  name, plant = PLANTS[bug]
  if name:
    monkeypatch.setattr(deberta, name, plant)
  with nn.intercept_methods(_unchanged_rel_norm) if name is None else _nothing():
    try:
      check_parity(model, params, folders["arrays"], theirs, f"parity with {bug}")
    except guards.GuardFailed as failed:
      q, err, bound, ratio = guards.margin(failed.errors)
      print(f"\nplanted {bug}: {q} {err:.3g} vs bound {bound:.3g} ({ratio:.3g}x)")
      assert ratio >= MIN_MARGIN, (bug, failed.errors)
      return
  pytest.fail(f"planted {bug} went unnoticed")


class _nothing:  # pylint: disable=invalid-name
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False
