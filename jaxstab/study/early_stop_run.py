"""Start many, continue the best (train.early_stop), driven in two phases.

Phase one trains every run to the stop step in its usual seed group, scores it (early_stop.py:
by its dev metric or by the probe's failure forecast), writes its partial files and saves the
group's state. The ranking then picks the runs that go on and is written to early_stop.json;
the stopped runs get their records (stopped_at), and the survivors are regrouped, from the saved
first-phase states, into new groups of the second phase's size and trained to the end exactly
as if they had never stopped.

Every step leaves a file that marks it done (a group's scores file, early_stop.json, a run's
record), so a rerun after a kill resumes from the last one. Reads only the setting's records
(plan.Plan, plan.Engine), never the config.
"""
import dataclasses
import math

import jax
from absl import logging

from jaxstab.engine import parallel, train as train_lib
from jaxstab.infra import checkpoint, fs
from jaxstab.infra.errors import ConfigError
from jaxstab.results import outputs
from jaxstab.study import early_stop, groups, merge, workdir as workdir_lib
from jaxstab.study.plan import Engine, Plan


def train(plan: Plan, engine: Engine, stop) -> None:
  """Every run to the stop step, rank, the best `keep` on to the end in new groups. Resumes
  from early_stop.json or the first phase's saved groups."""
  workdir = plan.workdir
  if fs.isfile(early_stop.decision_path(workdir)):
    decision = fs.read_json(early_stop.decision_path(workdir))
  else:
    decision = _rank(plan, engine, stop)
  infos = {name: fs.read_json(early_stop.scores_path(workdir, name))
           for name in decision["groups"]}
  _write_stopped(plan, decision, infos)
  finished = lambda n: fs.isfile(workdir_lib.run_path(workdir, n, "json"))
  todo = [n for n in decision["continued"] if not finished(n)]
  k2 = min(engine.programs.seeds_per_group, len(decision["continued"]))
  second = dataclasses.replace(engine, programs=engine.programs_for(k2))
  for g in range(0, len(todo), k2):
    group = todo[g:g + k2]
    groups.train_and_write(plan, second, group, stop,
                           initial=lambda group=group: _regroup(plan, engine, second, group,
                                                                infos))
  if parallel.is_primary():
    fs.rmtree(fs.join(workdir, "checkpoints", early_stop.CHECKPOINTS))


def _rank(plan: Plan, engine: Engine, stop) -> dict:
  """The first phase of every group, then the ranking, written as early_stop.json."""
  es, k = plan.stopping, engine.programs.seeds_per_group
  infos = _scored(plan)  # first phases done already: a rerun's, or groups of a K since halved
  done = {n for i in infos for n in i["group"]}
  rest = [n for n in plan.todo if n not in done]
  infos += [_first_phase(plan, engine, rest[g:g + k], stop) for g in range(0, len(rest), k)]
  scores = {int(n): (math.inf if v is None else v)
            for i in infos for n, v in i["scores"].items()}
  continued, stopped = early_stop.choose(scores, es.keep)
  decision = early_stop.write_decision(plan.workdir, es, scores, continued, stopped,
                                       {i["name"]: i["group"] for i in infos})
  logging.info("early stop at step %d (by %s): %d started, continuing %s", es.step, es.by,
               len(scores), continued)
  return decision


def _scored(plan: Plan):
  """The first-phase records (scores files) of groups made of runs still to do, in run order."""
  folder = fs.join(plan.workdir, "checkpoints", early_stop.CHECKPOINTS)
  names = [n for n in (fs.listdir(folder) if fs.isdir(folder) else []) if n.endswith(".json")]
  todo = set(plan.todo)
  infos = [fs.read_json(fs.join(folder, n)) for n in names]
  infos = [i for i in infos if set(i["group"]) <= todo]
  return sorted(infos, key=lambda i: plan.todo.index(i["group"][0]))


def _write_stopped(plan: Plan, decision: dict, infos: dict) -> None:
  """The record of each stopped run not written yet: its first phase, with stopped_at."""
  source = {n: info for info in infos.values() for n in info["group"]}
  for n in decision["stopped"]:
    if not fs.isfile(workdir_lib.run_path(plan.workdir, n, "json")) and parallel.is_primary():
      info, i = source[n], source[n]["group"].index(n)
      record = merge.run_record(n, info["host"]["records"][str(n)], plan.task,
                                info["host"]["last_loss"][i])
      record.update(plan.runs[n].record(), stopped_at=plan.stopping.step,
                    diverged_at=info["diverged_at"][i])
      outputs.write_json(workdir_lib.run_path(plan.workdir, n, "json"), record)


def _first_phase(plan: Plan, engine: Engine, group, stop) -> dict:
  """One group to the stop step: scores, partial files, its state saved for the second phase."""
  es, k = plan.stopping, engine.programs.seeds_per_group
  name = groups.group_name(group, k)
  path = early_stop.scores_path(plan.workdir, name)
  if fs.isfile(path):
    return fs.read_json(path)
  done = groups.train_to(plan, engine, group, stop, es.step)
  state, progress = done.state, done.progress
  if es.by == "dev":
    scores = [early_stop.score_dev(progress.records[n], plan.task.metric, es.step) for n in group]
  else:
    buffers = {key: parallel.to_host(v)[:len(group)] for key, v in state.probe.items()}
    scores = list(early_stop.score_probe(buffers, engine.programs.group_names, es.step))
  groups.write(plan, state, progress, partial=True)
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
  done.ckpt.close(remove=parallel.is_primary())
  parallel.barrier("first phase of a group saved")
  return info


def _regroup(plan: Plan, engine: Engine, second: Engine, group, infos):
  """The second phase's starting (state, progress) of `group`: its runs' rows of the first
  phase's saved group states, stacked into one group of the second phase's size."""
  parts, order = [], []
  for name, info in infos.items():
    rows = [info["group"].index(n) for n in group if n in info["group"]]
    if not rows:
      continue
    first = engine.programs_for(info["k"])
    like = first.create(*groups.keys(plan, groups.padded(info["group"], info["k"])))
    hold = checkpoint.GroupCheckpointer(plan.workdir, early_stop.checkpoint_name(name), 1, 1)
    restored = hold.restore_latest(like, train_lib.older_layouts(like))
    if restored is None:
      raise ConfigError(f"the saved first phase of {name} in {hold.directory} is "
                        "unreadable; rerun with --config.overwrite=True")
    parts.append(early_stop.take(restored[1], rows))
    order += [info["group"][r] for r in rows]
  state = early_stop.concat(parts)
  k2 = second.programs.seeds_per_group
  rows = [order.index(n) for n in groups.padded(group, k2)]
  state = jax.device_put(early_stop.take(state, rows),
                         parallel.Layout.create().seed_sharding(k2))
  progress = groups.Progress(list(group), {}, [])
  for n in group:
    info = next(i for i in infos.values() if n in i["group"])
    progress.records[n] = info["host"]["records"][str(n)]
    progress.last_loss.append(info["host"]["last_loss"][info["group"].index(n)])
  progress.step = plan.stopping.step
  return state, progress
