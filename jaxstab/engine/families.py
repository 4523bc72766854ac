"""The encoder families jaxstab handles: one `Family` record each, in the table `FAMILIES`.

A family (`Model.arch`) is how jaxstab treats a model: its probe groups, its head, which
stabilisers are defined for it. A transformers `model_type` maps to one family; XLM-RoBERTa and
CamemBERT are RoBERTas (the same parameter tree, the same head, positions numbered from the
padding id), loaded with their own Flax class where transformers has one.

| family     | head (drawn per seed)       | pooler | segments | shared layer | positions | remat |
|------------|-----------------------------|--------|----------|--------------|-----------|-------|
| bert       | classifier                  | yes    | yes      | no           | from 0    | yes   |
| roberta    | classifier/dense, /out_proj | no     | yes      | no           | pad id +1 | yes   |
| albert     | classifier                  | yes    | yes      | yes          | from 0    | no    |
| electra    | classifier/dense, /out_proj | no     | yes      | no           | from 0    | yes   |
| distilbert | pre_classifier, classifier  | no     | none     | no           | from 0    | no    |
| deberta    | classifier/dense, /out_proj | head   | none     | no           | relative  | yes   |
| modernbert | classifier/dense, /norm, /out_proj | head | none | no          | RoPE      | yes   |

The backbone key of each is its name. Only RoBERTa's transformers head differs from the paper's
reference head; only BERT, RoBERTa and ModernBERT get the forgetting analysis (ELECTRA's
discriminator has no masked-LM head; ALBERT's top layers cannot be restored apart); DistilBERT
runs neither the fused attention nor Mixout of its two-layer head. `remat`: transformers' Flax
classes of ALBERT and DistilBERT have no gradient checkpointing, so train.remat=layers is
refused for them.

DeBERTa-v2/v3 (model_type deberta-v2) is the first family whose Flax module is jaxstab's own
(jaxstab/engine/deberta.py): its record names that class by module path where the others name a
transformers class, and `classes` imports it from there; the class offers the interface of
transformers' Flax classifiers (own_model.OwnClassifier), so nothing else asks which it is. Its
context pooler has no pretrained weights in the public v3 checkpoints, so it is part of the head
drawn per seed (`head_pooler`): stabilisers.reinit_pooler re-draws nothing, as in RoBERTa's
family, so the paper's `reinit` setting runs unchanged.

ModernBERT (model_type modernbert, jaxstab/engine/modernbert.py) is the second: transformers'
`head` (dense, activation, LayerNorm over the pooled tokens) and `classifier` are one head key,
`classifier/{dense, norm, out_proj}`, drawn per seed like DeBERTa's context pooler (`head_pooler`);
its final LayerNorm belongs to the top layer's group. Its masked-LM class (forgetting) is own
too, named by module path in `mlm` (`mlm_class` resolves either kind). Its tokenizer is
byte-level BPE like RoBERTa's, but the reference's RoBERTa tokenization quirk is the RoBERTa
record's alone (`roberta_tokenizer`).

Code asks the record (`family_of(model.arch).shared_layer`, `.segment_ids`, ...), never compares
family names, so adding a family means one record here plus whatever model code it needs (a
probe interception, a head interceptor); tests/test_family_records.py checks each record
against the Flax model built from its tiny config.
"""
import dataclasses
import importlib
from typing import Dict, Mapping, Optional, Tuple

from jaxstab.infra.errors import ConfigError

# model.tiny.* -> the config argument of that size, BERT's names (most families use them).
BERT_SIZES = {"hidden_size": "hidden_size", "num_layers": "num_hidden_layers",
              "num_heads": "num_attention_heads", "intermediate_size": "intermediate_size"}
BERT_DROPOUT = ("hidden_dropout_prob", "attention_probs_dropout_prob")
# transformers' Flax BERT-like layers: attention query/key/value, then `dense` in the attention
# output, the intermediate and the output blocks (and the pooler).
BERT_LINEAR = ("query", "key", "value", "dense")


@dataclasses.dataclass(frozen=True)
class Family:
  """What jaxstab must know about one encoder family; each field replaces a test of its name."""
  name: str                # Model.arch; also the backbone's key in the parameter tree
  title: str               # how error messages name the family
  # transformers model_type -> (config class, Flax sequence-classifier class), looked up on
  # `transformers` only when a model is built (importing it takes seconds). The first entry is
  # the family's own; its built-in tiny model is tiny-<model_type> for each entry.
  # A class name with a module path ('jaxstab.engine.deberta.DebertaV2Classifier') is imported
  # from that module: a family whose Flax module is jaxstab's own (own_model.OwnClassifier).
  classes: Mapping[str, Tuple[str, str]]
  also: Tuple[str, ...] = ()  # model types with no Flax class, loaded with the family's own
  note: str = ""              # said of the family where jaxstab lists what it supports
  # Top-level keys of the head: the layers with no pretrained value, drawn per seed.
  head_keys: Tuple[str, ...] = ("classifier",)
  pooler: bool = True         # a pretrained pooler (probe group `pooler`)
  segment_ids: bool = True    # the Flax classifier takes token_type_ids
  # One layer applied at every depth (ALBERT): per-depth probe norms need interception, and
  # layer-wise decay and re-initialisation of the top layers are undefined.
  shared_layer: bool = False
  positions_after_pad: bool = False  # positions numbered from pad_token_id + 1 (RoBERTa)
  reference_head: bool = False       # the paper's code ran another head than transformers'
  fused_attention: bool = True       # its self-attention is BERT's, so model.attention=xla|cudnn
  dropout_keys: Tuple[str, ...] = BERT_DROPOUT  # config values model.dropout sets
  sizes: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(BERT_SIZES))
  narrow_embeddings: bool = False    # the tiny model's embeddings are half the hidden size
  mlm: Optional[str] = None          # Flax masked-LM class of the forgetting analysis (or path)
  # Its Flax classifier takes `gradient_checkpointing` (each encoder layer under flax's remat),
  # so train.remat=layers can recompute the layers' activations in the backward pass.
  remat: bool = True
  # The pooler has no pretrained value and is part of the head (DeBERTa-v3's context pooler):
  # stabilisers.reinit_pooler has nothing more to re-draw: the head is drawn per seed anyway.
  head_pooler: bool = False
  rotary_positions: bool = False  # RoPE in every layer: no position table (ModernBERT)
  # model.roberta_prefix_space (the reference's RoBERTa tokenization) applies to its
  # tokenizer; another family's byte-level BPE (ModernBERT's) is used as the model was trained.
  roberta_tokenizer: bool = False
  # The module whose output is the token embeddings (the table lookup, before positions and
  # segments are added): where R3F's noise goes (engine/rxf.py).
  token_embeddings: str = "word_embeddings"
  # The head's output projection (the subtree holding its `kernel`, hidden -> labels): what R4F
  # divides by its spectral norm (engine/rxf.py).
  head_out_proj: Tuple[str, ...] = ("classifier",)
  tiny_name: str = ""         # the built-in tiny model of the first model type (else tiny-<type>)
  tiny_config: Mapping[str, object] = dataclasses.field(default_factory=dict)  # its own config
  # The names of the backbone's Dense modules a LoRA adapter may sit beside (peft.targets names
  # some of them; peft.method != 'none' needs the field): empty = no parameter-efficient
  # fine-tuning for the family (jaxstab/engine/peft.py).
  linear_names: Tuple[str, ...] = ()
  # BERT's attention names (query, key, value) -> this family's own, so that peft.targets'
  # default, `query,value`, means the same layers in every family (DistilBERT: q_lin, v_lin,
  # which is also the `peft` library's default there).
  linear_roles: Mapping[str, str] = dataclasses.field(default_factory=dict)
  # Its layers have bias terms (BitFit trains them); False: peft.method=bitfit is refused, as it
  # would train the head alone (ModernBERT's checkpoints have no biases).
  bias_terms: bool = True

  @property
  def backbone(self) -> str:
    return self.name

  @property
  def mixout_head(self) -> bool:
    """stabilisers.mixout_head needs a head that is `classifier` alone: the train step keeps
    only that subtree's initial value as the head's Mixout target."""
    return self.head_keys == ("classifier",)

  def position_offset(self, config) -> int:
    """Positions the model loses before the first token (RoBERTa: padding_idx + 1)."""
    return int(config.pad_token_id or 0) + 1 if self.positions_after_pad else 0

  def describe(self) -> str:
    extra = ([f"also {', '.join(list(self.classes)[1:] + list(self.also))}"]
             if len(self.classes) > 1 or self.also else []) + ([self.note] if self.note else [])
    return self.name + (f" ({'; '.join(extra)})" if extra else "")


FAMILIES: Dict[str, Family] = {f.name: f for f in (
    Family("bert", "BERT", {"bert": ("BertConfig", "FlaxBertForSequenceClassification")},
           mlm="FlaxBertForMaskedLM", linear_names=BERT_LINEAR),
    Family("roberta", "RoBERTa / XLM-RoBERTa",
           {"roberta": ("RobertaConfig", "FlaxRobertaForSequenceClassification"),
            "xlm-roberta": ("XLMRobertaConfig", "FlaxXLMRobertaForSequenceClassification")},
           also=("camembert",), pooler=False, roberta_tokenizer=True,
           positions_after_pad=True, reference_head=True, mlm="FlaxRobertaForMaskedLM",
           head_out_proj=("classifier", "out_proj"), linear_names=BERT_LINEAR),
    # ALBERT has an MLM head, but forgetting restores layers one by one: refused (shared_layer).
    Family("albert", "ALBERT", {"albert": ("AlbertConfig", "FlaxAlbertForSequenceClassification")},
           shared_layer=True, dropout_keys=BERT_DROPOUT + ("classifier_dropout_prob",),
           narrow_embeddings=True, remat=False,
           # the shared layer's adapters are shared too, one per module as in peft
           linear_names=("query", "key", "value", "dense", "ffn", "ffn_output",
                         "embedding_hidden_mapping_in", "pooler")),
    # The head falls back to hidden_dropout_prob only when classifier_dropout is None. Small
    # ELECTRAs project narrower embeddings up (embeddings_project); the tiny one has it too.
    Family("electra", "ELECTRA",
           {"electra": ("ElectraConfig", "FlaxElectraForSequenceClassification")},
           note="discriminator", pooler=False,
           dropout_keys=BERT_DROPOUT + ("classifier_dropout",), narrow_embeddings=True,
           head_out_proj=("classifier", "out_proj"),
           linear_names=BERT_LINEAR + ("embeddings_project",)),
    # `pre_classifier` (dense + ReLU on the first token) does the pooler's job but is not in the
    # pretrained checkpoint, so it is head. `classifier` comes first: init_head draws it from the
    # seed's head key itself. Its config names sizes and dropouts its own way.
    Family("distilbert", "DistilBERT",
           {"distilbert": ("DistilBertConfig", "FlaxDistilBertForSequenceClassification")},
           head_keys=("classifier", "pre_classifier"), pooler=False, segment_ids=False,
           fused_attention=False, remat=False,
           linear_names=("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"),
           linear_roles={"query": "q_lin", "key": "k_lin", "value": "v_lin"},
           dropout_keys=("dropout", "attention_dropout", "seq_classif_dropout"),
           sizes={"hidden_size": "dim", "num_layers": "n_layers", "num_heads": "n_heads",
                  "intermediate_size": "hidden_dim"}),
    # jaxstab's own Flax module. Its tiny model has v3's layout (relative attention with both
    # position terms through shared projections, LayerNormed relative embeddings, no absolute
    # positions, no segments) with 32 buckets, so the log buckets are used beyond 16 tokens.
    Family("deberta", "DeBERTa-v2/v3",
           {"deberta-v2": ("DebertaV2Config", "jaxstab.engine.deberta.DebertaV2Classifier")},
           note="v3 layout; jaxstab's own Flax module", pooler=False, segment_ids=False,
           fused_attention=False, head_pooler=True, tiny_name="tiny-deberta-v3",
           head_out_proj=("classifier", "out_proj"),
           linear_names=("query_proj", "key_proj", "value_proj", "dense"),
           linear_roles={"query": "query_proj", "key": "key_proj", "value": "value_proj"},
           dropout_keys=BERT_DROPOUT + ("pooler_dropout", "cls_dropout"),
           tiny_config=dict(relative_attention=True, position_buckets=32,
                            max_relative_positions=-1, pos_att_type=["p2c", "c2p"],
                            share_att_key=True, norm_rel_ebd="layer_norm",
                            position_biased_input=False, type_vocab_size=0, layer_norm_eps=1e-7,
                            cls_dropout=None)),
    # jaxstab's own Flax module. No pretrained pooler: transformers' `head` (dense, activation,
    # LayerNorm) and the output layer are both drawn per seed under `classifier`. Its tiny
    # model alternates global and local layers (every 2nd global) with a 16-token window, so
    # real RTE pairs exceed it.
    Family("modernbert", "ModernBERT",
           {"modernbert": ("ModernBertConfig",
                           "jaxstab.engine.modernbert.ModernBertClassifier")},
           note="jaxstab's own Flax module", pooler=False, segment_ids=False,
           fused_attention=False, head_pooler=True, rotary_positions=True,
           mlm="jaxstab.engine.modernbert.ModernBertMaskedLM", token_embeddings="tok_embeddings",
           head_out_proj=("classifier", "out_proj"),
           # q, k and v come from one fused Wqkv: query, key and value each mean all three.
           linear_names=("Wqkv", "Wo", "Wi"), bias_terms=False,
           linear_roles={"query": "Wqkv", "key": "Wqkv", "value": "Wqkv"},
           dropout_keys=("embedding_dropout", "attention_dropout", "mlp_dropout",
                         "classifier_dropout"),
           tiny_config=dict(global_attn_every_n_layers=2, local_attention=16,
                            global_rope_theta=160000.0, local_rope_theta=10000.0,
                            classifier_pooling="mean", norm_bias=False, attention_bias=False,
                            mlp_bias=False, classifier_bias=False)),
)}

ARCHS = tuple(FAMILIES)

# transformers model_type -> family.
MODEL_TYPES = {t: f.name for f in FAMILIES.values() for t in list(f.classes) + list(f.also)}

# Built-in tiny random models: name -> model_type (sized by the tokenizer and model.tiny.*).
TINY = {(f.tiny_name if f.tiny_name and i == 0 else f"tiny-{t}"): t
        for f in FAMILIES.values() for i, t in enumerate(f.classes)}

# Every family's head keys, `classifier` first (init_head draws key i from fold_in(key, i), i > 0).
HEAD_KEYS = tuple(sorted(dict.fromkeys(k for f in FAMILIES.values() for k in f.head_keys),
                         key=lambda k: k != "classifier"))


def supported() -> str:
  return ", ".join(f.describe() for f in FAMILIES.values())


def arch_of_type(model_type: str, name: str = "") -> str:
  if model_type not in MODEL_TYPES:
    which = f"model {name!r} (model.name_or_path) has" if name else "this model has"
    raise ConfigError(f"{which} model type {model_type!r}, which jaxstab does not support; it "
                      f"handles the encoder families {supported()}")
  return MODEL_TYPES[model_type]


def arch_of(config, name: str = "") -> str:
  return arch_of_type(getattr(config, "model_type", ""), name)


def family_of(config_or_type, name: str = "") -> Family:
  """The record of a family name (Model.arch), a transformers model_type or a config."""
  key = (config_or_type if isinstance(config_or_type, str)
         else getattr(config_or_type, "model_type", ""))
  return FAMILIES[key] if key in FAMILIES else FAMILIES[arch_of_type(key, name)]


def classes(model_type: str):
  """(config class, Flax sequence-classifier class) of a supported model_type."""
  import transformers as tr  # pylint: disable=import-outside-toplevel  # heavy; only when needed
  fam = family_of(model_type)
  config_cls, model_cls = fam.classes.get(model_type) or next(iter(fam.classes.values()))
  return getattr(tr, config_cls), _class_named(model_cls)


def is_own(class_name: str) -> bool:
  """A class named by module path is jaxstab's own (own_model.OwnClassifier)."""
  return "." in class_name


def _class_named(name: str):
  if is_own(name):  # jaxstab's own module (an engine module: imported only when needed)
    module, _, cls = name.rpartition(".")
    return getattr(importlib.import_module(module), cls)
  import transformers as tr  # pylint: disable=import-outside-toplevel
  return getattr(tr, name)


def mlm_class(arch: str):
  """The Flax masked-LM class of a family (the forgetting analysis), transformers' or own."""
  return _class_named(family_of(arch).mlm)


def dropout_overrides(arch: str, p: float) -> dict:
  """Config values that set every dropout of a family's classifier to p (model.dropout)."""
  return {k: p for k in family_of(arch).dropout_keys}


def tiny_config_kwargs(model_type: str, tiny, vocab_size: int, num_labels: int, tokenizer) -> dict:
  """Config arguments of a tiny random model of `model_type` sized by model.tiny (`tiny`)."""
  fam = family_of(model_type)
  kw = {fam.sizes[k]: getattr(tiny, k) for k in BERT_SIZES}
  kw.update(vocab_size=vocab_size, max_position_embeddings=tiny.max_position_embeddings,
            num_labels=num_labels, pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)
  if fam.segment_ids:
    kw["type_vocab_size"] = 2
  if fam.narrow_embeddings:
    # Narrower embeddings than the hidden size: ALBERT's factorisation, and ELECTRA's
    # `embeddings_project` (small ELECTRAs have it; base and large do not), so both are tested.
    kw["embedding_size"] = max(tiny.hidden_size // 2, 8)
  kw.update(fam.tiny_config)
  return kw
