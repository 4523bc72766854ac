#!/usr/bin/env bash
# The whole GPU throughput measurement (jaxstab's train step against PyTorch eager, single seed
# and vmapped seeds) in one go, on a GPU machine without internet access.
#
# Prepare on a machine with internet access, in the project root (once; .whl/ is git-ignored):
#   source scripts/device_wheels.sh && download_device_wheels .whl
# The files to copy to the GPU machine: the working tree and .whl/. The command to run there, in
# the project root, with a time limit of about BUDGET + 60 seconds:  bash scripts/gpu_bench.sh
# Everything lands in $OUT: one JSON per stage (rewritten after every row, so a stage cut short
# keeps what it measured), run.log, env.txt, summary.md.
#
# CPU dry run of the same stages with the tiny shape and a few steps:
#   bash scripts/gpu_bench.sh --tiny            (OUT defaults to a fresh temp folder)
#
# Options: --tiny, --budget=SECONDS (default 420: stages stop starting new configurations when
# it is spent, and each stage is killed past its share), --peak=TFLOPS (default: by chip name).
# Env: WHEELS (default .whl), OUT, CACHE (persistent compilation cache, default /tmp/jax_cache:
# kept on a warm machine, so a rerun compiles nothing).
set -uo pipefail
cd "$(dirname "$0")/.."
TINY=0; BUDGET=420; PEAK=""
for arg in "$@"; do
  case "$arg" in
    --tiny) TINY=1 ;;
    --budget=*) BUDGET="${arg#*=}" ;;
    --peak=*) PEAK="${arg#*=}" ;;
    *) echo "gpu_bench.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done
OUT="${OUT:-$(mktemp -d /tmp/gpu_bench.XXXXXX)}"; mkdir -p "$OUT"
WHEELS="${WHEELS:-.whl}"; CACHE="${CACHE:-/tmp/jax_cache}"
exec > >(tee -a "$OUT/run.log") 2>&1
START=$SECONDS
left() { echo $(( BUDGET - (SECONDS - START) )); }
echo "== gpu_bench.sh $(date -u +%FT%TZ) tiny=$TINY budget=${BUDGET}s OUT=$OUT"

# -- 1. the carried wheels (transformers 4.x with Flax classes, ml_collections, ...)
source scripts/device_wheels.sh
install_device_wheels "$WHEELS" || exit 3
# PyTorch runs first in its own process and exits; JAX may then take most of the memory
# (K=8 BERT-large needs it; on an 80 GB H100 it may still not fit: that row then says so).
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"

# -- 2. preflight: every import the benchmark needs, the device, versions (fail fast, cheaply)
{
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit,driver_version --format=csv
  python3 - <<'EOF'
import importlib, sys
print("python", sys.version.split()[0])
for m in ("jax", "jaxlib", "flax", "optax", "ml_collections", "transformers", "tokenizers",
          "huggingface_hub", "torch", "numpy"):
  try:
    mod = importlib.import_module(m)
    print(f"{m} {getattr(mod, '__version__', '?')} {getattr(mod, '__file__', '')}")
  except Exception as e:  # pylint: disable=broad-except
    print(f"{m} MISSING: {type(e).__name__}: {e}")
EOF
} | tee "$OUT/env.txt"
timeout 120 python3 - <<'EOF' || { echo "preflight failed: see above (missing wheel? add it to .whl)"; exit 4; }
import jax
from transformers import FlaxBertForSequenceClassification  # jaxstab needs transformers 4.x
from jaxstab.engine import train  # noqa: F401  (the project imports from the working tree)
print("jax devices:", jax.devices(), "backend:", jax.default_backend())
EOF
python3 -c "from transformers import BertForSequenceClassification; import torch; print('torch cuda:', torch.cuda.is_available())" \
  || echo "(PyTorch BERT not importable: the torch comparison will be skipped)"

if [ -z "$PEAK" ]; then  # dense bf16 TFLOP/s; H200 as in ../shared/gpu/README.md (its anchors' MFU)
  NAME="$(nvidia-smi --query-gpu=name --format=csv,noheader 2> /dev/null | head -1)"
  case "$NAME" in
    *H200*) PEAK=790 ;;
    *H100*PCIe*) PEAK=756 ;;
    *H100*) PEAK=989 ;;
    *A100*) PEAK=312 ;;
    *) PEAK=0 ;;
  esac
  echo "chip '${NAME:-none}': peak ${PEAK} TFLOP/s (0 = MFU not computed; override with --peak=)"
fi

# -- 3. the stages: shape, share of the budget, configurations in priority order
if [ "$TINY" = 1 ]; then
  LARGE=tiny; BASE=bert-base-2l; STEPS=(--steps=3 --warmup=1 --torch_threads=1)
  LARGE_CFG="1:bf16:off,1:fp32:off,2:bf16:off,2:bf16:on,1:bf16:on"
  BASE_CFG="1:bf16:off,2:bf16:off"
  CACHE_CFG="1:bf16:off"; CACHE_SHAPE=tiny
  ATTN_CFG="1:bf16:off"; FUSED=xla  # cuDNN needs a GPU
else
  LARGE=bert-large; BASE=bert-base; STEPS=(--steps=20 --warmup=3)
  # the targets first: single seed vs TF32, summed over seeds, probe overhead; then the rest
  LARGE_CFG="1:bf16:off,1:fp32:off,8:bf16:off,8:bf16:on,1:bf16:on,4:bf16:off,8:fp32:on,4:bf16:on,1:fp32:on,8:fp32:off,4:fp32:off,4:fp32:on"
  BASE_CFG="1:bf16:off,8:bf16:off,1:fp32:off,8:bf16:on,4:bf16:off,1:bf16:on,8:fp32:on,4:fp32:off,1:fp32:on,4:bf16:on,8:fp32:off,4:fp32:on"
  CACHE_CFG="1:bf16:off"; CACHE_SHAPE=bert-base
  ATTN_CFG="1:bf16:off,8:bf16:off"; FUSED=cudnn
fi
COMMON=(--batch=16 --seq=128 --peak_tflops="$PEAK" --compile_cache="$CACHE" "${STEPS[@]}")

stage() {  # name, share (percent) of what is left beyond `reserve` seconds, shape, configs, args...
  local name=$1 share=$2 reserve=$3 shape=$4 cfgs=$5; shift 5
  local rem; rem=$(( $(left) - reserve ))
  if [ "$rem" -le 20 ]; then echo "== $name: skipped, budget spent"; return; fi
  local soft=$(( rem * share / 100 )); local hard=$(( soft + 90 < rem ? soft + 90 : rem ))
  echo "== $name: $shape, soft ${soft}s (no new config after), hard ${hard}s; $(left)s of budget left"
  timeout --signal=TERM "$hard" python3 scripts/bench_step.py --shape="$shape" --configs="$cfgs" \
    --time_budget_s="$soft" --label="$name" --json="$OUT/$name.json" "${COMMON[@]}" "$@"
  echo "== $name: exit $? after $(( SECONDS - START ))s in all"
}

# bert-large gets over half the time, then fused attention, bert-base, the cache; 45 s are kept
# for the profile at the end
stage large 55 45 "$LARGE" "$LARGE_CFG" --torch=auto
# fused attention (model.attention) where it applies in training: attention dropout 0 (ALBERT,
# Mixout); the same configurations with transformers' attention, then with the fused op
stage attn_reference 25 45 "$LARGE" "$ATTN_CFG" --torch=off --dropout=0 --attention=reference
stage attn_fused 35 45 "$LARGE" "$ATTN_CFG" --torch=off --dropout=0 --attention="$FUSED"
# XLA flags, one at a time on the single-seed bf16 step (its plain row is in large.json):
# cuBLAS instead of Triton for every GEMM, Triton for any GEMM it supports, no CUDA graphs
for flag in --xla_gpu_enable_triton_gemm=false --xla_gpu_triton_gemm_any=true \
            --xla_gpu_enable_command_buffer=; do
  XLA_FLAGS="$flag" stage "xla_$(echo "${flag#--xla_gpu_}" | tr -c 'a-z0-9\n' '_')" 30 45 \
    "$LARGE" "1:bf16:off" --torch=off
done
stage base 75 45 "$BASE" "$BASE_CFG" --torch=auto
# a second process on a configuration already compiled above: the persistent cache at work
stage cache_rerun 100 45 "$CACHE_SHAPE" "$CACHE_CFG" --torch=off  # same steps: same program

# a short trace of the headline configurations (compiled above: cache hits), summarised here;
# the traces themselves stay on the machine (/tmp/jaxstab_profile), only the summary comes back
if [ "$(left)" -gt 40 ]; then
  rm -rf /tmp/jaxstab_profile
  timeout --signal=TERM "$(( $(left) - 10 ))" python3 scripts/bench_step.py --shape="$LARGE" \
    --configs="1:bf16:off,8:bf16:on" --label=profile --json="$OUT/profile.json" \
    --profile_dir=/tmp/jaxstab_profile --profile_steps=3 --torch=off "${COMMON[@]}"
  python3 scripts/trace_summary.py /tmp/jaxstab_profile > "$OUT/profile.md"
  head -40 "$OUT/profile.md"
fi

python3 scripts/bench_summary.py "$OUT"/large.json "$OUT"/base.json "$OUT"/cache_rerun.json \
  "$OUT"/attn_reference.json "$OUT"/attn_fused.json "$OUT"/xla_*.json \
  > "$OUT/summary.md" 2> /dev/null
cat "$OUT/summary.md"
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,temperature.gpu,clocks.sm,power.draw --format=csv >> "$OUT/env.txt"
echo "== done in $(( SECONDS - START ))s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
