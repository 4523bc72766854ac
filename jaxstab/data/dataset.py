"""Read a GLUE task from TSV files, HF datasets or tensorflow-datasets into tokenized arrays.

All sources end in the same `Split` (texts and labels: class ids, or float scores for a
regression task) and then the same tokenized numpy arrays, cached in the workdir. Batches are
cut *on the device* from the whole training set (GLUE tasks fit easily): a seed's data order is
a pure function of its key and the step, so the train step needs no host input and vmaps over
seeds unchanged.

Large training sets (QQP, MNLI: ~400k pairs) are tokenized `TOKENIZE_CHUNK` examples at a time
into arrays allocated once, with a progress line every 20,000 examples, so the tokenizer's
per-example Python objects exist for one chunk at a time, and the cache file is written from
those arrays without an in-memory copy of the file.
"""
import collections
import hashlib
import itertools
import os
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxstab.data import demo_task
from jaxstab.data.glue_files import label_dtype, read_hf, read_tfds, read_tsv, Split
from jaxstab.data.tasks import Task
from jaxstab.infra import fs
from jaxstab.infra.errors import ConfigError

__all__ = ["Split", "label_dtype"]  # re-exported: callers build and read Splits from here

CUSTOM_SOURCES = ("csv", "jsonl")  # the user's own files: jaxstab/data/custom_data.py reads them
SOURCES = ("tsv", "hf", "tfds", "synthetic") + CUSTOM_SOURCES
SPLITS = ("train", "dev")
# Examples per tokenizer call. A fast tokenizer holds ~20 KB of Python objects per padded pair
# of length 128 until its call returns (measured: 20,000 pairs +396 MiB, 2,000 pairs +49 MiB;
# BUILD_NOTES), so the chunk bounds memory; smaller chunks were no slower.
TOKENIZE_CHUNK = 2_000
PROGRESS_EVERY = 20_000  # examples between progress lines


def load_split(task: Task, split: str, source: str, data_dir: str) -> Split:
  """One split of `task` from `source`: 'train', 'dev' (the main dev set: MNLI's matched one)
  or one of task.extra_dev (MNLI's 'dev_mismatched')."""
  if split not in SPLITS + task.extra_dev:
    raise ConfigError(f"unknown split {split!r} of task {task.name!r}; choose one of "
                      f"{SPLITS + task.extra_dev}")
  if source == "tsv":
    return read_tsv(task, os.path.join(data_dir, task.glue_dir, f"{task.file_name(split)}.tsv"))
  if source == "hf":
    return read_hf(task, split, data_dir)
  if source == "tfds":
    return read_tfds(task, split, data_dir)
  if source == "synthetic":
    if split not in SPLITS:
      raise ConfigError(f"data.source=synthetic has no split {split!r}")
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
  for t in itertools.chain(split.text_a, split.text_b or ()):
    h.update(t.encode("utf-8"))
    h.update(b"\0")
  h.update(split.labels.tobytes())
  return h.hexdigest()[:16]


def _encode(tokenizer, text_a, text_b, max_len: int) -> dict:
  enc = tokenizer(text_a, text_b, max_length=max_len, truncation=True, padding="max_length",
                  return_token_type_ids=True, return_tensors="np")
  ids = enc["input_ids"]
  return {"input_ids": ids, "attention_mask": enc["attention_mask"],
          "token_type_ids": enc.get("token_type_ids", np.zeros_like(ids))}


def tokenize(split: Split, tokenizer, max_len: int, chunk: int = 0, name: str = "") -> dict:
  """Fixed-length numpy arrays: input_ids, attention_mask, token_type_ids (int32, [n, max_len])
  and labels (int32 class ids, or float32 for regression).

  The texts are tokenized `chunk` examples at a time, each chunk written into arrays allocated
  once; the result equals one tokenizer call on all texts (tests/test_glue_tasks.py). A set of
  more than one chunk logs progress every PROGRESS_EVERY examples (`name`: which set).
  chunk=0: TOKENIZE_CHUNK."""
  n, chunk = len(split.labels), chunk or TOKENIZE_CHUNK
  out = {k: np.zeros((n, max_len), np.int32)
         for k in ("input_ids", "attention_mask", "token_type_ids")}
  t0, many = time.time(), n > chunk
  for start in range(0, n, chunk):
    stop = min(start + chunk, n)
    enc = _encode(tokenizer, split.text_a[start:stop],
                  split.text_b[start:stop] if split.text_b is not None else None, max_len)
    for k, v in enc.items():
      out[k][start:stop] = v
    del enc
    if many and (stop == n or stop // PROGRESS_EVERY > start // PROGRESS_EVERY):
      logging.info("tokenizing %s: %d/%d examples (%.0f%%), %.0f s", name or "examples", stop, n,
                   100 * stop / n, time.time() - t0)
  floats = np.issubdtype(np.asarray(split.labels).dtype, np.floating)
  out["labels"] = np.asarray(split.labels).astype(np.float32 if floats else np.int32)
  return out


CACHED = ("input_ids", "attention_mask", "token_type_ids", "labels")
# Tokenized sets kept in this process, by fingerprint: the settings of a study (and the runs of a
# test session) tokenize the same texts with the same tokenizer again and again, and a small
# vocabulary (the tiny models') splits words into characters, which makes that slow. Sets over
# this many bytes are not kept (MNLI at length 128 is ~600 MB: its disk cache is the saving).
MEMO_BYTES = 256 << 20
_MEMO: "collections.OrderedDict[str, dict]" = collections.OrderedDict()


def tokenize_memo(split: Split, tokenizer, max_len: int, name: str = "",
                  fingerprint: str = "") -> dict:
  """`tokenize`, reusing this process's copy of the same texts, tokenizer and length (a fresh
  copy of each array: callers may change theirs)."""
  key = fingerprint or _fingerprint(split, tokenizer, max_len)
  if key not in _MEMO:
    arrays = tokenize(split, tokenizer, max_len, name=name)
    if sum(a.nbytes for a in arrays.values()) > MEMO_BYTES:
      return arrays
    _MEMO[key] = arrays
    while sum(a.nbytes for v in _MEMO.values() for a in v.values()) > MEMO_BYTES:
      _MEMO.popitem(last=False)
  _MEMO.move_to_end(key)
  return {k: v.copy() for k, v in _MEMO[key].items()}


def _save_local_npz(path: str, arrays: dict) -> None:
  """np.savez straight into a temporary file beside `path`, then renamed: the arrays are
  streamed into the zip, never copied whole in memory (fs.save_npz builds the file in memory)."""
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):  # a cut-short temporary file would hold the space for nothing
      os.remove(tmp)
    raise


def _load_cache(path: str, n: int, max_len: int) -> dict:
  """The cached arrays of `n` examples, or one of fs.UNREADABLE (ValueError for a file that
  reads but holds other arrays than `tokenize` writes)."""
  with np.load(path) as z:
    arrays = {k: z[k] for k in z.files}
  shapes = {k: arrays[k].shape for k in CACHED if k in arrays}
  if set(arrays) != set(CACHED) or any(s[:1] != (n,) for s in shapes.values()) or any(
      shapes[k][1:] != (max_len,) for k in CACHED[:3]):
    raise ValueError(f"holds {shapes}, not {n} examples of length {max_len}")
  return arrays


def tokenize_cached(split: Split, tokenizer, max_len: int, cache_dir: Optional[str],
                    name: str) -> dict:
  """`tokenize`, reusing a cached copy keyed by the texts, labels, tokenizer and length (the
  cache folder is on this machine: inputs.token_cache_dir).

  The cache is only a saving: a cached file that cannot be read is tokenized again and
  replaced, and one that cannot be written (a full disk) is done without, each with a warning."""
  fingerprint = _fingerprint(split, tokenizer, max_len)
  if not cache_dir:
    return tokenize_memo(split, tokenizer, max_len, name, fingerprint)
  path = os.path.join(cache_dir, f"{name}-{fingerprint}.npz")
  if os.path.isfile(path):
    try:
      return _load_cache(path, len(split.labels), max_len)
    except fs.UNREADABLE as e:
      logging.warning("token cache %s is unreadable (%s: %s); tokenizing again", path,
                      type(e).__name__, e)
  arrays = tokenize_memo(split, tokenizer, max_len, name, fingerprint)
  try:
    os.makedirs(cache_dir, exist_ok=True)
    _save_local_npz(path, arrays)
  except OSError as e:
    logging.warning("cannot write the token cache %s (%s); going on without it", path,
                    e.strerror or e)
  return arrays


def subsample_indices(total: int, n: int, seed: int) -> Optional[np.ndarray]:
  """Sorted indices of n of `total` training examples drawn without replacement by `seed` (the
  same subset for every run seed, so runs differ only in what the paper varies); None keeps all
  (n <= 0 or n >= total)."""
  if subsample_size(total, n) == total:
    return None
  return np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))


def subsample(arrays: dict, n: int, seed: int) -> dict:
  """The rows of `arrays` that subsample_indices keeps."""
  idx = subsample_indices(len(arrays["labels"]), n, seed)
  return arrays if idx is None else {k: v[idx] for k, v in arrays.items()}


def subsample_split(split: Split, n: int, seed: int) -> Split:
  """The examples of `split` that subsample_indices keeps, as texts: tokenizing them gives the
  rows `subsample` takes from the whole set tokenized (each example is tokenized and padded on
  its own), without tokenizing the examples left out: 1,000 of MNLI's 393k pairs tokenize in
  a fraction of a second instead of minutes."""
  idx = subsample_indices(len(split.labels), n, seed)
  if idx is None:
    return split
  pick = lambda texts: None if texts is None else [texts[i] for i in idx]
  return Split(pick(split.text_a), pick(split.text_b), np.asarray(split.labels)[idx])


def subsample_size(total: int, n: int) -> int:
  """How many of `total` training examples `subsample(arrays, n, seed)` keeps: n, or all of
  them when n <= 0 or n >= total (validation compares it with the batch size)."""
  return total if n <= 0 or n >= total else n


def num_batches(n: int, batch_size: int) -> int:
  """Batches per epoch; the last partial batch is kept, as the reference does."""
  return -(-n // batch_size)


def epoch_order(data_key, epoch, n: int, batch_size: int):
  """The example order of one epoch (jittable, pure): a permutation of range(n) drawn from
  fold_in(data_key, epoch), padded with zeros (example 0, given zero weight by batch_of_order)
  to num_batches * batch_size entries, so every batch has a static shape.

  Drawing it sorts n random keys: on MNLI or QQP (~393k examples) that costs more than a small
  model's whole step, so the train step keeps the epoch's order in its state and draws it once
  per epoch (train.TrainState.order; BUILD_NOTES "Data order once per epoch").
  """
  perm = jax.random.permutation(jax.random.fold_in(data_key, epoch), n).astype(jnp.int32)
  pad = num_batches(n, batch_size) * batch_size - n
  return jnp.concatenate([perm, jnp.zeros((pad,), jnp.int32)])


def batch_of_order(order, step, n: int, batch_size: int):
  """Example indices and weights of training batch `step`, cut from its epoch's `order`
  (epoch_order). The weight is 1 on the real examples and 0 on the padding of an epoch's last
  batch, so the weighted mean loss is the mean over the real examples. It is cut from a
  constant ones-then-zeros vector, as the step always cut it (no cost shows at n = 393k): an
  equal weight computed another way (an index comparison) let XLA sum the loss in another
  order, which moved recorded losses by one float32 ulp on the demo (BUILD_NOTES)."""
  start = (step % num_batches(n, batch_size)) * batch_size
  pad = num_batches(n, batch_size) * batch_size - n
  weight = jnp.concatenate([jnp.ones((n,), jnp.float32), jnp.zeros((pad,), jnp.float32)])
  return (jax.lax.dynamic_slice_in_dim(order, start, batch_size),
          jax.lax.dynamic_slice_in_dim(weight, start, batch_size))


def batch_indices(data_key, step, n: int, batch_size: int):
  """Example indices and weights of training batch `step` of the data order `data_key`
  (jittable, pure): each epoch is a fresh permutation (epoch_order), cut into batches
  (batch_of_order). The train step computes the same from the order kept in its state; this
  one-call form serves whoever needs a single batch (tests, the reference-parity run)."""
  epoch = step // num_batches(n, batch_size)
  return batch_of_order(epoch_order(data_key, epoch, n, batch_size), step, n, batch_size)


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
