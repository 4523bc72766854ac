"""ModernBERT's config, presets, tiny model, study and tokenizer in reference mode (no compile;
the PyTorch parity and the family's behaviour: tests/test_modernbert.py)."""
import os
import types

import pytest

from jaxstab.config import config_lib
from jaxstab.data import vocab
from jaxstab.engine import families, models, modernbert
from jaxstab.infra.errors import ConfigError


def small_config():
  import transformers  # pylint: disable=import-outside-toplevel
  return transformers.ModernBertConfig(vocab_size=400, hidden_size=32, num_hidden_layers=3,
                                       num_attention_heads=4, intermediate_size=48,
                                       pad_token_id=1)


@pytest.mark.parametrize("field,value", [
    ("rope_scaling", {"rope_type": "linear", "factor": 2.0}), ("partial_rotary_factor", 0.5),
    ("head_dim", 16), ("classifier_pooling", "max"), ("hidden_activation", "swish"),
    ("classifier_activation", "mish"), ("global_attn_every_n_layers", 0),
    ("num_attention_heads", 5)])
def test_unimplemented_config_fields_are_refused_by_name(field, value):
  config = small_config()
  setattr(config, field, value)
  with pytest.raises(ConfigError, match=f"ModernBERT config {field}=") as e:
    modernbert.ModernBertClassifier(config, _do_init=False)
  assert "\n" not in str(e.value)


def test_presets_and_the_tiny_model():
  for size in ("base", "large"):
    cfg = config_lib.task_config("rte", f"model=modernbert-{size},setting=ours")
    assert cfg.model.name_or_path == f"answerdotai/ModernBERT-{size}"
    assert cfg.optim.bias_correction and cfg.select == "best"  # the recipe applies as to BERT
  assert families.TINY["tiny-modernbert"] == "modernbert"
  cfg = config_lib.task_config("rte", "model=tiny-modernbert")
  assert cfg.model.tokenizer == "wordpiece"
  kw = families.tiny_config_kwargs("modernbert", cfg.model.tiny, 500, 2,
                                   types.SimpleNamespace(pad_token_id=0, cls_token_id=2,
                                                         sep_token_id=3))
  assert kw["local_attention"] // 2 < cfg.train.max_seq_length  # the window is exercised
  kinds = {modernbert.is_global(i, types.SimpleNamespace(**kw))
           for i in range(cfg.model.tiny.num_layers)}
  assert kinds == {True, False}  # global and local layers both occur


def test_the_models_study_names_both_new_families():
  """configs/study_models.py:models=deberta-v3-large+modernbert-large: the paper's comparison
  (Devlin against the baseline, three tasks) on both new families, by their hub ids."""
  from jaxstab import main  # pylint: disable=import-outside-toplevel
  from jaxstab.study import studies  # pylint: disable=import-outside-toplevel
  path = os.path.join(os.path.dirname(__file__), "..", "configs", "study_models.py")
  settings = dict(studies.expand(main.load_config(
      path + ":models=deberta-v3-large+modernbert-large", [])))
  assert sorted(settings) == sorted(f"{m}_{t}_{s}" for m in ("deberta-v3-large",
                                                             "modernbert-large")
                                    for t in ("rte", "mrpc", "cola") for s in ("devlin", "ours"))
  assert settings["modernbert-large_rte_ours"].model.name_or_path == "answerdotai/ModernBERT-large"


def test_a_byte_level_tokenizer_is_used_as_is_in_reference_mode(glue_dir, tmp_path):
  """ModernBERT's tokenizer is byte-level BPE, RoBERTa's kind, but the reference's RoBERTa
  prefix space (model.roberta_prefix_space, on in reference fidelity) is not for it: inputs.load
  gives the folder's tokenizer unchanged; a RoBERTa still gets the quirk."""
  import transformers  # pylint: disable=import-outside-toplevel
  from tokenizers import ByteLevelBPETokenizer  # pylint: disable=import-outside-toplevel
  from transformers import PreTrainedTokenizerFast  # pylint: disable=import-outside-toplevel
  from jaxstab.data import dataset, tasks  # pylint: disable=import-outside-toplevel
  from jaxstab.engine import inputs  # pylint: disable=import-outside-toplevel
  rte = dataset.load_split(tasks.get_task("rte"), "train", "tsv", glue_dir)
  bpe = ByteLevelBPETokenizer()
  bpe.train_from_iterator(rte.text_a[:50], vocab_size=300, show_progress=False,
                          special_tokens=["[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]"])
  PreTrainedTokenizerFast(tokenizer_object=bpe, cls_token="[CLS]", pad_token="[PAD]",
                          sep_token="[SEP]", unk_token="[UNK]",
                          mask_token="[MASK]").save_pretrained(tmp_path)
  transformers.ModernBertForSequenceClassification(small_config()).save_pretrained(tmp_path)
  cfg = config_lib.task_config("rte", f"model={tmp_path},setting=devlin")
  cfg.data.dir = glue_dir
  assert cfg.model.roberta_prefix_space and vocab.is_byte_level(vocab.load(cfg.model, None))
  loaded = inputs.load(cfg)
  assert loaded.model.arch == "modernbert"
  assert not getattr(loaded.tokenizer, "add_prefix_space", False)
  roberta = config_lib.task_config("rte", "model=tiny-roberta")
  assert models.takes_roberta_prefix_space(roberta.model)


def test_the_models_study_with_the_tiny_versions_passes_the_checks():
  """The offline form of the same study (trained by hand, BUILD_NOTES): every setting passes
  the checks a study makes before its first step, with the tiny models' shapes."""
  from jaxstab import main  # pylint: disable=import-outside-toplevel
  from jaxstab.study import studies, validate  # pylint: disable=import-outside-toplevel
  path = os.path.join(os.path.dirname(__file__), "..", "configs", "study_models.py")
  settings = studies.expand(main.load_config(
      path + ":models=tiny-deberta-v3+tiny-modernbert,tasks=rte", []))
  assert len(settings) == 4
  for name, sub in settings:
    validate.check_config(sub)
    arch, layers = models.shape_of(sub.model)
    validate.check_model(sub, arch, layers)
    assert arch == ("modernbert" if "modernbert" in name else "deberta"), name
