"""What a setting reads before its first step: data, tokenizer, model, tokenized arrays.

Training (experiment.py) and the analyses (analysis/) both rebuild a setting through these two
functions, so an analysis sees exactly the model and the training examples that training saw.
Everything here can fail on bad input and nothing here writes a result file: a setting loads its
inputs before it touches its workdir.
"""
import dataclasses
import os
from typing import Dict, Optional

from jaxstab.data import custom_data, dataset, tasks, vocab
from jaxstab.engine import models
from jaxstab.infra import fs


@dataclasses.dataclass
class Inputs:
  """The untokenized inputs of one setting."""
  task: tasks.Task
  model: models.Model
  tokenizer: object
  train_split: dataset.Split
  dev_split: dataset.Split
  # The task's further dev sets by name (MNLI: dev_mismatched), scored besides the main one.
  extra_dev_splits: Dict[str, dataset.Split] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Arrays:
  """Tokenized inputs: the training set as training uses it (subsampled when the config says so)
  and the whole dev set; `full_steps_per_epoch` counts batches of the *full* training set (the
  small-data ablation's "as many steps as E full epochs"); `extra_dev` holds the task's further
  dev sets, tokenized, by name (metrics recorded as f"{name}_{metric}")."""
  train: dict
  dev: dict
  full_steps_per_epoch: int
  extra_dev: Dict[str, dict] = dataclasses.field(default_factory=dict)


def load(cfg) -> Inputs:
  """Data files, tokenizer and model of `cfg` (raises ConfigError naming a bad input)."""
  extra = {}
  if cfg.data.source in dataset.CUSTOM_SOURCES:  # the user's own files: the task is built from them
    task, train_split, dev_split = custom_data.load(cfg)
  else:
    task = tasks.get_task(cfg.task)
    train_split = _glue_train(cfg, task)
    dev_split = dataset.load_split(task, "dev", cfg.data.source, cfg.data.dir)
    if cfg.data.source != "synthetic":  # the demo's generator makes one dev set
      extra = {name: dataset.load_split(task, name, cfg.data.source, cfg.data.dir)
               for name in task.extra_dev}
  prefix_space = cfg.model.roberta_prefix_space and models.takes_roberta_prefix_space(cfg.model)
  tokenizer = vocab.load(cfg.model, lambda: train_split.text_a + (train_split.text_b or []),
                         prefix_space=prefix_space)
  model = dataclasses.replace(models.load(cfg.model, task.num_labels, tokenizer),
                              spectral_head=bool(cfg.stabilisers.r4f))  # R4F: every use of it
  models.check_fit(model, tokenizer, cfg.train.max_seq_length)
  return Inputs(task, model, tokenizer, train_split, dev_split, extra)


def _glue_train(cfg, task: tasks.Task) -> dataset.Split:
  return dataset.load_split(task, "train", cfg.data.source, cfg.data.dir)


def train_size(cfg, loaded: Optional[Inputs] = None) -> int:
  """How many examples a setting trains on: its training set, subsampled per
  data.train_examples. From `loaded`, else read from the data alone (no tokenizer, no model), so
  that a study can check every setting's batch size before its first setting trains."""
  if loaded is not None:
    split = loaded.train_split
  elif cfg.data.source in dataset.CUSTOM_SOURCES:
    split = custom_data.load(cfg)[1]
  else:
    split = _glue_train(cfg, tasks.get_task(cfg.task))
  return dataset.subsample_size(len(split.labels), cfg.data.train_examples)


def token_cache_dir(directory: str) -> str:
  """Tokenized arrays are cached beside a local setting, on this machine for a bucket one."""
  return fs.local_cache("tokens") if fs.is_remote(directory) else os.path.join(directory, "cache")


def tokenize(cfg, inputs: Inputs, cache_dir: Optional[str]) -> Arrays:
  """Tokenized train (subsampled per data.train_examples) and dev arrays, cached in cache_dir."""
  length, name = cfg.train.max_seq_length, inputs.task.name
  # the subset is drawn from the texts, so only the examples trained on are tokenized
  subset = dataset.subsample_split(inputs.train_split, cfg.data.train_examples,
                                   cfg.data.subsample_seed)
  train = dataset.tokenize_cached(subset, inputs.tokenizer, length, cache_dir, f"{name}-train")
  dev = dataset.tokenize_cached(inputs.dev_split, inputs.tokenizer, length, cache_dir, f"{name}-dev")
  extra = {key: dataset.tokenize_cached(split, inputs.tokenizer, length, cache_dir, f"{name}-{key}")
           for key, split in inputs.extra_dev_splits.items()}
  full_spe = dataset.num_batches(len(inputs.train_split.labels), cfg.train.batch_size)
  return Arrays(train=train, dev=dev, full_steps_per_epoch=full_spe, extra_dev=extra)
