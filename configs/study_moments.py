"""Does keeping Adam's moments in bfloat16 (`optim.moments_dtype`, half the optimizer memory)
cost accuracy? One recipe twice on the same seeds, moments in float32 and in bfloat16; the
study's Levene test and table say whether the two differ.

`epochs=E` sets the recipe's epochs (the user's values win over every preset, the recipe's
20 epochs included). The CPU run in BUILD_NOTES:
  --config=configs/study_moments.py:model=minilm,tasks=mrpc,seeds=1-4,train_examples=1000,epochs=3
  --config.train.max_seq_length=64 --config.train.evals_per_epoch=1
"""
from jaxstab.config import config_lib


def get_config(arg: str = ""):
  cfg = config_lib.study_config(arg, tasks=("cola",), settings=("ours",), seeds="1-25")
  for name in list(cfg.settings):
    base = cfg.settings[name]
    del cfg.settings[name]
    cfg.settings[f"{name}_moments_fp32"] = base
    cfg.settings[f"{name}_moments_bf16"] = base + ",moments=bfloat16"
  return cfg
