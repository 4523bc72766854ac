"""Parameter-efficient fine-tuning over one frozen backbone that every seed of a group shares:
LoRA (Hu et al. 2022) and BitFit (Ben Zaken et al. 2022).

Why a group gains: a seed's TrainState.params holds only what that seed trains, the `trainable`
tree, a sparse copy of the model's parameter tree:
- LoRA: `lora_A` [r, in] and `lora_B` [out, r] inside each targeted Dense module's dict (the
  layout of the `peft` library's torch weights, so they copy across as they are), plus the head
  (and the pooler, with peft.train_pooler);
- BitFit: every `bias` leaf of the backbone, LayerNorm's beta included, plus the head. The
  BitFit authors' code (benzakenelad/BitFit, glue_evaluator.py, `BIAS_TERMS_DICT['all'] = 'bias'`
  and `_deactivate_relevant_gradients`) trains every parameter whose name contains "bias": in
  BERT that is each Linear's bias, each LayerNorm's bias (beta) and the pooler's bias, and the
  classifier. LayerNorm's scale (gamma) is not trained.
The paths are the full tree's paths, so the probe's groups, layer-wise lr decay and the weight
decay mask read the trainable tree unchanged.

The backbone (the pretrained parameters with a placeholder head) is one device argument of the
step (Programs.anchor), replicated on each device and never batched over seeds. The forward
pass overlays a seed's trainable leaves on it, and a flax method interceptor adds
(alpha / r) * dropout(x) A^T B^T to each targeted Dense's output, computed as (x A^T) B^T: the
sum W + (alpha / r) B A is never formed, so no per-seed full weight or weight gradient exists in
the compiled step (tests/test_peft.py checks it from the step's memory analysis). `merged` forms
it once, to export a run as ordinary parameters.
"""
import contextlib
import dataclasses
import math
import zlib
from typing import Any, Mapping, Tuple

import jax
import jax.numpy as jnp

from jaxstab.engine import models, probe
from jaxstab.engine.families import Family
from jaxstab.infra import treepath
from jaxstab.infra.errors import ConfigError

METHODS = ("none", "lora", "bitfit")
INITS = ("kaiming", "gaussian")
ALL_LINEAR = "all-linear"
LORA_LEAVES = ("lora_A", "lora_B")
LORA_STREAM = 8          # fold_in stream of the seed key for A (train.py's streams are 0..7)
LORA_DROPOUT_STREAM = 6  # fold_in stream of the step's dropout key for the adapters' dropout


@dataclasses.dataclass(frozen=True)
class Spec:
  """The peft.* keys, resolved (see config_lib: `peft`)."""
  method: str = "none"
  rank: int = 8
  alpha: float = 8.0
  dropout: float = 0.0
  targets: Tuple[str, ...] = ("query", "value")  # Dense module names, or (ALL_LINEAR,)
  init: str = "kaiming"
  train_pooler: bool = False

  @property
  def active(self) -> bool:
    return self.method != "none"

  @property
  def scale(self) -> float:
    """LoRA's alpha / r, as peft scales an adapter (no rsLoRA)."""
    return float(self.alpha) / int(self.rank)

  def to_json(self) -> dict:
    """What summary.json records as `peft`: the method and, for LoRA, its keys."""
    out = {"method": self.method, "train_pooler": self.train_pooler}
    if self.method == "lora":
      out.update(rank=self.rank, alpha=self.alpha, dropout=self.dropout,
                 targets=",".join(self.targets), init=self.init)
    return out


def parse_targets(text: str) -> Tuple[str, ...]:
  return tuple(t.strip() for t in str(text).split(",") if t.strip())


def check(peft_cfg) -> None:
  """The values of the peft.* keys (ConfigError naming the key); the family is check_family's."""
  if peft_cfg.method not in METHODS:
    raise ConfigError(f"peft.method={peft_cfg.method!r}; choose one of {', '.join(METHODS)}")
  if peft_cfg.init not in INITS:
    raise ConfigError(f"peft.init={peft_cfg.init!r}; choose one of {', '.join(INITS)}")
  if isinstance(peft_cfg.rank, bool) or not isinstance(peft_cfg.rank, int) or peft_cfg.rank < 1:
    raise ConfigError(f"peft.rank={peft_cfg.rank!r} must be a whole number >= 1")
  if not peft_cfg.alpha > 0:
    raise ConfigError(f"peft.alpha={peft_cfg.alpha!r} must be positive")
  if not 0.0 <= peft_cfg.dropout < 1.0:
    raise ConfigError(f"peft.dropout={peft_cfg.dropout!r} must be in [0, 1)")
  targets = parse_targets(peft_cfg.targets)
  if not targets or (ALL_LINEAR in targets and len(targets) > 1):
    raise ConfigError(f"peft.targets={peft_cfg.targets!r}: give '{ALL_LINEAR}' or a comma "
                      "list of Dense module names (e.g. 'query,value')")


def spec_of(peft_cfg) -> Spec:
  check(peft_cfg)
  return Spec(peft_cfg.method, int(peft_cfg.rank), float(peft_cfg.alpha),
              float(peft_cfg.dropout), parse_targets(peft_cfg.targets), peft_cfg.init,
              bool(peft_cfg.train_pooler))


def family_targets(spec: Spec, fam: Family) -> Tuple[str, ...]:
  """spec.targets in the family's own module names (BERT's query / key / value through
  Family.linear_roles; (ALL_LINEAR,) unchanged)."""
  return tuple(fam.linear_roles.get(t, t) for t in spec.targets)


def check_family(spec: Spec, fam: Family, name: str) -> None:
  """PEFT needs a family whose record lists its Dense module names; LoRA's targets among them."""
  if not spec.active:
    return
  if not fam.linear_names:
    raise ConfigError(f"peft.method={spec.method!r} is not available for {fam.title} ({name}); "
                      "use peft.method='none'")
  if spec.method == "bitfit" and not fam.bias_terms:
    raise ConfigError(f"peft.method='bitfit' is not available for {fam.title} ({name}): its "
                      "layers have no bias terms, so BitFit would train the head alone; use "
                      "peft.method='lora'")
  if spec.method == "lora" and spec.targets != (ALL_LINEAR,):
    unknown = [t for t, own in zip(spec.targets, family_targets(spec, fam))
               if own not in fam.linear_names]
    if unknown:
      roles = "".join(f", {k} (= {v})" for k, v in fam.linear_roles.items())
      raise ConfigError(f"peft.targets={','.join(spec.targets)!r}: {', '.join(unknown)} is no "
                        f"Dense module of {fam.title}; choose among "
                        f"{', '.join(fam.linear_names)}{roles} or '{ALL_LINEAR}'")


def _is_pooler(names) -> bool:
  return probe.group_of(names, "") == "pooler"


def target_modules(spec: Spec, params, fam: Family):
  """Paths (tuples of names) of the Dense modules that get an adapter, in tree order: every
  backbone module with a 2-D `kernel` whose name is a target (all of them for all-linear: as
  peft's all-linear, every linear layer but the head). A pooler trained fully gets none."""
  out = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = tuple(treepath.names(path))
    if names[0] in fam.head_keys or names[-1] != "kernel" or len(leaf.shape) != 2:
      continue
    if spec.train_pooler and _is_pooler(names):
      continue
    if spec.targets == (ALL_LINEAR,) or names[-2] in family_targets(spec, fam):
      out.append(names[:-1])
  return out


def _get(tree, names):
  for n in names:
    if not isinstance(tree, Mapping) or n not in tree:
      return None
    tree = tree[n]
  return tree


def _put(tree: dict, names, value) -> None:
  for n in names[:-1]:
    tree = tree.setdefault(n, {})
  tree[names[-1]] = value


def trainable_of(spec: Spec, params, key, fam: Family):
  """The part of a seed's starting parameters `params` (backbone + its head) that it trains,
  with fresh adapters: A drawn from the seed (peft's kaiming_uniform(a=sqrt(5)), i.e. U(-1/sqrt(in),
  1/sqrt(in)); or with peft.init=gaussian N(0, 1/r), as peft's 'gaussian'), B zero (jittable)."""
  out: dict = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = tuple(treepath.names(path))
    if (names[0] in fam.head_keys or (spec.train_pooler and _is_pooler(names))
        or (spec.method == "bitfit" and names[-1] == "bias")):
      _put(out, names, leaf)
  if spec.method == "lora":
    lora_key = jax.random.fold_in(key, LORA_STREAM)
    for i, module in enumerate(target_modules(spec, params, fam)):
      d_in, d_out = _get(params, module + ("kernel",)).shape
      k = jax.random.fold_in(lora_key, i)
      if spec.init == "gaussian":
        a = jax.random.normal(k, (spec.rank, d_in), jnp.float32) / spec.rank
      else:
        bound = 1.0 / math.sqrt(d_in)
        a = jax.random.uniform(k, (spec.rank, d_in), jnp.float32, -bound, bound)
      _put(out, module + ("lora_A",), a)
      _put(out, module + ("lora_B",), jnp.zeros((d_out, spec.rank), jnp.float32))
  return out


def overlay(backbone, trainable):
  """The full parameter tree a forward pass reads: `backbone` with the trainable leaves in place
  of its own (adapter leaves left out: the interceptor reads them). Only the trainable leaves are
  new; every other leaf is the backbone's own array, shared by the seeds."""
  out = dict(backbone)
  for k, v in trainable.items():
    if k in LORA_LEAVES:
      continue
    out[k] = overlay(backbone[k], v) if isinstance(v, Mapping) else v
  return out


@contextlib.contextmanager
def adapters(spec: Spec, trainable, dropout_key=None):
  """While active, each Dense whose dict in `trainable` holds lora_A and lora_B adds
  (alpha / r) * (dropout(x) A^T) B^T to its output. `dropout_key` None: no dropout (evaluation).
  The dropout mask of a module is keyed by its path, so it is the same however modules are
  traced."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  scale = spec.scale

  def intercept(next_fun, args, kwargs, context):
    y = next_fun(*args, **kwargs)
    if context.method_name != "__call__" or not isinstance(context.module, nn.Dense):
      return y
    node = _get(trainable, context.module.path)
    if not isinstance(node, Mapping) or "lora_A" not in node:
      return y
    a, b = node["lora_A"], node["lora_B"]
    x = (args[0] if args else kwargs["inputs"]).astype(a.dtype)
    if dropout_key is not None and spec.dropout > 0:
      tag = zlib.crc32("/".join(context.module.path).encode()) & 0x7FFFFFFF
      k = jax.random.fold_in(jax.random.fold_in(dropout_key, LORA_DROPOUT_STREAM), tag)
      keep = jax.random.bernoulli(k, 1.0 - spec.dropout, x.shape)
      x = jnp.where(keep, x / (1.0 - spec.dropout), 0.0)
    return y + (scale * ((x @ a.T) @ b.T)).astype(y.dtype)

  with nn.intercept_methods(intercept):
    yield


def depth_adapters(model, trainable, dropout_key=None):
  """For probe.albert_depth_deltas under LoRA: `inner(delta, group)`, the context in which the
  i-th application of ALBERT's shared layer group sees its adapters shifted by that depth's
  delta, under the group-relative paths its modules have there. None when nothing is adapted."""
  if not is_adapted(model) or model.peft.method != "lora":
    return None
  groups = probe.albert_shared(trainable)

  def inner(delta, group):
    if group not in groups:  # no adapter in this group
      return contextlib.nullcontext()
    return adapters(model.peft, jax.tree_util.tree_map(jnp.add, groups[group], delta),
                    dropout_key)
  return inner


@dataclasses.dataclass
class PeftModel(models.Model):
  """A Model whose forward takes {'trainable': a seed's trainable tree, 'backbone': the shared
  parameters} (`inputs`) in place of the full tree."""
  peft: Spec = Spec()

  def _forward(self, params, batch, train, dropout_key, pass_segment_ids, hidden=False):
    trainable, backbone = params["trainable"], params["backbone"]
    with adapters(self.peft, trainable, dropout_key if train else None):
      return super()._forward(overlay(backbone, trainable), batch, train, dropout_key,
                              pass_segment_ids, hidden)


def adapt(model: models.Model, spec: Spec) -> models.Model:
  """`model` seen through `spec` (a PeftModel), or `model` itself when spec is not active."""
  if not spec.active:
    return model
  check_family(spec, model.family, model.name)
  fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(models.Model)}
  return PeftModel(**fields, peft=spec)


def is_adapted(model) -> bool:
  return isinstance(model, PeftModel)


def record(model) -> dict:
  """What summary.json records as `peft` for a model (adapted or not)."""
  return model.peft.to_json() if is_adapted(model) else {"method": "none"}


def inputs(model, params, shared):
  """What model.logits takes: `params` itself, or for a PeftModel the seed's trainable tree with
  the shared backbone (`shared`: the step's replicated device argument)."""
  return {"trainable": params, "backbone": shared} if is_adapted(model) else params


def start(model, params, key):
  """A seed's starting parameters, as its state holds them: all of `params`, or for a
  PeftModel its trainable part (trainable_of) drawn from the seed `key`."""
  return trainable_of(model.peft, params, key, model.family) if is_adapted(model) else params


def trained_shapes(model) -> Any:
  """The tree a seed trains, as shapes (for probe groups and lr scales): model.params, or for a
  PeftModel the trainable tree."""
  if not is_adapted(model):
    return model.params
  return jax.eval_shape(lambda p: start(model, p, jax.random.PRNGKey(0)), model.params)


def trainable_count(model) -> int:
  return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(trained_shapes(model))))


def merged(spec: Spec, trainable, backbone):
  """The ordinary parameter tree of a PEFT run, for export (a model that knows no PEFT loads it):
  the trainable leaves in place and each adapted kernel [in, out] plus (alpha / r) (B A)^T.
  Called once per export; the train step never forms it."""
  full = jax.tree_util.tree_map(jnp.asarray, overlay(backbone, trainable))

  def walk(node, path):
    if not isinstance(node, Mapping):
      return
    if "lora_A" in node:
      owner = _get(full, path)
      owner["kernel"] = owner["kernel"] + spec.scale * (node["lora_A"].T @ node["lora_B"].T)
      return
    for k, v in node.items():
      walk(v, path + (k,))
  walk(trainable, ())
  return full


def check_stabilisers(spec: Spec, st) -> None:
  """Mixout, re-initialisation and prior weight decay act on the full weights a PEFT run does not
  train; each is refused rather than given a meaning of its own. The later stabilisers (R3F,
  R4F, Child-Tuning, NoisyTune) are refused too: untested on adapters, and NoisyTune's per-seed
  noise on the backbone would end the one backbone a seed group shares."""
  if not spec.active:
    return
  frozen, untested = "it acts on the frozen weights", "it is not yet tested with adapters"
  refused = [(st.mixout > 0, f"stabilisers.mixout={st.mixout}", frozen),
             (st.reinit_layers > 0, f"stabilisers.reinit_layers={st.reinit_layers}", frozen),
             (bool(st.reinit_pooler), "stabilisers.reinit_pooler=True", frozen),
             (bool(st.prior_wd), "stabilisers.prior_wd=True", frozen),
             (bool(st.noisytune), "stabilisers.noisytune=True",
              "its per-seed noise would change the backbone the seeds share"),
             (bool(st.r3f), "stabilisers.r3f=True", untested),
             (bool(st.r4f), "stabilisers.r4f=True", untested),
             (st.child_tuning != "off",
              f"stabilisers.child_tuning={st.child_tuning!r}", untested)]
  for on, what, why in refused:
    if on:
      raise ConfigError(f"{what} is not defined with peft.method={spec.method!r}: {why}; use it "
                        "with peft.method='none'")
