#!/usr/bin/env bash
# The full-size MiniLM proxy study (configs/study_minilm.py: 25 seeds, length 128, the paper's
# 20-epoch baseline, Devlin at 1e-5 .. 5e-5 on RTE) in one call on the lent GPU machine.
#
# On your own machine, in the project root, once (.whl/ and carry/ are git-ignored):
#   bash scripts/gpu_minilm_study.sh --prepare
# which downloads the wheels the GPU image lacks (transformers 4.x with its Flax classes, ...),
# writes an fp16 copy of MiniLM (scripts/carry_minilm.py; fp32 is restored on load) and copies
# the RTE/MRPC/CoLA train and dev files from ../shared/glue (which does not travel) to carry/glue.
# Then, with the `run` tool: command "bash scripts/gpu_minilm_study.sh", carry [".whl", "carry"],
# timeout_s = BUDGET + 60.
#
# The studies run in stages, most important first, each a complete study workdir when it ends:
#   1 RTE Devlin (2e-5) vs ours       2 RTE Devlin at 1e-5, 3e-5, 5e-5 (extends 1)
#   3 MRPC Devlin   4 CoLA Devlin     5 MRPC ours (extends 3)   6 CoLA ours (extends 4)
# Everything still running at BUDGET seconds is killed: finished settings keep their
# <setting>/summary.json (jaxstab.compare reads them), the setting in flight is lost.
# $OUT gets run.log and minilm_gpu.tgz (the three workdirs without token caches, rewritten after
# every stage).
#
# Env: BUDGET (seconds, default 520), STAGES (default "1 2 3 4 5 6"), SEEDS (default 1-25),
# WORK (default /tmp/jaxstab_gpu), OUT; extra arguments go to every jaxstab.main call
# (a CPU dry run: SEEDS=1-2 STAGES=1 bash scripts/gpu_minilm_study.sh --config.train.max_steps=4).
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--prepare" ]]; then
  set -e
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl transformers==4.57.6 tokenizers==0.22.2 huggingface_hub==0.36.0 ml_collections==1.1.0 \
    tensorboardX==2.6.5
  python3 scripts/carry_minilm.py carry/minilm_fp16 --dtype=float16
  for t in RTE MRPC CoLA; do
    mkdir -p "carry/glue/$t" && cp "../shared/glue/$t/train.tsv" "../shared/glue/$t/dev.tsv" "carry/glue/$t/"
  done
  du -sh .whl carry
  exit 0
fi

BUDGET=${BUDGET:-520}; STAGES=${STAGES:-1 2 3 4 5 6}; SEEDS=${SEEDS:-1-25}
WORK=${WORK:-/tmp/jaxstab_gpu}; OUT=${OUT:-$(mktemp -d /tmp/gpu_minilm.XXXXXX)}
mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$OUT/run.log") 2>&1
START=$SECONDS
left() { echo $(( BUDGET - (SECONDS - START) )); }
echo "== gpu_minilm_study.sh $(date -u +%FT%TZ) budget=${BUDGET}s stages=[$STAGES] seeds=$SEEDS"

if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 3; }
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
for need in carry/minilm_fp16/model.safetensors carry/glue/RTE/train.tsv; do
  [[ -f "$need" ]] || { echo "missing $need: run 'bash scripts/gpu_minilm_study.sh --prepare' first"; exit 2; }
done
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import jax, flax, transformers; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'transformers', transformers.__version__)" \
  || exit 3

stage_arg() {  # the study_minilm argument and workdir of each stage
  case $1 in
    1) echo "tasks=rte,lrs=2e-5 minilm_rte" ;;
    2) echo "tasks=rte minilm_rte" ;;
    3) echo "tasks=mrpc,lrs=2e-5,settings=devlin minilm_mrpc" ;;
    4) echo "tasks=cola,lrs=2e-5,settings=devlin minilm_cola" ;;
    5) echo "tasks=mrpc,lrs=2e-5 minilm_mrpc" ;;
    6) echo "tasks=cola,lrs=2e-5 minilm_cola" ;;
  esac
}
pack() {  # after every stage, so a call cut short still returns the finished settings
  local dirs; dirs=$(cd "$WORK" && ls -d minilm_* 2> /dev/null)
  [[ -n "$dirs" ]] && tar czf "$OUT/minilm_gpu.part" -C "$WORK" --exclude=cache --exclude=.lock $dirs \
    && mv "$OUT/minilm_gpu.part" "$OUT/minilm_gpu.tgz"
}
for s in $STAGES; do
  read -r arg wd <<< "$(stage_arg "$s")"
  if (( $(left) < 30 )); then echo "== stage $s skipped: $(left) s left"; continue; fi
  echo "== stage $s at $((SECONDS - START)) s: $arg -> $wd"
  timeout -s KILL "$(left)" python3 -m jaxstab.main \
    --config="configs/study_minilm.py:$arg,seeds=$SEEDS,model=carry/minilm_fp16" \
    --config.data.dir=carry/glue \
    --config.checkpoint.every_steps=0 --workdir="$WORK/$wd" "$@"
  echo "== stage $s ended with rc=$? at $((SECONDS - START)) s"
  pack
done
pack
ls -la "$OUT"
