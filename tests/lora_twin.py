"""LoRA against the `peft` library, for any family: jaxstab's all-linear adapters with non-zero A
and B on one batch, and peft's wrapped PyTorch twin holding the same values; the tests of
tests/test_peft.py, tests/test_deberta.py and tests/test_modernbert.py compare the two."""
import jax
import jax.numpy as jnp
import numpy as np

from jaxstab.engine import peft, train as train_lib
from tests import guards

RANK, ALPHA = 4, 8.0   # alpha / r = 2: a dropped scale changes every adapter's output


def lora_cfg(cfg, targets="all-linear", rank=RANK, alpha=ALPHA):
  cfg.peft.method, cfg.peft.targets, cfg.peft.rank, cfg.peft.alpha = "lora", targets, rank, alpha
  return cfg


def at(tree, names):
  for n in names:
    tree = tree[n]
  return tree


def nonzero_adapters(trainable, key):
  """Every lora_A and lora_B replaced by N(0, 0.3) draws: B = 0 would hide a wrong B or scale."""
  flat, treedef = jax.tree_util.tree_flatten_with_path(trainable)
  keys = jax.random.split(key, len(flat))
  out = [0.3 * jax.random.normal(k, x.shape) if guards._names(p)[-1] in peft.LORA_LEAVES else x  # pylint: disable=protected-access
         for (p, x), k in zip(flat, keys)]
  return jax.tree_util.tree_unflatten(treedef, out)


def jax_loss_and_grads(pm, trainable, backbone, arrays):
  batch = {k: jnp.asarray(v) for k, v in arrays.items()}

  def loss_fn(t):
    logits = pm.logits(peft.inputs(pm, t, backbone), batch)
    return train_lib.task_loss(logits, batch["labels"], jnp.ones_like(batch["labels"],
                                                                      jnp.float32)), logits
  (loss, logits), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(trainable)
  return float(loss), np.asarray(logits), grads


def jax_lora_side(cfg, model, params, arrays):
  """jaxstab's all-linear LoRA (RANK, ALPHA) on `params` with non-zero adapters: the trainable
  tree, and the loss, logits and gradients on `arrays`."""
  spec = peft.spec_of(lora_cfg(cfg.copy_and_resolve_references()).peft)
  pm = peft.adapt(model, spec)
  trainable = nonzero_adapters(peft.trainable_of(spec, params, jax.random.PRNGKey(0),
                                                 model.family), jax.random.PRNGKey(1))
  return (trainable, *jax_loss_and_grads(pm, trainable, params, arrays))


def torch_side(torch, wrapped, ours, arrays, segments=True):
  """peft's wrapped model holding jaxstab's trainable values (`ours`: torch name -> (value,
  gradient)), its trained set checked against ours by name; its logits and loss on `arrays`,
  the loss back-propagated; and its parameters by name (their .grad filled). `segments`: the
  model takes token_type_ids (DistilBERT, DeBERTa-v3 and ModernBERT do not)."""
  named = dict(wrapped.named_parameters())
  trained = {n for n, p in named.items() if p.requires_grad}
  assert trained == set(ours), sorted(trained ^ set(ours))
  with torch.no_grad():
    for name, (value, _) in ours.items():
      named[name].copy_(torch.from_numpy(np.array(value, np.float32)))
  tb = guards.torch_batch(arrays)
  t_logits = (guards.torch_logits(wrapped, tb) if segments else
              wrapped(input_ids=tb["input_ids"], attention_mask=tb["attention_mask"]).logits)
  t_loss = torch.nn.functional.cross_entropy(t_logits, tb["labels"])
  t_loss.backward()
  return t_logits.detach().numpy(), float(t_loss.detach()), named


def by_torch_name(trainable, grads, torch_module):
  """jaxstab's trainable leaves and their gradients keyed by the wrapped torch parameter's name,
  both in torch's layout. `torch_module(names)` is the torch module path (a dotted string) of
  a jaxstab module path; head modules are peft's modules_to_save copies, so it returns
  (saved module, rest) for them and a plain string otherwise."""
  ours = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(trainable)[0]:
    names = guards._names(path)  # pylint: disable=protected-access
    g = np.asarray(at(grads, names))
    where = torch_module(names[:-1])
    if names[-1] in peft.LORA_LEAVES:
      ours[f"base_model.model.{where}.{names[-1]}.default.weight"] = (leaf, g)
      continue
    kind = "weight" if names[-1] in ("kernel", "scale") else "bias"
    t = lambda a, kind=kind, leaf=names[-1]: np.asarray(a).T if leaf == "kernel" else np.asarray(a)
    saved, rest = where if isinstance(where, tuple) else (where, "")
    dotted = ".".join(p for p in (saved, "modules_to_save.default" if isinstance(where, tuple)
                                  else "", rest, kind) if p)
    ours[f"base_model.model.{dotted}"] = (t(leaf), t(g))
  return ours


def grad_errors(ours, named):
  """Per tensor ||g_jax - g_torch|| / ||g_torch|| (every torch gradient non-zero)."""
  out = {}
  for name, (_, g) in ours.items():
    tg = named[name].grad.numpy()
    assert np.linalg.norm(tg) > 0, name
    out[name] = float(np.linalg.norm(g - tg) / np.linalg.norm(tg))
  return out
