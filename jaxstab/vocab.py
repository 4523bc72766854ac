"""Tokenizers: the model's own fast tokenizer, or a small WordPiece vocabulary trained on the
task's training text (for the built-in tiny models, so nothing has to be downloaded)."""
import collections
import os
import tempfile

from jaxstab.errors import ConfigError

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_wordpiece(corpus, vocab_size: int):
  """A lower-casing BERT-style WordPiece tokenizer fitted to `corpus`, fully deterministic.

  The vocabulary is every character (alone and as a ##continuation) plus the most frequent
  whole words (ties broken alphabetically) up to `vocab_size`; unknown words fall back to
  characters. tokenizers' own trainer is not used: with ties its vocabulary and ids change
  from process to process, and with them every number of a run.
  """
  from tokenizers.normalizers import BertNormalizer  # pylint: disable=import-outside-toplevel
  from tokenizers.pre_tokenizers import BertPreTokenizer  # pylint: disable=import-outside-toplevel
  from transformers import BertTokenizerFast  # pylint: disable=import-outside-toplevel
  norm, pre = BertNormalizer(lowercase=True), BertPreTokenizer()
  counts = collections.Counter()
  for text in corpus:
    counts.update(w for w, _ in pre.pre_tokenize_str(norm.normalize_str(text)))
  chars = sorted({c for w in counts for c in w})
  tokens = SPECIALS + chars + ["##" + c for c in chars]
  words = sorted((w for w in counts if len(w) > 1), key=lambda w: (-counts[w], w))
  tokens += words[:max(vocab_size - len(tokens), 0)]
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "vocab.txt")
    with open(path, "w", encoding="utf-8") as f:
      f.write("\n".join(tokens) + "\n")
    tok = BertTokenizerFast(vocab_file=path, do_lower_case=True, unk_token="[UNK]",
                            sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]",
                            mask_token="[MASK]")
  tok.name_or_path = f"wordpiece-{vocab_size}"
  return tok


def load(model_cfg, corpus_fn):
  """`model.tokenizer`: '' = the model's own; 'wordpiece' = trained on corpus_fn(); else a
  folder or hub id."""
  source = model_cfg.tokenizer or model_cfg.name_or_path
  if source == "wordpiece":
    return train_wordpiece(corpus_fn(), int(model_cfg.tiny.vocab_size))
  if source.startswith("tiny-"):
    raise ConfigError(f"model {source!r} has no tokenizer of its own; set "
                      "--config.model.tokenizer=wordpiece (or a tokenizer folder / hub id)")
  from transformers import AutoTokenizer  # pylint: disable=import-outside-toplevel
  try:
    return AutoTokenizer.from_pretrained(source, use_fast=True)
  except (OSError, ValueError) as e:
    where = "folder" if os.path.isdir(source) else "hub id"
    raise ConfigError(
        f"cannot load the tokenizer of {source!r} ({where}): {str(e).splitlines()[0]}. "
        "Offline, pass a local folder: --config.model.name_or_path=/path/to/folder") from e
