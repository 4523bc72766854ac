"""Masked-LM evaluation text: a plain text cut into fixed-size blocks and masked the way BERT's
pretraining masks it, so that perplexities of different encoders are measured on the very same
masked tokens. Used by the forgetting analysis (analysis/forgetting.py); kept apart because it
needs only a tokenizer and numpy, no model.
"""
import os

import numpy as np

from jaxstab.infra.errors import ConfigError

MASK_PROB = 0.15
REPLACE = (0.8, 0.1)          # of the chosen tokens: to [MASK], to a random token (rest kept)
WIKITEXT = ("Salesforce/wikitext", "wikitext-2-raw-v1", "test")


def read_text(path: str) -> str:
  if not os.path.isfile(path):
    raise ConfigError(f"text file {path} not found (flag --text)")
  with open(path, encoding="utf-8") as f:
    text = f.read()
  if not text.strip():
    raise ConfigError(f"text file {path} is empty (flag --text)")
  return text


def load_wikitext() -> str:
  """The WikiText-2 raw test split joined into one text (needs `datasets` and the network)."""
  try:
    # Deferred: `datasets` is optional (pip install -e ".[hf]"); --text=FILE needs none of it.
    import datasets  # pylint: disable=import-outside-toplevel
    name, config, split = WIKITEXT
    ds = datasets.load_dataset(name, config, split=split)
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f"could not load WikiText-2 ({'/'.join(WIKITEXT)}) with `datasets` "
                      f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
                      "Offline, pass a plain-text file: --text=FILE") from e
  return "\n".join(ds["text"])


def blocks(tokenizer, text: str, block_size: int, max_tokens: int = 0) -> dict:
  """The text as [N, block_size] int32 arrays input_ids, attention_mask, token_type_ids (zeros):
  non-empty lines tokenized without special tokens, concatenated, cut into pieces of
  block_size - (special tokens) and wrapped with the tokenizer's special tokens; the last block
  padded. max_tokens > 0 keeps only the first max_tokens text tokens."""
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  ids: list[int] = []
  for row in tokenizer(lines, add_special_tokens=False)["input_ids"]:
    ids.extend(row)
  if max_tokens > 0:
    ids = ids[:max_tokens]
  if not ids:
    raise ConfigError("the text holds no tokens")
  extra = tokenizer.num_special_tokens_to_add(pair=False)
  piece = block_size - extra
  if piece < 1:
    raise ConfigError(f"block size {block_size} leaves no room for text (flag --block_size)")
  rows = [tokenizer.build_inputs_with_special_tokens(ids[i:i + piece])
          for i in range(0, len(ids), piece)]
  pad = tokenizer.pad_token_id
  input_ids = np.full((len(rows), block_size), pad, np.int32)
  mask = np.zeros((len(rows), block_size), np.int32)
  for i, r in enumerate(rows):
    input_ids[i, :len(r)] = r
    mask[i, :len(r)] = 1
  return {"input_ids": input_ids, "attention_mask": mask,
          "token_type_ids": np.zeros_like(input_ids), "text_tokens": len(ids)}


def mask_tokens(arrays: dict, tokenizer, prob: float = MASK_PROB, seed: int = 0) -> dict:
  """Chooses `prob` of the non-special real tokens (Bernoulli, numpy generator `seed`) and
  replaces them BERT-style; returns masked input_ids, labels (the original ids) and a per-token
  weight (1 at chosen tokens)."""
  ids = arrays["input_ids"]
  specials = np.asarray(sorted(set(tokenizer.all_special_ids)), np.int32)
  candidate = (arrays["attention_mask"] == 1) & ~np.isin(ids, specials)
  rng = np.random.default_rng(seed)
  chosen = candidate & (rng.random(ids.shape) < prob)
  if not chosen.any():
    raise ConfigError("no token was chosen for masking: the text is too short")
  r = rng.random(ids.shape)
  normal = np.setdiff1d(np.arange(len(tokenizer), dtype=np.int32), specials)
  random_ids = normal[rng.integers(0, len(normal), ids.shape)]
  masked = np.where(chosen & (r < REPLACE[0]), tokenizer.mask_token_id, ids)
  masked = np.where(chosen & (r >= REPLACE[0]) & (r < REPLACE[0] + REPLACE[1]), random_ids, masked)
  return {"input_ids": masked.astype(np.int32), "attention_mask": arrays["attention_mask"],
          "token_type_ids": arrays["token_type_ids"], "labels": ids.astype(np.int32),
          "weight": chosen.astype(np.float32)}


def batches_of(masked: dict, batch_size: int) -> dict:
  """[num_batches, batch_size, T] arrays; padding rows have weight 0."""
  n = len(masked["input_ids"])
  b = max(1, min(batch_size, n))
  pad = -n % b
  out = {}
  for k, v in masked.items():
    fill = np.zeros((pad,) + v.shape[1:], v.dtype)
    out[k] = np.concatenate([v, fill]).reshape((-1, b) + v.shape[1:])
  return out
