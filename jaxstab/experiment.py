"""One setting of one task over its seeds: train, evaluate, write per-seed and merged results.

Seeds are trained K at a time (train.seeds_per_step; 0 = all) by one vmapped, jitted step, so
every group of the same size reuses one compiled program. Evaluation is vmapped the same way.
Each finished seed is written at once to runs/ (atomically), so a rerun of the same command
skips it; the merged summary.json / probe.npz / metrics.jsonl are rebuilt from runs/.
"""
import contextlib
import dataclasses
import functools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxstab import checkpoint, config_lib, data, fs, metrics, models, optim, outputs, parallel
from jaxstab import lock as lock_lib
from jaxstab import probe
from jaxstab import stabilisers, stats
from jaxstab import tasks
from jaxstab import train as train_lib
from jaxstab import vocab
from jaxstab.errors import ConfigError

ENUMS = {"data.source": data.SOURCES, "model.dtype": tuple(models.DTYPES),
         "optim.eps_mode": optim.EPS_MODES, "select": ("final", "best"),
         "optim.moments_dtype": ("float32", "bfloat16")}


def validate(cfg) -> None:
  """Checks everything that can be checked before any file is read or written."""
  tasks.get_task(cfg.task)
  for key, allowed in ENUMS.items():
    node = cfg
    for p in key.split("."):
      node = node[p]
    if node not in allowed:
      raise ConfigError(f"{key}={node!r} is not allowed; choose one of: {', '.join(allowed)}")
  positive = {"train.batch_size": cfg.train.batch_size, "train.eval_batch_size": cfg.train.eval_batch_size,
              "train.max_seq_length": cfg.train.max_seq_length, "probe.every": cfg.probe.every,
              "train.evals_per_epoch": cfg.train.evals_per_epoch}
  for k, v in positive.items():
    if v <= 0:
      raise ConfigError(f"{k}={v} must be positive")
  if cfg.train.max_steps <= 0 and cfg.train.epochs <= 0:
    raise ConfigError("set train.epochs > 0 or train.max_steps > 0")
  if not cfg.optim.lr > 0:
    raise ConfigError(f"optim.lr={cfg.optim.lr} must be positive")
  if not 0.0 <= cfg.optim.warmup_ratio < 1.0:
    raise ConfigError(f"optim.warmup_ratio={cfg.optim.warmup_ratio} must be in [0, 1)")
  if cfg.optim.eps < 0 or not 0 <= cfg.optim.b1 < 1 or not 0 <= cfg.optim.b2 < 1:
    raise ConfigError("optim.eps must be >= 0 and optim.b1, optim.b2 in [0, 1)")
  n_dev = jax.device_count()
  if cfg.train.batch_size % n_dev:
    raise ConfigError(f"train.batch_size={cfg.train.batch_size} is not divisible by the "
                      f"{n_dev} devices; choose a multiple of {n_dev}")
  seeds = config_lib.parse_seeds(cfg)
  if cfg.train.seed_axis not in train_lib.SEED_AXES:
    raise ConfigError(f"train.seed_axis={cfg.train.seed_axis!r}; choose one of "
                      f"{', '.join(train_lib.SEED_AXES)}")
  if cfg.train.seeds_per_step > len(seeds):
    raise ConfigError(f"train.seeds_per_step={cfg.train.seeds_per_step} is larger than the "
                      f"{len(seeds)} seeds of this run; use at most {len(seeds)} (or 0 = auto)")
  stabilisers.check(cfg.stabilisers)
  if cfg.stabilisers.mixout > 0 and cfg.model.dropout != 0.0:
    logging.info("Mixout is on: dropout forced to 0 (was %s)", cfg.model.dropout)
    cfg.model.dropout = 0.0


def eval_points(steps_per_epoch: int, total: int, per_epoch: int):
  """Step 0, `per_epoch` evenly spaced points in each epoch (the last at its end), and the end."""
  pts = {0, total}
  epoch = 0
  while epoch * steps_per_epoch < total:
    for k in range(1, per_epoch + 1):
      pts.add(min(epoch * steps_per_epoch + round(k * steps_per_epoch / per_epoch), total))
    epoch += 1
  return sorted(pts)


def _load_inputs(cfg):
  """Data, tokenizer and model: everything that can fail on bad input, before any write."""
  task = tasks.get_task(cfg.task)
  train_split = data.load_split(task, "train", cfg.data.source, cfg.data.dir)
  dev_split = data.load_split(task, "dev", cfg.data.source, cfg.data.dir)
  tokenizer = vocab.load(cfg.model, lambda: train_split.text_a + (train_split.text_b or []))
  model = models.load(cfg.model, task.num_labels, tokenizer)
  models.check_fit(model, tokenizer, cfg.train.max_seq_length)
  return task, model, tokenizer, train_split, dev_split


def _tokenize(cfg, workdir, task, tokenizer, train_split, dev_split):
  cache = fs.local_cache("tokens") if fs.is_remote(workdir) else os.path.join(workdir, "cache")
  length = cfg.train.max_seq_length
  return (data.tokenize_cached(train_split, tokenizer, length, cache, f"{task.name}-train"),
          data.tokenize_cached(dev_split, tokenizer, length, cache, f"{task.name}-dev"))


# Keys that do not change any one seed's result: a rerun may change them and still resume.
RESUMABLE = ("seed", "seeds", "train.seeds_per_step", "train.seed_axis", "overwrite",
             "settings", "checkpoint.every_steps", "checkpoint.keep", "compile_cache")


def config_diff(old: dict, new: dict, prefix="", defaults=None):
  """Dotted keys whose values differ between two config dicts (RESUMABLE keys ignored).

  With `defaults` (base_config as a dict), a key the old config lacks counts as unchanged when
  the new value is its default: a workdir made before a key existed resumes after an upgrade.
  """
  out = []
  defaults = defaults or {}
  for k in sorted(set(old) | set(new)):
    key = prefix + k
    if key in RESUMABLE:
      continue
    a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
    if isinstance(a, dict) and isinstance(b, dict):
      sub = defaults.get(k)
      out += config_diff(a, b, key + ".", sub if isinstance(sub, dict) else None)
    elif a == "<absent>" and k in defaults and b == defaults[k]:
      continue
    elif a != b:
      out.append(f"{key}: {a!r} -> {b!r}")
  return out


def _prepare_workdir(cfg, workdir):
  """Creates workdir, or checks that its earlier results were made by the same config."""
  path = fs.join(workdir, outputs.CONFIG)
  new = json.loads(json.dumps(cfg.to_dict()))
  if fs.isfile(path) and not cfg.get("overwrite", False):
    defaults = json.loads(json.dumps(config_lib.base_config().to_dict()))
    diff = config_diff(fs.read_json(path), new, defaults=defaults)
    if diff:
      raise ConfigError(f"{workdir} holds results of a different config ({'; '.join(diff)}). "
                        "Use a new --workdir, or pass --config.overwrite=True to discard them.")
  if not parallel.is_primary():
    return
  if not fs.isfile(path) or cfg.get("overwrite", False):
    fs.rmtree(fs.join(workdir, RUNS))
  fs.makedirs(fs.join(workdir, RUNS))
  for name in (outputs.SUMMARY, outputs.PROBE):  # merged files are rebuilt at the end
    fs.remove(fs.join(workdir, name))
  outputs.write_json(path, new)


RUNS = "runs"


def _run_path(workdir, seed, kind):
  return fs.join(workdir, RUNS, {"json": f"seed_{seed}.json", "npz": f"probe_seed_{seed}.npz",
                                      "jsonl": f"metrics_seed_{seed}.jsonl"}[kind])


def run_setting(cfg, workdir: str) -> dict:
  """Trains the seeds of `cfg` not finished yet in workdir, then writes the merged config.json,
  metrics.jsonl, TensorBoard events, probe.npz and (last) summary.json; returns the summary."""
  validate(cfg)
  inputs = _load_inputs(cfg)
  try:
    fs.makedirs(workdir)
  except OSError as e:
    raise ConfigError(f"cannot create the workdir {workdir}: {e.strerror or e}") from None
  lock = lock_lib.workdir_lock(workdir) if parallel.is_primary() else contextlib.nullcontext()
  with lock:
    return _run_setting_locked(cfg, workdir, *inputs)


def _run_setting_locked(cfg, workdir, task, model, tokenizer, train_split, dev_split):
  seeds = config_lib.parse_seeds(cfg)
  _prepare_workdir(cfg, workdir)
  parallel.barrier("workdir prepared")
  train_arrays, dev_arrays = _tokenize(cfg, workdir, task, tokenizer, train_split, dev_split)
  todo = [s for s in seeds if not fs.isfile(_run_path(workdir, s, "json"))]
  if len(todo) < len(seeds):
    logging.info("resuming: %d of %d seeds already finished in %s", len(seeds) - len(todo),
                 len(seeds), workdir)

  batch = cfg.train.batch_size
  full_spe = data.num_batches(len(train_arrays["labels"]), batch)
  train_arrays = data.subsample(train_arrays, cfg.data.train_examples, cfg.data.subsample_seed)
  n_train = len(train_arrays["labels"])
  spe = data.num_batches(n_train, batch)
  total = optim.total_train_steps(cfg.train, spe)
  if cfg.train.steps_of_full_epochs > 0:  # the small-data ablation's "as many steps as E full epochs"
    total = int(round(cfg.train.steps_of_full_epochs * full_spe))
  st = cfg.stabilisers
  lr_scales = (stabilisers.layerwise_scales(model.params, model.arch, model.num_layers, st.llrd)
               if st.llrd != 1.0 else None)
  tx, schedule = optim.from_config(cfg.optim, total, lr_scales)
  layout = parallel.Layout.create()
  anchor = (jax.device_put(stabilisers.anchor_of(model.params), layout.replicated)
            if stabilisers.uses_anchor(st) else None)
  groups = probe.group_names(model.params, model.arch, model.num_layers)
  logging.info("%s: %d train / %d dev examples, %d steps per epoch, %d steps, %d seeds, model %s "
               "(%s, %.1fM params)", task.name, n_train, len(dev_arrays["labels"]), spe, total,
               len(seeds), model.name, model.arch, models.param_count(model.params) / 1e6)

  majority = metrics.majority(task.metric, dev_arrays["labels"])
  dev_batches = data.eval_batches(dev_arrays, cfg.train.eval_batch_size)
  dev_labels = dev_arrays["labels"]
  train_dev = jax.device_put(train_arrays, layout.replicated)
  dev_dev = jax.device_put({k: v for k, v in dev_batches.items() if k != "weight"},
                           layout.replicated)

  c = model.config
  per_seed = parallel.bytes_per_seed(models.param_count(model.params), batch,
                                     cfg.train.max_seq_length, c.hidden_size,
                                     c.num_hidden_layers, c.num_attention_heads,
                                     2 if cfg.model.dtype == "bfloat16" else 4)
  k = parallel.seeds_per_step(cfg.train.seeds_per_step, max(len(todo), 1), layout, per_seed,
                              8 * models.param_count(model.params))
  # The pretrained weights are an argument, not a closure: as jit constants they would be
  # compiled into the program (and the persistent cache) for every study.
  axis = train_lib.seed_axis_for(cfg.train.seed_axis, jax.default_backend(), layout.num_devices)
  create_fn = jax.jit(train_lib.over_seeds(lambda params, key: train_lib.create_train_state(
      dataclasses.replace(model, params=params), tx, key, total, cfg.probe.every, groups,
      st.reinit_layers, st.reinit_pooler), (None, 0), axis),
                      out_shardings=layout.seed_sharding(k))
  pretrained = jax.device_put(model.params, layout.replicated)
  create = functools.partial(create_fn, pretrained)
  step_fn = jax.jit(train_lib.over_seeds(train_lib.make_train_step(
      model, tx, schedule, n_train=n_train, batch_size=batch, probe_every=cfg.probe.every,
      group_names=groups, b1=cfg.optim.b1, b2=cfg.optim.b2,
      pass_segment_ids=cfg.model.pass_segment_ids, mixout=st.mixout, prior_wd=st.prior_wd),
      (0, None, None), axis), donate_argnums=0)
  eval_fn = jax.jit(train_lib.over_seeds(
      train_lib.make_eval_logits(model, cfg.model.pass_segment_ids), (0, None), axis))

  points = eval_points(spe, total, cfg.train.evals_per_epoch)
  logging.info("%d seeds to train, %d per step (%s over seeds), on %d device(s)", len(todo), k,
               axis, layout.num_devices)
  with checkpoint.sigterm_flag() as stop:
    loop = _Loop(create, functools.partial(_with_anchor, step_fn, anchor), eval_fn, train_dev,
                 dev_dev, dev_labels, task, points, schedule, batch, workdir,
                 cfg.checkpoint.every_steps, cfg.checkpoint.keep, stop,
                 cfg.checkpoint.keep_final_params)
    for g in range(0, len(todo), k):
      _train_group(todo[g:g + k], k, loop)
  summary = _merge(cfg, workdir, seeds, task, model, majority, total, groups)
  logging.info("%s: %d/%d failed runs; reported %s (select=%s) %s", workdir,
               summary["failed_runs"], len(seeds), task.metric, cfg.select,
               summary["reported_spread"])
  return summary


def _with_anchor(step_fn, anchor, state, train_dev):
  return step_fn(state, train_dev, anchor)


@dataclasses.dataclass
class _Loop:
  """What every seed group of a setting shares: compiled functions, device data, schedule."""
  create: Any
  step_fn: Any
  eval_fn: Any
  train_dev: Any
  dev_dev: Any
  dev_labels: np.ndarray
  task: Any
  points: list
  schedule: Any
  batch: int
  workdir: str
  ckpt_every: int
  ckpt_keep: int
  stop: list
  keep_final_params: bool = False


def _train_group(group, k, loop: _Loop):
  """Trains one group of seeds together (padded to k with repeats of its last seed, whose
  results are dropped), resuming from its newest checkpoint, and writes each real seed's files
  into runs/."""
  padded = list(group) + [group[-1]] * (k - len(group))
  state = loop.create(np.stack([np.asarray(train_lib.seed_key(s)) for s in padded]))
  name = f"seeds_{'-'.join(map(str, group))}_of_{k}"
  ckpt = checkpoint.GroupCheckpointer(loop.workdir, name, loop.ckpt_every, loop.ckpt_keep)
  records, last_loss, step = {s: [] for s in group}, [None] * len(group), 0
  restored = ckpt.restore_latest(state)
  if restored is not None:
    step, state, host = restored
    records = {s: host["records"][str(s)] for s in group}
    last_loss = host["last_loss"]
    logging.info("seeds %s: resumed from the checkpoint at step %d", group, step)
  host_state = lambda: {"records": {str(s): records[s] for s in group}, "last_loss": last_loss}
  done = {r["step"] for r in records[group[0]]}
  t0, t_step, eval_s = time.time(), step, 0.0
  for point in loop.points:
    if point in done:
      continue
    while step < point:
      state = loop.step_fn(state, loop.train_dev)
      step += 1
      checkpoint.fault("kill_at_step", step)
      checkpoint.fault("sigterm_at_step", step)
      if loop.stop[0]:
        ckpt.save(step, state, host_state(), wait=True)
        raise checkpoint.Preempted(f"stopped by SIGTERM at step {step}; checkpoint in "
                                   f"{ckpt.directory}; rerun the same command to resume")
      if ckpt.due(step) and step != point:
        ckpt.save(step, state, host_state())
    if step > 0:  # mean training loss since the previous evaluation, read once here
      loss = parallel.to_host(state.loss_sum / jnp.maximum(state.loss_count, 1.0))
      state = state.replace(loss_sum=jnp.zeros_like(state.loss_sum),
                            loss_count=jnp.zeros_like(state.loss_count))
      last_loss = [float(x) for x in loss[:len(group)]]
    t_eval = time.time()  # the train steps before it have finished: the loss was read above
    logits = parallel.to_host(loop.eval_fn(state.params, loop.dev_dev)).astype(np.float32)
    eval_s += time.time() - t_eval
    checkpoint.fault("kill_in_eval", step)
    logits = logits.reshape(k, -1, logits.shape[-1])[:len(group), :len(loop.dev_labels)]
    lr = float(loop.schedule(max(step - 1, 0)))
    for i, s in enumerate(group):
      m = metrics.compute(loop.task.metric, logits[i].argmax(-1), loop.dev_labels)
      records[s].append(dict(kind="dev", seed=s, step=step, train_loss=last_loss[i], lr=lr, **m))
    if ckpt.due(step):
      ckpt.save(step, state, host_state())
    elapsed = time.time() - t0
    rate = (step - t_step) * loop.batch * len(group) / max(elapsed, 1e-9)
    eta = (loop.points[-1] - step) / max(step - t_step, 1) * elapsed
    logging.info("seeds %s: step %d/%d, %.1f examples/s, ETA %.0fs, dev %s %s", group, step,
                 loop.points[-1], rate, eta, loop.task.metric,
                 " ".join(f"{records[s][-1][loop.task.metric]:.3f}" for s in group))
  wall = time.time() - t0
  logging.info("seeds %s: %.0f s, of which evaluation %.0f s (%.0f%%)", group, wall, eval_s,
               100 * eval_s / max(wall, 1e-9))
  probes = {key: parallel.to_host(v) for key, v in state.probe.items()}
  diverged = parallel.to_host(state.diverged_at)
  for i, s in enumerate(group if parallel.is_primary() else []):  # the record marks it finished
    outputs.write_npz(_run_path(loop.workdir, s, "npz"), **{key: v[i] for key, v in probes.items()})
    fs.write_lines(_run_path(loop.workdir, s, "jsonl"), (json.dumps(r) + "\n" for r in records[s]))
    history = [{key: v for key, v in r.items() if key not in ("kind", "seed", "train_loss", "lr")}
               for r in records[s]]
    record = _run_record(s, history, loop.task, last_loss[i])
    record["diverged_at"] = int(diverged[i]) if diverged[i] >= 0 else None
    outputs.write_json(_run_path(loop.workdir, s, "json"), record)
  if loop.keep_final_params:
    for i, s in enumerate(group):
      checkpoint.save_params(loop.workdir, s, jax.tree_util.tree_map(lambda x, i=i: x[i],
                                                                      state.params))
  ckpt.close(remove=parallel.is_primary())
  parallel.barrier("seed group written")


def _merge(cfg, workdir, seeds, task, model, majority, total, groups):
  """Builds metrics.jsonl, TensorBoard events, probe.npz and summary.json from runs/."""
  runs, probes = [], []
  for s in seeds:
    runs.append(fs.read_json(_run_path(workdir, s, "json")))
    probes.append(fs.load_npz(_run_path(workdir, s, "npz")))
  summary = _summary(cfg, task, model, majority, runs, total)
  if not parallel.is_primary():
    return summary
  fs.rmtree(fs.join(workdir, "tensorboard"))
  log = outputs.Log(workdir, seeds)
  for s in seeds:
    for line in fs.read_text(_run_path(workdir, s, "jsonl")).splitlines():
      log.write(json.loads(line))
  log.close()
  merged = {k: np.stack([p[k] for p in probes]) for k in probes[0] if k != "step"}
  outputs.write_npz(fs.join(workdir, outputs.PROBE), step=probes[0]["step"],
                    groups=np.asarray(groups), seeds=np.asarray(seeds), **merged)
  outputs.write_json(fs.join(workdir, outputs.SUMMARY), summary)
  return summary


def _run_record(seed, history, task, final_train_loss):
  final = dict(history[-1])
  best = max(history, key=lambda h: (h[task.metric], -h["step"]))
  return {"seed": seed, "final": final, "best": dict(best), "final_train_loss": final_train_loss}


def _summary(cfg, task, model, majority, runs, total):
  for r in runs:
    r["failed"] = bool(r.get("diverged_at") is not None
                       or metrics.is_failed(r["final"][task.metric], majority[task.metric]))
  return {"task": task.name, "metric": task.metric, "majority": majority,
          "setting": cfg.setting, "select": cfg.select, "model": model.name,
          "total_steps": total, "seeds": [r["seed"] for r in runs],
          **stats.setting_stats(runs, task.metric, cfg.select), "runs": runs}
