"""Forgetting (the paper's Fig. 2): masked-LM perplexity of fine-tuned encoders after putting back
the pretrained weights of their top k layers, k = 0 ... L, for failed and successful seeds.

The model. A masked-LM model of the same architecture (transformers' Flax *ForMaskedLM) is built
from the setting's model: for a hub id or folder, FlaxAutoModelForMaskedLM.from_pretrained of the
same name_or_path (its MLM head must be in the checkpoint: a checkpoint without one is refused,
never silently given a random head); for a tiny-* model, the MaskedLM class built from the same
transformers config and model.tiny.init_seed, whose encoder weights equal the classifier's
pretrained encoder (checked every run, and in tests). The encoder ("backbone", params['bert'] /
params['roberta']) of a fine-tuned classifier is put into the MLM model in place of the
pretrained one; the classifier's pooler has no counterpart in the MLM model and is dropped, and
the MLM head (params['cls'] / params['lm_head']) stays pretrained. The output embedding of BERT /
RoBERTa's MLM head is tied to the input word embeddings, so it follows whichever word embeddings
the encoder holds (as in PyTorch, where loading fine-tuned embeddings changes the tied decoder).

"Restoring the top k layers" (this module's definition). The encoder of L layers is
[embeddings, layer_0, ..., layer_{L-1}], bottom to top. For k = 0 ... L:
  - layers layer_{L-k} ... layer_{L-1} get their pretrained weights back (k = 0: none);
  - the embeddings are restored together with the last layer, i.e. only at k = L, so that k = L is
    exactly the pretrained encoder and gives the pretrained model's perplexity.
Also recorded per seed: `perplexity_all_layers_finetuned_embeddings`, k = L with the embeddings
left fine-tuned, to show how much the embeddings alone contribute. ALBERT's layers share one set
of weights, so "top k layers" is undefined for it and refused.

Perplexity. The text is tokenized with the setting's tokenizer, concatenated and cut into blocks
of `block_size` tokens with the tokenizer's special tokens around each block (the last block
padded). 15% of the non-special tokens are chosen by a fixed numpy generator (`mask_seed`); as in
BERT's pretraining (and transformers' DataCollatorForLanguageModeling), 80% of those become the
mask token, 10% a random non-special token, 10% stay. The same masked text serves every model.
Perplexity = exp(mean cross-entropy over the chosen tokens), deterministic forward (no dropout),
by one jitted function (lax.map over batches) compiled once per setting.

Command line: python -m jaxstab.forgetting --workdir=DIR [--setting=NAME] [--text=FILE]
(default text: the WikiText-2 raw test split via `datasets`, which needs the network; offline,
--text=FILE is required). Writes <setting dir>/analysis/forgetting.json for the report, which
draws it (jaxstab.report.analyses).
"""
import dataclasses
import hashlib
import math
import os
import sys
import time
from typing import Any, List, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxstab import analysis
from jaxstab.engine import families, models, own_model, precision, probe
from jaxstab.infra import cli, fs
from jaxstab.results import outputs
from jaxstab.analysis.mlm_text import (MASK_PROB, REPLACE, WIKITEXT, batches_of, blocks,
                                        load_wikitext, mask_tokens, read_text)
from jaxstab.infra.errors import ConfigError

DEFAULT_BLOCK = 128
DEFAULT_BATCH = 16
PROBE_SEED = 982_451_653      # random init used to detect weights a checkpoint lacks
DEFINITION = ("k = 0..L: encoder layers L-k..L-1 restored to their pretrained weights; the "
              "embeddings restored too at k = L (so k = L is the pretrained encoder); the "
              "classifier's pooler is dropped; the MLM head is always the pretrained one")


# ------------------------------------------------------------------ model
@dataclasses.dataclass
class MaskedLM:
  flax_model: Any        # transformers Flax *ForMaskedLM, used as a function
  key: str               # the backbone's key: 'bert' | 'roberta'
  head: dict             # the pretrained MLM head params (every top-level key but `key`)
  pretrained: dict       # the pretrained backbone (no pooler)
  source: str            # where the head came from, for the record

  def compose(self, backbone) -> dict:
    return dict(self.head, **{self.key: backbone})


def backbone_of(params, arch: str) -> dict:
  """The encoder of a classifier's params without the pooler (the MLM model has none)."""
  return {k: v for k, v in params[families.family_of(arch).backbone].items() if k != "pooler"}


def _transformers():
  # Deferred, as in models.py: importing transformers takes seconds, and --help, a refused
  # workdir or an ALBERT setting need none of it.
  import transformers  # pylint: disable=import-outside-toplevel
  return transformers


def _mlm_class(arch):
  return families.mlm_class(arch)


def _same_tree(a, b) -> Optional[str]:
  """None when the trees have the same structure and shapes, else a description."""
  fa = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(a)[0]}
  fb = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(b)[0]}
  if set(fa) != set(fb):
    return (f"only in the first: {sorted(set(fa) - set(fb))[:5]}; only in the second: "
            f"{sorted(set(fb) - set(fa))[:5]}")
  bad = [k for k in fa if tuple(fa[k].shape) != tuple(fb[k].shape)]
  return f"shapes differ at {bad[:5]}" if bad else None


def max_abs_diff(a, b) -> float:
  return max((float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
              for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))),
             default=0.0)


def newly_initialised(flax_model, params, seed: int = PROBE_SEED) -> List[str]:
  """Parameters that from_pretrained(seed=`seed`) filled with its random init because the
  checkpoint lacks them. (from_pretrained(_do_init=False) would list them, but fails for PyTorch
  checkpoints in transformers 4.57.) A parameter counts as missing when it equals the random init
  of `seed` and that init is really random there (differs from the init of seed + 1). The seed
  is an odd constant, not 0, so that a checkpoint of a randomly initialised model (a tiny-*
  model saved with its init seed 0) is not mistaken for missing weights."""
  shape = (1, 8)
  r0 = flax_model.init_weights(jax.random.PRNGKey(seed), shape)
  r1 = flax_model.init_weights(jax.random.PRNGKey(seed + 1), shape)
  flat = lambda t: {jax.tree_util.keystr(p): np.asarray(x) for p, x in
                    jax.tree_util.tree_flatten_with_path(dict(t))[0]}
  got, a, b = flat(params), flat(r0), flat(r1)
  return sorted(k for k in got if k in a and k in b and a[k].shape == got[k].shape
                and not np.array_equal(a[k], b[k]) and np.array_equal(got[k], a[k]))


def own_classifier(model):
  """The class of a family whose Flax module is jaxstab's own (own_model.OwnClassifier), else
  None (transformers' classes, with their *ForMaskedLM twins)."""
  _, cls = families.classes(next(iter(model.family.classes)))
  return cls if isinstance(cls, type) and issubclass(cls, own_model.OwnClassifier) else None


def own_family_refusal(own, model, name: str) -> str:
  """Why forgetting is refused for a family of jaxstab's own module, decided from the
  checkpoint's own weight names: with no masked-LM head there is no perplexity to measure;
  with one, jaxstab's module has no masked-LM forward pass yet (BUILD_NOTES, Known gaps)."""
  title = model.family.title
  if name in models.TINY:
    return (f"the forgetting analysis measures masked-LM perplexity, and {name} is a random "
            f"{title} classifier with no masked-LM head")
  found = own.masked_lm_weights(name)
  if not found:
    why = f" ({own.no_mlm_note})" if own.no_mlm_note else ""
    return (f"the checkpoint {name!r} holds no masked-LM head (no weight matches "
            f"{', '.join(own.mlm_head)}){why}: the forgetting analysis measures masked-LM "
            "perplexity, which is undefined for it")
  return (f"the checkpoint {name!r} holds a masked-LM head ({len(found)} weights, e.g. "
          f"{found[0]}), but jaxstab's own {title} module has no masked-LM forward pass yet, "
          "so the forgetting analysis cannot run on it")


def load_mlm(inputs: analysis.SettingInputs) -> MaskedLM:
  """The pretrained masked-LM model matching the setting's classifier (see module docstring)."""
  model, cfg = inputs.model, inputs.cfg
  arch, fam = model.arch, model.family
  if fam.shared_layer:
    raise ConfigError(f"forgetting per layer is undefined for {fam.title}: its layers share one "
                      "set of weights, so the top k layers cannot be restored separately")
  own = own_classifier(model)
  if own is not None and not fam.mlm:  # jaxstab's own module with no masked-LM twin (DeBERTa)
    raise ConfigError(own_family_refusal(own, model, cfg.model.name_or_path))
  if not fam.mlm:  # e.g. ELECTRA's discriminator has no masked-LM head
    with_mlm = " and ".join(f.title for f in families.FAMILIES.values() if f.mlm)
    raise ConfigError(f"the forgetting analysis measures masked-LM perplexity, which jaxstab "
                      f"computes for {with_mlm} models; "
                      f"{cfg.model.name_or_path} is a {arch} model")
  dtype = models.DTYPES[cfg.model.dtype]
  name = cfg.model.name_or_path
  pretrained = backbone_of(model.params, arch)
  if name in models.TINY:
    flax_model = _mlm_class(arch)(model.config, seed=int(cfg.model.tiny.init_seed), dtype=dtype)
    params = flax_model.params
    source = (f"{type(flax_model).__name__} built from the classifier's config with "
              f"model.tiny.init_seed={int(cfg.model.tiny.init_seed)} (random, like the encoder)")
  else:
    tr = _transformers()
    local = os.path.isdir(name)
    from_pt = local and not os.path.isfile(os.path.join(name, "flax_model.msgpack"))
    try:
      if families.is_own(fam.mlm):  # jaxstab's own module reads the PyTorch checkpoint strictly
        flax_model = _mlm_class(arch).from_pretrained(name, config=model.config, dtype=dtype)
      else:
        flax_model = tr.FlaxAutoModelForMaskedLM.from_pretrained(
            name, dtype=dtype, from_pt=from_pt, seed=PROBE_SEED)
    except (OSError, ValueError, KeyError) as e:
      raise ConfigError(f"cannot load a masked-LM model from {name!r} (model.name_or_path): "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    params = flax_model.params
    missing = newly_initialised(flax_model, params)
    if missing:
      raise ConfigError(f"the checkpoint {name!r} lacks masked-LM weights ({len(missing)} "
                        f"parameters were initialised at random, e.g. {missing[:3]}); forgetting "
                        "needs the pretrained MLM head, so it cannot be measured for this "
                        "checkpoint")
    source = f"{type(flax_model).__name__}.from_pretrained({name!r})"
  params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), dict(params))
  key = fam.backbone
  if key not in params:
    raise ConfigError(f"the masked-LM model of {name!r} has no {key!r} backbone "
                      f"(keys: {sorted(params)})")
  problem = _same_tree(params[key], pretrained)
  if problem:
    raise ConfigError(f"the masked-LM encoder of {name!r} does not match the classifier's "
                      f"encoder: {problem}")
  diff = max_abs_diff(params[key], pretrained)
  if diff > 1e-6:
    raise ConfigError(f"the masked-LM encoder of {name!r} differs from the classifier's "
                      f"pretrained encoder (max |diff| {diff:.3g}): not the same weights")
  head = {k: v for k, v in params.items() if k != key}
  return MaskedLM(flax_model, key, head, pretrained, source)


def restore_top_k(finetuned, pretrained, k: int, num_layers: int, arch: str,
                  embeddings_at_l: bool = True):
  """`finetuned` backbone with layers L-k..L-1 (and, at k = L when embeddings_at_l, the
  embeddings) replaced by `pretrained` (see the module docstring)."""
  if not 0 <= k <= num_layers:
    raise ValueError(f"k={k} is outside 0..{num_layers}")
  targets = {f"layer_{i}" for i in range(num_layers - k, num_layers)}
  if k == num_layers and embeddings_at_l:
    targets.add("embeddings")

  def pick(path, ft, pre):
    return pre if probe.group_of(path, arch) in targets else ft
  # group_of reads the path from the top of a classifier tree: wrap the backbone in its key.
  out = jax.tree_util.tree_map_with_path(pick, {arch: finetuned}, {arch: pretrained})
  return out[arch]


def make_nll(flax_model, matmul_precision: str):
  """nll(params, batches) -> (sum of masked-token cross-entropies, number of masked tokens) per
  batch, one jitted program (lax.map over batches, deterministic forward), traced at the
  setting's model.matmul_precision: the models it compares trained at that precision."""

  def nll(params, batches):
    def one(b):
      logits = flax_model(b["input_ids"], attention_mask=b["attention_mask"],
                          token_type_ids=b["token_type_ids"], params=params, train=False).logits
      ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                           b["labels"])
      w = b["weight"]
      return jnp.sum(jnp.where(w > 0, ce, 0.0) * w), jnp.sum(w)
    return jax.lax.map(one, batches)
  return jax.jit(precision.at_precision(nll, matmul_precision))


def perplexity(nll_fn, params, batches) -> float:
  sums, counts = nll_fn(params, batches)
  total = float(np.sum(np.asarray(sums, np.float64)))
  n = float(np.sum(np.asarray(counts, np.float64)))
  return math.exp(total / n)


# ------------------------------------------------------------------ a setting's curves
@dataclasses.dataclass
class Prepared:
  """Everything evaluated per model, built once per setting."""
  mlm: MaskedLM
  nll: Any
  batches: dict
  info: dict

  def perplexity(self, backbone) -> float:
    return perplexity(self.nll, self.mlm.compose(backbone), self.batches)


def prepare(inputs: analysis.SettingInputs, text: str, text_name: str,
            block_size: int = DEFAULT_BLOCK, batch_size: int = DEFAULT_BATCH,
            max_tokens: int = 0, mask_seed: int = 0) -> Prepared:
  mlm = load_mlm(inputs)
  config = inputs.model.config
  offset = inputs.model.family.position_offset(config)
  limit = int(config.max_position_embeddings) - offset
  if block_size > limit:
    raise ConfigError(f"--block_size={block_size} exceeds the {limit} positions of the model")
  arrays = blocks(inputs.tokenizer, text, block_size, max_tokens)
  masked = mask_tokens(arrays, inputs.tokenizer, MASK_PROB, mask_seed)
  info = {"text": text_name, "text_sha1": hashlib.sha1(text.encode("utf-8")).hexdigest(),
          "text_tokens": int(arrays["text_tokens"]), "blocks": int(len(arrays["input_ids"])),
          "block_size": block_size, "masked_tokens": int(masked["weight"].sum()),
          "mask_prob": MASK_PROB, "mask_replace": {"mask": REPLACE[0], "random": REPLACE[1],
                                                   "keep": round(1 - sum(REPLACE), 6)},
          "mask_seed": mask_seed, "max_tokens": max_tokens}
  batches = jax.device_put(batches_of(masked, batch_size))
  nll = make_nll(mlm.flax_model, inputs.cfg.model.matmul_precision)
  return Prepared(mlm, nll, batches, info)


def compute(inputs: analysis.SettingInputs, prepared: Prepared,
            seeds: Optional[List[int]] = None) -> dict:
  """The forgetting curves of `seeds` (default: every seed whose params are kept)."""
  kept = outputs.kept_seeds(inputs.directory)
  seeds = kept if seeds is None else [int(s) for s in seeds]
  missing = [s for s in seeds if s not in kept]
  if not seeds or missing:
    raise ConfigError(f"no kept params for seed(s) {missing or '(none)'} in "
                      f"{inputs.directory}/params (kept: {kept}); train with "
                      "--config.checkpoint.keep_final_params=True")
  model = inputs.model
  arch, num_layers = model.arch, model.num_layers
  t0 = time.time()
  pre = prepared.perplexity(prepared.mlm.pretrained)
  failed = analysis.run_failed(inputs.summary)
  runs = []
  for seed in seeds:
    ft = backbone_of(analysis.final_params(inputs, seed), arch)
    curve = [prepared.perplexity(restore_top_k(ft, prepared.mlm.pretrained, k, num_layers, arch))
             for k in range(num_layers + 1)]
    layers_only = prepared.perplexity(restore_top_k(ft, prepared.mlm.pretrained, num_layers,
                                                    num_layers, arch, embeddings_at_l=False))
    runs.append({"seed": seed, "failed": failed.get(seed), "perplexity": curve,
                 "perplexity_all_layers_finetuned_embeddings": layers_only})
  return {"setting": inputs.name, "task": inputs.task.name, "model": model.name,
          "num_layers": num_layers, "k": list(range(num_layers + 1)), "restores": DEFINITION,
          "mlm_head": prepared.mlm.source, "pretrained_perplexity": pre, **prepared.info,
          "seconds": round(time.time() - t0, 2), "runs": runs}


def save(result: dict, path: str) -> str:
  fs.makedirs(os.path.dirname(path))
  outputs.write_json(path, result)
  return path


# ------------------------------------------------------------------ command line
def run(workdir: str, setting: Optional[str] = None, text_path: Optional[str] = None,
        seeds: Optional[List[int]] = None, **kwargs):
  """Computes and saves forgetting.json for each chosen setting that keeps params."""
  chosen = analysis.select_settings(workdir, setting)
  if not setting:
    chosen = [c for c in chosen if outputs.kept_seeds(c[1])]
    if not chosen:
      raise ConfigError(f"no setting in {workdir} keeps final params; train with "
                        "--config.checkpoint.keep_final_params=True")
  if text_path:
    text, text_name = read_text(text_path), os.path.abspath(text_path)
  else:
    text, text_name = load_wikitext(), "/".join(WIKITEXT)
  done = []
  for name, directory, summary in chosen:
    inputs = analysis.load_setting(name, directory, summary)
    prepared = prepare(inputs, text, text_name, **kwargs)
    result = compute(inputs, prepared, seeds)
    path = save(result, outputs.analysis_path(directory, outputs.FORGETTING))
    by = {True: [], False: []}
    for r in result["runs"]:
      by[bool(r["failed"])].append(r["perplexity"][0])
    print(f"{name}: {path} ({len(result['runs'])} seeds, {result['masked_tokens']} masked tokens, "
          f"{result['seconds']:.1f}s; pretrained perplexity {result['pretrained_perplexity']:.4g}"
          + "".join(f"; k=0 mean {'failed' if f else 'successful'} {np.mean(v):.4g}"
                    for f, v in by.items() if v) + ")")
    done.append((name, path))
  return done


def main(argv=None) -> int:
  parser = cli.parser(
      "jaxstab.forgetting",
      "Masked-LM perplexity of fine-tuned encoders with their top k layers restored to the "
      "pretrained weights; writes <setting dir>/analysis/forgetting.json for the report.")
  analysis.add_workdir_flags(parser)
  parser.add_argument("--text", default=None, help="plain-text file (default: WikiText-2 test "
                      "via `datasets`, needs the network; required offline)")
  parser.add_argument("--block_size", type=int, default=DEFAULT_BLOCK, help="tokens per block")
  parser.add_argument("--batch_size", type=int, default=DEFAULT_BATCH, help="blocks per forward")
  parser.add_argument("--max_tokens", type=int, default=0, help="use only the first N text "
                      "tokens (0 = all)")
  parser.add_argument("--mask_seed", type=int, default=0, help="which tokens are masked")
  parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: all kept)")

  def body(args):
    fs.require_local(args.workdir, parser.prog)
    run(args.workdir, args.setting, args.text, parse_seeds(args.seeds),
        block_size=args.block_size, batch_size=args.batch_size, max_tokens=args.max_tokens,
        mask_seed=args.mask_seed)
  return cli.run(parser, body, argv)


def parse_seeds(text: Optional[str]) -> Optional[List[int]]:
  """--seeds "1,2,1002" as run numbers; None when not given. A bad list is the user's mistake."""
  if not text:
    return None
  try:
    return [int(s) for s in text.split(",") if s.strip()]
  except ValueError:
    raise ConfigError(f"--seeds={text!r}: expected comma-separated run numbers, e.g. "
                      "--seeds=1,2,1002") from None


if __name__ == "__main__":  # the same as python -m jaxstab.forgetting
  sys.exit(main())
