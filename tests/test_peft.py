"""Parameter-efficient fine-tuning (jaxstab/engine/peft.py): LoRA's forward and gradients against
the `peft` library on transformers' PyTorch BERT, BitFit's trainable set by name, the group
program (trainable-only state, the backbone as one shared argument), the refusals, and the
per-seed memory of a LoRA group from the compiled step."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstab.config import config_lib
from jaxstab.data import dataset
from jaxstab.engine import families, memory, models, parallel, peft, train as train_lib
from jaxstab.infra.errors import ConfigError
from jaxstab.study import validate
from tests import family_torch, guards, lora_twin
from tests.cli_runs import assert_ok, run_cli
from tests.helpers import tiny_setup, xla_optimized
from tests.lora_twin import ALPHA, RANK, lora_cfg, nonzero_adapters

# Parity bounds (float32 on CPU, tiny BERT, batch 8, length 32, all-linear r=4, alpha=8):
# measured max |jax - torch| given beside each bound; each bound is about 10x it.
LOGITS_ATOL = 6e-6     # logits of magnitude ~0.3: measured 3.9e-7 to 5.7e-7
LOSS_RTOL = 1e-6       # measured 0 to 8e-8
GRAD_RTOL = 1.5e-4     # per tensor ||g_jax - g_torch|| / ||g_torch||: measured worst 1.4e-5
                       # (layer 0 attention.output.dense lora_A, deepest in the backward pass)
# Beyond BERT, the same check; ELECTRA's narrow embeddings and their projection make its deepest
# adapter gradients round more: measured worst 1.6e-4 (tests' compile mode) and 2.7e-4 (users'),
# layer 0's query lora_B; RoBERTa (XLM-R classes) 2.3e-5 / 1.6e-5; DistilBERT 3.6e-5, ALBERT
# 2.7e-5 (tests' compile mode). Logits: 1.6e-8 to 1.9e-7, ALBERT 1.0e-6 (within LOGITS_ATOL).
GRAD_RTOL_OF = {"xlm-roberta": GRAD_RTOL, "electra": 3e-3, "distilbert": GRAD_RTOL,
                "albert": GRAD_RTOL}


@pytest.fixture(scope="module")
def tiny(glue_dir):
  """A tiny BERT, 8 real RTE examples of length 32, its backbone x3 (varied logits) + a head."""
  cfg, model, arrays = tiny_setup(glue_dir, n=8, length=32)
  params = models.init_head(family_torch.scaled(model.params), jax.random.PRNGKey(3), 0.02)
  return cfg, model, arrays, params


def head_saved_whole(family):
  """jaxstab module path -> torch module path in peft's wrapped model: the head's modules are
  peft's modules_to_save copies ((saved module, the rest)); the backbone's names are torch's."""
  def torch_module(names):
    if names[0] in family.head_keys:
      return names[0], ".".join(names[1:])
    return ".".join(names)
  return torch_module


def test_lora_matches_the_peft_library(tiny, require):
  """jaxstab's LoRA (all-linear, r=4, alpha=8) against peft's LoraConfig on transformers' PyTorch
  BertForSequenceClassification holding the same weights and the same non-zero A and B: logits,
  loss and the gradient of every A, B and of the head agree to float32 rounding."""
  torch, peft_lib = require("torch"), require("peft")
  import transformers  # pylint: disable=import-outside-toplevel
  cfg, model, arrays, params = tiny
  trainable, loss, logits, grads = lora_twin.jax_lora_side(cfg, model, params, arrays)

  torch.manual_seed(0)
  tmodel = transformers.BertForSequenceClassification._from_config(  # pylint: disable=protected-access
      model.config, attn_implementation="eager")
  guards.copy_into_torch(tmodel, guards.jax_as_torch(params))
  wrapped = peft_lib.get_peft_model(tmodel, peft_lib.LoraConfig(
      task_type="SEQ_CLS", r=RANK, lora_alpha=ALPHA, lora_dropout=0.0,
      target_modules="all-linear")).eval()
  ours = lora_twin.by_torch_name(trainable, grads, head_saved_whole(model.family))
  t_logits, t_loss, named = lora_twin.torch_side(torch, wrapped, ours, arrays)

  assert np.std(logits) > 1e-3  # the examples' logits differ
  np.testing.assert_allclose(logits, t_logits, rtol=0, atol=LOGITS_ATOL)
  assert abs(loss - t_loss) <= LOSS_RTOL * abs(t_loss)
  errors = lora_twin.grad_errors(ours, named)
  worst = max(errors, key=errors.get)
  print(f"\nLoRA parity: logits {np.max(np.abs(logits - t_logits)):.2g}, loss "
        f"{abs(loss - t_loss) / t_loss:.2g}, grads {errors[worst]:.2g} ({worst})")
  assert errors[worst] <= GRAD_RTOL, (worst, errors[worst])


# peft's LoraConfig for each family's case: all-linear everywhere, except that DistilBERT's
# `pre_classifier` (no pretrained value: jaxstab's head, trained fully) would get an adapter from
# peft's all-linear, so there the linear names are listed and pre_classifier is saved whole.
PEFT_TARGETS_OF = {
    "xlm-roberta": dict(target_modules="all-linear"),
    "electra": dict(target_modules="all-linear"),
    "distilbert": dict(target_modules=["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
                       modules_to_save=["pre_classifier"]),
    # ALBERT's shared layer: one adapter per module, applied at every depth, as in peft
    "albert": dict(target_modules="all-linear"),
}


TORCH_CLASS_OF = {"albert": "AlbertForSequenceClassification"}  # beyond family_torch.FAMILIES


@pytest.mark.parametrize("family", list(PEFT_TARGETS_OF))
def test_lora_matches_the_peft_library_beyond_bert(family, glue_dir, require):
  """As above for RoBERTa (through XLM-R's classes), ELECTRA and DistilBERT: their whole
  classification head (dense + out_proj; DistilBERT's pre_classifier + classifier) is trained, as
  peft's modules_to_save trains it, and every other linear layer gets an adapter, ELECTRA's
  embeddings_project included, as peft's all-linear picks them."""
  torch, peft_lib = require("torch"), require("peft")
  cfg, model, arrays = tiny_setup(glue_dir, family, n=8, length=32)
  params = models.init_head(family_torch.scaled(model.params), jax.random.PRNGKey(3), 0.02)
  trainable, loss, logits, grads = lora_twin.jax_lora_side(cfg, model, params, arrays)
  torch.manual_seed(0)
  wrapped = peft_lib.get_peft_model(family_torch.torch_twin(model, params, family,
                                                           TORCH_CLASS_OF.get(family)),
                                    peft_lib.LoraConfig(task_type="SEQ_CLS", r=RANK,
                                                        lora_alpha=ALPHA, lora_dropout=0.0,
                                                        **PEFT_TARGETS_OF[family])).eval()
  ours = lora_twin.by_torch_name(trainable, grads, head_saved_whole(model.family))
  t_logits, t_loss, named = lora_twin.torch_side(torch, wrapped, ours, arrays,
                                                 segments=model.family.segment_ids)
  assert np.std(logits) > 1e-3
  np.testing.assert_allclose(logits, t_logits, rtol=0, atol=LOGITS_ATOL)
  assert abs(loss - t_loss) <= LOSS_RTOL * abs(t_loss)
  errors = lora_twin.grad_errors(ours, named)
  worst = max(errors, key=errors.get)
  print(f"\nLoRA parity ({family}): logits {np.max(np.abs(logits - t_logits)):.2g}, grads "
        f"{errors[worst]:.2g}")
  assert errors[worst] <= GRAD_RTOL_OF[family], (worst, errors[worst])
  if family == "electra":
    assert "base_model.model.electra.embeddings_project.lora_A.default.weight" in ours
  # peft.targets' default, query,value, means each family's own attention names (peft's own
  # default for DistilBERT is q_lin, v_lin): two adapters a layer.
  default = peft.target_modules(peft.Spec(method="lora"), params, model.family)
  assert len(default) == 2 * (1 if model.family.shared_layer else family_torch.LAYERS), default
  assert {m[-1] for m in default} == {model.family.linear_roles.get(r, r)
                                      for r in ("query", "value")}, default


def _names_of(tree):
  return {"/".join(guards._names(p)) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}  # pylint: disable=protected-access


def test_trainable_sets_by_name(tiny):
  """BitFit: every `bias` of the backbone (Dense biases, LayerNorm betas, the pooler's bias), no
  LayerNorm scale, no kernel, plus the whole head; LoRA: A and B of the targets plus the head;
  peft.train_pooler adds the pooler whole and takes its adapter away."""
  cfg, model, _, params = tiny
  cfg = cfg.copy_and_resolve_references()
  fam, key = model.family, jax.random.PRNGKey(0)
  every = _names_of(params)
  head = {n for n in every if n.startswith("classifier/")}
  cfg.peft.method = "bitfit"
  bitfit = _names_of(peft.trainable_of(peft.spec_of(cfg.peft), params, key, fam))
  assert bitfit == head | {n for n in every if n.startswith("bert/") and n.endswith("/bias")}
  assert "bert/encoder/layer/0/output/LayerNorm/bias" in bitfit
  assert "bert/pooler/dense/bias" in bitfit
  assert not any(n.endswith("/scale") or n.startswith("bert/") and n.endswith("/kernel")
                 for n in bitfit)
  lora = _names_of(peft.trainable_of(peft.spec_of(lora_cfg(cfg, "query,value").peft), params,
                                     key, fam))
  layers = range(model.num_layers)
  assert lora == head | {f"bert/encoder/layer/{i}/attention/self/{m}/lora_{ab}"
                         for i in layers for m in ("query", "value") for ab in "AB"}
  every_dense = _names_of(peft.trainable_of(peft.spec_of(lora_cfg(cfg).peft), params, key, fam))
  assert "bert/pooler/dense/lora_A" in every_dense and not any("classifier/lora" in n
                                                               for n in every_dense)
  cfg.peft.train_pooler = True
  pooled = _names_of(peft.trainable_of(peft.spec_of(cfg.peft), params, key, fam))
  assert {"bert/pooler/dense/kernel", "bert/pooler/dense/bias"} <= pooled
  assert not any(n.startswith("bert/pooler/dense/lora") for n in pooled)


def test_merged_export_gives_the_adapted_model(tiny):
  """`merged` (W + (alpha/r) (BA)^T, the export) gives the same logits as the unmerged forward."""
  cfg, model, arrays, params = tiny
  spec = peft.spec_of(lora_cfg(cfg.copy_and_resolve_references(), "query,value,dense").peft)
  pm = peft.adapt(model, spec)
  trainable = nonzero_adapters(peft.trainable_of(spec, params, jax.random.PRNGKey(0),
                                                 model.family), jax.random.PRNGKey(2))
  batch = {k: jnp.asarray(v) for k, v in arrays.items()}
  adapted, full, plain = jax.jit(lambda t, p: (
      pm.logits(peft.inputs(pm, t, p), batch), model.logits(peft.merged(spec, t, p), batch),
      model.logits(p, batch)))(trainable, params)
  assert float(jnp.max(jnp.abs(adapted - plain))) > 1e-2  # the adapters change the output
  np.testing.assert_allclose(full, adapted, rtol=0, atol=2e-6)  # measured 2.4e-7


def test_lora_group_trains_only_adapters_and_head(tiny):
  """A group of two LoRA seeds through build_programs: the state holds only A, B and the head;
  the backbone is the step's shared argument (Programs.anchor) and stays as loaded; at the start
  (B = 0) each seed's logits are the full model's with the same seed's head; B moves; the probe
  has the adapters' layers and the head; summary fields are filled."""
  cfg, model, arrays, _ = tiny
  cfg = lora_cfg(cfg.copy_and_resolve_references(), "query,value", rank=2)
  cfg.train.batch_size, cfg.probe.every = 4, 1
  layout = parallel.Layout.create()
  programs = train_lib.build_programs(cfg, model, n_train=8, total=3, layout=layout,
                                      seeds_per_group=2)
  assert programs.group_names == ["layer_0", "layer_1", "classifier"]
  assert programs.peft["method"] == "lora" and programs.peft["rank"] == 2
  hidden = model.config.hidden_size
  assert programs.trainable_params == 2 * 2 * (2 * hidden + 2 * hidden) + hidden * 2 + 2
  keys = jnp.stack([train_lib.seed_key(1), train_lib.seed_key(2)])
  state = programs.create(keys)
  assert _names_of(state.params) == ({"classifier/bias", "classifier/kernel"} | {
      f"bert/encoder/layer/{i}/attention/self/{m}/lora_{ab}" for i in range(2)
      for m in ("query", "value") for ab in "AB"})
  dev = {k: v for k, v in dataset.eval_batches(arrays, 8).items() if k != "weight"}
  start = np.asarray(programs.eval_logits(state.params, dev))  # [K, 1 batch, 8, 2]
  full_logits = jax.jit(lambda p: model.logits(p, {k: v[0] for k, v in dev.items()}))
  for i, key in enumerate(keys):
    np.testing.assert_allclose(start[i, 0], full_logits(train_lib.initial_params(model, key)),
                               rtol=0, atol=1e-6)  # measured 0 (the same ops, B A x = 0)
  backbone = jax.tree_util.tree_map(np.asarray, programs.anchor)
  data = jax.device_put(arrays, layout.replicated)
  for _ in range(3):
    state = programs.step(state, data, programs.anchor)
  b = state.params["bert"]["encoder"]["layer"]["1"]["attention"]["self"]["value"]["lora_B"]
  assert float(jnp.min(jnp.linalg.norm(b.reshape(2, -1), axis=1))) > 0
  guards_equal = jax.tree_util.tree_map(lambda a, c: bool(np.array_equal(a, c)), backbone,
                                        jax.tree_util.tree_map(np.asarray, programs.anchor))
  assert all(jax.tree_util.tree_leaves(guards_equal))
  grad_norms = np.asarray(state.probe["grad_norm"])
  assert grad_norms.shape[-1] == 3 and np.all(grad_norms[:, 0] > 0)
  assert not np.array_equal(np.asarray(programs.eval_logits(state.params, dev)), start)


@pytest.mark.parametrize("key,value,match", [
    ("stabilisers.mixout", 0.1, r"^stabilisers.mixout=0.1 is not defined with peft.method='lora'"),
    ("stabilisers.reinit_layers", 1, r"^stabilisers.reinit_layers=1 is not defined"),
    ("stabilisers.prior_wd", True, r"^stabilisers.prior_wd=True is not defined"),
    ("peft.rank", 0, r"^peft.rank=0 must be"),
    ("peft.init", "normal", r"^peft.init='normal'; choose one of kaiming, gaussian"),
    ("peft.targets", "all-linear,query", r"^peft.targets='all-linear,query': give"),
])
def test_refusals_before_the_workdir(key, value, match):
  """check_config refuses what PEFT does not define, and bad peft.* values, with one line."""
  cfg = lora_cfg(config_lib.task_config("rte", "model=tiny-bert"))
  config_lib.set_path(cfg, key, value)
  with pytest.raises(ConfigError, match=match):
    validate.check_config(cfg)


def test_refusals_that_need_the_family():
  # a family whose record lists no Dense names (every family has them now: a stand-in)
  bare = dataclasses.replace(families.FAMILIES["albert"], linear_names=())
  with pytest.raises(ConfigError, match=r"^peft.method='lora' is not available for ALBERT "
                                        r"\(x\); use peft.method='none'"):
    peft.check_family(peft.Spec(method="lora"), bare, "x")
  validate.check_model(lora_cfg(config_lib.task_config("rte", "model=tiny-albert")), "albert", 2)
  cfg = lora_cfg(config_lib.task_config("rte", "model=tiny-bert"), "query,qkv")
  with pytest.raises(ConfigError, match=r"^peft.targets='query,qkv': qkv is no Dense module"):
    validate.check_model(cfg, "bert", 2)
  validate.check_model(lora_cfg(cfg, "query,key,value,dense"), "bert", 2)  # all accepted
  # DistilBERT: its own names, and BERT's attention names as aliases; BERT's `dense` is no alias.
  cfg = lora_cfg(config_lib.task_config("rte", "model=tiny-distilbert"), "query,dense")
  with pytest.raises(ConfigError, match=r"^peft.targets='query,dense': dense is no Dense module "
                     r"of DistilBERT; choose among q_lin, .*lin2, query \(= q_lin\)"):
    validate.check_model(cfg, "distilbert", 2)
  validate.check_model(lora_cfg(cfg, "q_lin,value,lin1"), "distilbert", 2)


def _programs(cfg, model, arrays, k):
  return train_lib.build_programs(cfg, model, n_train=len(arrays["labels"]), total=4,
                                  layout=parallel.Layout.create(), seeds_per_group=k,
                                  seed_axis="vmap")


def _per_seed_bytes(cfg, model, arrays):
  """What a second seed adds to the compiled group step's peak (vmap: the accelerators' axis;
  under lax.map a seed's temporaries are reused by the next and only the state would show)."""
  with xla_optimized():  # the bytes of the program users compile
    peaks = [memory.footprint(memory.compile_step(_programs(cfg, model, arrays, k),
                                                  parallel.Layout.create(), arrays)).peak
             for k in (1, 2)]
  return peaks[1] - peaks[0]


def test_lora_group_holds_far_less_per_seed(tiny):
  """From the compiled group step's memory analysis (one and two seeds, vmap, one example of 8
  tokens, so that weights rather than activations dominate): the bytes a further seed adds under
  LoRA (all-linear, r=1) are far below what a full fine-tuning seed holds at the least, its
  weights and two Adam moments (12 bytes a parameter). Measured on XLA:CPU, tiny BERT (107,330
  parameters): LoRA 125 KB per seed; full fine-tuning 2.40 MB per seed by the same analysis
  (x0.052), of which its state is 1.29 MB (the bound's base; not compiled here, to save two
  compiles)."""
  cfg, model, arrays, _ = tiny
  cfg = cfg.copy_and_resolve_references()
  cfg.train.batch_size, cfg.probe.every = 1, 0
  arrays = {k: (v[:1, :8] if v.ndim == 2 else v[:1]) for k, v in arrays.items()}
  lora = _per_seed_bytes(lora_cfg(cfg, rank=1), model, arrays)
  full_state = 12 * models.param_count(model.params)
  print(f"\nper seed: LoRA {lora / 1e3:.1f} KB; a full seed's state {full_state / 1e6:.2f} MB")
  assert 0 < lora < 0.15 * full_state, (lora, full_state)


def _value_shapes(jaxpr):
  """Shapes of every value a jaxpr computes, sub-jaxprs (jit, scan, cond, remat) included."""
  out = []
  for eqn in jaxpr.eqns:
    out += [tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape")]
    for p in eqn.params.values():
      for sub in (p if isinstance(p, (list, tuple)) else [p]):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          out += _value_shapes(inner)
  return out


def _per_seed_kernels(cfg, model, arrays):
  """The per-seed kernel shapes [3, in, out] of the backbone that the traced group step (K=3,
  vmap) computes a value of."""
  kernels = {(3,) + tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(
      model.params)[0] if guards._names(p)[-1] == "kernel" and guards._names(p)[0] == "bert"}  # pylint: disable=protected-access
  programs = _programs(cfg, model, arrays, 3)
  args = memory.abstract_args(programs, parallel.Layout.create(), arrays)
  return kernels, kernels & set(_value_shapes(jax.make_jaxpr(programs.step)(*args).jaxpr))


def _small(tiny):
  cfg, model, arrays, _ = tiny
  cfg = cfg.copy_and_resolve_references()
  cfg.train.batch_size, cfg.probe.every = 2, 1
  return cfg, model, {k: v[:2] for k, v in arrays.items()}


def test_no_per_seed_kernel_is_formed(tiny):
  """The unmerged forward, checked where memory cannot see it: XLA keeps only one layer's merged
  kernel alive at a time, so W + (alpha/r) B A formed per seed adds one kernel to the per-seed
  bytes (measured +37 KB on the test above), not every kernel. Here the traced group step (K=3,
  vmap) computes no value of a per-seed kernel's shape [3, in, out], while full fine-tuning's
  does (its weights and gradients are per seed)."""
  cfg, model, arrays = _small(tiny)
  kernels, found = _per_seed_kernels(cfg, model, arrays)
  assert found == kernels  # the check sees a per-seed kernel where there is one
  assert not _per_seed_kernels(lora_cfg(cfg, rank=1), model, arrays)[1]


# ==================================================== planted bugs (tests/test_planted_bugs.py's
# style: the package is never edited; a monkeypatch plants the bug and the guard must fail)

def test_planted_merge_fails_the_per_seed_kernel_check(tiny, monkeypatch):
  """LoRA computed by forming W + (alpha/r) B A per seed (what the unmerged forward avoids)."""
  def merged_forward(self, params, batch, train, dropout_key, pass_segment_ids, hidden=False):
    full = peft.merged(self.peft, params["trainable"], params["backbone"])
    return models.Model._forward(self, full, batch, train, dropout_key, pass_segment_ids, hidden)  # pylint: disable=protected-access
  monkeypatch.setattr(peft.PeftModel, "_forward", merged_forward)
  cfg, model, arrays = _small(tiny)
  assert _per_seed_kernels(lora_cfg(cfg, rank=1), model, arrays)[1]


def test_lora_starts_from_zero_b_and_peft_a():
  """A seed's fresh adapters: B = 0 (so the seed starts as the pretrained model, which the group
  test checks through the logits), A within kaiming_uniform(a=sqrt(5))'s bound 1/sqrt(in) and
  filling it (max |A| > 0.9 bound), gaussian A with std 1/r (within 10% over 2,048 draws)."""
  params = {"bert": {"q": {"query": {"kernel": jnp.zeros((256, 8))}}}, "classifier": {}}
  from jaxstab.engine import families  # pylint: disable=import-outside-toplevel
  fam = families.family_of("bert")
  t = peft.trainable_of(peft.Spec("lora", rank=8), params, jax.random.PRNGKey(0), fam)
  a, b = t["bert"]["q"]["query"]["lora_A"], t["bert"]["q"]["query"]["lora_B"]
  assert a.shape == (8, 256) and b.shape == (8, 8) and not np.any(np.asarray(b))
  assert 0.9 / 16 < float(jnp.max(jnp.abs(a))) <= 1 / 16
  g = peft.trainable_of(peft.Spec("lora", rank=8, init="gaussian"), params,
                        jax.random.PRNGKey(0), fam)["bert"]["q"]["query"]["lora_A"]
  assert abs(float(jnp.std(g)) * 8 - 1) < 0.1


def test_planted_nonzero_b_fails_the_start_check(monkeypatch):
  """B drawn like A instead of zero: the seed would not start from the pretrained model."""
  real = jnp.zeros
  monkeypatch.setattr(peft.jnp, "zeros", lambda shape, dtype=None: real(shape, dtype) + 0.01)
  with pytest.raises(AssertionError):
    test_lora_starts_from_zero_b_and_peft_a()


def test_planted_dropped_scale_changes_the_adapted_output(tiny, monkeypatch):
  """alpha / r dropped (scale 1 instead of 2): the adapted logits move by far more than the
  parity bound, so the parity test above (same weights in peft, which scales) would fail."""
  cfg, model, arrays, params = tiny
  spec = peft.spec_of(lora_cfg(cfg.copy_and_resolve_references()).peft)
  pm = peft.adapt(model, spec)
  trainable = nonzero_adapters(peft.trainable_of(spec, params, jax.random.PRNGKey(0),
                                                 model.family), jax.random.PRNGKey(1))
  batch = {k: jnp.asarray(v) for k, v in arrays.items()}
  logits = lambda: jax.jit(lambda t: pm.logits(peft.inputs(pm, t, params), batch))(trainable)
  right = logits()
  monkeypatch.setattr(peft.Spec, "scale", property(lambda self: 1.0))
  planted = logits()
  assert float(jnp.max(jnp.abs(planted - right))) > 10 * LOGITS_ATOL


def test_demo_run_with_lora_records_it(tmp_path):
  """The one CLI run (in process): the demo with LoRA (r=2), two seeds, four steps,
  checkpoints and kept final params. summary.json records `peft` and `trainable_params`; the
  kept params of a seed hold only the trainable tree (adapters and head)."""
  from jaxstab.infra import checkpoint  # pylint: disable=import-outside-toplevel
  import json  # pylint: disable=import-outside-toplevel
  args = ["--config=configs/demo.py", "--config.seeds=1-2", "--config.train.max_steps=4",
          "--config.peft.method=lora", "--config.peft.rank=2",
          "--config.checkpoint.every_steps=2", "--config.checkpoint.keep_final_params=True",
          "--config.analysis.rep_examples=8"]
  assert_ok(run_cli(args, tmp_path))
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["peft"] == {"method": "lora", "train_pooler": False, "rank": 2, "alpha": 8.0,
                             "dropout": 0.0, "targets": "query,value", "init": "kaiming"}
  hidden, layers = 64, 2  # the demo's tiny BERT (config_lib's model.tiny)
  assert summary["trainable_params"] == layers * 2 * 2 * (2 * hidden) + hidden * 2 + 2
  from jaxstab.results import records  # pylint: disable=import-outside-toplevel
  typed = records.read_setting(str(tmp_path))  # the schema's typed fields
  assert (typed.peft, typed.trainable_params) == (summary["peft"], summary["trainable_params"])
  kept = checkpoint.load_params(str(tmp_path), 1, None)
  assert _names_of(kept) == ({"classifier/bias", "classifier/kernel"} | {
      f"bert/encoder/layer/{i}/attention/self/{m}/lora_{ab}" for i in range(layers)
      for m in ("query", "value") for ab in "AB"})


def test_layerwise_lr_decay_scales_adapters_by_layer(tiny):
  """stabilisers.llrd reads the trainable tree's paths: layer i's adapters get gamma^(L-i), the
  head 1 (build_programs passes peft.trained_shapes to layerwise_scales)."""
  from jaxstab.engine import stabilisers  # pylint: disable=import-outside-toplevel
  cfg, model, _, _ = tiny
  adapted = peft.adapt(model, peft.spec_of(lora_cfg(cfg.copy_and_resolve_references(),
                                                    "query,value").peft))
  scales = stabilisers.layerwise_scales(peft.trained_shapes(adapted), "bert", 2, 0.5)
  flat = {"/".join(guards._names(p)): s for p, s in  # pylint: disable=protected-access
          jax.tree_util.tree_flatten_with_path(scales)[0]}
  assert flat["bert/encoder/layer/0/attention/self/query/lora_A"] == 0.25
  assert flat["bert/encoder/layer/1/attention/self/value/lora_B"] == 0.5
  assert flat["classifier/kernel"] == 1.0 and len(flat) == 10


def test_full_tree_analyses_refuse_a_peft_run():
  """The loss surface and forgetting read full trees: a PEFT setting gets one line, before any
  checkpoint is opened."""
  import types  # pylint: disable=import-outside-toplevel
  from jaxstab import analysis  # pylint: disable=import-outside-toplevel
  cfg = config_lib.task_config("rte", "model=tiny-bert")
  cfg.peft.method = "bitfit"
  with pytest.raises(ConfigError, match=r"^this setting trained with peft.method='bitfit'"):
    analysis.final_params(types.SimpleNamespace(cfg=cfg, directory="/nonexistent", model=None), 1)
  with pytest.raises(ConfigError, match=r"^this setting trained with peft.method='bitfit'"):
    analysis.initial_params(None, cfg, 1)


def test_table1_compare_and_report_show_the_method(tmp_path):
  """Once a setting used PEFT, Table 1 (table.md, the study's log), compare (with the paper's
  rows, which fine-tuned fully) and the report's tables name each row's method and trained
  parameters; a table without PEFT keeps the paper's shape (no method column)."""
  from jaxstab.report import compare, html  # pylint: disable=import-outside-toplevel
  from jaxstab.results import records, tables  # pylint: disable=import-outside-toplevel
  from tests.test_report import write_study  # pylint: disable=import-outside-toplevel
  lora = {"method": "lora", "train_pooler": False, "rank": 8, "alpha": 8.0, "dropout": 0.0,
          "targets": "query,value", "init": "kaiming"}
  write_study(tmp_path, {
      "rte_devlin_full": dict(finals=[0.70, 0.45, 0.60], recipe="devlin_full",
                              summary_keys={"peft": {"method": "none"},
                                            "trainable_params": 22_713_602}),
      "rte_devlin_lora": dict(finals=[0.66, 0.64, 0.40], recipe="devlin_lora",
                              summary_keys={"peft": lora, "trainable_params": 74_498}),
      "rte_devlin_bitfit": dict(finals=[0.61, 0.62, 0.63], recipe="devlin_bitfit",
                                summary_keys={"peft": {"method": "bitfit", "train_pooler": True},
                                              "trainable_params": 2_306})})
  rows = {"devlin_full": "full (22.7M trained)",
          "devlin_lora": "LoRA r=8 α=8 query,value (74.5k trained)",
          "devlin_bitfit": "BitFit, pooler (2,306 trained)"}
  study = records.load(str(tmp_path))
  md = tables.table1_markdown([s.summary.to_json() for s in study.settings])
  assert md.splitlines()[0] == "| setting | method | RTE |"
  for recipe, label in rows.items():
    assert f"| {recipe} | {label} | " in md
  text = compare.markdown(compare.gather([str(tmp_path)]), paper=True)
  assert "| devlin_lora | LoRA r=8 α=8 query,value (74.5k trained) | " in text
  assert "| paper, BERT-large: Devlin et al. | full | 7.2 / 52.3 / 47.3 / 71.1 |" in text
  page = html.table1(study.settings) + html.details_table(study.settings)
  assert "<th>setting</th><th>method</th><th>RTE</th>" in page
  for label in rows.values():
    assert page.count(f"<td>{label}</td>") == 2   # Table 1 and the details table
  without = [dict(s.summary.to_json(), peft=None) for s in study.settings]  # before PEFT
  assert tables.method_column((s["name"], s["peft"], 5) for s in without) == {}
  assert tables.table1_markdown(without).splitlines()[0] == "| setting | RTE |"
  assert tables.method_label(None, 107_330) == "full (107.3k trained)"
