"""Tokenizers: the model's own fast tokenizer, or a small WordPiece vocabulary trained on the
task's training text (for the built-in tiny models, so nothing has to be downloaded)."""
import collections
import copy
import hashlib
import os
import tempfile

from jaxstab.infra.errors import ConfigError

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


# Tokenizers fitted in this process, by corpus and size: the settings of a study (and the runs of
# a test session) fit the same vocabulary again and again. Each caller gets its own copy.
_FITTED: "collections.OrderedDict[str, object]" = collections.OrderedDict()
FITTED_KEEP = 8


def train_wordpiece(corpus, vocab_size: int):
  """`fit_wordpiece(corpus, vocab_size)`, reusing this process's fit of the same texts and size
  (a fresh copy each call: a tokenizer keeps per-call settings)."""
  corpus = list(corpus)
  h = hashlib.sha256(str(vocab_size).encode("utf-8"))
  for text in corpus:
    h.update(text.encode("utf-8"))
    h.update(b"\0")
  key = h.hexdigest()
  if key not in _FITTED:
    _FITTED[key] = fit_wordpiece(corpus, vocab_size)
    while len(_FITTED) > FITTED_KEEP:
      _FITTED.popitem(last=False)
  _FITTED.move_to_end(key)
  return copy.deepcopy(_FITTED[key])


def fit_wordpiece(corpus, vocab_size: int):
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


def load(model_cfg, corpus_fn, prefix_space=None):
  """`model.tokenizer`: '' = the model's own; 'wordpiece' = trained on corpus_fn(); else a
  folder or hub id. `model.roberta_prefix_space` makes a byte-level BPE tokenizer (RoBERTa's)
  tokenize as the reference's did (`reference_prefix_space`); other tokenizers are unchanged.
  `prefix_space` (when not None) replaces that flag: the engine passes False for a family that
  is not RoBERTa's (ModernBERT's tokenizer is byte-level BPE too)."""
  source = model_cfg.tokenizer or model_cfg.name_or_path
  if source == "wordpiece":
    return train_wordpiece(corpus_fn(), int(model_cfg.tiny.vocab_size))
  if source.startswith("tiny-"):
    raise ConfigError(f"model {source!r} has no tokenizer of its own; set "
                      "--config.model.tokenizer=wordpiece (or a tokenizer folder / hub id)")
  from transformers import AutoTokenizer  # pylint: disable=import-outside-toplevel
  try:
    tok = AutoTokenizer.from_pretrained(source, use_fast=True)
    if prefix_space is None:
      prefix_space = model_cfg.roberta_prefix_space
    prefix_space = prefix_space and is_byte_level(tok)
    if prefix_space:
      tok = AutoTokenizer.from_pretrained(source, use_fast=True, add_prefix_space=True)
  except (OSError, ValueError) as e:
    where = "folder" if os.path.isdir(source) else "hub id"
    raise ConfigError(
        f"cannot load the tokenizer of {source!r} ({where}): {str(e).splitlines()[0]}. "
        "Offline, pass a local folder: --config.model.name_or_path=/path/to/folder") from e
  return reference_prefix_space(tok) if prefix_space else tok


def is_byte_level(tok) -> bool:
  """A fast tokenizer whose pre-tokenizer is byte-level BPE's (RoBERTa, GPT-2 and kin)."""
  from tokenizers import pre_tokenizers  # pylint: disable=import-outside-toplevel
  backend = getattr(tok, "backend_tokenizer", None)
  return backend is not None and isinstance(backend.pre_tokenizer, pre_tokenizers.ByteLevel)


def reference_prefix_space(tok):
  """Makes a byte-level fast tokenizer loaded with add_prefix_space=True tokenize each segment
  as transformers 2.5.1's RobertaTokenizer did in the reference (returns `tok`, changed).

  The reference calls tokenizer.encode_plus(text_a, text_b, add_special_tokens=True)
  (examples/bert_stable_fine_tuning/glue.py, line 96). In 2.5.1 `encode_plus` tokenizes each
  segment with `tokenize(text, add_special_tokens=True)` (src/transformers/tokenization_utils.py,
  line 1028), and RobertaTokenizer.prepare_for_tokenization turns add_special_tokens=True into
  add_prefix_space=True: " " + text unless the text starts with whitespace
  (src/transformers/tokenization_roberta.py, lines 234-241). `tokenize` then splits the text on
  the special tokens and right-strips every piece (tokenization_utils.py, line 774), so trailing
  whitespace is dropped before the byte-level BPE. A fast tokenizer loaded with
  add_prefix_space=True adds the space (when the text does not start with one); the right-strip
  is added here as a normalizer, which runs on each segment before pre-tokenization.
  (The RTE, MRPC and CoLA files in ../shared/glue have no leading or trailing whitespace.)
  """
  from tokenizers import normalizers  # pylint: disable=import-outside-toplevel
  backend = tok.backend_tokenizer
  strip = normalizers.Strip(left=False, right=True)
  backend.normalizer = (normalizers.Sequence([backend.normalizer, strip])
                        if backend.normalizer is not None else strip)
  if tok.tokenize("a") != tok.tokenize(" a "):
    raise ConfigError(f"model.roberta_prefix_space: tokenizer {tok.name_or_path!r} "
                      f"({type(tok).__name__}) does not take add_prefix_space; it cannot "
                      "tokenize as transformers 2.5.1's RoBERTa tokenizer did")
  return tok
