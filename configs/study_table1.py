"""The paper's Table 1: RTE, MRPC, CoLA x {devlin, mixout, ours} x 25 seeds, bert-large-uncased.

Argument: the usual (model=..., seeds=...). `tasks=rte+mrpc` and `settings=devlin+ours` narrow
the grid, e.g. `--config=configs/study_table1.py:tasks=rte,settings=devlin+ours,seeds=1-5`.
"""
from jaxstab.config import config_lib


def get_config(arg: str = ""):
  return config_lib.study_config(arg, tasks=("rte", "mrpc", "cola"),
                                 settings=("devlin", "mixout", "ours"), seeds="1-25")
