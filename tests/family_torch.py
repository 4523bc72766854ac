"""PyTorch's side of tests/test_families.py: transformers' PyTorch classifier of a tiny jaxstab
model, holding the same weights (copied leaf by leaf with a name mapping of its own), and its
loss, logits and per-group gradient norms on one batch."""
import math

import jax
import numpy as np

from tests import guards

# family (the tiny-<family> name) -> (Model.arch, transformers' PyTorch class, backbone key)
FAMILIES = {
    "electra": ("electra", "ElectraForSequenceClassification", "electra"),
    "distilbert": ("distilbert", "DistilBertForSequenceClassification", "distilbert"),
    "xlm-roberta": ("roberta", "XLMRobertaForSequenceClassification", "roberta"),
}
LAYERS = 2  # model.tiny.num_layers (config_lib's default)
GROUPS = ["embeddings"] + [f"layer_{i}" for i in range(LAYERS)] + ["classifier"]
# Backbone kernels and embeddings x3 (std 0.06): the logits then vary over the examples (std
# 0.006 - 0.14) while the model stays well conditioned (x10 drives ELECTRA's embedding gradients
# to ~100 and float32 rounding to 5e-5).
WEIGHT_SCALE = 3.0


def torch_group(name: str, backbone: str) -> str:
  """The probe group of a PyTorch parameter name, written from the PyTorch module names."""
  parts = name.split(".")
  if parts[0] in ("classifier", "pre_classifier"):
    return "classifier"
  assert parts[0] == backbone, name
  if parts[1] in ("embeddings", "embeddings_project"):
    return "embeddings"
  if parts[1:3] in (["encoder", "layer"], ["transformer", "layer"]):
    return f"layer_{int(parts[3])}"
  raise AssertionError(f"no group for torch parameter {name}")


def flax_leaf_of(name: str, flat: dict):
  """The Flax leaf holding PyTorch parameter `name`, in PyTorch layout."""
  *mods, kind = name.split(".")
  for leaf in (("kernel", "scale", "embedding") if kind == "weight" else ("bias",)):
    key = tuple(mods) + (leaf,)
    if key in flat:
      a = np.array(flat[key], np.float32)  # a writable copy
      return key, (a.T if leaf == "kernel" else a)
  raise AssertionError(f"no Flax leaf for {name}")


def torch_twin(model, params, family, cls_name=None):
  """transformers' PyTorch classifier of the same config holding `params` (every leaf once);
  `cls_name` for a family beyond FAMILIES (whose leaves have the same names in both)."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  cls = getattr(transformers, cls_name or FAMILIES[family][1])
  tmodel = cls._from_config(model.config, attn_implementation="eager").eval()  # no dropout
  flat = {tuple(guards._names(p)): v  # pylint: disable=protected-access
          for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  used = set()
  with torch.no_grad():
    for name, p in tmodel.named_parameters():
      key, a = flax_leaf_of(name, flat)
      assert tuple(p.shape) == a.shape, name
      p.copy_(torch.from_numpy(np.ascontiguousarray(a)))
      used.add(key)
  assert used == set(flat), sorted(set(flat) - used)
  return tmodel


def scaled(params):
  """Backbone kernels and embeddings x WEIGHT_SCALE (the same weights go to both sides)."""
  def f(path, x):
    names = guards._names(path)  # pylint: disable=protected-access
    return x * WEIGHT_SCALE if names[-1] in ("kernel", "embedding") else x
  return jax.tree_util.tree_map_with_path(f, params)


def torch_one_batch(tmodel, arrays, backbone, segments: bool):
  import torch  # pylint: disable=import-outside-toplevel
  tb = {k: torch.from_numpy(np.asarray(v).astype(np.int64)) for k, v in arrays.items()}
  kw = dict(input_ids=tb["input_ids"], attention_mask=tb["attention_mask"])
  if segments:
    kw["token_type_ids"] = tb["token_type_ids"]
  tmodel.zero_grad(set_to_none=True)
  logits = tmodel(**kw).logits
  loss = torch.nn.functional.cross_entropy(logits, tb["labels"])
  loss.backward()
  sums = dict.fromkeys(GROUPS, 0.0)
  for name, p in tmodel.named_parameters():
    sums[torch_group(name, backbone)] += float(torch.sum(p.grad.double() ** 2))
  norms = np.sqrt([sums[g] for g in GROUPS])
  return dict(loss=float(loss.detach()), logits=logits.detach().numpy(), group_grad_norm=norms,
              total_grad_norm=math.sqrt(float(np.sum(norms ** 2))))
