"""The paper's bias-correction ablation: on RTE, BERT-large, RoBERTa-large and ALBERT-large-v2
with the Devlin recipe (3 epochs, end-of-training result) with Adam's bias correction off
(`devlin`) and on (`devlin_bc`), at learning rates 1e-5, 2e-5 and 3e-5, 25 seeds each: 18
settings, 450 runs.

The grid is the reference's: configs/rte/pooler-{bert-large-uncased,roberta-large,
albert-large-v2}_bsz_16_lr_{1,2,3}e-05_adamW[_bias-correct].yaml in uds-lsv/bert-stable-fine-tuning
(BERT-large also has 5e-5 there; add it with `lrs=1e-5+2e-5+3e-5+5e-5`). Narrow with `models=`,
`lrs=`, `settings=` (joined with '+'), e.g. `models=bert-large-uncased,lrs=2e-5`.
"""
from jaxstab.config import config_lib


def get_config(arg: str = ""):
  return config_lib.study_config(
      arg, tasks=("rte",), settings=("devlin", "devlin_bc"),
      models=("bert-large-uncased", "roberta-large", "albert-large-v2"),
      lrs=("1e-5", "2e-5", "3e-5"), seeds="1-25")
