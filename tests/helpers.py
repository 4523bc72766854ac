"""Small builders shared by tests: tiny models on real GLUE text, in-process."""
import jax
import numpy as np

from jaxstab import config_lib, data, models, optim, probe, tasks, vocab
from jaxstab import train as train_lib


def tiny_setup(glue_dir, arch="bert", task="rte", n=64, length=32, **overrides):
  """A tiny random model of `arch`, its config, and tokenized arrays of n real examples."""
  cfg = config_lib.task_config(task, f"model=tiny-{arch}")
  cfg.data.dir = str(glue_dir)
  cfg.model.dropout = 0.0
  cfg.model.tiny.vocab_size = 500
  cfg.train.max_seq_length = length
  cfg.train.batch_size = 8
  for k, v in overrides.items():
    config_lib.set_path(cfg, k.replace("__", "."), v)
  t = tasks.get_task(task)
  split = data.load_split(t, "train", "tsv", cfg.data.dir)
  split = data.Split(split.text_a[:n], split.text_b[:n] if split.text_b else None, split.labels[:n])
  tok = vocab.load(cfg.model, lambda: split.text_a + (split.text_b or []))
  model = models.load(cfg.model, t.num_labels, tok)
  arrays = data.tokenize(split, tok, length)
  return cfg, model, arrays


def build_step(cfg, model, arrays, total_steps=20):
  tx, schedule = optim.from_config(cfg.optim, total_steps)
  groups = probe.group_names(model.params, model.arch, model.num_layers)
  step = train_lib.make_train_step(
      model, tx, schedule, n_train=len(arrays["labels"]), batch_size=cfg.train.batch_size,
      probe_every=cfg.probe.every, group_names=groups, b1=cfg.optim.b1, b2=cfg.optim.b2)
  create = lambda key: train_lib.create_train_state(model, tx, key, total_steps, cfg.probe.every,
                                                    groups)
  return create, step, groups


def tree_max_abs_diff(a, b):
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def demo_config(seeds="1-2", **overrides):
  """A few steps of the tiny BERT on the synthetic demo task; overrides as a__b=value."""
  cfg = config_lib.task_config("demo", "model=tiny-bert")
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
