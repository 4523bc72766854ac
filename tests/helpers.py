"""Small builders shared by tests: tiny models on real GLUE text, in-process."""
import contextlib

import jax
import numpy as np

from jaxstab.config import config_lib
from jaxstab.data import dataset, tasks, vocab
from jaxstab.engine import models, train as train_lib


@contextlib.contextmanager
def xla_optimized():
  """XLA's full optimizations inside the block, as users compile (tests/conftest.py turns them
  off for the test run): for checks of what the optimized program itself does, its memory
  analysis, its bits, its agreement with PyTorch. The option is part of XLA's compile options, so
  the persistent cache keeps the two kinds of executable apart."""
  before = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", False)
  try:
    yield
  finally:
    jax.config.update("jax_disable_most_optimizations", before)


def tiny_setup(glue_dir, arch="bert", task="rte", n=64, length=32, **overrides):
  """A tiny random model of `arch`, its config, and tokenized arrays of n real examples."""
  cfg = config_lib.task_config(task, f"model=tiny-{arch},fidelity=corrected")  # engine tests
  cfg.data.dir = str(glue_dir)
  cfg.model.dropout = 0.0
  cfg.model.tiny.vocab_size = 500
  cfg.train.max_seq_length = length
  cfg.train.batch_size = 8
  for k, v in overrides.items():
    config_lib.set_path(cfg, k.replace("__", "."), v)
  t = tasks.get_task(task)
  split = dataset.load_split(t, "train", "tsv", cfg.data.dir)
  split = dataset.Split(split.text_a[:n], split.text_b[:n] if split.text_b else None, split.labels[:n])
  tok = vocab.load(cfg.model, lambda: split.text_a + (split.text_b or []))
  model = models.load(cfg.model, t.num_labels, tok)
  arrays = dataset.tokenize(split, tok, length)
  return cfg, model, arrays


def build_step(cfg, model, arrays, total_steps=20):
  """One seed's (create(key), step(state, arrays, anchor=None), probe group names), taken from
  train.build_programs: the functions a study maps over its seeds."""
  programs = train_lib.build_programs(cfg, model, n_train=len(arrays["labels"]),
                                      total=total_steps)
  return programs.create_one, programs.step_one, programs.group_names


def tree_max_abs_diff(a, b):
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def demo_config(seeds="1-2", **overrides):
  """A few steps of the tiny BERT on the synthetic demo task; overrides as a__b=value."""
  cfg = config_lib.task_config("demo", "model=tiny-bert,fidelity=corrected")
  cfg.data.source = "synthetic"
  cfg.model.tiny.vocab_size = 200
  cfg.train.batch_size = 32
  cfg.train.max_seq_length = 24
  cfg.train.max_steps = 6
  cfg.train.evals_per_epoch = 1
  cfg.probe.every = 2
  cfg.optim.lr = 1e-3
  cfg.seeds = seeds
  for k, v in overrides.items():
    config_lib.set_path(cfg, k.replace("__", "."), v)
  return cfg


def kept_params_config():
  """The demo run whose three seeds' final params are kept (the analyses' tests share it)."""
  return demo_config("1-3", train__max_steps=8, probe__every=4,
                     checkpoint__keep_final_params=True)


class ToyModel:
  """A two-parameter classifier with the Model.logits signature, for connectivity tests that
  plant a loss landscape by hand: logit(class 1) - logit(class 0) = u v x + b, where x = +-(1 +
  input_ids[:, 1] / 10) carries the label in the sign of input_ids[:, 0]. (u, v) and (-u, -v)
  are the same function, and the straight line between them crosses u v = 0, where the model
  predicts only its bias: a high-loss region planted between two equally good models."""

  def logits(self, params, batch, *, train=False, pass_segment_ids=True):  # pylint: disable=unused-argument
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    ids = batch["input_ids"].astype(jnp.float32)
    x = (2.0 * ids[:, 0] - 1.0) * (1.0 + ids[:, 1] / 10.0)
    z = params["u"] * params["v"] * x + params["b"]
    return jnp.stack([jnp.zeros_like(z), z], axis=-1)


def toy_arrays(n=40, seed=0):
  """Arrays of n examples for ToyModel: input_ids [n, 2] = (label, 0..9), labels random."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, n).astype(np.int32)
  ids = np.stack([labels, rng.integers(0, 10, n)], axis=1).astype(np.int32)
  ones = np.ones_like(ids)
  return {"input_ids": ids, "attention_mask": ones, "token_type_ids": 0 * ones, "labels": labels}


def toy_params(u, v, b=0.0):
  return {"u": np.float32(u), "v": np.float32(v), "b": np.float32(b)}
