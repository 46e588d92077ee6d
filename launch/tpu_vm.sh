#!/usr/bin/env bash
# Data-parallel training on a Cloud TPU VM pod slice: the same command runs on every worker.
#
#   gcloud compute tpus tpu-vm ssh NAME --zone=ZONE --worker=all \
#     --command="cd handobj_jax && bash launch/tpu_vm.sh configs/cohesiv.py gs://bucket/runs/cohesiv"
#
# On a pod slice jax.distributed.initialize() discovers the workers itself (--distributed=on). The workdir should be
# on shared storage (a GCS bucket path works for checkpoints and summaries); the data dir too (HANDOBJ_DATA_DIR).
set -euo pipefail
config=${1:?usage: launch/tpu_vm.sh CONFIG WORKDIR [FLAGS...]}
workdir=${2:?usage: launch/tpu_vm.sh CONFIG WORKDIR [FLAGS...]}
shift 2
python -m handobj_jax.main --config="$config" --workdir="$workdir" --distributed=on "$@"
