"""The checks that guard against specific bugs, shared by the tests and tests/test_planted_bugs.py.

Each `check_*` measures errors, compares each with a bound set from what float32 rounding allows
for that quantity (the measured figure is written beside every bound; the margin is about 10x),
raises `GuardFailed` when one is exceeded, and returns the measured errors as
{quantity: (error, bound)}. The ordinary tests call these functions on healthy code; the
planted-bug tests call the very same functions with one bug planted and require each guard to
fail by at least 10x its bound, so the checks and the proof that they catch something cannot
drift apart.
"""
import functools
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

REPO = Path(__file__).resolve().parents[1]


class GuardFailed(AssertionError):
  """A guard's error exceeded its bound; `errors` holds every {quantity: (error, bound)}."""

  def __init__(self, guard: str, errors: dict):
    self.guard, self.errors = guard, errors
    bad = {k: v for k, v in errors.items() if not v[0] <= v[1]}
    super().__init__(f"{guard}: " + "; ".join(f"{k} = {e:.3g} > bound {b:.3g}"
                                              for k, (e, b) in bad.items()))


def enforce(guard: str, errors: dict) -> dict:
  """Raises GuardFailed if any error exceeds its bound (NaN counts as exceeding); else returns."""
  errors = {k: (float(e), float(b)) for k, (e, b) in errors.items()}
  if not all(e <= b for e, b in errors.values()):
    raise GuardFailed(guard, errors)
  return errors


def margin(errors: dict):
  """(quantity, error, bound, error / bound) of the quantity that exceeds its bound the most;
  a bound of 0 (exact equality) gives an infinite ratio for any nonzero error."""
  def ratio(e, b):
    if not np.isfinite(e):
      return math.inf
    return e / b if b > 0 else (math.inf if e > 0 else 0.0)
  q = max(errors, key=lambda k: ratio(*errors[k]))
  e, b = errors[q]
  return q, e, b, ratio(e, b)


def rel_max(a, b) -> float:
  """max |a - b| / |b| over elements, in float64."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b) / np.abs(b)))


def tree_max_abs_diff(a, b) -> float:
  return max((float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
              for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))),
             default=0.0)


def _names(path):
  return [str(getattr(k, "key", getattr(k, "name", k))) for k in path]


# ==================================================================== 1. PyTorch parity, one batch
# jaxstab's Flax MiniLM (6 layers, hidden 384) against transformers' PyTorch BERT on the same
# weights: 8 RTE / MRPC dev pairs of length 128, float32, dropout off.

MINILM_GROUPS = ["embeddings"] + [f"layer_{i}" for i in range(6)] + ["pooler", "classifier"]
MINILM_LABELS = 2

# Measured on 2 CPU cores (RTE head seed 11 / MRPC head seed 12 / segment-id quirk):
ONE_BATCH_BOUNDS = {
    "logits": 5e-7,           # max |d logit|: 3.0e-8 / 4.8e-8 / 3.9e-8 (logits ~ 0.05)
    "loss": 1e-6,             # |d loss| / loss: 8.6e-8 / 8.6e-8
    "group_grad_norm": 2e-6,  # max over the 9 groups of |d norm| / norm: 1.2e-7 / 1.8e-7
    "total_grad_norm": 1e-6,  # |d norm| / norm: 2.8e-8 / 7.4e-8
}


@functools.lru_cache(maxsize=None)
def minilm(model_dir: str) -> dict:
  """jaxstab's config, tokenizer and Flax MiniLM classifier (dropout 0), loaded once a session.
  Tests that plant a bug in model.config restore it (monkeypatch) before the next user."""
  from jaxstab.config import config_lib  # pylint: disable=import-outside-toplevel
  from jaxstab.engine import models, probe  # pylint: disable=import-outside-toplevel
  from jaxstab.data import vocab  # pylint: disable=import-outside-toplevel
  cfg = config_lib.task_config("rte", f"model={model_dir}")
  cfg.model.dropout = 0.0
  tok = vocab.load(cfg.model, None)
  model = models.load(cfg.model, MINILM_LABELS, tok)
  assert model.arch == "bert" and model.num_layers == 6
  assert probe.group_names(model.params, model.arch, model.num_layers) == MINILM_GROUPS
  return dict(cfg=cfg, tok=tok, model=model)


def glue_examples(glue_dir, task, split, n, tok, length):
  from jaxstab.data import dataset, tasks  # pylint: disable=import-outside-toplevel
  s = dataset.load_split(tasks.get_task(task), split, "tsv", glue_dir)
  s = dataset.Split(s.text_a[:n], s.text_b[:n] if s.text_b else None, s.labels[:n])
  return dataset.tokenize(s, tok, length)


def jax_one_batch(model, params, arrays) -> dict:
  """Loss, logits, per-group and total gradient norms of one batch through jaxstab's model and
  probe. Compiled afresh on every call, so a bug planted in the model's config takes effect."""
  import optax  # pylint: disable=import-outside-toplevel
  from jaxstab.engine import probe, train as train_lib  # pylint: disable=import-outside-toplevel

  def loss_and_logits(p, batch):
    logits = model.logits(p, batch, train=False)
    weight = jnp.ones(logits.shape[:1], jnp.float32)
    return train_lib.weighted_xent(logits, batch["labels"], weight), logits

  groups = probe.group_names(params, model.arch, model.num_layers)
  (loss, logits), grads = jax.jit(jax.value_and_grad(loss_and_logits, has_aux=True))(
      params, {k: jnp.asarray(v) for k, v in arrays.items()})
  return dict(loss=float(loss), logits=np.asarray(logits),
              group_grad_norm=np.asarray(probe.group_norms(grads, model.arch, groups)),
              total_grad_norm=float(optax.global_norm(grads)))


def check_parity_one_batch(jax_out: dict, torch_out: dict) -> dict:
  """jaxstab vs PyTorch on one batch: the quantities both sides computed (see jax_one_batch)."""
  errors = {}
  for q in ("logits", "loss", "group_grad_norm", "total_grad_norm"):
    if q not in jax_out or q not in torch_out:
      continue
    a, b = np.asarray(jax_out[q], np.float64), np.asarray(torch_out[q], np.float64)
    err = float(np.max(np.abs(a - b))) if q == "logits" else rel_max(a, b)
    errors[q] = (err, ONE_BATCH_BOUNDS[q])
  return enforce("PyTorch parity on one batch", errors)


# PyTorch side (torch is imported on first use only).

_LEAF = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}


def jax_as_torch(params):
  """{PyTorch parameter name: float32 array in PyTorch layout} for a Flax BERT parameter tree."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = _names(path)
    a = np.array(leaf, np.float32)
    out[".".join(names[:-1] + [_LEAF[names[-1]]])] = a.T if names[-1] == "kernel" else a
  return out  # (Flax Dense kernels are [in, out]; torch Linear weights are [out, in])


def torch_group(name: str) -> str:
  """bert.embeddings.* -> embeddings, bert.encoder.layer.{i}.* -> layer_i, bert.pooler.* ->
  pooler, classifier.* -> classifier."""
  parts = name.split(".")
  if parts[0] == "classifier":
    return "classifier"
  if parts[:2] == ["bert", "embeddings"]:
    return "embeddings"
  if parts[:3] == ["bert", "encoder", "layer"]:
    return f"layer_{int(parts[3])}"
  if parts[:2] == ["bert", "pooler"]:
    return "pooler"
  raise AssertionError(f"no probe group for torch parameter {name}")


def torch_group_norms(tmodel, groups=tuple(MINILM_GROUPS)):
  import torch  # pylint: disable=import-outside-toplevel
  sums = dict.fromkeys(groups, 0.0)
  for name, p in tmodel.named_parameters():
    sums[torch_group(name)] += float(torch.sum(p.grad.double() ** 2))
  return np.sqrt(np.array([sums[g] for g in groups]))


def copy_into_torch(tmodel, src, prefix=""):
  """Copies `src` (torch name -> array, see jax_as_torch) into the PyTorch model's parameters
  whose names start with `prefix`."""
  import torch  # pylint: disable=import-outside-toplevel
  tparams = dict(tmodel.named_parameters())
  assert set(src) == set(tparams), sorted(set(src) ^ set(tparams))
  with torch.no_grad():
    for name, p in tparams.items():
      if name.startswith(prefix):
        assert tuple(p.shape) == src[name].shape, name
        p.copy_(torch.from_numpy(src[name]))


def new_torch_bert(model_dir):
  import transformers  # pylint: disable=import-outside-toplevel
  tmodel = transformers.BertForSequenceClassification.from_pretrained(
      model_dir, num_labels=MINILM_LABELS, attn_implementation="eager")
  return tmodel.eval()  # dropout off (gradients still flow)


def torch_batch(arrays):
  import torch  # pylint: disable=import-outside-toplevel
  return {k: torch.from_numpy(np.asarray(arrays[k]).astype(np.int64))
          for k in ("input_ids", "attention_mask", "token_type_ids", "labels")}


def torch_logits(tmodel, tb, zero_segments=False):
  import torch  # pylint: disable=import-outside-toplevel
  tt = torch.zeros_like(tb["token_type_ids"]) if zero_segments else tb["token_type_ids"]
  return tmodel(input_ids=tb["input_ids"], attention_mask=tb["attention_mask"],
                token_type_ids=tt).logits


def torch_one_batch(tmodel, arrays) -> dict:
  """The PyTorch counterpart of jax_one_batch (the head must already be copied in)."""
  import torch  # pylint: disable=import-outside-toplevel
  tb = torch_batch(arrays)
  tmodel.zero_grad(set_to_none=True)
  logits = torch_logits(tmodel, tb)
  loss = torch.nn.functional.cross_entropy(logits, tb["labels"])
  loss.backward()
  norms = torch_group_norms(tmodel)
  return dict(loss=float(loss.detach()), logits=logits.detach().numpy(), group_grad_norm=norms,
              total_grad_norm=math.sqrt(float(np.sum(norms ** 2))))


# ==================================================================== sampled statistics

NORMAL_TAIL = 0.0455  # P(|z| > 2) for a standard normal


def normal_sample_errors(x, std: float) -> dict:
  """{statistic: (error, 5-sigma bound)} for `x` as n independent draws of N(0, std^2): the mean,
  the standard deviation and the fraction beyond 2 std (which a truncated normal lacks). The
  bounds are 5 standard errors at this sample size: std/sqrt(n), std/sqrt(2n) (normal sample),
  sqrt(p(1-p)/n)."""
  x = np.asarray(x, np.float64).ravel()
  n = x.size
  tail = float(np.mean(np.abs(x) > 2 * std))
  return {"mean": (abs(float(x.mean())), 5 * std / math.sqrt(n)),
          "std": (abs(float(x.std()) - std), 5 * std / math.sqrt(2 * n)),
          "tail_beyond_2std": (abs(tail - NORMAL_TAIL),
                               5 * math.sqrt(NORMAL_TAIL * (1 - NORMAL_TAIL) / n))}


def check_normal_sample(x, std: float, what: str = "sample") -> dict:
  return enforce(f"{what} ~ N(0, {std}^2)", normal_sample_errors(x, std))


# ==================================================================== 2. a seed group = seeds alone
# A tiny BERT (tests.helpers.tiny_setup, dropout 0.1, lr 2e-5 with warmup), 5 steps, seeds 3 and
# 11. lax.map runs each seed through the very program a seed alone runs: bit-identical. vmap
# batches the matmuls, so rounding differs. Measured (vmap, worst of the two seeds):
SEED_GROUP_BOUNDS = {
    "map": {"params": 0.0, "grad_norm": 0.0, "loss": 0.0, "state": 0.0},  # exact: 0, 0, 0, 0
    "vmap": {"params": 1e-7,     # max |d param|: 7.5e-9 (5 steps moved params by up to 3.1e-4)
             "grad_norm": 1e-6,  # per group and step, |d| / norm: 1.1e-7
             "loss": 2e-6},      # per step, |d| / loss: 1.7e-7
}


def run_alone(create, step, arrays, seed: int, n: int):
  from jaxstab.engine import train as train_lib  # pylint: disable=import-outside-toplevel
  state = jax.jit(create)(train_lib.seed_key(seed))
  f = jax.jit(step)
  dev = jax.device_put(arrays)
  for _ in range(n):
    state = f(state, dev)
  return state


def run_group(create, step, arrays, seeds, axis: str, n: int):
  from jaxstab.engine import train as train_lib  # pylint: disable=import-outside-toplevel
  group = jax.jit(train_lib.over_seeds(create, (0,), axis))(
      jnp.stack([train_lib.seed_key(s) for s in seeds]))
  f = jax.jit(train_lib.over_seeds(step, (0, None), axis))
  dev = jax.device_put(arrays)
  for _ in range(n):
    group = f(group, dev)
  return group


def seed_group_errors(group, alone: dict, axis: str, n: int) -> dict:
  """{quantity: (error, bound)} of a group state against {seed: state alone}, n steps taken
  (probe every step); seeds in the group in the order of `alone`."""
  bounds = SEED_GROUP_BOUNDS[axis]
  err = dict.fromkeys(bounds, 0.0)
  for i, state in enumerate(alone.values()):
    mine = jax.tree_util.tree_map(lambda x, i=i: x[i], group)
    err["params"] = max(err["params"], tree_max_abs_diff(mine.params, state.params))
    err["grad_norm"] = max(err["grad_norm"], rel_max(mine.probe["grad_norm"][:n],
                                                     state.probe["grad_norm"][:n]))
    err["loss"] = max(err["loss"], rel_max(mine.probe["loss"][:n], state.probe["loss"][:n]))
    if "state" in err:  # everything: optimizer moments, probe records, keys, counters
      err["state"] = max(err["state"], tree_max_abs_diff(mine, state))
  return {k: (v, bounds[k]) for k, v in err.items()}


def check_seed_group_equals_alone(create, step, arrays, seeds, axis: str, steps: int = 5):
  """Trains `seeds` as one group (over_seeds with `axis`) and each alone. Returns (errors,
  moved): moved is the largest parameter change of any seed alone, for the caller to check that
  the comparison is not vacuous."""
  group = run_group(create, step, arrays, seeds, axis, steps)
  alone = {s: run_alone(create, step, arrays, s, steps) for s in seeds}
  errors = enforce(f"seed group ({axis}) equals each seed alone",
                   seed_group_errors(group, alone, axis, steps))
  moved = max(tree_max_abs_diff(alone[s].params, run_alone(create, step, arrays, s, 0).params)
              for s in seeds)
  return errors, moved


# ==================================================================== 3. the gradient-norm probe

# Probe norms squared and summed over the groups vs the recorded global norm. Measured 1.19e-7
# (demo, 2 seeds x 16 records). Dropping a whole encoder layer (0.04-0.1% of the squared norm)
# moves this by >= 2e-4.
PROBE_SUM_RTOL = 1.2e-6


def check_probe_sums_to_total(grad_norm, total) -> dict:
  """sqrt(sum over groups of norm^2) == the global gradient norm, for every record."""
  g = np.asarray(grad_norm, np.float64)
  return enforce("probe groups add up to the global norm",
                 {"sum_vs_total": (rel_max(np.sqrt(np.sum(g ** 2, -1)), total), PROBE_SUM_RTOL)})


def independent_group(path_str: str) -> str:
  """The probe group of a '/'-joined parameter path (written independently of probe.py)."""
  if path_str.startswith("classifier"):
    return "classifier"
  if "/pooler" in path_str:
    return "pooler"
  if "/encoder/layer/" in path_str:
    return "layer_" + path_str.split("/encoder/layer/")[1].split("/")[0]
  if "albert_layer_groups" in path_str:
    return "shared"
  return "embeddings"


def independent_group_sq(tree) -> dict:
  """{group: sum of squares (float64)} of a gradient tree, grouped by independent_group."""
  out = {}
  for path, g in jax.tree_util.tree_flatten_with_path(tree)[0]:
    name = independent_group("/".join(_names(path)))
    out[name] = out.get(name, 0.0) + float(np.sum(np.asarray(g, np.float64) ** 2))
  return out


# The in-step probe vs norms of the full gradient computed outside jit (tiny BERT / RoBERTa,
# first batch). Measured per group 6.8e-8 / 4.6e-8, total 8.5e-8 / 2.9e-8.
PROBE_GROUP_RTOL = 1e-6


def check_probe_matches_full_gradient(got, total, groups, grads) -> dict:
  """The probe's per-group and total norms (`got`, `total`) against the gradient tree `grads`."""
  expect = independent_group_sq(grads)
  assert set(expect) <= set(groups), (sorted(expect), groups)
  return enforce("probe norms match the full gradient", {
      "group": (rel_max(got, [math.sqrt(expect.get(g, 0.0)) for g in groups]), PROBE_GROUP_RTOL),
      "total": (rel_max(total, math.sqrt(sum(expect.values()))), PROBE_GROUP_RTOL)})


def plain_grads(model, params, batch, weight):
  """Gradient of the weighted loss through transformers' model: no probe, not the train step."""
  from jaxstab.engine import train as train_lib  # pylint: disable=import-outside-toplevel

  def loss(p):
    return train_lib.weighted_xent(model.logits(p, batch, train=False), batch["labels"], weight)
  return jax.jit(jax.grad(loss))(params)


def first_batch(state, arrays, batch_size):
  """The batch (and its example weights) the train step draws at step 0 of `state`'s seed."""
  from jaxstab.data import dataset  # pylint: disable=import-outside-toplevel
  from jaxstab.engine import train as train_lib  # pylint: disable=import-outside-toplevel
  idx, weight = dataset.batch_indices(jax.random.fold_in(state.key, train_lib.DATA), 0,
                                   len(arrays["labels"]), batch_size)
  return dataset.gather(arrays, idx), weight


def probe_first_step(model, create, step, arrays, seed: int, batch_size: int):
  """One jitted train step of `seed` (probe every step). Returns its probe records and the full
  gradient of the same batch, computed outside the step (for check_probe_matches_full_gradient
  on record 0, and check_probe_sums_to_total)."""
  from jaxstab.engine import train as train_lib  # pylint: disable=import-outside-toplevel
  state = jax.jit(create)(train_lib.seed_key(seed))
  batch, weight = first_batch(state, arrays, batch_size)
  grads = plain_grads(model, state.params, batch, weight)
  rec = jax.device_get(jax.jit(step)(state, jax.device_put(arrays)).probe)
  assert int(rec["step"][0]) == 0
  return rec, grads


# Every parameter is counted in exactly one group: with a gradient of all ones, each group's
# squared norm is its parameter count, exact in float32 below 2^24, so the only error left is
# the float32 rounding of the square root (<= 6e-8 relative). Measured 3.4e-8 (tiny BERT, RoBERTa).
# Dropping the smallest tensor of a tiny BERT's largest group moves that group by >= 5e-4.
PROBE_COVER_RTOL = 6e-7


def check_probe_covers_all_params(params, arch: str, num_layers: int) -> dict:
  """probe.group_norms of an all-ones gradient == sqrt(parameter count) of each group, and the
  groups hold every parameter."""
  from jaxstab.engine import probe  # pylint: disable=import-outside-toplevel
  groups = probe.group_names(params, arch, num_layers)
  ones = jax.tree_util.tree_map(jnp.ones_like, params)
  counts = independent_group_sq(ones)
  got = np.asarray(probe.group_norms(ones, arch, groups), np.float64)
  assert set(counts) == set(groups), (sorted(counts), groups)
  want = np.sqrt([counts[g] for g in groups])
  covered = float(np.sum(np.round(got ** 2)))
  total = float(sum(x.size for x in jax.tree_util.tree_leaves(params)))
  return enforce("probe groups cover every parameter", {
      "group": (rel_max(got, want), PROBE_COVER_RTOL),
      "uncounted_fraction": (abs(total - covered) / total, 0.0)})


# ==================================================================== 4. the optimizer
# jaxstab.engine.optim.adamw against the update rules written out in float64 (NOTES.md), on a small
# problem: a dense kernel (decayed), its bias and a LayerNorm scale (not decayed), 10 steps,
# params ~ N(0, 1), gradients ~ N(0, 1e-2), lr 0.005 -> 0.05, b1 0.9, b2 0.99, eps 1e-3, wd 0.1.

ADAM_B1, ADAM_B2, ADAM_EPS, ADAM_WD, ADAM_STEPS = 0.9, 0.99, 1e-3, 0.1, 10
ADAM_SHAPES = {"dense": {"kernel": (3, 4), "bias": (4,)}, "LayerNorm": {"scale": (4,)}}
ADAM_DECAYED = {"dense": {"kernel": True, "bias": False}, "LayerNorm": {"scale": False}}
# Per element, after 10 steps: |param - reference| <= ADAM_ATOL + ADAM_RTOL |reference|. Measured
# (all four variants): the worst element at 0.16 - 0.22 of that (max |d| 1.6e-7 - 2.0e-7, where
# params moved by 0.1 - 0.2). The variants differ from one another by 8.9e-4 - 0.11.
ADAM_ATOL, ADAM_RTOL = 1e-7, 1e-6


def adam_error(got, want) -> float:
  """max over elements of |got - want| / (ADAM_ATOL + ADAM_RTOL |want|): <= 1 passes."""
  return max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
                          / (ADAM_ATOL + ADAM_RTOL * np.abs(np.asarray(b, np.float64)))))
             for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)))


def adam_schedule(count):  # works on numpy ints and traced jnp ints alike
  return 0.05 * (count + 1) / ADAM_STEPS


def adam_problem(seed=0, grad_scale=1e-2):
  rng = np.random.default_rng(seed)
  params = jax.tree_util.tree_map(lambda s: rng.normal(size=s).astype(np.float32), ADAM_SHAPES,
                                  is_leaf=lambda x: isinstance(x, tuple))
  grads = [jax.tree_util.tree_map(
      lambda p: (grad_scale * rng.normal(size=p.shape)).astype(np.float32), params)
           for _ in range(ADAM_STEPS)]
  return params, grads


def adam_reference(params, grads, bias_correction, eps_mode, lr_fn=adam_schedule, b1=ADAM_B1,
                   b2=ADAM_B2, eps=ADAM_EPS, wd=ADAM_WD, decayed=None):
  """The update rules written out in float64, one leaf at a time."""
  decayed = ADAM_DECAYED if decayed is None else decayed

  def run_leaf(p, d, gs):
    p = p.astype(np.float64)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(gs, 1):
      lr = lr_fn(t - 1)
      m = b1 * m + (1 - b1) * g
      v = b2 * v + (1 - b2) * g * g
      wd_t = wd if d else 0.0
      if eps_mode == "hf":
        step = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t) if bias_correction else lr
        p_mid = p - step * m / (np.sqrt(v) + eps)
        p = p_mid - lr * wd_t * p_mid
      else:
        m_hat, v_hat = (m / (1 - b1 ** t), v / (1 - b2 ** t)) if bias_correction else (m, v)
        p = p - lr * (m_hat / (np.sqrt(v_hat) + eps) + wd_t * p)
    return p

  return jax.tree_util.tree_map(lambda p, d, *gs: run_leaf(p, d, [np.float64(g) for g in gs]),
                                params, decayed, *grads)


def run_tx(tx, params, grads):
  import optax  # pylint: disable=import-outside-toplevel
  update = jax.jit(tx.update)
  state = tx.init(params)
  for g in grads:
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
  return params


def check_adamw_matches_formulas(bias_correction: bool, eps_mode: str) -> dict:
  """optim.adamw (default decay mask) on adam_problem() against adam_reference."""
  from jaxstab.engine import optim  # pylint: disable=import-outside-toplevel
  params, grads = adam_problem()
  tx = optim.adamw(adam_schedule, b1=ADAM_B1, b2=ADAM_B2, eps=ADAM_EPS, weight_decay=ADAM_WD,
                   bias_correction=bias_correction, eps_mode=eps_mode)
  got = run_tx(tx, params, grads)
  want = adam_reference(params, grads, bias_correction, eps_mode)
  return enforce(f"adamw(bias_correction={bias_correction}, eps_mode={eps_mode!r}) matches the "
                 "formulas", {"params_vs_tolerance": (adam_error(got, want), 1.0)})


# Learning rates against linear warmup from 0 then linear decay to 0, in float64. Measured: the
# largest |d| / lr where lr > 0 is 9.8e-8 (float32 steps and peak); where the schedule is 0 it
# is exactly 0.
SCHEDULE_RTOL = 1e-6


def check_schedule(values, peak: float, warmup: int, total: int) -> dict:
  """`values[t]`, the learning rate of update t (t = 0, 1, ...), against the formula."""
  t = np.arange(len(values), dtype=np.float64)
  v = np.asarray(values, np.float64)
  up = t / max(warmup, 1)
  down = (total - t) / max(total - warmup, 1)
  want = peak * np.clip(np.where(t < warmup, up, down), 0.0, 1.0)
  pos = want > 0
  return enforce("learning-rate schedule", {
      "rel": (rel_max(v[pos], want[pos]), SCHEDULE_RTOL),
      "where_zero": (float(np.max(np.abs(v[~pos]), initial=0.0)) / peak, 0.0)})


# ==================================================================== 5. resume after a crash
# The CLI on the demo task, 2 seeds, 12 steps, a checkpoint every 2 steps (the newest 2 kept).

CHECKPOINT_ARGS = ["--config=configs/demo.py:seeds=1-2", "--config.train.max_steps=12",
                   "--config.train.epochs=1", "--config.train.max_seq_length=24",
                   "--config.train.evals_per_epoch=2", "--config.probe.every=1",
                   "--config.checkpoint.every_steps=2"]
RESUME_LINE = re.compile(r"resumed from the checkpoint at step (\d+)")


def checkpoint_cli(workdir, fault: str = "", extra=()):
  """`python -m jaxstab.main CHECKPOINT_ARGS extra --workdir=workdir`, with JAXSTAB_FAULT=fault
  in a process of its own (to be killed); without a fault (an uninterrupted run, a resume) in
  this process (tests/cli_runs.py), where a planted-bug test's monkeypatch reaches it."""
  from jaxstab.infra import checkpoint  # pylint: disable=import-outside-toplevel
  if not fault:
    from tests import cli_runs  # pylint: disable=import-outside-toplevel
    return cli_runs.run_cli_in_process([*CHECKPOINT_ARGS, *extra], workdir)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  env[checkpoint.FAULT_ENV] = fault
  return subprocess.run([sys.executable, "-m", "jaxstab.main", *CHECKPOINT_ARGS, *extra,
                         f"--workdir={workdir}"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def checkpoint_config(extra=()):
  """The config that `checkpoint_cli(..., extra)` runs, built in this process, for resumes where
  a separate process proves nothing more."""
  from jaxstab.config import config_lib  # pylint: disable=import-outside-toplevel
  args = [*CHECKPOINT_ARGS, *extra]
  spec = next(a.split("=", 1)[1] for a in args if a.startswith("--config="))
  cfg = config_lib.load_file(str(REPO / spec))
  config_lib.apply_overrides(cfg, [tuple(a[len("--config."):].split("=", 1)) for a in args
                                   if a.startswith("--config.")])
  return cfg


def committed_checkpoints(workdir) -> list:
  """Steps of the complete checkpoints in workdir (orbax renames a step's folder to the bare
  step number only once it is fully written)."""
  return sorted(int(p.name) for p in Path(workdir).glob("checkpoints/*/*") if p.name.isdigit())


def resume_steps(log: str) -> list:
  """The steps the seed groups resumed from, as the run logged them."""
  return [int(s) for s in RESUME_LINE.findall(log)]


def check_resumed_at(log: str, expected: int) -> dict:
  """The run resumed (once) from step `expected`: the newest complete checkpoint."""
  steps = resume_steps(log)
  assert len(steps) <= 1, steps
  got = steps[0] if steps else 0  # no resume line: it started from scratch
  return enforce("resumed from the newest checkpoint",
                 {"steps_off": (abs(got - expected), 0.0)})


# ==================================================================== 6. the failed-run baseline
# Majority-class dev baselines from ../shared/glue/README.md (label counts per dev file). The
# pipeline's value is the same fraction computed the same way: measured |d| = 0 for each.
GLUE_MAJORITY = {
    "rte": {"accuracy": 146 / 277},
    "mrpc": {"accuracy": 279 / 408, "f1": 2 * 279 / (2 * 279 + 129),
             "acc_and_f1": (279 / 408 + 2 * 279 / (2 * 279 + 129)) / 2},
    "cola": {"mcc": 0.0, "accuracy": 721 / 1043},
}


def check_majority(summary: dict) -> dict:
  """summary.json's majority baseline == the dev label counts' (exact)."""
  want = GLUE_MAJORITY[summary["task"]]
  assert set(summary["majority"]) >= set(want), summary["majority"]
  return enforce(f"{summary['task']} majority baseline is the dev set's",
                 {k: (abs(summary["majority"][k] - v), 0.0) for k, v in want.items()})


# ============================================================ linear connectivity
def connectivity_loop(model, theta_a, theta_b, arrays, points: int) -> dict:
  """The training loss along the line theta_a -> theta_b and its barrier, computed directly:
  a Python loop over alpha, the interpolated params built leaf by leaf in NumPy, one plain
  jax.jit(model.logits) per example batch (no vmap, no lax.map), the cross-entropy in float64,
  and the barrier as the loop over points of loss - chord."""
  alpha = [i / (points + 1) for i in range(points + 2)]
  forward = jax.jit(lambda p, b: model.logits(p, b, train=False))
  loss = []
  for a in alpha:
    params = jax.tree_util.tree_map(
        lambda x, y, a=a: ((1 - np.float32(a)) * np.asarray(x) + np.float32(a) * np.asarray(y)),
        theta_a, theta_b)
    total = 0.0
    for start in range(0, len(arrays["labels"]), 16):
      batch = {k: v[start:start + 16] for k, v in arrays.items()}
      z = np.asarray(forward(params, batch), np.float64)
      z = z - z.max(axis=1, keepdims=True)
      logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
      total -= logp[np.arange(len(z)), batch["labels"]].sum()
    loss.append(total / len(arrays["labels"]))
  excess = [loss[i] - ((1 - alpha[i]) * loss[0] + alpha[i] * loss[-1]) for i in range(len(loss))]
  return {"alpha": np.asarray(alpha), "loss": np.asarray(loss), "barrier": max(excess)}


def connectivity_package(model, theta_a, theta_b, arrays, points: int, precision="highest"):
  """The same through jaxstab: analysis.connectivity's one program (chunked, vmapped) and
  results.connectivity.barrier."""
  from jaxstab.analysis import connectivity as cn  # pylint: disable=import-outside-toplevel
  from jaxstab.results import connectivity as conn  # pylint: disable=import-outside-toplevel
  alpha = conn.alphas(points)
  idx = np.arange(len(arrays["labels"]))
  batches = cn.stack_batches(arrays, arrays, idx, 16)
  fn = cn.make_line_fn(model, precision)
  got = cn.evaluate_line(fn, theta_a, theta_b, alpha, batches, jax.device_put(batches.arrays),
                         "accuracy", chunk=3)
  return {"alpha": alpha, "loss": got["train_loss"], "barrier": conn.barrier(got["train_loss"],
                                                                              alpha)}


def check_connectivity_matches_loop(got: dict, want: dict) -> dict:
  """Loss curve and barrier of the package vs the direct loop. Bound 5e-7 nats: the package
  runs the forward in float32 under lax.map/vmap and sums the loss in float32 per batch, the loop
  per batch with a float64 log-softmax; measured 3.1e-8 (curve) and 0 (barrier) on the tiny BERT
  (tests/test_connectivity.py), 2.5e-8 and 9.4e-9 on the toy model."""
  return enforce("connectivity vs a direct loop", {
      "alphas": (float(np.max(np.abs(got["alpha"] - want["alpha"]))), 1e-12),
      "loss curve": (float(np.max(np.abs(got["loss"] - want["loss"]))), 5e-7),
      "barrier": (abs(got["barrier"] - want["barrier"]), 5e-7)})


def check_mask_on_clipped_gradient(mode: str, params, grads, reserve_p: float = 0.3) -> dict:
  """Child-Tuning's mask sits inside optim.from_config's chain between clipping and Adam, where
  the authors' optimizer applies it: two updates of the chain equal Adam applied to
  mask(clip(g)), computed here piece by piece from the same mask transformation and key.
  A mask applied to Adam's output instead (mask(adam(clip(g)))) is off by 1/reserve_p on the
  kept elements (F) and drops the weight decay of the masked ones (D). Measured error on healthy
  code: 0 (the same float32 operations in the same order); bound 1e-9 relative to the step."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from jaxstab.engine import child_tuning, optim  # pylint: disable=import-outside-toplevel
  cfg = ml_collections.ConfigDict(dict(
      lr=1e-3, b1=0.9, b2=0.999, eps=1e-6, bias_correction=False, eps_mode="hf",
      warmup_ratio=0.0, weight_decay=0.01, clip_norm=1.0, moments_dtype="float32"))
  mask_tx = (child_tuning.random_mask(reserve_p) if mode == "f" else child_tuning.fixed_mask())
  tx, schedule = optim.from_config(cfg, 100, None, mask_tx)
  key = jax.random.PRNGKey(7)
  fixed = jax.tree_util.tree_map(lambda p: jax.random.bernoulli(key, reserve_p, p.shape), params)

  def start(state):
    state = child_tuning.seeded(state, key)
    return child_tuning.with_mask(state, fixed) if mode == "d" else state
  state = start(tx.init(params))
  adam = optim.adamw(schedule, weight_decay=0.01, bias_correction=False, eps_mode="hf")
  ref_mask, ref_adam = start(mask_tx.init(params)), adam.init(params)
  clip = optax.clip_by_global_norm(1.0)
  worst, size = 0.0, 0.0
  p = params

  @jax.jit
  def pieces(grads, ref_mask, ref_adam, p):
    clipped, _ = clip.update(grads, clip.init(p), p)
    masked, ref_mask = mask_tx.update(clipped, ref_mask, p)
    want, ref_adam = adam.update(masked, ref_adam, p)
    return want, ref_mask, ref_adam
  chain = jax.jit(tx.update)
  for _ in range(2):
    got, state = chain(grads, state, p)
    want, ref_mask, ref_adam = pieces(grads, ref_mask, ref_adam, p)
    worst = max(worst, max(float(jnp.max(jnp.abs(a - b))) for a, b in
                           zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want))))
    size = max(size, max(float(jnp.max(jnp.abs(b))) for b in jax.tree_util.tree_leaves(want)))
    p = optax.apply_updates(p, want)
  return enforce("mask_on_clipped_gradient", {f"child_tuning_{mode}": (worst, 1e-9 * size)})


def check_r3f_noise_on_token_embeddings(model, params, batch, key, eps: float) -> dict:
  """R3F's noise lands on the token embeddings as the table outputs them, detached (fairseq:
  `token_embeddings.detach().clone() + noise`), on a tiny BERT:
  - the embeddings' output equals LayerNorm(table[ids] + noise + positions + segments) computed
    here by hand, with the noise of rxf.draw_noise (measured error 4.8e-7 in float32 against
    float64 for values ~1-3 after the LayerNorm; bound 5e-6);
  - the noised pass gives the token table no gradient (exactly 0) but the position table one.
  Noise after the LayerNorm fails the first; noise on the position lookup (whose sum is the same)
  fails the second."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  from jaxstab.engine import rxf  # pylint: disable=import-outside-toplevel
  name = model.family.token_embeddings
  captured = []

  def grab(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and context.module.name == "embeddings":
      captured.append(out)
    return out

  def noised_logits(p):
    with rxf.noised_token_embeddings(name, key, eps, "uniform"):
      return model.logits(p, batch, train=False)
  @jax.jit
  def run(p):
    with nn.intercept_methods(grab):
      noised_logits(p)
    grads = jax.grad(lambda q: jnp.sum(noised_logits(q)))(p)["bert"]["embeddings"]
    return captured[0], grads
  embeddings, grads = run(params)
  emb = params["bert"]["embeddings"]
  ids, tt = np.asarray(batch["input_ids"]), np.asarray(batch["token_type_ids"])
  x = (np.asarray(emb["word_embeddings"]["embedding"])[ids]
       + np.asarray(rxf.draw_noise(key, ids.shape + (emb["word_embeddings"]["embedding"].shape[1],),
                                   eps, "uniform"))
       + np.asarray(emb["position_embeddings"]["embedding"])[np.arange(ids.shape[1])][None]
       + np.asarray(emb["token_type_embeddings"]["embedding"])[tt])
  mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  want = ((x - mean) / np.sqrt(var + model.config.layer_norm_eps)
          * np.asarray(emb["LayerNorm"]["scale"]) + np.asarray(emb["LayerNorm"]["bias"]))
  table = float(jnp.max(jnp.abs(grads["word_embeddings"]["embedding"])))
  positions = float(jnp.max(jnp.abs(grads["position_embeddings"]["embedding"])))
  return enforce("r3f_noise_on_token_embeddings", {
      "embeddings output vs by hand": (float(np.max(np.abs(np.asarray(embeddings) - want))),
                                       5e-6),
      "token table's gradient from the noised pass": (table, 0.0),
      "position table's gradient missing": (float(positions == 0.0), 0.0)})
