"""Is parameter-efficient fine-tuning more stable across seeds? Full fine-tuning, LoRA and BitFit
(jaxstab/engine/peft.py, docs/peft.md) on RTE, MRPC and CoLA, each with Devlin's 3-epoch
recipe and the paper's 20-epoch baseline (`ours`), MiniLM-L6-H384 by default, 25 seeds.

Learning rates: full fine-tuning keeps each recipe's own (2e-5 / 1e-5... as the presets set).
LoRA takes 5e-4 (r=8, alpha=8, query and value), the rate of Hu et al.'s released RoBERTa-base
RTE script; that script also uses alpha=16, weight decay 0.1, 80 epochs and starts RTE from an
MNLI-trained adapter: this study does NOT run Hu et al.'s schedule, it runs the recipes' own
epochs, warmup and decay with LoRA's rate. BitFit takes 4e-4, one value of the grid Ben Zaken et
al. searched (1e-4, 4e-4, 7e-4, 1e-3), not tuned here.

Arguments: `methods=full+lora+bitfit` narrows the methods, `lora_lr=`, `bitfit_lr=` change the
rates, and the study grid's own (tasks=, settings=, seeds=, model=, ...). Settings are named
<task>_<recipe>_<method>. The reduced CPU run of docs/peft.md (RTE, Devlin, 500 examples,
8 seeds) is the PEFT line of scripts/cpu_reduced_studies.sh:
  python -m jaxstab.main --workdir=/tmp/peft_study \
    --config=configs/study_peft.py:tasks=rte,settings=devlin,seeds=1-8,train_examples=500 \
    --config.train.max_seq_length=64 --config.train.evals_per_epoch=1 \
    --config.train.eval_every_steps=0
"""
from jaxstab.config import config_lib

METHODS = ("full", "lora", "bitfit")


def get_config(arg: str = ""):
  methods, rates, rest = list(METHODS), {"lora": "5e-4", "bitfit": "4e-4"}, []
  for k, v in config_lib.parse_arg(arg):
    if k == "methods":
      methods = [m for m in v.split("+") if m]
      unknown = [m for m in methods if m not in METHODS]
      if unknown:
        raise config_lib.ConfigError(f"methods={v}: {', '.join(unknown)} unknown; choose from "
                                     f"{'+'.join(METHODS)}")
    elif k in ("lora_lr", "bitfit_lr"):
      rates[k[:-3]] = v
    else:
      rest.append(f"{k}={v}")
  model = [] if any(r.startswith("model=") for r in rest) else ["model=minilm"]
  cfg = config_lib.study_config(",".join(model + rest), tasks=("rte", "mrpc", "cola"),
                                settings=("devlin", "ours"), seeds="1-25")
  for name in list(cfg.settings):
    base = cfg.settings[name]
    del cfg.settings[name]
    for m in methods:
      cfg.settings[f"{name}_{m}"] = base + ("" if m == "full" else f",peft={m},lr={rates[m]}")
  return cfg
