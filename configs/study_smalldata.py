"""The paper's small-data ablation (Fig. 3): 1,000 random training examples, 25 seeds, the
Devlin recipe either for 3 epochs or for as many steps as 3 epochs of the full training set
(RTE 468, MRPC 690, CoLA 1,602), next to the full-data Devlin run. Narrow with tasks=...,
seeds=..., model=..."""
from jaxstab.config import config_lib


def get_config(arg: str = ""):
  cfg = config_lib.study_config(arg, tasks=("rte", "mrpc", "cola"), settings=("devlin",),
                                seeds="1-25")
  for name in list(cfg.settings):
    base = cfg.settings[name]
    task = name.split("_")[0]
    cfg.settings[f"{task}_full_3ep"] = base
    cfg.settings[f"{task}_n1000_3ep"] = base + ",train_examples=1000"
    cfg.settings[f"{task}_n1000_fullsteps"] = base + ",train_examples=1000,steps_of_full_epochs=3"
    del cfg.settings[name]
  return cfg
