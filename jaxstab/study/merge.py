"""A setting's merged results, rebuilt from its runs/ files at the end: metrics.jsonl,
TensorBoard events, probe.npz, predictions.npz and (last) summary.json with the spread
statistics, the early stop's record, the init / data-order decomposition and how much the
seeds' predictions disagree (instability_io).

`plan` is plan.Plan (its workdir, seeds, runs, task, model, majority, total_steps, stopping,
setting, select, data_seeds, matmul_precision); this module reads only those fields, never the
config.
"""
import json

import numpy as np

from jaxstab.data import metrics
from jaxstab.engine import parallel, peft, probe
from jaxstab.infra import fs
from jaxstab.results import forecast, outputs, records, stats
from jaxstab.study import early_stop, instability_io, workdir as workdir_lib


def merge(plan):
  """Builds metrics.jsonl, TensorBoard events, probe.npz, predictions.npz and summary.json from
  runs/."""
  workdir, seeds = plan.workdir, plan.seeds
  runs, probes = [], []
  for s in seeds:
    runs.append(records.read_run(workdir_lib.run_path(workdir, s, "json")).to_json())
    probes.append(fs.load_npz(workdir_lib.run_path(workdir, s, "npz")))
  merged = {k: np.stack([p[k] for p in probes]) for k in probes[0] if k != "step"}
  groups = probe.group_names(peft.trained_shapes(plan.model), plan.model.arch,
                             plan.model.num_layers)  # a PEFT run's probe: its trained groups
  merged.update(step=probes[0]["step"], groups=np.asarray(groups), seeds=np.asarray(seeds))
  out = summary(plan, runs)
  out["forecast"] = _forecast(out, merged, plan.total_steps)
  predictions = instability_io.add(out, plan, out["runs"])
  if not parallel.is_primary():
    return out
  fs.rmtree(fs.join(workdir, "tensorboard"))
  log = outputs.Log(workdir, seeds)
  for s in seeds:
    for line in fs.read_text(workdir_lib.run_path(workdir, s, "jsonl")).splitlines():
      log.write(json.loads(line))
  log.close()
  outputs.write_npz(fs.join(workdir, outputs.PROBE), **merged)
  if predictions is not None:
    outputs.write_npz(fs.join(workdir, outputs.PREDICTIONS), **predictions)
  records.write_setting(workdir, records.SettingSummary.from_json(out))
  return out


def _forecast(out: dict, merged: dict, total_steps: int):
  """The probe's failure forecast scored against how the runs that trained to the end ended
  (forecast.evaluate); None without probe records."""
  if "grad_norm" not in merged or not merged["grad_norm"].size:
    return None
  failed = {r["seed"]: r["failed"] for r in out["runs"]}
  rows = [i for i, n in enumerate(merged["seeds"]) if int(n) in failed]
  kept = {k: (v[rows] if k not in ("step", "groups", "seeds") else v) for k, v in merged.items()}
  kept["seeds"] = merged["seeds"][rows]
  return forecast.evaluate(kept, [failed[int(n)] for n in kept["seeds"]], total_steps)


def run_record(seed, records, task, final_train_loss):
  """A run's record from its dev records (metrics.jsonl lines): the final and the best one."""
  history = [{k: v for k, v in r.items() if k not in ("kind", "seed", "train_loss", "lr")}
             for r in records]
  final = dict(history[-1])
  best = max(history, key=lambda h: (h[task.metric], -h["step"]))
  return {"seed": seed, "final": final, "best": dict(best), "final_train_loss": final_train_loss}


def summary(plan, runs):
  """The setting's summary.json: the spread statistics over the runs that trained to the end
  (`runs`); runs stopped early are listed apart (`stopped_runs`, with `stopped_at`)."""
  metric, majority = plan.task.metric, plan.majority
  stopped = [r for r in runs if r.get("stopped_at") is not None]
  kept = [r for r in runs if r.get("stopped_at") is None]
  for r in kept:
    r["failed"] = bool(r.get("diverged_at") is not None
                       or metrics.is_failed(r["final"][metric], majority[metric]))
  for r in stopped:  # not judged: it never reached the end
    r["failed"] = None
  out = {"task": plan.task.name, "metric": metric, "majority": majority,
         "setting": plan.setting, "select": plan.select, "model": plan.model.name,
         "matmul_precision": plan.matmul_precision,
         "peft": plan.peft or {"method": "none"}, "trainable_params": plan.trainable_params,
         "total_steps": plan.total_steps, "seeds": [r["seed"] for r in runs],
         **stats.setting_stats(kept, metric, plan.select), "runs": kept}
  if plan.stopping is not None:
    es = plan.stopping
    decision = fs.read_json(early_stop.decision_path(plan.workdir))
    out["early_stop"] = {"at": es.at, "keep": es.keep, "by": es.by, "step": es.step,
                         "started": len(runs), "continued": len(kept),
                         "scores": decision["scores"],
                         **early_stop.steps_trained(len(runs), len(kept), es.step,
                                                    plan.total_steps)}
    out["stopped_runs"] = stopped
  k_record = fs.join(plan.workdir, workdir_lib.SEEDS_PER_STEP)
  if fs.isfile(k_record):  # how K was chosen, and each halving after an out-of-memory error
    out["seeds_per_step"] = fs.read_json(k_record)
  if plan.data_seeds:
    values = stats.reported({"runs": kept, "select": plan.select, "metric": metric})
    out["decomposition"] = stats.decomposition_of(values, [r["init_seed"] for r in kept],
                                                  [r["data_seed"] for r in kept])
  return out
