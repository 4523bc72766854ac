"""The paper's Fig. 5: RoBERTa-large and ALBERT-large-v2 (and BERT-large) on RTE, MRPC, CoLA,
the Devlin recipe vs the paper's baseline, 25 seeds each. Narrow with `tasks=`, `settings=`,
`models=` (joined with '+'), e.g. `models=roberta-large,tasks=rte`."""
from jaxstab import config_lib


def get_config(arg: str = ""):
  return config_lib.study_config(arg, tasks=("rte", "mrpc", "cola"), settings=("devlin", "ours"),
                                 models=("roberta-large", "albert-large-v2"), seeds="1-25")
