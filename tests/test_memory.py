"""Seeds per step from the compiled program's memory analysis, recovery from out-of-memory
errors (halve K, go on from the newest checkpoint), and remat of the encoder layers."""
import dataclasses
import json
import os
import types

import jax
import numpy as np
import pytest

from jaxstab.config import config_lib
from jaxstab.engine import families, memory, models, parallel, train as train_lib
from jaxstab.infra.errors import ConfigError
from jaxstab.study import experiment, sizing, validate, workdir as workdir_lib
from tests.helpers import demo_config, xla_optimized

GB = 10**9
# What XLA raises when an allocation fails, at compile or at run time (jax 0.10.2:
# jax.errors.JaxRuntimeError, the message starts with the status code).
OOM = "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 123456789 bytes."


# ------------------------------------------------------------------------------ choosing K
class _Layout:
  def __init__(self, n, free):
    self.num_devices = n
    device = types.SimpleNamespace(memory_stats=lambda: {"bytes_limit": free, "bytes_in_use": 0}
                                   if free else None)
    self.mesh = types.SimpleNamespace(devices=np.asarray([device] * n))


def _footprints(fixed, per, d):
  """measure(k) of a program holding `fixed` plus `per` bytes per seed and device."""
  def measure(k):
    assert k % d == 0
    return memory.Footprint(argument=fixed + per * (k // d), output=0, alias=0, temp=0)
  return measure


def test_k_from_the_analysis_fills_the_device_in_multiples_of_the_device_count():
  # 0.9 * 40 GB = 36 GB; 36 - 4 fixed = 32 GB -> 4 seeds of 8 GB on each of 2 devices.
  s = memory.choose(0, 25, _Layout(2, 40 * GB), _footprints(4 * GB, 8 * GB, 2), 1, 0)
  assert (s.k, s.how, s.fixed_bytes, s.per_seed_bytes) == (8, "memory_analysis", 4 * GB, 8 * GB)
  assert s.measured["2"]["peak"] - s.measured["1"]["peak"] == 8 * GB
  # Fewer runs than fit: all of them, padded to the device count; one per device: one compile.
  calls = []
  one = memory.choose(0, 3, _Layout(4, 40 * GB), lambda k: calls.append(k) or
                      memory.Footprint(GB, 0, 0, 0), 1, 0)
  assert (one.k, calls) == (4, [4])
  # No analysis: the formula's bytes; no memory report (CPU): every seed; requested: as given.
  s = memory.choose(0, 25, _Layout(1, 10 * GB), lambda k: None, GB, 2 * GB)
  assert (s.k, s.how) == (7, "formula")  # (9 - 2) // 1
  assert memory.choose(0, 25, _Layout(1, 0), _footprints(0, GB, 1), GB, 0).k == 25
  assert memory.choose(3, 25, _Layout(2, 40 * GB), _footprints(0, GB, 2), GB, 0).k == 4


def test_one_seed_that_does_not_fit_stops_with_one_line():
  with pytest.raises(memory.DoesNotFit) as e:
    memory.choose(0, 25, _Layout(1, 16 * GB), _footprints(6 * GB, 9 * GB, 1), 1, 0)
  msg = str(e.value)
  assert "\n" not in msg and isinstance(e.value, ConfigError)
  assert "needs 15.00 GB" in msg and "16.00 GB free" in msg
  assert all(k in msg for k in ("train.batch_size", "train.max_seq_length", "train.remat",
                                "model.dtype", "optim.moments_dtype"))


def test_halving_keeps_a_multiple_of_the_devices_and_stops_at_one_per_device():
  s = memory.Sizing(k=24, how="memory_analysis", requested=0, devices=8)
  s = memory.halved(s, "step", "RESOURCE_EXHAUSTED: x")
  assert s.k == 8 and s.halved == [{"from": 24, "to": 8, "at": "step",
                                    "error": "RESOURCE_EXHAUSTED: x"}]
  with pytest.raises(memory.DoesNotFit, match="RESOURCE_EXHAUSTED: x"):
    memory.halved(s, "compile", "RESOURCE_EXHAUSTED: x")


def test_only_xla_allocation_failures_count_as_out_of_memory():
  assert memory.is_oom(jax.errors.JaxRuntimeError(OOM))
  assert not memory.is_oom(jax.errors.JaxRuntimeError("INVALID_ARGUMENT: bad shape"))
  assert not memory.is_oom(RuntimeError(OOM))


# ------------------------------------------------------------------------------ OOM recovery
def _config(**over):
  """Two seeds, one at a time (map: bit-for-bit comparable across group sizes), 8 steps,
  a checkpoint every 2."""
  return demo_config("1-2", train__max_steps=8, train__seed_axis="map", probe__every=1,
                     **{"checkpoint__every_steps": 2, **over})


def _summary(workdir):
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)


def _probe(workdir):
  with np.load(os.path.join(workdir, "probe.npz")) as z:
    return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def one_at_a_time(tmp_path_factory):
  """The reference: the same runs trained with K=1 from the start, never interrupted."""
  workdir = str(tmp_path_factory.mktemp("k1") / "w")
  experiment.run_setting(_config(train__seeds_per_step=1, checkpoint__every_steps=0), workdir)
  return workdir


def _assert_same_runs(workdir, reference):
  got, want = _summary(workdir), _summary(reference)
  assert [(r["seed"], r["final"], r["final_train_loss"]) for r in got["runs"]] == \
      [(r["seed"], r["final"], r["final_train_loss"]) for r in want["runs"]]
  p, q = _probe(workdir), _probe(reference)
  for key in ("grad_norm", "loss", "total_grad_norm", "update_norm", "param_norm"):
    np.testing.assert_array_equal(p[key], q[key], err_msg=key)


class _Faulty:
  """A group step that raises XLA's out-of-memory error: when compiled (`at_compile`), or at
  call number `oom_at` (`then` raises another error at a later call: a crash)."""

  def __init__(self, step, at_compile=False, oom_at=0, then=(0, None)):
    self.step, self.at_compile, self.oom_at, self.then, self.calls = step, at_compile, oom_at, \
        then, 0

  def lower(self, *args):
    if not self.at_compile:
      return self.step.lower(*args)
    return types.SimpleNamespace(compile=lambda: (_ for _ in ()).throw(
        jax.errors.JaxRuntimeError(OOM)))

  def __call__(self, *args):
    self.calls += 1
    if self.calls == self.oom_at:
      raise jax.errors.JaxRuntimeError(OOM)
    if self.calls == self.then[0]:
      raise self.then[1]
    return self.step(*args)


def _inject(monkeypatch, faults):
  """build_programs, with the group step of each K in `faults` a _Faulty one (its arguments)."""
  real = train_lib.build_programs

  def build(cfg, model, **kw):
    programs = real(cfg, model, **kw)
    if kw["seeds_per_group"] in faults:
      programs = dataclasses.replace(programs, step=_Faulty(programs.step,
                                                            **faults[kw["seeds_per_group"]]))
    return programs
  monkeypatch.setattr(train_lib, "build_programs", build)
  return real


class _Crash(Exception):
  pass


def test_out_of_memory_in_a_step_halves_k_and_resumes_bit_identically(one_at_a_time, tmp_path,
                                                                      monkeypatch):
  """K=2 by the memory analysis (free memory faked on the CPU); the 5th step runs out of
  memory: K=1, and seed 1 goes on from the K=2 group's checkpoint at step 4, to crash at its
  step 7 (after a checkpoint at 6). The rerun of the same command keeps K=1
  (seeds_per_step.json: two runs are left, so K=2 would be chosen again), resumes seed 1 from
  its own checkpoint and seed 2 from the K=2 group's. Probe and results equal the K=1 run's."""
  monkeypatch.setattr(parallel, "free_bytes", lambda device: GB)
  real = _inject(monkeypatch, {2: dict(oom_at=5), 1: dict(then=(3, _Crash()))})
  workdir = str(tmp_path / "w")
  with pytest.raises(_Crash):
    experiment.run_setting(_config(), workdir)
  record = sizing.read_record(workdir)
  assert (record["k"], record["how"]) == (1, "memory_analysis")
  assert [(h["from"], h["to"], h["at"]) for h in record["halved"]] == [(2, 1, "step")]
  assert record["halved"][0]["error"] == OOM
  saved = os.path.join(workdir, "checkpoints")
  assert sorted(os.listdir(saved)) == ["seeds_1-2_of_2", "seeds_1_of_1"]
  assert "6" in os.listdir(os.path.join(saved, "seeds_1_of_1"))  # went on from step 4
  monkeypatch.setattr(train_lib, "build_programs", real)
  s = experiment.run_setting(_config(), workdir)
  assert s["seeds_per_step"]["k"] == 1 and len(s["seeds_per_step"]["halved"]) == 1
  assert not os.listdir(os.path.join(workdir, "checkpoints"))
  _assert_same_runs(workdir, one_at_a_time)


def test_out_of_memory_when_compiling_compiles_the_smaller_group(one_at_a_time, tmp_path,
                                                                 monkeypatch):
  """On the CPU K is every seed (no memory report): 2. Its step fails to compile for lack of
  memory: K=1 is compiled instead and the runs equal the K=1 run's; the summary says so."""
  _inject(monkeypatch, {2: dict(at_compile=True)})
  workdir = str(tmp_path / "w")
  s = experiment.run_setting(_config(), workdir)
  assert (s["seeds_per_step"]["k"], s["seeds_per_step"]["how"]) == (1, "no memory report")
  assert [(h["from"], h["to"], h["at"]) for h in s["seeds_per_step"]["halved"]] == \
      [(2, 1, "compile")]
  _assert_same_runs(workdir, one_at_a_time)


def test_overwrite_discards_what_a_rerun_would_resume_from(tmp_path):
  """overwrite=True: the discarded config's group checkpoints, early-stop ranking and K record
  go too (a group of the same seeds and K would otherwise resume the old config's state)."""
  workdir = str(tmp_path / "w")
  workdir_lib.prepare(demo_config("1-2"), workdir)
  left = [os.path.join(workdir, "checkpoints", "seeds_1-2_of_2", "4"),
          os.path.join(workdir, workdir_lib.SEEDS_PER_STEP),
          os.path.join(workdir, "early_stop.json")]
  os.makedirs(left[0])
  for path in left[1:]:
    with open(path, "w") as f:
      f.write("{}")
  with pytest.raises(ConfigError, match="different config"):
    workdir_lib.prepare(demo_config("1-2", optim__lr=5e-4), workdir)
  assert all(os.path.exists(p) for p in left)
  workdir_lib.prepare(demo_config("1-2", optim__lr=5e-4, overwrite=True), workdir)
  assert not any(os.path.exists(p) for p in left)
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))


def test_one_seed_per_device_out_of_memory_stops_with_one_line():
  """K=1 on one device and its compile runs out of memory: nothing left to halve."""
  def programs_for(k):
    return types.SimpleNamespace(step=_Faulty(None, at_compile=True))
  plan = types.SimpleNamespace(workdir="/nonexistent-workdir-never-written",
                               arrays=types.SimpleNamespace(train=None))
  start = memory.Sizing(k=1, how="requested", requested=1, devices=1)
  compile_fails = lambda programs, layout, arrays: programs.step.lower().compile()
  with pytest.MonkeyPatch.context() as m:
    m.setattr(memory, "compile_step", compile_fails)
    m.setattr(parallel, "is_primary", lambda: False)  # writes nothing
    with pytest.raises(memory.DoesNotFit) as e:
      sizing.compiled(plan, None, programs_for, start)
  assert "\n" not in str(e.value) and "RESOURCE_EXHAUSTED" in str(e.value)
  assert "train.remat=layers" in str(e.value)


# ------------------------------------------------------------------------------ remat
@pytest.fixture(scope="module")
def bert2():
  """A 2-layer BERT (hidden 64, dropout 0.1) with random parameters drawn in numpy from the
  shapes its init traces (nothing compiled: an eager or jitted init costs ~15 s here)."""
  import transformers  # pylint: disable=import-outside-toplevel
  config = transformers.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, intermediate_size=128,
                                   max_position_embeddings=160)
  flax_model = transformers.FlaxBertForSequenceClassification(config, _do_init=False)
  shapes = jax.eval_shape(lambda key: flax_model.init_weights(key, (1, 1)), jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  draw = lambda path, x: (np.ones(x.shape, np.float32) if jax.tree_util.keystr(path).endswith(
      "['scale']") else (0.02 * rng.standard_normal(x.shape)).astype(np.float32))
  params = jax.tree_util.tree_map_with_path(draw, shapes)
  return models.Model(flax_model, params, "bert", 2, config, "bert2")


def _batch(n, length):
  ids = (np.arange(n * length).reshape(n, length) * 7) % 97 + 3
  return {"input_ids": ids.astype(np.int32), "attention_mask": np.ones_like(ids, np.int32),
          "token_type_ids": np.zeros_like(ids, np.int32),
          "labels": np.arange(n, dtype=np.int32) % 2}


def test_remat_trains_identically_with_fewer_temporaries(bert2):
  """The group step (one seed, dropout on) at batch 8, length 128, with and without remat. One
  step from the same state gives the same new state: parameters, Adam moments (after one step
  the first moment is 0.1 x the gradient) and the running loss, so the loss and the gradients
  are the same. Measured on XLA:CPU: bit-identical, so the check is exact. XLA's own count of temporary bytes falls:
  measured 19.7 MB -> 11.4 MB (x0.58); XLA:CPU keeps the remat only with
  memory.step_compiler_options (without them, at 4 layers: 36.2 MB -> 35.9 MB)."""
  arrays = _batch(16, 128)
  layout = parallel.Layout.create()
  data = jax.device_put(arrays, layout.replicated)
  temps, states = {}, {}
  with xla_optimized():  # the bytes and bits of the program users compile
    for remat in ("none", "layers"):
      cfg = config_lib.base_config()
      cfg.train.batch_size, cfg.train.remat, cfg.probe.every = 8, remat, 0
      programs = train_lib.build_programs(cfg, bert2, n_train=16, total=4, layout=layout)
      temps[remat] = memory.footprint(memory.compile_step(programs, layout, arrays)).temp
      state = programs.create(np.asarray([train_lib.seed_key(7)]))
      states[remat] = programs.step(state, data, programs.anchor)
  assert temps["layers"] < 0.75 * temps["none"], temps
  assert float(states["none"].loss_sum[0]) > 0 and int(states["none"].step[0]) == 1
  for a, b in zip(jax.tree_util.tree_leaves(states["none"]),
                  jax.tree_util.tree_leaves(states["layers"])):
    np.testing.assert_array_equal(a, b)


def test_remat_is_refused_where_the_family_has_none():
  for arch in families.FAMILIES:
    cfg = config_lib.task_config("rte", f"model=tiny-{arch}")
    cfg.train.remat = "layers"
    if families.FAMILIES[arch].remat:
      validate.check_model(cfg, arch, 2)
    else:
      with pytest.raises(ConfigError, match=r"^train.remat='layers' is not available for "):
        validate.check_model(cfg, arch, 2)
  cfg = config_lib.task_config("rte", "model=tiny-bert")
  cfg.train.remat = "all"
  with pytest.raises(ConfigError, match="train.remat='all' is not allowed"):
    validate.check_config(cfg)
