"""Small builders shared by tests: tiny models on real GLUE text, in-process."""
import jax
import numpy as np

from jaxstab.config import config_lib
from jaxstab.data import dataset, tasks, vocab
from jaxstab.engine import models, train as train_lib


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
