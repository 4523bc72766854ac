"""Tokenizers: the model's own fast tokenizer, or a small WordPiece vocabulary trained on the
task's training text (for the built-in tiny models, so nothing has to be downloaded)."""
import os
import tempfile

from jaxstab.errors import ConfigError

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_wordpiece(corpus, vocab_size: int):
  """A lower-casing BERT-style WordPiece tokenizer fitted to `corpus`.

  The trainer finds the same token set every time but numbers it differently from process to
  process, so ids are reassigned in a fixed order (specials, then sorted tokens): the same
  corpus always gives the same ids, hence the same runs.
  """
  from tokenizers import BertWordPieceTokenizer  # pylint: disable=import-outside-toplevel
  from transformers import BertTokenizerFast  # pylint: disable=import-outside-toplevel
  wp = BertWordPieceTokenizer(lowercase=True)
  wp.train_from_iterator(corpus, vocab_size=vocab_size, min_frequency=1,
                         special_tokens=SPECIALS, show_progress=False)
  tokens = SPECIALS + sorted(t for t in wp.get_vocab() if t not in SPECIALS)
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
