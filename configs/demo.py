"""Offline demo: a tiny random BERT on the project's own sentence-pair task; no download.

Four seeds, 20 epochs; about 80 s on 2 CPU cores. Try `configs/demo.py:setting=ours` to see the
paper's baseline recipe on the same task, or `model=tiny-albert`.
"""
from jaxstab.config import config_lib


def get_config(arg: str = ""):
  cfg = config_lib.task_config("demo", "", model__name_or_path="tiny-bert")
  # jaxstab's own task, not the paper's: no reference-code quirks, whatever the setting
  # (`fidelity=reference` in the argument still switches them on).
  config_lib.apply_arg(cfg, "fidelity=corrected")
  cfg.data.source = "synthetic"
  cfg.model.dropout = 0.1
  cfg.model.tiny.vocab_size = 200
  cfg.optim.lr = 1e-3
  cfg.seeds = "1-4"                    # four seeds in one vmapped program: spread and failures
  cfg.train.epochs = 20.0
  cfg.train.batch_size = 32
  cfg.train.max_seq_length = 32
  cfg.train.evals_per_epoch = 1
  cfg.probe.every = 5
  return config_lib.apply_arg(cfg, arg)
