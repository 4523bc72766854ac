"""One setting of one task over its seeds: prepare, build, loop, write.

Seeds are trained K at a time (train.seeds_per_step; 0 = all that fit, by the compiled step's
memory analysis: sizing.py) by the programs that train.build_programs makes, so every group of a
setting reuses one compiled step; an out-of-memory error halves K and training goes on. Each
finished seed is written at once to runs/ (atomically), so a rerun of the same command skips it;
the merged summary.json / probe.npz / metrics.jsonl are rebuilt from runs/ at the end.

This is the only module of the loop that reads the config: `_prepare` and `_build` resolve it
into the setting's records (plan.Plan, plan.Engine); one seed group's training (groups.py), the
early stop's two phases (early_stop_run.py) and the merge (merge.py) read those records.
"""
import contextlib

import jax
from absl import logging

from jaxstab.config import runs as runs_lib
from jaxstab.data import dataset, metrics
from jaxstab.engine import inputs as inputs_lib, memory, models, parallel, peft, train as train_lib
from jaxstab.infra import checkpoint, fs, lock as lock_lib
from jaxstab.infra.errors import ConfigError
from jaxstab.study import (early_stop, early_stop_run, evaluation, groups, merge,
                           sizing as sizing_lib, validate, workdir as workdir_lib)
from jaxstab.study.plan import Engine, Plan, Saving


def run_setting(cfg, workdir: str) -> dict:
  """Trains the seeds of `cfg` not finished yet in workdir, then writes the merged config.json,
  metrics.jsonl, TensorBoard events, probe.npz and (last) summary.json; returns the summary.

  Every check and every input load happens before the workdir is created or changed."""
  validate.check_config(cfg)
  loaded = inputs_lib.load(cfg)
  validate.check_model(cfg, loaded.model.arch, loaded.model.num_layers)
  validate.check_data(cfg, inputs_lib.train_size(cfg, loaded))
  workdir_lib.check_same_config(cfg, workdir)
  try:
    fs.makedirs(workdir)
  except OSError as e:
    raise ConfigError(f"cannot create the workdir {workdir}: {e.strerror or e}") from None
  lock = lock_lib.workdir_lock(workdir) if parallel.is_primary() else contextlib.nullcontext()
  with lock:
    plan = _prepare(cfg, workdir, loaded)
    engine = _build(cfg, plan)
    with checkpoint.sigterm_flag() as stop:
      error = _train(plan, engine, stop)
      while error is not None:  # out of memory in a step: half the seeds per step, go on
        engine = sizing_lib.smaller(plan, engine, error)
        error = _train(plan, engine, stop)
    groups.remove_finished(workdir)
    summary = merge.merge(plan)
  spread = summary["reported_spread"]
  logging.info("%s: %d/%d failed runs; %s (%s) std / mean / median / max x100: %s", workdir,
               summary["failed_runs"], len(plan.seeds), plan.task.metric, cfg.select,
               " / ".join(f"{100 * spread[k]:.1f}" if spread.get(k) is not None else "—"
                          for k in ("std", "mean", "median", "max")))
  return summary


def _train(plan: Plan, engine: Engine, stop):
  """Trains the runs not finished yet, K at a time. Returns None when done, or the first line of
  an out-of-memory error: returned, not raised, so that the failed group's device buffers (held
  by the traceback's frames) are released before the caller compiles a smaller group. A group
  cut short that way restarts from its newest checkpoint (groups.py adopts a larger group's)."""
  try:
    if plan.stopping is not None:
      early_stop_run.train(plan, engine, stop)
      return None
    todo = [s for s in plan.todo if not fs.isfile(workdir_lib.run_path(plan.workdir, s, "json"))]
    k = engine.programs.seeds_per_group
    for g in range(0, len(todo), k):
      groups.train_and_write(plan, engine, todo[g:g + k], stop)
    return None
  except jax.errors.JaxRuntimeError as e:
    if not memory.is_oom(e):
      raise
    return memory.first_line(e)


def _prepare(cfg, workdir, loaded: inputs_lib.Inputs) -> Plan:
  """Readies the workdir (config.json, runs/), tokenizes, and fixes the step counts."""
  grid = runs_lib.parse(cfg)
  seeds = [r.number for r in grid]
  workdir_lib.prepare(cfg, workdir)
  parallel.barrier("workdir prepared")
  arrays = inputs_lib.tokenize(cfg, loaded, inputs_lib.token_cache_dir(workdir))
  todo = [s for s in seeds if not fs.isfile(workdir_lib.run_path(workdir, s, "json"))]
  if len(todo) < len(seeds):
    logging.info("resuming: %d of %d seeds already finished in %s", len(seeds) - len(todo),
                 len(seeds), workdir)
  n_train = len(arrays.train["labels"])
  spe = dataset.num_batches(n_train, cfg.train.batch_size)
  total = train_lib.total_steps(cfg.train, n_train, arrays.full_steps_per_epoch, loaded.task.name)
  model = loaded.model
  stop_at = early_stop.spec(cfg, total)
  points = evaluation.eval_steps(loaded.task.name, spe, total, cfg.train.eval_every_steps,
                                 cfg.train.evals_per_epoch)
  if stop_at is not None:  # the runs are ranked on their dev metric at the stop step
    points = sorted(set(points) | {stop_at.step})
  adapted = peft.adapt(model, peft.spec_of(cfg.peft))  # what each seed trains (engine/peft.py)
  logging.info("%s: %d train / %d dev examples, %d steps per epoch, %d steps, %d seeds, model %s "
               "(%s, %.1fM params, %d trained per seed, peft.method=%s)", loaded.task.name,
               n_train, len(arrays.dev["labels"]), spe, total, len(seeds), model.name, model.arch,
               models.param_count(model.params) / 1e6, peft.trainable_count(adapted),
               cfg.peft.method)
  return Plan(task=loaded.task, model=adapted, workdir=workdir, seeds=seeds,
              runs=runs_lib.by_number(grid), todo=todo,
              arrays=arrays, total_steps=total,
              eval_steps=points, stopping=stop_at,
              majority=metrics.majority(loaded.task.metric, arrays.dev["labels"]),
              saving=Saving(every_steps=cfg.checkpoint.every_steps, keep=cfg.checkpoint.keep,
                            keep_final_params=cfg.checkpoint.keep_final_params),
              setting=cfg.setting, select=cfg.select, data_seeds=runs_lib.uses_data_seeds(cfg),
              matmul_precision=cfg.model.matmul_precision,
              rep_examples=cfg.analysis.rep_examples,
              peft=peft.record(adapted),
              trainable_params=peft.trainable_count(adapted))


def _build(cfg, plan: Plan) -> Engine:
  """Seeds per group from memory (sizing.py), the compiled programs, the data on the devices."""
  model, layout = plan.model, parallel.Layout.create()
  axis = train_lib.seed_axis_for(cfg.train.seed_axis, jax.default_backend(), layout.num_devices)
  built = {}

  def programs_for(size: int) -> train_lib.Programs:  # one builder for every group size
    if size not in built:
      built[size] = train_lib.build_programs(
          cfg, model, n_train=len(plan.arrays.train["labels"]), total=plan.total_steps,
          layout=layout, seeds_per_group=size, seed_axis=axis)
    return built[size]

  c, n_params = model.config, models.param_count(model.params)
  formula = (parallel.bytes_per_seed(n_params, cfg.train.batch_size, cfg.train.max_seq_length,
                                     c.hidden_size, c.num_hidden_layers, c.num_attention_heads,
                                     2 if cfg.model.dtype == "bfloat16" else 4), 8 * n_params)
  chosen = sizing_lib.choose(cfg.train.seeds_per_step, formula, plan, layout, programs_for)
  programs, sizing = sizing_lib.compiled(plan, layout, programs_for, chosen)
  on_device = lambda arrays: jax.device_put(
      {n: v for n, v in dataset.eval_batches(arrays, cfg.train.eval_batch_size).items()
       if n != "weight"}, layout.replicated)
  logging.info("%d seeds to train, %d per step (%s over seeds), on %d device(s); K: %s",
               len(plan.todo), sizing.k, axis, layout.num_devices, sizing.how)
  return Engine(programs=programs, programs_for=programs_for,
                train_on_device=jax.device_put(plan.arrays.train, layout.replicated),
                dev_on_device=on_device(plan.arrays.dev), dev_labels=plan.arrays.dev["labels"],
                extra_dev={name: (on_device(arrays), arrays["labels"])
                           for name, arrays in plan.arrays.extra_dev.items()},
                layout=layout, sizing=sizing)
