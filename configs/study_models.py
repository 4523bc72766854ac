"""The Devlin recipe against the paper's baseline on each model: RoBERTa-large and
ALBERT-large-v2 (the models the paper adds to BERT-large) on RTE, MRPC and CoLA, 25 seeds each.

Narrow with `tasks=`, `settings=`, `models=` (joined with '+'), e.g.
`--config=configs/study_models.py:models=roberta-large,tasks=rte`.
"""
from jaxstab.config import config_lib


def get_config(arg: str = ""):
  return config_lib.study_config(arg, tasks=("rte", "mrpc", "cola"), settings=("devlin", "ours"),
                                 models=("roberta-large", "albert-large-v2"), seeds="1-25")
