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
import types

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


# --------------------------------------------------------------------------- 3. buckets

@pytest.mark.parametrize("buckets,max_position,length", [(8, 128, 64), (32, 128, 128),
                                                          (256, 512, 512)])
def test_buckets_equal_pytorchs(torch_mod, buckets, max_position, length):
  """Exactly PyTorch's buckets (float32 log edges), at v3's 256 buckets over 512 tokens too."""
  from transformers.models.deberta_v2 import modeling_deberta_v2 as pt  # pylint: disable=import-outside-toplevel
  rel = np.arange(length)[:, None] - np.arange(length)[None, :]
  want = pt.make_log_bucket_position(torch_mod.from_numpy(rel), buckets, max_position)
  got = deberta.log_buckets(rel, buckets, max_position)
  np.testing.assert_array_equal(got, want.long().numpy())
  assert np.abs(got).max() > buckets // 2  # the log part is reached


# --------------------------------------------------------------------------- 4. the loader

class _Payload:
  """Unpickling this makes a folder: code a pickle runs when it is loaded."""

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return (os.makedirs, (self.marker,))


def test_a_pickle_that_runs_code_is_refused(torch_mod, tmp_path):
  folder, marker = tmp_path / "evil", tmp_path / "ran"
  folder.mkdir()
  torch_mod.save({"deberta.embeddings.word_embeddings.weight": torch_mod.zeros(2, 2),
                  "payload": _Payload(marker)}, folder / "pytorch_model.bin")
  with pytest.raises(ConfigError, match="refused to read .*pytorch_model.bin") as e:
    torch_weights.read_state(str(folder))
  assert "\n" not in str(e.value)
  assert not marker.exists()  # nothing ran
  torch_mod.load(folder / "pytorch_model.bin", weights_only=False)  # the payload is live:
  assert marker.exists()                                            # an unsafe load runs it


def test_unused_weights_are_named_and_others_are_errors(folders):
  config = load_config_only()
  config.vocab_size = folders["tmodel"].config.vocab_size
  model = deberta.DebertaV2Classifier.from_pretrained(folders["bin"], config=config)
  assert "classifier" not in model.params  # the checkpoint's head is not used
  state, path = torch_weights.read_state(folders["bin"])
  shapes = {"deberta": model.params_shape_tree["deberta"]}
  table, ignored = deberta.WEIGHTS, deberta.DebertaV2Classifier.ignored_weights(config)
  _, skipped = torch_weights.to_flax(state, table, ignored, shapes, path)
  assert set(skipped) == set(EXTRA) | {"pooler.dense.weight", "pooler.dense.bias",
                                       "classifier.weight", "classifier.bias"}
  extra = dict(state, **{"deberta.encoder.layer.0.attention.self.pos_key_proj.weight":
                         np.zeros((32, 32), np.float32)})
  with pytest.raises(ConfigError, match=r"pos_key_proj\.weight .*unexpected"):
    torch_weights.to_flax(extra, table, ignored, shapes, path)
  lacking = {k: v for k, v in state.items() if k != "deberta.encoder.LayerNorm.bias"}
  with pytest.raises(ConfigError, match="lacks 1 weight.*rel_embeddings/LayerNorm/bias"):
    torch_weights.to_flax(lacking, table, ignored, shapes, path)
  biased = dict(config.to_dict(), position_biased_input=True)  # then position_embeddings is used
  biased = type(config)(**biased)
  with pytest.raises(ConfigError, match=r"position_embeddings\.weight has shape \(4, 4\)"):
    torch_weights.to_flax(state, table, deberta.DebertaV2Classifier.ignored_weights(biased),
                          {"deberta": deberta.DebertaV2Classifier(
                              biased, _do_init=False).params_shape_tree["deberta"]}, path)


@pytest.mark.parametrize("field,value", [
    ("relative_attention", False), ("pos_att_type", ["c2p", "p2p"]), ("share_att_key", False),
    ("norm_rel_ebd", "batch_norm"), ("conv_kernel_size", 3), ("type_vocab_size", 2),
    ("embedding_size", 16), ("hidden_act", "swish"), ("pooler_hidden_act", "mish")])
def test_unimplemented_config_fields_are_refused_by_name(field, value):
  config = load_config_only()
  setattr(config, field, value)
  with pytest.raises(ConfigError, match=f"DeBERTa config {field}="):
    deberta.DebertaV2Classifier(config, _do_init=False)


# --------------------------------------------------------------------------- 5. the family

EXPECTED = [(r"deberta/(embeddings|encoder/rel_embeddings)/.*", "embeddings"),
            (r"deberta/encoder/layer/(\d+)/.*", "layer_{}"),
            (r"classifier/(dense|out_proj)/(kernel|bias)", "classifier")]


def expected_group(path_str):
  hits = [group.format(*m.groups()[:1]) for pattern, group in EXPECTED
          for m in [re.fullmatch(pattern, path_str)] if m]
  assert len(hits) == 1, (path_str, hits)
  return hits[0]


def test_probe_groups_head_and_stabilisers(parity):
  model, params, _ = parity
  fam = families.family_of("deberta-v2")
  assert (fam.name, fam.segment_ids, fam.pooler, fam.head_keys) == (
      "deberta", False, False, ("classifier",))
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  paths = ["/".join(guards._names(p)) for p, _ in flat]  # pylint: disable=protected-access
  groups = [expected_group(p) for p in paths]
  assert [probe.group_of(p, "deberta") for p, _ in flat] == groups
  assert "deberta/encoder/rel_embeddings/LayerNorm/scale" in paths
  ones = jax.tree_util.tree_map(jnp.ones_like, params)  # each group's norm^2 = its size
  got = np.asarray(probe.group_norms(ones, "deberta", GROUPS), np.float64) ** 2
  sizes = {g: sum(leaf.size for (_, leaf), h in zip(flat, groups) if h == g) for g in GROUPS}
  np.testing.assert_array_equal(np.round(got), [sizes[g] for g in GROUPS])
  # The head (pooler too) is drawn per seed; the backbone is the checkpoint's.
  other = models.init_head(model.params, jax.random.PRNGKey(12), 0.02)
  assert guards.tree_max_abs_diff(other["deberta"], model.params["deberta"]) == 0.0
  for layer in ("dense", "out_proj"):
    assert not np.array_equal(other["classifier"][layer]["kernel"],
                              models.init_head(model.params, jax.random.PRNGKey(11),
                                               0.02)["classifier"][layer]["kernel"])
  # Layer-wise decay: the relative table decays as the embeddings; re-init of the top layer.
  scales = jax.tree_util.tree_leaves(stabilisers.layerwise_scales(params, "deberta", LAYERS, 0.9))
  for s, g in zip(scales, groups):
    assert s == (1.0 if g == "classifier" else 0.9 ** (LAYERS if g == "embeddings"
                                                       else LAYERS - int(g[6:])))
  new = stabilisers.reinit_top_layers(params, jax.random.PRNGKey(5), "deberta", LAYERS, 1,
                                      False, 0.02)
  for (path, old), leaf, g in zip(flat, jax.tree_util.tree_leaves(new), groups):
    moved = not np.array_equal(np.asarray(old), np.asarray(leaf))
    assert moved == (g == f"layer_{LAYERS - 1}" and not np.all(np.asarray(old) == 0)), path
  moved = jax.tree_util.tree_map(lambda x: 1.5 * x, params)  # "fine-tuned" away from the anchor
  mixed = stabilisers.mixout(moved, stabilisers.anchor_of(params), jax.random.PRNGKey(6), 0.5)
  assert guards.tree_max_abs_diff(mixed["classifier"], moved["classifier"]) == 0.0
  assert guards.tree_max_abs_diff(mixed["deberta"], moved["deberta"]) > 0.0
  # reinit_pooler: the pooler is in the head, drawn per seed: nothing more is re-drawn (as for
  # RoBERTa), and the paper's reinit setting passes the study's checks unchanged.
  with_pooler = stabilisers.reinit_top_layers(params, jax.random.PRNGKey(5), "deberta", LAYERS,
                                              1, True, 0.02)
  assert guards.tree_max_abs_diff(with_pooler, new) == 0.0
  cfg = config_lib.task_config("rte", "model=tiny-deberta-v3,setting=reinit")
  assert cfg.stabilisers.reinit_pooler
  validate.check_model(cfg, "deberta", 12)  # the reinit setting's 5 top layers need 5 layers


def test_bfloat16_stays_finite_and_close_to_float32(folders, parity):
  """model.dtype=bfloat16 (params kept in float32, computed in bf16; the buckets are the same
  float32 table, the softmax is float32): finite, and within bf16's rounding of float32."""
  _, params, theirs = parity
  cfg = config_lib.task_config("rte", f"model={folders['safe']},fidelity=corrected,dtype=bfloat16")
  cfg.model.dropout = 0.0
  half = models.load(cfg.model, 2)
  ours = guards.jax_one_batch(half, params, folders["arrays"])
  assert all(np.all(np.isfinite(ours[q])) for q in ("logits", "loss", "group_grad_norm"))
  # Bounds ~10x what bf16 measured against PyTorch's float32 (2 CPU cores).
  errors = {"logits": (float(np.max(np.abs(ours["logits"] - theirs["logits"]))),
                       0.1),   # measured 9.7e-3 (max |logit| 1.37)
            "loss": (guards.rel_max(ours["loss"], theirs["loss"]), 0.02),  # measured 1.7e-3
            "group_grad_norm": (guards.rel_max(ours["group_grad_norm"],
                                               theirs["group_grad_norm"]),
                                0.03)}  # measured 2.7e-3
  print("\n[deberta bf16 vs float32] " + ", ".join(f"{k} {e:.2e} (bound {b:.0e})"
                                                   for k, (e, b) in errors.items()))
  guards.enforce("bf16 close to float32", errors)


def test_presets_name_the_hub_ids():
  for size in ("large", "base", "small", "xsmall"):
    cfg = config_lib.task_config("rte", f"model=deberta-v3-{size},setting=ours")
    assert cfg.model.name_or_path == f"microsoft/deberta-v3-{size}"
    assert cfg.optim.bias_correction and cfg.select == "best"  # the recipe applies as to BERT
  assert families.TINY["tiny-deberta-v3"] == "deberta-v2"


def test_forgetting_is_decided_from_the_checkpoints_weight_names(folders):
  """The forgetting analysis needs a masked-LM head: the safetensors folder has none (refused,
  saying so), the .bin folder carries `lm_predictions.*` as public checkpoints may (refused:
  jaxstab's module has no masked-LM pass yet); the tiny model has none. Decided from the names,
  not the family."""
  from jaxstab.analysis import forgetting  # pylint: disable=import-outside-toplevel
  for which, fragment in (("safe", "holds no masked-LM head (no weight matches lm_predictions"),
                          ("bin", "holds a masked-LM head (1 weights, e.g. "
                                  "lm_predictions.lm_head.dense.weight)")):
    model = load(folders, which)
    own = forgetting.own_classifier(model)
    assert own is not None and own.masked_lm_weights(folders[which]) == (
        [] if which == "safe" else ["lm_predictions.lm_head.dense.weight"])
    assert fragment in forgetting.own_family_refusal(own, model, folders[which])
  assert "tiny-deberta-v3 is a random DeBERTa-v2/v3 classifier with no masked-LM head" in \
      forgetting.own_family_refusal(own, model, "tiny-deberta-v3")
  bert = types.SimpleNamespace(family=families.family_of("bert"))
  assert forgetting.own_classifier(bert) is None  # transformers' classes keep their MLM path
