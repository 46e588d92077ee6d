#!/usr/bin/env bash
# Data-parallel training on a Cloud TPU VM pod slice: the same command runs on every worker.
#
#   gcloud compute tpus tpu-vm ssh NAME --zone=ZONE --worker=all \
#     --command="cd handobj_jax && bash launch/tpu_vm.sh configs/cohesiv.py /mnt/shared/runs/cohesiv"
#
# On a pod slice jax.distributed.initialize() discovers the workers itself (--distributed=on). The workdir and the
# data dir (HANDOBJ_DATA_DIR) must be a filesystem path mounted on every worker (e.g. NFS or gcsfuse): gs://
# URLs are not supported yet (workdirs are local paths), and multi-process runs have not been tested.
set -euo pipefail
config=${1:?usage: launch/tpu_vm.sh CONFIG WORKDIR [FLAGS...]}
workdir=${2:?usage: launch/tpu_vm.sh CONFIG WORKDIR [FLAGS...]}
shift 2
python -m handobj_jax.main --config="$config" --workdir="$workdir" --distributed=on "$@"
