"""Per-layer representations (issue #31, part 2): the compiled program's first-token vectors
against a direct call of each family's Flax module, the capture's cap and off switch, the files
a tiny study leaves in runs/, and planted bugs the comparison catches."""
import json
import os
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstab.config import config_lib
from jaxstab.data import dataset
from jaxstab.engine import deberta, models, modernbert, train as train_lib
from jaxstab.infra.errors import ConfigError
from jaxstab.study import experiment, representations, validate, workdir as workdir_lib
from tests.helpers import demo_config, tiny_setup

N, BATCH, K = 12, 8, 2  # 12 real dev examples in 2 batches of 8 (4 padding rows); 2 seeds
# float32 rounding between the vmapped batch-of-8 program and a direct batch-of-12 call, on
# values up to ~3 (LayerNorm outputs; an ulp there is 2.4e-7): measured max |difference| 0 (BERT,
# ModernBERT) and 1.2e-7 (DeBERTa); bound ~4 ulps. The two seeds differ by 0.11-0.15 and the
# planted bugs by more, far above it.
TOL = 1e-6
OWN = {"deberta-v3": deberta, "modernbert": modernbert}


def _programs(cfg, model):
  return train_lib.build_programs(cfg, model, n_train=N, total=4, seeds_per_group=K,
                                  seed_axis="vmap")


def _batches(arrays):
  return {k: v for k, v in dataset.eval_batches(arrays, BATCH).items() if k != "weight"}


@pytest.fixture(scope="module")
def built(glue_dir):
  """arch -> (model, arrays, programs, params of 2 seeds), each built once per module: the
  pretrained (here random) parameters, seed 2's backbone scaled by 1.05 so that the seeds'
  vectors differ (a program that mixed the seeds up would otherwise go unseen; the head does
  not change the hidden states)."""
  cache = {}

  def get(arch):
    if arch not in cache:
      cfg, model, arrays = tiny_setup(glue_dir, arch, n=N, length=32)
      params = {k: jax.tree_util.tree_map(
          lambda x, head=k in model.family.head_keys: jnp.stack([x, x if head else 1.05 * x]), v)
          for k, v in model.params.items()}
      cache[arch] = model, arrays, _programs(cfg, model), params
    return cache[arch]
  return get


def _direct(model, arrays):
  """params -> [L+1, N, d]: one seed's output_hidden_states, first token, from the module called
  as it is, on all N examples in one batch, not vmapped (jitted only to compile once rather than
  op by op)."""
  kw = ({"token_type_ids": arrays["token_type_ids"]} if model.family.segment_ids else {})

  def call(params):
    out = model.flax_model(arrays["input_ids"], attention_mask=arrays["attention_mask"],
                           params=params, train=False, output_hidden_states=True, **kw)
    return jnp.stack([h[:, 0] for h in out.hidden_states])
  return lambda params: np.asarray(jax.jit(call)(params))


def _intercepted(module, model, params, arrays):
  """[L+1, N, d] of an own module without its hidden-state output: the outputs of its
  Embeddings and of each Layer, recorded by a flax interceptor as the plain call runs."""

  def call(params):
    seen = []

    def record(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if context.method_name == "__call__" and isinstance(context.module,
                                                          (module.Embeddings, module.Layer)):
        seen.append(out[:, 0])
      return out
    with nn.intercept_methods(record):
      model.flax_model(arrays["input_ids"], attention_mask=arrays["attention_mask"],
                       params=params, train=False)
    return jnp.stack(seen)
  return np.asarray(jax.jit(call)(params))


def _mismatch(got, want):
  """None when got (program, one seed) equals want to float32 rounding; else what differs."""
  if got.shape != want.shape:
    return f"shape {got.shape} != {want.shape}"
  err = float(np.max(np.abs(got - want)))
  return None if err <= TOL else f"max |difference| {err:.2g}"


def _seed(tree, i):
  return jax.tree_util.tree_map(lambda x: x[i], tree)


@pytest.mark.parametrize("arch", ["bert", "deberta-v3", "modernbert"])
def test_program_equals_a_direct_call_of_the_module(built, arch):
  """Every seed's [L+1, n, d] from the vmapped program equals output_hidden_states of the
  module called directly; for the own modules also the outputs of their Embeddings and Layer
  modules (so the hidden-state output itself is checked). The tiny ModernBERT pools by the
  mean: its representation is still the CLS vector."""
  model, arrays, programs, params = built(arch)
  out = np.asarray(programs.eval_reps(params, _batches(arrays)))
  layers, d = model.num_layers + 1, model.config.hidden_size
  assert out.shape == (K, layers, 2 * BATCH, d)  # padding rows kept: the caller drops them
  direct = _direct(model, arrays)
  for i in range(K):
    want = direct(_seed(params, i))
    assert _mismatch(out[i, :, :N], want) is None, (arch, i, _mismatch(out[i, :, :N], want))
  assert _mismatch(out[0, :, :N], out[1, :, :N]) is not None  # the seeds differ
  if arch in OWN:  # seed 2: the scaled backbone
    ref = _intercepted(OWN[arch], model, _seed(params, 1), arrays)
    assert _mismatch(out[1, :, :N], ref) is None, (arch, _mismatch(out[1, :, :N], ref))


def _last_token(self, params, batch, *, pass_segment_ids=True):
  out = self._forward(params, batch, False, None, pass_segment_ids, hidden=True)  # pylint: disable=protected-access
  return jnp.stack([h[:, -1, :] for h in out.hidden_states])


def _no_embeddings(self, params, batch, *, pass_segment_ids=True):
  out = self._forward(params, batch, False, None, pass_segment_ids, hidden=True)  # pylint: disable=protected-access
  return jnp.stack([h[:, 0, :] for h in out.hidden_states[1:]])


@pytest.mark.parametrize("bug", [_last_token, _no_embeddings])
def test_planted_bugs_are_caught(glue_dir, built, bug, monkeypatch):
  """The last token's vector instead of the first's, or the layers without the embeddings'
  output, fail the comparison above."""
  model, arrays, _, params = built("bert")
  monkeypatch.setattr(models.Model, "first_token_states", bug)
  cfg, _, _ = tiny_setup(glue_dir, "bert", n=N, length=32)
  out = np.asarray(_programs(cfg, model).eval_reps(params, _batches(arrays)))
  assert _mismatch(out[0, :, :N], _direct(model, arrays)(_seed(params, 0))) is not None


def _plan(workdir, rep_examples, seeds=(1, 2)):
  return types.SimpleNamespace(workdir=str(workdir), rep_examples=rep_examples,
                               seeds=list(seeds), arrays=types.SimpleNamespace(
                                   dev={"labels": np.zeros(N, np.int32)}))


def test_capture_caps_the_examples_and_zero_writes_nothing(built, tmp_path):
  _, arrays, programs, params = built("bert")
  state = types.SimpleNamespace(params=params)
  engine = types.SimpleNamespace(programs=programs, dev_on_device=_batches(arrays))
  full = np.asarray(programs.eval_reps(params, _batches(arrays)))
  (tmp_path / "runs").mkdir()
  progress = types.SimpleNamespace(seeds=[1, 2])

  representations.write(_plan(tmp_path, 0), engine, state, progress)
  assert os.listdir(tmp_path / "runs") == []
  assert representations.stacked(_plan(tmp_path, 0)) is None
  assert representations.examples(_plan(tmp_path, 1000)) == N  # a smaller dev set: all of it

  plan = _plan(tmp_path, 5)  # 5 examples: only the first batch runs
  representations.write(plan, engine, state, progress)
  assert sorted(os.listdir(tmp_path / "runs")) == ["reps_seed_1.npy", "reps_seed_2.npy"]
  reps = representations.stacked(plan)
  assert reps.dtype == np.float16 and reps.shape == (2, 3, 5, 64)
  # float16 keeps 11 significant bits: measured max relative error 4.7e-4 (bound 2^-11 = 4.9e-4)
  rel = np.abs(reps.astype(np.float32) - full[:, :, :5]) / np.maximum(np.abs(full[:, :, :5]), 1e-3)
  assert np.max(rel) <= 2.0 ** -11
  os.remove(tmp_path / "runs" / "reps_seed_2.npy")
  assert representations.stacked(plan) is None  # every seed or none


def test_rep_examples_is_checked_before_the_workdir_and_old_workdirs_resume(tmp_path):
  cfg = config_lib.task_config("rte", "model=tiny-bert")
  config_lib.set_path(cfg, "analysis.rep_examples", "-1")  # set_path refuses a non-integer
  with pytest.raises(ConfigError, match=r"^analysis\.rep_examples=-1 must be"):
    validate.check_config(cfg)
  cfg.analysis.rep_examples = 1000
  old = json.loads(json.dumps(cfg.to_dict()))
  del old["analysis"]  # a config.json written before the key existed
  (tmp_path / "config.json").write_text(json.dumps(old))
  workdir_lib.check_same_config(cfg, str(tmp_path))  # resumes: absent reads as the default
  cfg.analysis.rep_examples = 0
  with pytest.raises(ConfigError, match="analysis.rep_examples"):
    workdir_lib.check_same_config(cfg, str(tmp_path))  # another capture: another workdir


def test_a_tiny_study_leaves_each_seeds_representations_in_runs(tmp_path):
  """test_study's demo setting (the same programs: XLA's persistent cache in the session's
  temporary folder compiles them once): every seed's file, all 300 dev examples (fewer than
  the default 1,000), written before the record that marks the seed finished."""
  cfg = demo_config("1-2")
  experiment.run_setting(cfg, str(tmp_path))
  for s in (1, 2):
    path = workdir_lib.run_path(str(tmp_path), s, "reps")
    reps = representations.read(path)
    assert reps.shape == (cfg.model.tiny.num_layers + 1, 300, cfg.model.tiny.hidden_size)
    assert reps.dtype == np.float16 and np.all(np.isfinite(reps))
    record = workdir_lib.run_path(str(tmp_path), s, "json")
    assert os.stat(path).st_mtime_ns <= os.stat(record).st_mtime_ns
