"""ModernBERT on jaxstab's own Flax module (jaxstab/engine/modernbert.py).

1. PyTorch parity: transformers' ModernBertForSequenceClassification (eager attention,
   reference_compile off) with random weights, 3 layers (global, local, global), an 8-token
   local window (|i - j| <= 4), saved with save_pretrained and loaded by models.load as a user's
   folder is: `mean` pooling from model.safetensors (with the folder's tokenizer), `cls` pooling
   from a pytorch_model.bin holding a masked-LM decoder as the public checkpoints do. Logits,
   loss and per-group gradient norms on 8 padded RTE train pairs of 64 tokens, float32, dropout
   off;
2. planted bugs (tests/test_planted_bugs.py's house style): the window off by one, local and
   global theta swapped, the wrong layers global, a norm on layer 0, mean pooling over padding
   each miss parity by far more than the bound;
3. the loader: unused weights named, unexpected and missing ones refused by name, a bare
   encoder's names;
4. the family in jaxstab: probe groups, the head per seed, stabilisers, remat, bf16, the
   masked-LM model of the forgetting analysis against PyTorch's.
(Config refusals, presets, the tiny model and the study: tests/test_modernbert_config.py.)
"""
import json
import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstab.analysis import forgetting
from jaxstab.config import config_lib
from jaxstab.data import vocab
from jaxstab.engine import families, modernbert, models, probe, stabilisers, torch_weights
from jaxstab.infra.errors import ConfigError
from jaxstab.study import validate
from tests import guards
from tests.helpers import tiny_setup

N, LENGTH, LAYERS, WINDOW = 8, 64, 3, 8
MIN_MARGIN = 10.0  # a planted bug must miss parity by at least this many times the bound
# Bounds ~8x the worst error measured on 2 CPU cores over both poolings (head seed 11;
# `pytest -s tests/test_modernbert.py` prints them). BUILD_NOTES lists the planted-bug margins.
BOUNDS = {
    "logits": 5e-6,             # max |d logit| (max |logit| 1.15): measured 6.6e-7
    "loss": 1e-6,               # |d loss| / loss: measured 1.0e-7
    "group_grad_norm": 1.5e-6,  # max over groups |d norm| / norm: measured 1.7e-7
    "total_grad_norm": 5e-7,    # |d norm| / norm: measured 6.3e-8
}
GROUPS = ["embeddings"] + [f"layer_{i}" for i in range(LAYERS)] + ["classifier"]
POOLINGS = {"mean": "safe", "cls": "bin"}  # pooling -> the folder it is loaded from
LAYOUT = dict(hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=4,
              intermediate_size=48, max_position_embeddings=128, global_attn_every_n_layers=2,
              local_attention=WINDOW, global_rope_theta=160000.0, local_rope_theta=10000.0,
              embedding_dropout=0.0, attention_dropout=0.0, mlp_dropout=0.0,
              classifier_dropout=0.0, reference_compile=False, num_labels=2)
MLM_EXTRA = ("decoder.weight", "decoder.bias")  # a masked-LM checkpoint's, not used


@pytest.fixture(scope="module")
def torch_mod():
  torch = pytest.importorskip("torch")
  before = torch.get_num_threads()
  torch.set_num_threads(1)
  yield torch
  torch.set_num_threads(before)


def torch_config(vocab_size, pad_id, pooling):
  import transformers  # pylint: disable=import-outside-toplevel
  return transformers.ModernBertConfig(vocab_size=vocab_size, pad_token_id=pad_id,
                                       classifier_pooling=pooling,
                                       attn_implementation="eager", **LAYOUT)


@pytest.fixture(scope="module")
def folders(glue_dir, torch_mod, tmp_path_factory):
  """The PyTorch model, the RTE arrays (the tiny models' tokenizer), its two saved folders."""
  import transformers  # pylint: disable=import-outside-toplevel
  from jaxstab.data import dataset, tasks  # pylint: disable=import-outside-toplevel
  torch = torch_mod
  cfg, tiny, arrays = tiny_setup(glue_dir, "modernbert", n=N, length=LENGTH)
  lengths = arrays["attention_mask"].sum(1)
  assert lengths.min() < LENGTH and lengths.max() > 2 * WINDOW  # padded, beyond the window
  torch.manual_seed(0)
  tmodel = transformers.ModernBertForSequenceClassification(
      torch_config(tiny.config.vocab_size, tiny.config.pad_token_id, "mean")).eval()
  assert tmodel.config._attn_implementation == "eager"  # pylint: disable=protected-access
  with torch.no_grad():  # away from the init so every weight matters, the norms included
    for name, p in tmodel.named_parameters():
      _ = p.add_(0.2 * torch.randn_like(p)) if "norm" in name else p.mul_(3.0)
  root = tmp_path_factory.mktemp("modernbert")
  safe, pickled = root / "safetensors", root / "bin"
  tmodel.save_pretrained(safe)
  # The folder's tokenizer: the same wordpiece tiny_setup trained (same texts, same size).
  split = dataset.load_split(tasks.get_task("rte"), "train", "tsv", str(glue_dir))
  texts = split.text_a[:N] + split.text_b[:N]
  vocab.train_wordpiece(texts, int(cfg.model.tiny.vocab_size)).save_pretrained(safe)
  # ... kept as ModernBERT's hub folders keep theirs: tokenizer.json alone, read by a
  # PreTrainedTokenizerFast (no vocab.txt, no tokenizer class of its own).
  (safe / "vocab.txt").unlink()
  conf = json.loads((safe / "tokenizer_config.json").read_text())
  (safe / "tokenizer_config.json").write_text(json.dumps(
      dict(conf, tokenizer_class="PreTrainedTokenizerFast")))
  tmodel.config.classifier_pooling = "cls"
  tmodel.save_pretrained(pickled, safe_serialization=False)
  tmodel.config.classifier_pooling = "mean"
  state = torch.load(pickled / "pytorch_model.bin", weights_only=True)
  for name in MLM_EXTRA:  # as in the public (masked-LM) checkpoints
    state[name] = torch.randn(4, 4)
  torch.save(state, pickled / "pytorch_model.bin")
  assert not (pickled / "model.safetensors").exists()
  first = dataset.Split(split.text_a[:N], split.text_b[:N], split.labels[:N])
  return dict(cfg=cfg, arrays=arrays, tmodel=tmodel, safe=str(safe), bin=str(pickled),
              split=first)


def load(folders, pooling, dtype="float32"):
  cfg = config_lib.task_config(
      "rte", f"model={folders[POOLINGS[pooling]]},fidelity=corrected,dtype={dtype}")
  cfg.model.dropout = 0.0
  return models.load(cfg.model, 2)


def torch_group(name: str) -> str:
  """The probe group of a PyTorch ModernBERT parameter, from transformers' names."""
  m = re.match(r"model\.layers\.(\d+)\.", name)
  if m:
    return f"layer_{m.group(1)}"
  if name.startswith("model.final_norm."):
    return f"layer_{LAYERS - 1}"  # jaxstab counts the final norm with the top layer
  if name.startswith("model.embeddings."):
    return "embeddings"
  assert name.startswith(("head.", "classifier.")), name
  return "classifier"


HEAD_COPY = {"head.dense.weight": ("dense", "kernel"), "head.norm.weight": ("norm", "scale"),
             "classifier.weight": ("out_proj", "kernel"), "classifier.bias": ("out_proj", "bias")}


def torch_one_batch(torch, tmodel, pooling, arrays, params):
  """PyTorch's logits, loss and group norms with the seed's head copied in."""
  head = params["classifier"]
  with torch.no_grad():
    for tname, (layer, leaf) in HEAD_COPY.items():
      value = np.asarray(head[layer][leaf])
      tmodel.get_parameter(tname).copy_(torch.from_numpy(np.array(value.T if leaf == "kernel"
                                                                  else value)))
  tmodel.config.classifier_pooling = pooling
  tb = {k: torch.from_numpy(np.asarray(v).astype(np.int64)) for k, v in arrays.items()}
  tmodel.zero_grad(set_to_none=True)
  logits = tmodel(input_ids=tb["input_ids"], attention_mask=tb["attention_mask"]).logits
  loss = torch.nn.functional.cross_entropy(logits, tb["labels"])
  loss.backward()
  tmodel.config.classifier_pooling = "mean"
  sums = dict.fromkeys(GROUPS, 0.0)
  for name, p in tmodel.named_parameters():
    sums[torch_group(name)] += float(torch.sum(p.grad.double() ** 2))
  norms = np.sqrt([sums[g] for g in GROUPS])
  return dict(loss=float(loss.detach()), logits=logits.detach().numpy(), group_grad_norm=norms,
              total_grad_norm=float(np.sqrt(np.sum(norms ** 2))))




def seed_head(model):
  """A seed's head (head seed 11), its kernels scaled by 10 so that the logits vary across
  examples and every group's gradient matters."""
  params = models.init_head(model.params, jax.random.PRNGKey(11), 0.02)
  for layer in ("dense", "out_proj"):  # (the norm stays at scale 1)
    params["classifier"][layer]["kernel"] = 10.0 * params["classifier"][layer]["kernel"]
  return params


@pytest.fixture(scope="module")
def parity(folders, torch_mod):
  """pooling -> (jaxstab's model loaded from its folder, a seed's head, PyTorch's answers)."""
  out = {}
  for pooling in POOLINGS:
    model = load(folders, pooling)
    params = seed_head(model)
    out[pooling] = (model, params, torch_one_batch(torch_mod, folders["tmodel"], pooling,
                                                   folders["arrays"], params))
  return out


def check_parity(model, params, arrays, theirs, what="PyTorch parity"):
  ours = guards.jax_one_batch(model, params, arrays)
  return guards.enforce(what, {
      "logits": (float(np.max(np.abs(ours["logits"] - theirs["logits"]))), BOUNDS["logits"]),
      **{q: (guards.rel_max(ours[q], theirs[q]), BOUNDS[q])
         for q in ("loss", "group_grad_norm", "total_grad_norm")}})


# --------------------------------------------------------------------------- 1. parity

@pytest.mark.parametrize("pooling", list(POOLINGS))
def test_parity_with_pytorch(folders, parity, pooling):
  model, params, theirs = parity[pooling]
  assert (model.arch, model.num_layers, type(model.flax_model)) == (
      "modernbert", LAYERS, modernbert.ModernBertClassifier)
  assert model.config.classifier_pooling == pooling  # read from the folder's config.json
  assert [modernbert.is_global(i, model.config) for i in range(LAYERS)] == [True, False, True]
  assert probe.group_names(params, model.arch, LAYERS) == GROUPS
  assert np.all(theirs["group_grad_norm"] > 0) and np.min(np.std(theirs["logits"], 0)) > 1e-2
  other = parity["cls" if pooling == "mean" else "mean"][2]["logits"]
  assert np.max(np.abs(other - theirs["logits"])) > 1e-2  # the pooling matters
  errors = check_parity(model, params, folders["arrays"], theirs)
  print(f"\n[modernbert {pooling}] max |logit| {np.max(np.abs(theirs['logits'])):.3g}; "
        + ", ".join(f"{k} {e:.2e} (bound {b:.0e})" for k, (e, b) in errors.items()))


def test_the_folders_tokenizer_json_joins_pairs_as_the_arrays(folders):
  """model.tokenizer='' takes the folder's own tokenizer.json (a PreTrainedTokenizerFast, as
  ModernBERT's hub folders have): the pairs come out as [CLS] a [SEP] b [SEP], the arrays the
  parity ran on."""
  from jaxstab.data import dataset  # pylint: disable=import-outside-toplevel
  cfg = config_lib.task_config("rte", f"model={folders['safe']},fidelity=corrected")
  assert cfg.model.tokenizer == ""
  tok = vocab.load(cfg.model, lambda: pytest.fail("no corpus is needed"))
  assert type(tok).__name__ == "PreTrainedTokenizerFast"
  got = dataset.tokenize(folders["split"], tok, LENGTH)
  for k in ("input_ids", "attention_mask"):
    np.testing.assert_array_equal(got[k], folders["arrays"][k])
  ids = got["input_ids"][0][got["attention_mask"][0] > 0]
  assert (ids[0], ids[-1]) == (tok.cls_token_id, tok.sep_token_id)
  assert np.sum(ids == tok.sep_token_id) == 2



# --------------------------------------------------------------------------- 2. planted bugs

def _standardise(x, eps=1e-5):
  mean = jnp.mean(x, -1, keepdims=True)
  return (x - mean) / jnp.sqrt(jnp.var(x, -1, keepdims=True) + eps)


PLANTS = {
    # |i - j| < local_attention // 2: one neighbour fewer on each side.
    "the window off by one": ("half_window", lambda c, real=modernbert.half_window: real(c) - 1),
    "local and global theta swapped": (
        "rope_theta", lambda g, c, real=modernbert.rope_theta: real(not g, c)),
    "the wrong layers global": (
        "is_global", lambda i, c, real=modernbert.is_global: real(i + 1, c)),
    "a norm on layer 0": ("first_attn_input", _standardise),
    "mean pooling that counts padding": (
        "pool", lambda h, m, how, real=modernbert.pool: real(h, jnp.ones_like(m), how)),
}


@pytest.mark.parametrize("bug", list(PLANTS))
def test_planted_bug_misses_parity(folders, parity, bug, monkeypatch):
  model, params, theirs = parity["mean"]
  name, plant = PLANTS[bug]
  monkeypatch.setattr(modernbert, name, plant)
  try:
    check_parity(model, params, folders["arrays"], theirs, f"parity with {bug}")
  except guards.GuardFailed as failed:
    q, err, bound, ratio = guards.margin(failed.errors)
    print(f"\nplanted {bug}: {q} {err:.3g} vs bound {bound:.3g} ({ratio:.3g}x)")
    assert ratio >= MIN_MARGIN, (bug, failed.errors)
    return
  pytest.fail(f"planted {bug} went unnoticed")


# --------------------------------------------------------------------------- 3. the loader

def test_unused_weights_are_named_and_others_are_errors(folders):
  config = torch_config(100, 0, "cls")
  config.vocab_size = folders["tmodel"].config.vocab_size
  state, path = torch_weights.read_state(folders["bin"])
  cls = modernbert.ModernBertClassifier
  shapes = {"modernbert": cls(config, _do_init=False).params_shape_tree["modernbert"]}
  table, ignored = cls.weight_table(config), cls.ignored_weights(config)
  _, skipped = torch_weights.to_flax(state, table, ignored, shapes, path)
  assert set(skipped) == set(MLM_EXTRA) | set(HEAD_COPY)
  extra = dict(state, **{"model.layers.0.attn_norm.weight": np.ones(32, np.float32)})
  with pytest.raises(ConfigError, match=r"layers\.0\.attn_norm\.weight .*unexpected"):
    torch_weights.to_flax(extra, table, ignored, shapes, path)  # layer 0 has no attention norm
  lacking = {k: v for k, v in state.items() if k != "model.final_norm.weight"}
  with pytest.raises(ConfigError, match=f"lacks 1 weight.*layer/{LAYERS - 1}/final_norm/scale"):
    torch_weights.to_flax(lacking, table, ignored, shapes, path)
  biased = torch_config(config.vocab_size, 0, "cls")
  biased.norm_bias = True  # then every norm needs a bias the checkpoint lacks
  with pytest.raises(ConfigError, match="lacks .* weight.*norm/bias"):
    torch_weights.to_flax(state, cls.weight_table(biased), ignored,
                          {"modernbert": cls(biased, _do_init=False).params_shape_tree[
                              "modernbert"]}, path)
  # A checkpoint saved from the bare encoder (ModernBertModel) gets the `model.` prefix.
  bare = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
  named = torch_weights.normalise_names(bare, cls.backbone_prefix, cls.bare_roots)
  assert set(named) == {k for k in state if k.startswith("model.")}


# --------------------------------------------------------------------------- 4. the family

EXPECTED = [(r"modernbert/embeddings/(tok_embeddings/embedding|norm/scale)", "embeddings"),
            (r"modernbert/layer/(\d+)/.*", "layer_{}"),
            (r"classifier/(dense/kernel|norm/scale|out_proj/(kernel|bias))", "classifier")]


def expected_group(path_str):
  hits = [group.format(*m.groups()[:1]) for pattern, group in EXPECTED
          for m in [re.fullmatch(pattern, path_str)] if m]
  assert len(hits) == 1, (path_str, hits)
  return hits[0]


def test_probe_groups_head_and_stabilisers(parity):
  model, params, _ = parity["mean"]
  fam = families.family_of("modernbert")
  assert (fam.name, fam.segment_ids, fam.pooler, fam.head_keys, fam.mixout_head) == (
      "modernbert", False, False, ("classifier",), True)
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  paths = ["/".join(guards._names(p)) for p, _ in flat]  # pylint: disable=protected-access
  groups = [expected_group(p) for p in paths]
  assert [probe.group_of(p, "modernbert") for p, _ in flat] == groups
  assert f"modernbert/layer/{LAYERS - 1}/final_norm/scale" in paths  # the top layer's group
  assert not any(p.startswith("modernbert/layer/0/attn_norm") for p in paths)
  assert not any(p.endswith("/bias") for p in paths if not p.startswith("classifier/out_proj"))
  ones = jax.tree_util.tree_map(jnp.ones_like, params)  # each group's norm^2 = its size
  got = np.asarray(probe.group_norms(ones, "modernbert", GROUPS), np.float64) ** 2
  sizes = {g: sum(leaf.size for (_, leaf), h in zip(flat, groups) if h == g) for g in GROUPS}
  np.testing.assert_array_equal(np.round(got), [sizes[g] for g in GROUPS])
  # The head (transformers' `head` and `classifier`) is drawn per seed, its norm at scale 1.
  other = models.init_head(model.params, jax.random.PRNGKey(12), 0.02)
  assert guards.tree_max_abs_diff(other["modernbert"], model.params["modernbert"]) == 0.0
  np.testing.assert_array_equal(other["classifier"]["norm"]["scale"], 1.0)
  eleven = models.init_head(model.params, jax.random.PRNGKey(11), 0.02)["classifier"]
  for layer in ("dense", "out_proj"):
    assert not np.array_equal(other["classifier"][layer]["kernel"], eleven[layer]["kernel"])
  # Layer-wise decay (final norm with the top layer), re-initialisation of the top layer.
  scales = jax.tree_util.tree_leaves(stabilisers.layerwise_scales(params, "modernbert", LAYERS,
                                                                  0.9))
  for s, g in zip(scales, groups):
    assert s == (1.0 if g == "classifier" else 0.9 ** (LAYERS if g == "embeddings"
                                                       else LAYERS - int(g[6:])))
  new = stabilisers.reinit_top_layers(params, jax.random.PRNGKey(5), "modernbert", LAYERS, 1,
                                      False, 0.02)
  top = f"layer_{LAYERS - 1}"
  for (_, old), leaf, g, p in zip(flat, jax.tree_util.tree_leaves(new), groups, paths):
    assert (not np.array_equal(np.asarray(old), np.asarray(leaf))) == (g == top), p
    if g == top and "norm" in p:
      np.testing.assert_array_equal(leaf, 1.0)  # norms re-drawn at scale 1, not 0
  moved = jax.tree_util.tree_map(lambda x: 1.5 * x, params)  # "fine-tuned" away from the anchor
  mixed = stabilisers.mixout(moved, stabilisers.anchor_of(params), jax.random.PRNGKey(6), 0.5)
  assert guards.tree_max_abs_diff(mixed["classifier"], moved["classifier"]) == 0.0
  assert guards.tree_max_abs_diff(mixed["modernbert"], moved["modernbert"]) > 0.0
  # reinit_pooler: no pretrained pooler, nothing more re-drawn; the paper's reinit setting runs.
  with_pooler = stabilisers.reinit_top_layers(params, jax.random.PRNGKey(5), "modernbert",
                                              LAYERS, 1, True, 0.02)
  assert guards.tree_max_abs_diff(with_pooler, new) == 0.0
  cfg = config_lib.task_config("rte", "model=tiny-modernbert,setting=reinit")
  validate.check_model(cfg, "modernbert", 22)
  with pytest.raises(ConfigError, match="model.attention='xla' is not available for ModernBERT"):
    validate.check_model(config_lib.task_config("rte", "model=tiny-modernbert,attention=xla"),
                         "modernbert", 22)


def test_remat_and_bfloat16(folders, parity):
  """train.remat=layers gives the same logits; model.dtype=bfloat16 (params float32, computed
  in bf16, RoPE tables and softmax in float32) is finite and within bf16's rounding."""
  model, params, theirs = parity["mean"]
  batch = {k: jnp.asarray(v) for k, v in folders["arrays"].items()}
  remat = models.with_remat(model, "layers")
  np.testing.assert_allclose(np.asarray(remat.logits(params, batch)), theirs["logits"],
                             atol=BOUNDS["logits"])
  half = load(folders, "mean", dtype="bfloat16")
  ours = guards.jax_one_batch(half, params, folders["arrays"])
  assert all(np.all(np.isfinite(ours[q])) for q in ("logits", "loss", "group_grad_norm"))
  # Bounds ~10x what bf16 measured against PyTorch's float32 (2 CPU cores).
  errors = {"logits": (float(np.max(np.abs(ours["logits"] - theirs["logits"]))),
                       0.2),   # measured 2.1e-2 (max |logit| 1.15)
            "loss": (guards.rel_max(ours["loss"], theirs["loss"]), 5e-3),  # measured 5.6e-4
            "group_grad_norm": (guards.rel_max(ours["group_grad_norm"],
                                               theirs["group_grad_norm"]),
                                0.05)}  # measured 4.6e-3
  print("\n[modernbert bf16 vs float32] " + ", ".join(f"{k} {e:.2e} (bound {b:.0e})"
                                                      for k, (e, b) in errors.items()))
  guards.enforce("bf16 close to float32", errors)


def test_the_masked_lm_model_of_the_forgetting_analysis(folders, parity, torch_mod, tmp_path):
  """The masked-LM model (forgetting) equals transformers' ModernBertForMaskedLM on the real
  tokens: the classifier's encoder, the pretrained prediction head, the decoder tied to the
  word embeddings plus its own bias. A sequence classifier's folder has no decoder: refused."""
  import transformers  # pylint: disable=import-outside-toplevel
  torch = torch_mod
  model, _, _ = parity["mean"]
  tmlm = transformers.ModernBertForMaskedLM(folders["tmodel"].config).eval()
  missing, unexpected = tmlm.load_state_dict(folders["tmodel"].state_dict(), strict=False)
  assert set(missing) == {"decoder.weight", "decoder.bias"} and set(unexpected) == {
      "classifier.weight", "classifier.bias"}
  tmlm.tie_weights()
  with torch.no_grad():
    tmlm.decoder.bias.copy_(torch.randn_like(tmlm.decoder.bias))
  tmlm.save_pretrained(tmp_path)
  cfg = config_lib.task_config("rte", f"model={tmp_path},fidelity=corrected")
  inputs = types.SimpleNamespace(model=model, cfg=cfg)
  mlm = forgetting.load_mlm(inputs)
  assert sorted(mlm.head) == ["decoder", "head"]
  arrays = folders["arrays"]
  ours = np.asarray(mlm.flax_model(jnp.asarray(arrays["input_ids"]),
                                   attention_mask=jnp.asarray(arrays["attention_mask"]),
                                   params=mlm.compose(mlm.pretrained)).logits)
  with torch.no_grad():
    theirs = tmlm(input_ids=torch.from_numpy(arrays["input_ids"].astype(np.int64)),
                  attention_mask=torch.from_numpy(arrays["attention_mask"].astype(np.int64)))
  real = arrays["attention_mask"] > 0
  err = float(np.max(np.abs(ours - theirs.logits.numpy())[real]))
  print(f"\n[modernbert masked-LM] max |d logit| {err:.2e} (max |logit| "
        f"{np.max(np.abs(theirs.logits.numpy())):.3g})")
  assert err < 5e-6  # measured 4.8e-7 (max |logit| 3.66)
  with pytest.raises(ConfigError, match="lacks 1 weight.*decoder/bias"):
    forgetting.load_mlm(types.SimpleNamespace(model=model, cfg=config_lib.task_config(
        "rte", f"model={folders['safe']},fidelity=corrected")))
