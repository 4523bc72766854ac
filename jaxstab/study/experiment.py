"""One setting of one task over its seeds: prepare, build, loop, write.

Seeds are trained K at a time (train.seeds_per_step; 0 = all that fit) by the programs that
train.build_programs makes, so every group of a setting reuses one compiled step. Each finished
seed is written at once to runs/ (atomically), so a rerun of the same command skips it; the
merged summary.json / probe.npz / metrics.jsonl are rebuilt from runs/ at the end.
"""
import contextlib
import dataclasses
import json
import math
import time
from typing import Any, Callable, Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxstab.infra import checkpoint, fs
from jaxstab.data import dataset, metrics
from jaxstab.engine import models, parallel
from jaxstab.results import outputs
from jaxstab.study import early_stop, evaluation, merge, progress as progress_lib, runs as runs_lib
from jaxstab.data import tasks
from jaxstab.engine import inputs as inputs_lib
from jaxstab.infra import lock as lock_lib
from jaxstab.engine import train as train_lib
from jaxstab.study import validate, workdir as workdir_lib
from jaxstab.infra.errors import ConfigError


@dataclasses.dataclass
class Plan:
  """What a setting will do, fixed before anything is compiled."""
  task: tasks.Task
  model: models.Model
  workdir: str
  seeds: List[int]            # run numbers (the seeds; seeds x data_seeds: see runs.py)
  runs: Dict[int, runs_lib.Run]  # run number -> its init and data seeds
  todo: List[int]             # runs without a finished record in runs/
  arrays: inputs_lib.Arrays   # tokenized train (as trained on) and dev
  total_steps: int
  eval_steps: List[int]       # steps after which dev is evaluated (0 and the end included)
  majority: Dict[str, float]  # the majority classifier's dev metrics: the failed-run line
  stopping: Optional[early_stop.Spec] = None  # train.early_stop, when on


@dataclasses.dataclass
class Engine:
  """The compiled programs and the data they read, on the devices."""
  programs: train_lib.Programs
  train_on_device: Any        # the whole tokenized training set, replicated
  dev_on_device: Any          # dev batches (without their weights), replicated
  dev_labels: np.ndarray
  extra_dev: Dict[str, tuple]  # further dev sets (MNLI's mismatched): name -> (batches, labels)


def run_setting(cfg, workdir: str) -> dict:
  """Trains the seeds of `cfg` not finished yet in workdir, then writes the merged config.json,
  metrics.jsonl, TensorBoard events, probe.npz and (last) summary.json; returns the summary.

  Every check and every input load happens before the workdir is created or changed."""
  validate.check_config(cfg)
  loaded = inputs_lib.load(cfg)
  validate.check_model(cfg, loaded.model.arch, loaded.model.num_layers)
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
      if plan.stopping is None:
        k = engine.programs.seeds_per_group
        for g in range(0, len(plan.todo), k):
          _train_group(cfg, plan, engine, plan.todo[g:g + k], stop)
      else:
        _train_early_stop(cfg, plan, engine, stop)
    summary = merge.merge(cfg, plan)
  spread = summary["reported_spread"]
  logging.info("%s: %d/%d failed runs; %s (%s) std / mean / median / max x100: %s", workdir,
               summary["failed_runs"], len(plan.seeds), plan.task.metric, cfg.select,
               " / ".join(f"{100 * spread[k]:.1f}" if spread.get(k) is not None else "—"
                          for k in ("std", "mean", "median", "max")))
  return summary


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
  points = evaluation.eval_steps(cfg, loaded.task.name, spe, total)
  if stop_at is not None:  # the runs are ranked on their dev metric at the stop step
    points = sorted(set(points) | {stop_at.step})
  logging.info("%s: %d train / %d dev examples, %d steps per epoch, %d steps, %d seeds, model %s "
               "(%s, %.1fM params)", loaded.task.name, n_train, len(arrays.dev["labels"]), spe,
               total, len(seeds), model.name, model.arch, models.param_count(model.params) / 1e6)
  return Plan(task=loaded.task, model=model, workdir=workdir, seeds=seeds,
              runs=runs_lib.by_number(grid), todo=todo,
              arrays=arrays, total_steps=total,
              eval_steps=points, stopping=stop_at,
              majority=metrics.majority(loaded.task.metric, arrays.dev["labels"]))


def _build(cfg, plan: Plan) -> Engine:
  """Seeds per group from memory, the compiled programs, the data on the devices."""
  model, layout = plan.model, parallel.Layout.create()
  c, n_params = model.config, models.param_count(model.params)
  per_seed = parallel.bytes_per_seed(n_params, cfg.train.batch_size, cfg.train.max_seq_length,
                                     c.hidden_size, c.num_hidden_layers, c.num_attention_heads,
                                     2 if cfg.model.dtype == "bfloat16" else 4)
  k = parallel.seeds_per_step(cfg.train.seeds_per_step, max(len(plan.todo), 1), layout,
                              per_seed, 8 * n_params)
  programs = train_lib.build_programs(cfg, model, n_train=len(plan.arrays.train["labels"]),
                                      total=plan.total_steps, layout=layout, seeds_per_group=k)
  on_device = lambda arrays: jax.device_put(
      {n: v for n, v in dataset.eval_batches(arrays, cfg.train.eval_batch_size).items()
       if n != "weight"}, layout.replicated)
  logging.info("%d seeds to train, %d per step (%s over seeds), on %d device(s)", len(plan.todo),
               k, programs.seed_axis, layout.num_devices)
  return Engine(programs=programs,
                train_on_device=jax.device_put(plan.arrays.train, layout.replicated),
                dev_on_device=on_device(plan.arrays.dev), dev_labels=plan.arrays.dev["labels"],
                extra_dev={name: (on_device(arrays), arrays["labels"])
                           for name, arrays in plan.arrays.extra_dev.items()})


@dataclasses.dataclass
class _Group:
  """One seed group's host-side progress (what a checkpoint stores besides the device state)."""
  seeds: List[int]
  records: Dict[int, list]
  last_loss: list
  step: int = 0

  def host_state(self):
    return {"records": {str(s): self.records[s] for s in self.seeds},
            "last_loss": self.last_loss}


def _group_name(group, k: int) -> str:
  return f"seeds_{'-'.join(map(str, group))}_of_{k}"


def _padded(group, k: int):
  """A group padded to K slots with repeats of its last run (whose results are dropped)."""
  return list(group) + [group[-1]] * (k - len(group))


def _start_group(plan: Plan, engine: Engine, group, ckpt, initial: Optional[Callable] = None):
  """The group's newest checkpoint, else `initial()` (state, progress), else a fresh state."""
  state = engine.programs.create(*_keys(plan, _padded(group, engine.programs.seeds_per_group)))
  restored = ckpt.restore_latest(state)
  if restored is not None:
    progress = _Group(list(group), {}, [])
    progress.step, state, host = restored
    progress.records = {s: host["records"][str(s)] for s in group}
    progress.last_loss = host["last_loss"]
    logging.info("seeds %s: resumed from the checkpoint at step %d", group, progress.step)
    return state, progress
  if initial is not None:
    return initial()
  return state, _Group(list(group), {s: [] for s in group}, [None] * len(group))


def _keys(plan: Plan, numbers):
  """The seed keys (head, dropout, Mixout) and data-order keys of runs `numbers`."""
  runs = [plan.runs[n] for n in numbers]
  seed_keys = np.stack([np.asarray(train_lib.seed_key(r.init_seed)) for r in runs])
  data_keys = np.stack([np.asarray(train_lib.data_key_of(train_lib.seed_key(
      r.init_seed if r.data_seed is None else r.data_seed))) for r in runs])
  return seed_keys, data_keys


def _train_until(state, engine: Engine, progress: _Group, point: int, ckpt, stop, clock):
  """Train steps up to `point`; checkpoints when due; a SIGTERM saves and stops."""
  while progress.step < point:
    state = engine.programs.step(state, engine.train_on_device, engine.programs.anchor)
    progress.step += 1
    clock.stepped(progress.step)
    checkpoint.fault("kill_at_step", progress.step)
    checkpoint.fault("sigterm_at_step", progress.step)
    if stop[0]:
      ckpt.save(progress.step, state, progress.host_state(), wait=True)
      raise checkpoint.Preempted(f"stopped by SIGTERM at step {progress.step}; checkpoint in "
                                 f"{ckpt.directory}; rerun the same command to resume")
    if ckpt.due(progress.step) and progress.step != point:
      ckpt.save(progress.step, state, progress.host_state())
  return state


def _evaluate(state, plan: Plan, engine: Engine, progress: _Group):
  """Reads the mean training loss since the last evaluation, evaluates dev, appends records.
  Returns (state with the loss sums reset, seconds spent in evaluation)."""
  if progress.step > 0:  # mean training loss since the previous evaluation, read once here
    loss = parallel.to_host(state.loss_sum / jnp.maximum(state.loss_count, 1.0))
    state = state.replace(loss_sum=jnp.zeros_like(state.loss_sum),
                          loss_count=jnp.zeros_like(state.loss_count))
    progress.last_loss = [float(x) for x in loss[:len(progress.seeds)]]
  t0 = time.time()  # the train steps before it have finished: the loss was read above
  k, n = engine.programs.seeds_per_group, len(progress.seeds)
  found = [{} for _ in progress.seeds]
  sets = [("", engine.dev_on_device, engine.dev_labels)] + [
      (f"{name}_", batches, labels) for name, (batches, labels) in engine.extra_dev.items()]
  for prefix, batches, labels in sets:
    logits = parallel.to_host(engine.programs.eval_logits(state.params, batches))
    logits = logits.astype(np.float32).reshape(k, -1, logits.shape[-1])[:n, :len(labels)]
    for i in range(n):
      found[i].update({prefix + key: v for key, v in
                       metrics.score(plan.task.metric, logits[i], labels).items()})
  seconds = time.time() - t0
  checkpoint.fault("kill_in_eval", progress.step)
  lr = float(engine.programs.schedule(max(progress.step - 1, 0)))
  for i, s in enumerate(progress.seeds):
    progress.records[s].append(dict(kind="dev", seed=s, step=progress.step,
                                    train_loss=progress.last_loss[i], lr=lr, **found[i]))
  return state, seconds


def _train_group(cfg, plan: Plan, engine: Engine, group, stop, initial=None, until=None):
  """Trains one group of seeds together, evaluating at plan.eval_steps, then writes each real
  seed's files into runs/. With `until` it stops at that step and returns (state, progress)
  unwritten instead (the first phase of an early stop); `initial` gives a starting state."""
  ckpt = checkpoint.GroupCheckpointer(plan.workdir, _group_name(
      group, engine.programs.seeds_per_group), cfg.checkpoint.every_steps, cfg.checkpoint.keep)
  state, progress = _start_group(plan, engine, group, ckpt, initial)
  done = {r["step"] for r in progress.records[group[0]]}
  t0, eval_s, clock = time.time(), 0.0, progress_lib.Clock()
  end = until or plan.total_steps
  for point in plan.eval_steps:
    if point in done or (until is not None and point > until):
      continue
    state = _train_until(state, engine, progress, point, ckpt, stop, clock)
    state, seconds = _evaluate(state, plan, engine, progress)
    eval_s += seconds
    clock.evaluated(seconds)
    if ckpt.due(progress.step):
      ckpt.save(progress.step, state, progress.host_state())
    left = sum(1 for p in plan.eval_steps if progress.step < p <= end)
    logging.info("seeds %s: step %d/%d, %s, dev %s %s", group, progress.step, plan.total_steps,
                 clock.line(progress.step, end, left, cfg.train.batch_size * len(group)),
                 plan.task.metric,
                 " ".join(f"{progress.records[s][-1][plan.task.metric]:.3f}" for s in group))
  wall = time.time() - t0
  logging.info("seeds %s: %.0f s, of which evaluation %.0f s (%.0f%%)", group, wall, eval_s,
               100 * eval_s / max(wall, 1e-9))
  if until is not None:
    return state, progress, ckpt
  _write_group(cfg, plan, state, progress)
  ckpt.close(remove=parallel.is_primary())
  parallel.barrier("seed group written")
  return None


def _train_early_stop(cfg, plan: Plan, engine: Engine, stop):
  """Every run to the stop step, rank, the best `keep` on to the end in new groups
  (early_stop.py). Resumes from early_stop.json or the first phase's saved groups."""
  es, workdir = plan.stopping, plan.workdir
  if fs.isfile(early_stop.decision_path(workdir)):
    decision = fs.read_json(early_stop.decision_path(workdir))
  else:
    k = engine.programs.seeds_per_group
    infos = [_first_phase(cfg, plan, engine, plan.todo[g:g + k], stop)
             for g in range(0, len(plan.todo), k)]
    scores = {int(n): (math.inf if v is None else v)
              for i in infos for n, v in i["scores"].items()}
    continued, stopped = early_stop.choose(scores, es.keep)
    decision = early_stop.write_decision(workdir, es, scores, continued, stopped,
                                         {i["name"]: i["group"] for i in infos})
    logging.info("early stop at step %d (by %s): %d started, continuing %s", es.step, es.by,
                 len(scores), continued)
  infos = {name: fs.read_json(early_stop.scores_path(workdir, name))
           for name in decision["groups"]}
  source = {n: info for info in infos.values() for n in info["group"]}
  finished = lambda n: fs.isfile(workdir_lib.run_path(workdir, n, "json"))
  for n in decision["stopped"]:
    if not finished(n) and parallel.is_primary():
      info, i = source[n], source[n]["group"].index(n)
      record = merge.run_record(n, info["host"]["records"][str(n)], plan.task,
                                info["host"]["last_loss"][i])
      record.update(plan.runs[n].record(), stopped_at=es.step,
                    diverged_at=info["diverged_at"][i])
      outputs.write_json(workdir_lib.run_path(workdir, n, "json"), record)
  todo = [n for n in decision["continued"] if not finished(n)]
  k2 = min(engine.programs.seeds_per_group, len(decision["continued"]))
  second = dataclasses.replace(engine, programs=_programs(cfg, plan, engine, k2))
  for g in range(0, len(todo), k2):
    group = todo[g:g + k2]
    _train_group(cfg, plan, second, group, stop,
                 initial=lambda group=group: _regroup(cfg, plan, engine, second, group, infos))
  if parallel.is_primary():
    fs.rmtree(fs.join(workdir, "checkpoints", early_stop.CHECKPOINTS))


def _programs(cfg, plan: Plan, engine: Engine, k: int) -> train_lib.Programs:
  """The setting's programs for seed groups of k (the same builder, another group size)."""
  if k == engine.programs.seeds_per_group:
    return engine.programs
  return train_lib.build_programs(cfg, plan.model, n_train=len(plan.arrays.train["labels"]),
                                  total=plan.total_steps, layout=parallel.Layout.create(),
                                  seeds_per_group=k, seed_axis=engine.programs.seed_axis)


def _first_phase(cfg, plan: Plan, engine: Engine, group, stop) -> dict:
  """One group to the stop step: scores, partial files, its state saved for the second phase."""
  es, k = plan.stopping, engine.programs.seeds_per_group
  name = _group_name(group, k)
  path = early_stop.scores_path(plan.workdir, name)
  if fs.isfile(path):
    return fs.read_json(path)
  state, progress, ckpt = _train_group(cfg, plan, engine, group, stop, until=es.step)
  if es.by == "dev":
    scores = [early_stop.score_dev(progress.records[n], plan.task.metric, es.step) for n in group]
  else:
    buffers = {key: parallel.to_host(v)[:len(group)] for key, v in state.probe.items()}
    scores = list(early_stop.score_probe(buffers, engine.programs.group_names, es.step))
  _write_group(cfg, plan, state, progress, partial=True)
  # a save cut short before the scores file was written leaves a step orbax will not overwrite
  fs.rmtree(fs.join(plan.workdir, "checkpoints", early_stop.checkpoint_name(name)))
  hold = checkpoint.GroupCheckpointer(plan.workdir, early_stop.checkpoint_name(name), 1, 1)
  hold.save(progress.step, state, progress.host_state(), wait=True)
  diverged = parallel.to_host(state.diverged_at)[:len(group)]
  info = {"name": name, "group": list(group), "k": k, "host": progress.host_state(),
          "diverged_at": [int(d) if d >= 0 else None for d in diverged],
          "scores": {str(n): (float(v) if math.isfinite(v) else None)
                     for n, v in zip(group, scores)}}
  if parallel.is_primary():
    outputs.write_json(path, info)  # last: it marks this group's first phase done
  ckpt.close(remove=parallel.is_primary())
  parallel.barrier("first phase of a group saved")
  return info


def _regroup(cfg, plan: Plan, engine: Engine, second: Engine, group, infos):
  """The second phase's starting state of `group`: its runs' rows of the first phase's saved
  group states, stacked into one group of the second phase's size."""
  parts, order = [], []
  for name, info in infos.items():
    rows = [info["group"].index(n) for n in group if n in info["group"]]
    if not rows:
      continue
    first = dataclasses.replace(engine, programs=_programs(cfg, plan, engine, info["k"]))
    like = first.programs.create(*_keys(plan, _padded(info["group"], info["k"])))
    hold = checkpoint.GroupCheckpointer(plan.workdir, early_stop.checkpoint_name(name), 1, 1)
    restored = hold.restore_latest(like)
    if restored is None:
      raise ConfigError(f"the saved first phase of {name} in {hold.directory} is "
                        "unreadable; rerun with --config.overwrite=True")
    parts.append(early_stop.take(restored[1], rows))
    order += [info["group"][r] for r in rows]
  state = early_stop.concat(parts)
  k2 = second.programs.seeds_per_group
  rows = [order.index(n) for n in _padded(group, k2)]
  state = jax.device_put(early_stop.take(state, rows),
                         parallel.Layout.create().seed_sharding(k2))
  progress = _Group(list(group), {}, [])
  for n in group:
    info = next(i for i in infos.values() if n in i["group"])
    progress.records[n] = info["host"]["records"][str(n)]
    progress.last_loss.append(info["host"]["last_loss"][info["group"].index(n)])
  progress.step = plan.stopping.step
  return state, progress


def _write_group(cfg, plan: Plan, state, progress: _Group, partial: bool = False):
  """Each real seed's probe, metrics and (last: it marks the seed finished) its record;
  `partial`: the probe and metrics only (a run paused by an early stop)."""
  probes = {key: parallel.to_host(v) for key, v in state.probe.items()}
  diverged = parallel.to_host(state.diverged_at)
  for i, s in enumerate(progress.seeds if parallel.is_primary() else []):
    path = lambda kind, s=s: workdir_lib.run_path(plan.workdir, s, kind)
    outputs.write_npz(path("npz"), **{key: v[i] for key, v in probes.items()})
    fs.write_lines(path("jsonl"), (json.dumps(r) + "\n" for r in progress.records[s]))
    if partial:
      continue
    record = merge.run_record(s, progress.records[s], plan.task, progress.last_loss[i])
    record.update(plan.runs[s].record())
    record["diverged_at"] = int(diverged[i]) if diverged[i] >= 0 else None
    outputs.write_json(path("json"), record)
  if cfg.checkpoint.keep_final_params and not partial:
    for i, s in enumerate(progress.seeds):
      checkpoint.save_params(plan.workdir, s,
                             jax.tree_util.tree_map(lambda x, i=i: x[i], state.params))
