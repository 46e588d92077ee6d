#!/usr/bin/env bash
# Data-parallel training on a Cloud TPU VM pod slice: the same command runs on every worker.
#
#   On every worker:     bash launch/tpu_vm.sh [--dry-run] CONFIG WORKDIR [FLAGS...]
#   From your machine:   bash launch/tpu_vm.sh [--dry-run] --tpu=NAME --zone=ZONE [--remote_dir=DIR] \
#                          CONFIG WORKDIR [FLAGS...]
#
#   --dry-run         print the command it would run, shell-quoted, and exit 0 without running it.
#   --tpu=NAME        run from your machine: start this script on all workers of TPU VM NAME with
#                       gcloud compute tpus tpu-vm ssh NAME --zone=ZONE --worker=all \
#                         --command='cd DIR && bash launch/tpu_vm.sh CONFIG WORKDIR FLAGS...'
#                     (needs --zone; gcloud's own project and account settings apply). These are flags, not
#                     environment variables, so the script running on a worker never starts a second ssh.
#   --zone=ZONE       the TPU VM's zone, with --tpu.
#   --remote_dir=DIR  the repository's checkout on every worker, relative to the home directory or absolute
#                     (default: handobj_jax).
#   CONFIG WORKDIR    passed to main.py as --config and --workdir; FLAGS (e.g. --config.batch_size=64) follow.
#   $HANDOBJ_PYTHON   the Python interpreter to run on a worker (default: python).
#
# On a pod slice jax.distributed.initialize() discovers the workers itself (--distributed=on). The workdir and the
# data dir (HANDOBJ_DATA_DIR) must be a filesystem path mounted on every worker (e.g. NFS or gcsfuse): gs://
# URLs are not supported yet (workdirs are local paths), and multi-process runs have not been tested.
# The worker's HANDOBJ_DATA_DIR is not set by --tpu; pass the data dir as --config.data.data_dir=PATH instead.
# Usage errors print one line and exit 2.
set -euo pipefail
# The shared helpers (fail, show) sit next to this script; under sbatch the script runs from a spool copy, so
# they are found through the submission directory (the repository root: sbatch launch/slurm.sh ...).
here=$(dirname "$0")
[[ -f $here/common.sh ]] || here=${SLURM_SUBMIT_DIR:-.}/launch
# shellcheck source=launch/common.sh
. "$here/common.sh"

usage() {
  echo "usage: launch/tpu_vm.sh [--dry-run] [--tpu=NAME --zone=ZONE [--remote_dir=DIR]] CONFIG WORKDIR" \
       "[FLAGS...]" >&2
  exit 2
}

dry_run=0
tpu=""
zone=""
remote_dir=handobj_jax
while (($#)); do
  case $1 in
    --dry-run) dry_run=1 ;;
    --tpu=*) tpu=${1#*=} ;;
    --zone=*) zone=${1#*=} ;;
    --remote_dir=*) remote_dir=${1#*=} ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --*) fail "unknown launcher flag $1 (flags for main.py go after CONFIG WORKDIR)" ;;
    *) break ;;
  esac
  shift
done
if (($# < 2)) || [[ -z $1 || -z $2 ]]; then
  usage
fi
config=$1
workdir=$2
shift 2

if [[ -n $tpu ]]; then
  [[ -n $zone ]] || fail "--tpu=$tpu needs --zone=ZONE"
  [[ -n $remote_dir ]] || fail "--remote_dir is empty"
  remote="$(show cd "$remote_dir") && $(show bash launch/tpu_vm.sh "$config" "$workdir" "$@")"
  cmd=(gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="$remote")
else
  [[ -z $zone ]] || fail "--zone needs --tpu=NAME"
  cmd=("${HANDOBJ_PYTHON:-python}" -m handobj_jax.main --config="$config" --workdir="$workdir" --distributed=on
       "$@")
fi
if ((dry_run)); then
  show "${cmd[@]}"
  echo
  exit 0
fi
exec "${cmd[@]}"
