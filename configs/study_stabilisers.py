"""Every recipe jaxstab has, side by side, on the paper's tasks (RTE, MRPC, CoLA), 25 seeds:
Devlin's recipe and the paper's baseline (`ours`); Zhang et al.'s stabilisers (`mixout`,
`reinit`, `llrd`, `prior_wd`); and the later ones, each on top of Devlin's recipe and of the
baseline: R3F, R4F, Child-Tuning-D, Child-Tuning-F and NoisyTune (`r3f` / `ours_r3f`, ...;
docs/running.md, "Later stabilisers"). 16 settings per task.

Narrow it with the usual grid arguments (joined with '+'): `tasks=`, `settings=`, `lrs=`, and
pick the model with `model=` (default BERT-large, the paper's). The reduced CPU run of
docs/results/README.md (MiniLM, 500 RTE examples, lr 5e-5, Devlin's half) is in
scripts/cpu_reduced_studies.sh; e.g. its first line:
  --config=configs/study_stabilisers.py:model=minilm,tasks=rte,lrs=5e-5,train_examples=500,\
    seeds=1-5,settings=devlin+r3f+r4f+child_tuning_d+child_tuning_f+noisytune
"""
from jaxstab.config import config_lib

SETTINGS = ("devlin", "ours", "mixout", "reinit", "llrd", "prior_wd",
            "r3f", "ours_r3f", "r4f", "ours_r4f", "child_tuning_d", "ours_child_tuning_d",
            "child_tuning_f", "ours_child_tuning_f", "noisytune", "ours_noisytune")


def get_config(arg: str = ""):
  return config_lib.study_config(arg, tasks=("rte", "mrpc", "cola"), settings=SETTINGS,
                                 seeds="1-25")
