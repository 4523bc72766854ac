"""The encoder families jaxstab handles, and what differs between them, in one table.

A family (`Model.arch`) is how jaxstab treats a model: its probe groups, its head, which
stabilisers are defined for it. A transformers `model_type` maps to one family; XLM-RoBERTa and
CamemBERT are RoBERTas (the same parameter tree, the same head, positions numbered from the
padding id), loaded with their own Flax class where transformers has one.

| family     | backbone key | head (drawn per seed)            | pooler | segment ids |
|------------|--------------|----------------------------------|--------|-------------|
| bert       | bert         | classifier                       | yes    | yes         |
| roberta    | roberta      | classifier/dense, /out_proj      | no     | yes         |
| albert     | albert       | classifier                       | yes    | yes         |
| electra    | electra      | classifier/dense, /out_proj      | no     | yes         |
| distilbert | distilbert   | pre_classifier, classifier       | no     | none        |
"""
from jaxstab.infra.errors import ConfigError

ARCHS = ("bert", "roberta", "albert", "electra", "distilbert")

# transformers model_type -> family.
MODEL_TYPES = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta",
               "camembert": "roberta", "albert": "albert", "electra": "electra",
               "distilbert": "distilbert"}

# Built-in tiny random models: name -> model_type (sized by the tokenizer and model.tiny.*).
TINY = {"tiny-bert": "bert", "tiny-roberta": "roberta", "tiny-xlm-roberta": "xlm-roberta",
        "tiny-albert": "albert", "tiny-electra": "electra", "tiny-distilbert": "distilbert"}

# The top-level keys of the classification head: the layers with no pretrained value, which
# models.init_head draws per seed and the probe counts as `classifier`. DistilBERT's
# `pre_classifier` (dense + ReLU on the first token) is its pooler's counterpart but is not part
# of the pretrained checkpoint, so it belongs to the head, like RoBERTa's classifier/dense.
HEAD_KEYS = ("classifier", "pre_classifier")

# Families whose Flax classifier takes no token_type_ids argument.
NO_SEGMENT_IDS = ("distilbert",)


def supported() -> str:
  return ("bert, roberta (also xlm-roberta, camembert), albert, electra (discriminator), "
          "distilbert")


def arch_of_type(model_type: str, name: str = "") -> str:
  if model_type not in MODEL_TYPES:
    which = f"model {name!r} (model.name_or_path) has" if name else "this model has"
    raise ConfigError(f"{which} model type {model_type!r}, which jaxstab does not support; it "
                      f"handles the encoder families {supported()}")
  return MODEL_TYPES[model_type]


def arch_of(config, name: str = "") -> str:
  return arch_of_type(getattr(config, "model_type", ""), name)


def classes(model_type: str):
  """(config class, Flax sequence-classifier class) of a supported model_type."""
  import transformers as tr  # pylint: disable=import-outside-toplevel  # heavy; only when needed
  table = {"bert": (tr.BertConfig, tr.FlaxBertForSequenceClassification),
           "roberta": (tr.RobertaConfig, tr.FlaxRobertaForSequenceClassification),
           "xlm-roberta": (tr.XLMRobertaConfig, tr.FlaxXLMRobertaForSequenceClassification),
           "albert": (tr.AlbertConfig, tr.FlaxAlbertForSequenceClassification),
           "electra": (tr.ElectraConfig, tr.FlaxElectraForSequenceClassification),
           "distilbert": (tr.DistilBertConfig, tr.FlaxDistilBertForSequenceClassification)}
  if model_type in table:
    return table[model_type]
  return table[arch_of_type(model_type)]  # camembert: transformers has no Flax class; a RoBERTa


def dropout_overrides(arch: str, p: float) -> dict:
  """Config values that set every dropout of a family's classifier to p (model.dropout)."""
  if arch == "distilbert":
    return dict(dropout=p, attention_dropout=p, seq_classif_dropout=p)
  kw = dict(hidden_dropout_prob=p, attention_probs_dropout_prob=p)
  if arch == "albert":
    kw["classifier_dropout_prob"] = p
  if arch == "electra":
    kw["classifier_dropout"] = p  # its head falls back to hidden_dropout_prob only when None
  return kw


def tiny_config_kwargs(model_type: str, tiny, vocab_size: int, num_labels: int, tokenizer) -> dict:
  """Config arguments of a tiny random model of `model_type` sized by model.tiny (`tiny`)."""
  arch = arch_of_type(model_type)
  specials = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
                  eos_token_id=tokenizer.sep_token_id)
  if arch == "distilbert":  # its config uses its own names (dim, n_layers, ...); no segment ids
    return dict(vocab_size=vocab_size, dim=tiny.hidden_size, n_layers=tiny.num_layers,
                n_heads=tiny.num_heads, hidden_dim=tiny.intermediate_size,
                max_position_embeddings=tiny.max_position_embeddings, num_labels=num_labels,
                **specials)
  kw = dict(vocab_size=vocab_size, hidden_size=tiny.hidden_size,
            num_hidden_layers=tiny.num_layers, num_attention_heads=tiny.num_heads,
            intermediate_size=tiny.intermediate_size,
            max_position_embeddings=tiny.max_position_embeddings, num_labels=num_labels,
            type_vocab_size=2, **specials)
  if arch in ("albert", "electra"):
    # Narrower embeddings than the hidden size: ALBERT's factorisation, and ELECTRA's
    # `embeddings_project` (small ELECTRAs have it; base and large do not), so both are tested.
    kw["embedding_size"] = max(tiny.hidden_size // 2, 8)
  return kw
