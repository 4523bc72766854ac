"""The masked evaluation text of the forgetting analysis, on real RTE sentences and MiniLM's real
WordPiece tokenizer: blocks carry the whole token stream in order, masking follows BERT's
15% / 80-10-10 recipe and never touches special or padding tokens, and it is reproducible."""
import csv
import os

import numpy as np
import pytest

from jaxstab.analysis import mlm_text
from jaxstab.config import config_lib
from jaxstab.infra.errors import ConfigError


@pytest.fixture(scope="module")
def tok():
  from transformers import BertTokenizerFast  # pylint: disable=import-outside-toplevel
  return BertTokenizerFast.from_pretrained(config_lib.minilm_folder())


@pytest.fixture(scope="module")
def text(glue_dir):
  with open(os.path.join(glue_dir, "RTE", "train.tsv"), encoding="utf-8") as f:
    rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
  return "\n".join(r["sentence1"] for r in rows[:400])


def test_blocks_hold_the_token_stream_in_order(tok, text):
  size = 64
  arrays = mlm_text.blocks(tok, text, size)
  ids, mask = arrays["input_ids"], arrays["attention_mask"]
  assert ids.shape == mask.shape == arrays["token_type_ids"].shape and ids.shape[1] == size
  assert not arrays["token_type_ids"].any()
  stream = []
  for row, m in zip(ids, mask):
    real = row[m == 1]
    assert real[0] == tok.cls_token_id and real[-1] == tok.sep_token_id
    assert (row[m == 0] == tok.pad_token_id).all()
    stream.extend(real[1:-1].tolist())
  assert mask[:-1].all()                         # only the last block is padded
  expected = []
  for line in text.splitlines():
    if line.strip():
      expected.extend(tok(line.strip(), add_special_tokens=False)["input_ids"])
  assert stream == expected and arrays["text_tokens"] == len(expected)
  assert mlm_text.blocks(tok, text, size, max_tokens=100)["text_tokens"] == 100


def test_masking_follows_bert_recipe(tok, text):
  arrays = mlm_text.blocks(tok, text, 128)
  out = mlm_text.mask_tokens(arrays, tok, 0.15, seed=3)
  ids = arrays["input_ids"]
  chosen = out["weight"] > 0
  specials = np.isin(ids, tok.all_special_ids) | (arrays["attention_mask"] == 0)
  assert not (chosen & specials).any()
  assert (out["labels"] == ids).all()
  assert (out["input_ids"][~chosen] == ids[~chosen]).all()   # unchosen tokens are untouched
  n_candidates = (~specials).sum()
  n = chosen.sum()
  # binomial counts: allow 5 standard deviations either way
  assert abs(n - 0.15 * n_candidates) < 5 * np.sqrt(n_candidates * 0.15 * 0.85)
  new = out["input_ids"][chosen]
  to_mask = (new == tok.mask_token_id).sum()
  kept = (new == ids[chosen]).sum()
  to_random = n - to_mask - kept
  for count, p in ((to_mask, 0.8), (to_random, 0.1)):
    assert abs(count - p * n) < 5 * np.sqrt(n * p * (1 - p)), (count, p, n)
  # a random replacement may draw the original id by chance (1 in ~30k), so "kept" is >= 10%
  assert abs(kept - 0.1 * n) < 5 * np.sqrt(n * 0.09) + 0.01 * n
  assert not np.isin(new[new != tok.mask_token_id], tok.all_special_ids).any()  # random: normal ids


def test_masking_is_reproducible_per_seed(tok, text):
  arrays = mlm_text.blocks(tok, text, 64)
  a = mlm_text.mask_tokens(arrays, tok, 0.15, seed=0)
  b = mlm_text.mask_tokens(arrays, tok, 0.15, seed=0)
  c = mlm_text.mask_tokens(arrays, tok, 0.15, seed=1)
  assert all((a[k] == b[k]).all() for k in a)
  assert (a["weight"] != c["weight"]).any()


def test_batches_pad_with_zero_weight(tok, text):
  masked = mlm_text.mask_tokens(mlm_text.blocks(tok, text, 64), tok, 0.15, 0)
  n = len(masked["input_ids"])
  batched = mlm_text.batches_of(masked, 16)
  assert batched["input_ids"].shape == (-(-n // 16), 16, 64)
  flat = batched["weight"].reshape(-1, 64)
  assert flat[n:].sum() == 0 and flat[:n].sum() == masked["weight"].sum()
  assert (batched["labels"].reshape(-1, 64)[:n] == masked["labels"]).all()


def test_bad_text_is_refused(tmp_path, tok):
  with pytest.raises(ConfigError, match="not found.*--text"):
    mlm_text.read_text(str(tmp_path / "missing.txt"))
  empty = tmp_path / "empty.txt"
  empty.write_text("  \n\n", encoding="utf-8")
  with pytest.raises(ConfigError, match="empty.*--text"):
    mlm_text.read_text(str(empty))
  with pytest.raises(ConfigError, match="block size 2"):
    mlm_text.blocks(tok, "some words", 2)
