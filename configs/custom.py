"""Your own classification data, from CSV or JSON-lines files (docs/own-data.md).

Argument: the data's short keys below, then any key configs/rte.py takes (model=, setting=,
fidelity=, lr=, epochs=, seeds=, task= ...), e.g.
  configs/custom.py:path=examples/custom,text_a=review,label=sentiment,model=tiny-bert,seeds=1-4

  path=DIR            data.path: a folder holding train.csv (or .tsv) and dev.csv (or .tsv), or
                      train.jsonl and dev.jsonl with data=jsonl
  train=F, dev=F      data.train_file, data.dev_file: the files themselves (instead of path's)
  text_a=C, text_b=C  the text columns (CSV header names or JSON fields); text_b is optional
  label=C             the label column
  labels=a,b          the classes in id order (default: the training file's labels, sorted)
  metric=M            accuracy (default) | f1 | mcc | acc_and_f1; the last three need two
                      classes, the second being the positive one
  data=csv|jsonl      data.source (default csv)
  task=NAME           your data's name in summaries and tables (default custom)
  settings=a+b        a study: one setting per recipe (e.g. devlin+ours), named NAME_<recipe>

Runs in corrected mode (no reference-code quirks: they reproduce the paper's runs on GLUE, not a
recipe for your data) unless the argument says fidelity=reference.
"""
from jaxstab.config import config_lib
from jaxstab.infra.errors import ConfigError

SHORT = {"path": "data.path", "train": "data.train_file", "dev": "data.dev_file",
         "text_a": "data.text_a", "text_b": "data.text_b", "label": "data.label",
         "labels": "data.labels", "metric": "data.metric"}


def get_config(arg: str = ""):
  own, rest, recipes = [], [], []
  for key, value in config_lib.parse_arg(arg):
    if key in SHORT:
      own.append((SHORT[key], value))
    elif key == "settings":
      recipes = [s for s in value.split("+") if s]
    else:
      rest.append(f"{key}={value}")
  if not any(r.startswith("fidelity=") for r in rest):
    rest.append("fidelity=corrected")  # recorded as the user's: a study re-applies it
  cfg = config_lib.task_config("custom", ",".join(rest), data__source="csv")
  for dotted, value in own:
    config_lib.set_explicit(cfg, dotted, value)
  for recipe in recipes:
    if recipe not in config_lib.SETTINGS:
      raise ConfigError(f"unknown setting {recipe!r} in settings=; choose from: "
                        f"{', '.join(config_lib.SETTINGS)}")
    cfg.settings[f"{cfg.task}_{recipe}"] = f"setting={recipe}"
  return cfg
