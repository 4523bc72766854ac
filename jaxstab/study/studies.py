"""A study: one or more settings (each a set of overrides) that share the seeds.

A plain task config is a study of one setting, written straight into the workdir. A study
config lists its settings in `settings` (name -> argument string, e.g. "task=mrpc,setting=ours");
each runs in workdir/<name>/ and the study writes the comparison: summary.json (a `settings`
list plus Levene and permutation p-values), summary.csv and table.md (Table 1's shape, then the
confidence intervals and the expected best-of-n). Each setting's results
are written as soon as it finishes, so a later crash loses nothing finished.

A setting that fails does not stop the others. At the end the study says which failed, and how:
when every failure was the user's mistake (a ConfigError) it raises a ConfigError (one line, exit
2); when one was an internal error it raises a RuntimeError caused by that error, so its
traceback is printed and the status is 1 (each internal error's traceback is also logged as it
happens). Either way the finished settings' summaries and the study's summary are written first.
"""
from absl import logging

from jaxstab.config import config_lib
from jaxstab.engine import inputs as inputs_lib, models, parallel
from jaxstab.infra import checkpoint, fs
from jaxstab.infra.errors import ConfigError
from jaxstab.results import records, stats, tables
from jaxstab.study import experiment, validate, workdir as workdir_lib


def expand(cfg):
  """[(name, config)] for every setting of the study (one unnamed entry for a plain config),
  each resolved in one fixed order: the study's values, the setting's presets and values, then
  the user's explicit values (`explicit`, in the order given), then values that follow from
  others (config_lib.resolve). Each is a copy: `cfg` is not changed."""
  if not cfg.settings:
    sub = cfg.copy_and_resolve_references()
    config_lib.resolve(sub)
    return [("", sub)]
  out = []
  for name, arg in cfg.settings.items():
    sub = cfg.copy_and_resolve_references()
    with sub.unlocked():
      sub.settings = {}
    config_lib.apply_arg(sub, arg, explicit=False)
    config_lib.reapply_explicit(sub)
    config_lib.resolve(sub)
    out.append((name, sub))
  return out


def check(settings, workdir: str) -> None:
  """Every check of every setting, before the first one touches a file: the config itself, what
  depends on its model (read from the model's config alone), on the size of its training set
  (read from the data alone, once per data source), an earlier run's config and its finished
  seeds' files."""
  sizes = {}  # training examples, by the task and data keys that decide them
  for name, sub in settings:
    validate.check_config(sub)
    shape = models.shape_of(sub.model)
    if shape is not None:
      validate.check_model(sub, *shape)
    data = repr((sub.task, sorted(sub.data.to_dict().items())))
    if data not in sizes:
      sizes[data] = inputs_lib.train_size(sub)
    validate.check_data(sub, sizes[data], name)
    where = fs.join(workdir, name) if name else workdir
    workdir_lib.check_same_config(sub, where)
    workdir_lib.check_finished(sub, where)


def run(cfg, workdir: str) -> dict:
  settings = expand(cfg)
  check(settings, workdir)
  results, errors, internal = [], [], []
  for name, sub in settings:
    where = fs.join(workdir, name) if name else workdir
    try:
      summary = experiment.run_setting(sub, where)
    except checkpoint.Preempted:
      raise
    except Exception as e:  # pylint: disable=broad-except
      if len(settings) == 1 or fs.out_of_space(e):  # a full disk would stop the others too
        raise
      if isinstance(e, ConfigError):
        errors.append({"name": name, "error": str(e)})
        logging.error("setting %s failed: %s (the other settings go on)", name, e)
      else:
        errors.append({"name": name, "error": f"{type(e).__name__}: {e}"})
        internal.append(e)
        logging.exception("setting %s failed with an internal error (the other settings go on)",
                          name)
      continue
    recipe = name.replace(f"{sub.task}_", "", 1) if name else sub.setting
    results.append(dict(summary, name=name or f"{summary['task']}_{summary['setting']}",
                        recipe=recipe))
  listed = "; ".join(f"{e['name']}: {e['error']}" for e in errors)
  if not results:
    raise _failure(f"every setting failed: {listed}", internal)
  study = _write(workdir, results, errors)
  if errors:
    raise _failure(f"{len(errors)} of {len(settings)} settings failed ({listed}); the others are "
                   f"in {workdir}/summary.json. Fix and rerun: finished settings are not "
                   "retrained.", internal)
  return study


def _failure(message: str, internal) -> Exception:
  """What a study with failed settings raises: a ConfigError when every failure was the user's
  mistake; else a RuntimeError caused by the first internal error, whose traceback Python then
  prints (exit status 1), since a fault in jaxstab must not read as a mistake in the config."""
  if not internal:
    return ConfigError(message)
  error = RuntimeError(message)
  error.__cause__ = internal[0]
  return error


def _write(workdir, results, errors=()):
  table = tables.table1_markdown(results)
  study = {"settings": results, "levene": stats.levene_table(results), "table": table,
           "errors": list(errors)}
  if len(results) == 1:  # a plain run: its own summary with the study fields added
    study = dict(results[0], **study)
  if not parallel.is_primary():
    return study
  fs.makedirs(workdir)
  fs.write_text(fs.join(workdir, "summary.csv"), tables.summary_csv(results))
  fs.write_text(fs.join(workdir, "table.md"), tables.table_md(results))
  records.write_study(workdir, records.StudySummary.from_json(study))
  print("final dev results, std / mean / median / max (x100):\n" + table)
  return study
