#!/usr/bin/env bash
# Run a jaxstab study on every worker of a Cloud TPU VM slice with one command.
#
#   bash scripts/tpu_vm_run.sh TPU_NAME ZONE --config=configs/study_table1.py --workdir=gs://BUCKET/t1
#
# Each worker gets the same command; on a TPU VM `jax.distributed.initialize()` finds its peers
# by itself (main.py joins automatically when it sees the TPU VM environment), the seed axis is
# laid out over every chip of the slice, and only process 0 writes results. The workdir must be
# visible to every worker: a bucket (--workdir=gs://BUCKET/study, as above; docs/studies.md "A workdir in
# a bucket": a preempted slice's replacement resumes from it) or a shared disk. Each worker
# installs jaxstab with the extras tpu,gcs (gcsfs for gs://); JAXSTAB_EXTRAS=... changes them.
set -euo pipefail
name=${1:?TPU name}; zone=${2:?zone}; shift 2
args=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="
  set -e
  cd ~/jaxstab 2>/dev/null || git clone \${JAXSTAB_REPO:?set JAXSTAB_REPO to this repository URL} ~/jaxstab && cd ~/jaxstab
  python3 -m pip install -q -e '.[${JAXSTAB_EXTRAS:-tpu,gcs}]'
  python3 -m jaxstab.main --distributed=auto ${args}
"
