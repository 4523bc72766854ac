"""Read a GLUE task from TSV files, HF datasets or tensorflow-datasets into tokenized arrays.

All sources end in the same `Split` (texts and integer labels) and then the same tokenized
numpy arrays, cached in the workdir. Batches are cut *on the device* from the whole training
set (GLUE tasks fit easily): a seed's data order is a pure function of its key and the step,
so the train step needs no host input and vmaps over seeds unchanged.
"""
import csv
import dataclasses
import hashlib
import os
import sys
from typing import List, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxstab import demo_task, fs
from jaxstab.errors import ConfigError
from jaxstab.tasks import Task

CUSTOM_SOURCES = ("csv", "jsonl")  # the user's own files: jaxstab/custom_data.py reads them
SOURCES = ("tsv", "hf", "tfds", "synthetic") + CUSTOM_SOURCES
SPLITS = ("train", "dev")


@dataclasses.dataclass
class Split:
  text_a: List[str]
  text_b: Optional[List[str]]
  labels: np.ndarray  # int32 class ids

  def __len__(self):
    return len(self.labels)


def _read_tsv(task: Task, path: str) -> Split:
  if not os.path.isfile(path):
    raise ConfigError(f"missing data file {path} for task {task.name!r} (data.source=tsv); "
                      f"expected {os.path.dirname(path)}/{{train,dev}}.tsv in the GLUE layout. "
                      "Set --config.data.dir to the folder holding the task folders.")
  csv.field_size_limit(sys.maxsize)
  need = max(c for c in (task.text_a, task.text_b, task.label) if c is not None) + 1
  text_a, text_b, labels = [], [], []
  # utf-8-sig: MRPC's train.tsv starts with a byte-order mark. QUOTE_NONE: quotes are literal.
  with open(path, encoding="utf-8-sig", newline="") as f:
    for lineno, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
      if lineno == 1 and task.header:
        continue
      if not row or row == [""]:
        continue
      if len(row) < need:
        raise ConfigError(f"{path}:{lineno}: malformed row: expected at least {need} "
                          f"tab-separated columns, found {len(row)}")
      label = row[task.label].strip()
      if label not in task.labels:
        raise ConfigError(f"{path}:{lineno}: label {label!r} is not one of {list(task.labels)}")
      text_a.append(row[task.text_a])
      if task.text_b is not None:
        text_b.append(row[task.text_b])
      labels.append(task.labels.index(label))
  if not labels:
    raise ConfigError(f"{path}: no examples found")
  return Split(text_a, text_b if task.text_b is not None else None,
               np.asarray(labels, np.int32))


def _read_hf(task: Task, split: str, data_dir: str) -> Split:
  try:
    import datasets  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ConfigError("data.source=hf needs the `datasets` package: pip install 'datasets<5'") from e
  hf_split = {"train": "train", "dev": "validation"}[split]
  try:
    ds = datasets.load_dataset("nyu-mll/glue", task.hf_name, split=hf_split,
                               cache_dir=data_dir or None)
  except Exception as e:  # offline, or the hub refused: say what to do instead
    raise ConfigError(f"could not load nyu-mll/glue/{task.hf_name} ({split}) from the HF hub: "
                      f"{e}. Offline, use --config.data.source=tsv --config.data.dir=GLUE_DIR.") from e
  cols = task.hf_text
  return Split(list(ds[cols[0]]), list(ds[cols[1]]) if len(cols) > 1 else None,
               np.asarray(ds["label"], np.int32))


def _read_tfds(task: Task, split: str, data_dir: str) -> Split:
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ConfigError("data.source=tfds needs tensorflow-datasets: pip install 'jaxstab[tfds]'") from e
  tf_split = {"train": "train", "dev": "validation"}[split]
  ds = tfds.as_numpy(tfds.load(task.tfds_name, split=tf_split, data_dir=data_dir or None))
  cols = task.hf_text
  rows = list(ds)
  dec = lambda b: b.decode("utf-8") if isinstance(b, bytes) else str(b)
  return Split([dec(r[cols[0]]) for r in rows],
               [dec(r[cols[1]]) for r in rows] if len(cols) > 1 else None,
               np.asarray([r["label"] for r in rows], np.int32))


def load_split(task: Task, split: str, source: str, data_dir: str) -> Split:
  """One split ('train' or 'dev') of `task` from `source`."""
  if split not in SPLITS:
    raise ConfigError(f"unknown split {split!r}; choose one of {SPLITS}")
  if source == "tsv":
    return _read_tsv(task, os.path.join(data_dir, task.glue_dir, f"{split}.tsv"))
  if source == "hf":
    return _read_hf(task, split, data_dir)
  if source == "tfds":
    return _read_tfds(task, split, data_dir)
  if source == "synthetic":
    a, b, y = demo_task.generate(demo_task.SIZES[split], demo_task.SEEDS[split])
    return Split(a, b, y)
  if source in CUSTOM_SOURCES:  # their task is built from the files: inputs.load reads them
    raise ConfigError(f"data.source={source} is read by custom_data.load(cfg), not load_split "
                      f"(which reads {', '.join(s for s in SOURCES if s not in CUSTOM_SOURCES)})")
  raise ConfigError(f"unknown data source {source!r} (config key data.source); "
                    f"choose one of: {', '.join(SOURCES)}")


def _fingerprint(split: Split, tokenizer, max_len: int) -> str:
  h = hashlib.sha1()
  h.update(f"{type(tokenizer).__name__}|{tokenizer.name_or_path}|{len(tokenizer)}|{max_len}".encode())
  if getattr(tokenizer, "add_prefix_space", False):  # model.roberta_prefix_space (vocab.py)
    normalizer = getattr(getattr(tokenizer, "backend_tokenizer", None), "normalizer", None)
    h.update(b"|add_prefix_space|" + (normalizer.__getstate__() if normalizer else b""))
  for token, idx in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):  # the ids matter
    h.update(f"{idx}:{token}\n".encode("utf-8"))
  for t in split.text_a + (split.text_b or []):
    h.update(t.encode("utf-8"))
    h.update(b"\0")
  h.update(split.labels.tobytes())
  return h.hexdigest()[:16]


def tokenize(split: Split, tokenizer, max_len: int) -> dict:
  """Fixed-length numpy arrays: input_ids, attention_mask, token_type_ids, labels (all int32)."""
  enc = tokenizer(split.text_a, split.text_b, max_length=max_len, truncation=True,
                  padding="max_length", return_token_type_ids=True, return_tensors="np")
  ids = enc["input_ids"].astype(np.int32)
  return {"input_ids": ids,
          "attention_mask": enc["attention_mask"].astype(np.int32),
          "token_type_ids": enc.get("token_type_ids", np.zeros_like(ids)).astype(np.int32),
          "labels": split.labels.astype(np.int32)}


def tokenize_cached(split: Split, tokenizer, max_len: int, cache_dir: Optional[str],
                    name: str) -> dict:
  """`tokenize`, reusing a cached copy keyed by the texts, tokenizer and length."""
  if not cache_dir:
    return tokenize(split, tokenizer, max_len)
  path = os.path.join(cache_dir, f"{name}-{_fingerprint(split, tokenizer, max_len)}.npz")
  if os.path.isfile(path):
    return fs.load_npz(path)
  arrays = tokenize(split, tokenizer, max_len)
  os.makedirs(cache_dir, exist_ok=True)
  fs.save_npz(path, **arrays)
  return arrays


def subsample(arrays: dict, n: int, seed: int) -> dict:
  """n training examples drawn without replacement by `seed` (the same subset for every run
  seed, so runs differ only in what the paper varies); n <= 0 keeps everything."""
  total = len(arrays["labels"])
  if n <= 0 or n >= total:
    return arrays
  idx = np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))
  return {k: v[idx] for k, v in arrays.items()}


def num_batches(n: int, batch_size: int) -> int:
  """Batches per epoch; the last partial batch is kept, as the reference does."""
  return -(-n // batch_size)


def batch_indices(data_key, step, n: int, batch_size: int):
  """Example indices and weights of training batch `step` (jittable, pure).

  Each epoch is a fresh permutation drawn from fold_in(data_key, epoch). The last batch of an
  epoch is filled with zero-weight copies of example 0, so shapes stay static and the weighted
  mean loss equals the mean over the real examples.
  """
  per_epoch = num_batches(n, batch_size)
  epoch, pos = step // per_epoch, step % per_epoch
  perm = jax.random.permutation(jax.random.fold_in(data_key, epoch), n)
  pad = per_epoch * batch_size - n
  order = jnp.concatenate([perm, jnp.zeros((pad,), perm.dtype)])
  weight = jnp.concatenate([jnp.ones((n,), jnp.float32), jnp.zeros((pad,), jnp.float32)])
  start = pos * batch_size
  return (jax.lax.dynamic_slice_in_dim(order, start, batch_size),
          jax.lax.dynamic_slice_in_dim(weight, start, batch_size))


def gather(arrays: dict, idx) -> dict:
  return {k: jnp.take(v, idx, axis=0) for k, v in arrays.items()}


def eval_batches(arrays: dict, batch_size: int):
  """Dev arrays padded to a multiple of batch_size and reshaped to [num_batches, B, ...], plus
  a weight array marking the real examples (padding rows are dropped when scoring)."""
  n = len(arrays["labels"])
  nb = num_batches(n, batch_size)
  pad = nb * batch_size - n
  out = {k: np.concatenate([v, np.repeat(v[:1], pad, axis=0)]).reshape((nb, batch_size) + v.shape[1:])
         for k, v in arrays.items()}
  out["weight"] = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)]).reshape(nb, batch_size)
  return out
