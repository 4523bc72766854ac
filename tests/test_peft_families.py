"""LoRA on jaxstab's own Flax modules, DeBERTa-v3 and ModernBERT, against the `peft` library on
transformers' PyTorch classes holding the same weights (saved with save_pretrained and loaded by
models.load, as a user's folder is): all-linear adapters with the same non-zero A and B, the
head trained whole as peft's modules_to_save trains it. Logits, loss and the gradient of every
A, B and head tensor agree to float32 rounding. Also: what `query,value` means on each, and
BitFit refused on ModernBERT (no bias terms)."""
import copy

import jax
import numpy as np
import pytest

from jaxstab.config import config_lib
from jaxstab.engine import models, peft
from jaxstab.infra.errors import ConfigError
from jaxstab.study import validate
from tests import lora_twin, test_deberta, test_modernbert
from tests.helpers import tiny_setup

N, LENGTH = 8, 64
# Bounds ~10x the worst error measured (float32, 2 CPU cores, tests' compile mode; `pytest -s`
# prints them): logits 2.0e-6 (DeBERTa-v3) and 1.4e-6 (ModernBERT); loss 0 and 1.2e-7
# relative; per tensor gradient 8.7e-6 (layer 1's value_proj lora_A) and 1.4e-5 (layer 0's
# Wqkv lora_A).
LOGITS_ATOL = 2e-5
LOSS_RTOL = 1.5e-6
GRAD_RTOL = 1.5e-4


def _deberta_module(names):
  if names[0] == "classifier":  # jaxstab's head: transformers' pooler.dense and classifier
    return ("pooler", "dense") if names[1] == "dense" else ("classifier", "")
  return ".".join(names)


def _modernbert_module(names):
  if names[0] == "classifier":  # jaxstab's head: transformers' head (dense, norm) and classifier
    return ("head", names[1]) if names[1] != "out_proj" else ("classifier", "")
  assert names[:2] == ["modernbert", "layer"], names
  return ".".join(["model", "layers"] + list(names[2:]))


# family -> (transformers class, its config, jaxstab -> torch module path, peft's LoraConfig
# targets and saved modules, the adapted module names `query,value` means)
CASES = {
    "deberta-v3": ("DebertaV2ForSequenceClassification",
                   lambda tiny: __import__("transformers").DebertaV2Config(
                       vocab_size=tiny.config.vocab_size, pad_token_id=tiny.config.pad_token_id,
                       **test_deberta.V3_LAYOUT),
                   _deberta_module,
                   dict(target_modules=r"deberta\.encoder\.layer\.\d+\..*"
                                       r"(query_proj|key_proj|value_proj|dense)",
                        modules_to_save=["pooler"]),
                   {"query_proj", "value_proj"}),
    "modernbert": ("ModernBertForSequenceClassification",
                   lambda tiny: test_modernbert.torch_config(
                       tiny.config.vocab_size, tiny.config.pad_token_id, "mean"),
                   _modernbert_module,
                   dict(target_modules=r"model\.layers\.\d+\.(attn|mlp)\.(Wqkv|Wo|Wi)",
                        modules_to_save=["head"]),
                   {"Wqkv"}),
}


@pytest.mark.parametrize("family", list(CASES))
def test_lora_matches_the_peft_library(family, glue_dir, require, tmp_path):
  torch, peft_lib = require("torch"), require("peft")
  import transformers  # pylint: disable=import-outside-toplevel
  cls, torch_config, torch_module, targets, qv = CASES[family]
  cfg, tiny, arrays = tiny_setup(glue_dir, family, n=N, length=LENGTH)
  torch.manual_seed(0)
  tmodel = getattr(transformers, cls)(torch_config(tiny)).eval()
  with torch.no_grad():  # away from the init, so that every weight matters
    for name, p in tmodel.named_parameters():
      _ = p.add_(0.2 * torch.randn_like(p)) if "norm" in name.lower() else p.mul_(3.0)
  tmodel.save_pretrained(tmp_path)
  loaded = config_lib.task_config("rte", f"model={tmp_path},fidelity=corrected")
  loaded.model.dropout = 0.0
  model = models.load(loaded.model, 2)
  params = models.init_head(model.params, jax.random.PRNGKey(11), 0.02)
  params["classifier"] = jax.tree_util.tree_map(lambda x: 10.0 * x if x.ndim == 2 else x,
                                                params["classifier"])
  trainable, loss, logits, grads = lora_twin.jax_lora_side(cfg, model, params, arrays)
  wrapped = peft_lib.get_peft_model(copy.deepcopy(tmodel), peft_lib.LoraConfig(
      task_type="SEQ_CLS", r=lora_twin.RANK, lora_alpha=lora_twin.ALPHA, lora_dropout=0.0,
      **targets)).eval()
  ours = lora_twin.by_torch_name(trainable, grads, torch_module)
  t_logits, t_loss, named = lora_twin.torch_side(torch, wrapped, ours, arrays, segments=False)
  assert np.min(np.std(logits, 0)) > 1e-3  # the examples' logits differ
  errors = lora_twin.grad_errors(ours, named)
  worst = max(errors, key=errors.get)
  print(f"\nLoRA parity ({family}): logits {np.max(np.abs(logits - t_logits)):.2g}, loss "
        f"{abs(loss - t_loss) / t_loss:.2g}, grads {errors[worst]:.2g} ({worst})")
  np.testing.assert_allclose(logits, t_logits, rtol=0, atol=LOGITS_ATOL)
  assert abs(loss - t_loss) <= LOSS_RTOL * abs(t_loss)
  assert errors[worst] <= GRAD_RTOL, (worst, errors[worst])
  # every layer's linear modules are adapted, none of the head's
  assert sum(n.endswith("lora_A.default.weight") for n in ours) == sum(
      1 for n, _ in tmodel.named_modules() if peft_lib.tuners.tuners_utils.check_target_module_exists(
          peft_lib.LoraConfig(**targets), n))
  # `query,value` (peft.targets' default) in the family's own names
  default = peft.target_modules(peft.Spec(method="lora"), params, model.family)
  assert {m[-1] for m in default} == qv and len(default) == len(qv) * model.num_layers, default


def test_bitfit_is_refused_where_layers_have_no_biases():
  cfg = config_lib.task_config("rte", "model=tiny-modernbert")
  cfg.peft.method = "bitfit"
  with pytest.raises(ConfigError, match=r"^peft.method='bitfit' is not available for ModernBERT"
                                        r" \(tiny-modernbert\): its layers have no bias terms"):
    validate.check_model(cfg, "modernbert", 2)
  cfg = config_lib.task_config("rte", "model=tiny-deberta-v3")
  cfg.peft.method = "bitfit"
  validate.check_model(cfg, "deberta", 2)  # DeBERTa has biases: accepted
