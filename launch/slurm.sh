#!/usr/bin/env bash
# Multi-host data-parallel training on a SLURM cluster, one process per node, all local GPUs per process.
#
#   sbatch --nodes=4 --gpus-per-node=8 launch/slurm.sh [--dry-run] CONFIG WORKDIR [FLAGS...]
#   e.g. sbatch --nodes=4 --gpus-per-node=8 launch/slurm.sh configs/cohesiv.py /shared/runs/cohesiv
#
#   --dry-run         print the command it would run (the `srun ...` line, shell-quoted, with the environment it
#                     sets) and exit 0 without running it; works outside an allocation too:
#                     bash launch/slurm.sh --dry-run configs/cohesiv.py /shared/runs/cohesiv
#   CONFIG WORKDIR    passed to main.py as --config and --workdir; FLAGS (e.g. --config.batch_size=64) follow.
#   $HANDOBJ_DATA_DIR the data dir, on a filesystem every node mounts (default: ~/tensorflow_datasets).
#   $HANDOBJ_PYTHON   the Python interpreter to run (default: python).
#
# jax.distributed.initialize() reads the SLURM environment (main.py calls it when SLURM_NTASKS > 1). The global
# batch (config.batch_size) is split over all devices of all hosts; every host reads its own share of each split.
# Re-submitting the same command resumes from the workdir's latest checkpoint; SIGTERM (preemption, scancel)
# makes the job save the current step and exit with status 143 (not 0: the run is not finished), so SLURM
# records it as failed and `sbatch --requeue` / resubmission resumes it. Usage errors print one line and exit 2.
#SBATCH --ntasks-per-node=1
#SBATCH --signal=TERM@120
#SBATCH --output=slurm-%j.out
set -euo pipefail
# The shared helpers (fail, show) sit next to this script; under sbatch the script runs from a spool copy, so
# they are found through the submission directory (the repository root: sbatch launch/slurm.sh ...).
here=$(dirname "$0")
[[ -f $here/common.sh ]] || here=${SLURM_SUBMIT_DIR:-.}/launch
# shellcheck source=launch/common.sh
. "$here/common.sh"

usage() {
  echo "usage: launch/slurm.sh [--dry-run] CONFIG WORKDIR [FLAGS...]" >&2
  exit 2
}

dry_run=0
case ${1:-} in
  --dry-run) dry_run=1; shift ;;
  -h | --help) sed -n '2,/^set -euo/{/^#SBATCH/!p}' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
esac
if (($# < 2)) || [[ -z $1 || -z $2 ]]; then
  usage
fi
config=$1
workdir=$2
shift 2
export HANDOBJ_DATA_DIR=${HANDOBJ_DATA_DIR:-$HOME/tensorflow_datasets}
cmd=(srun --kill-on-bad-exit=1 "${HANDOBJ_PYTHON:-python}" -m handobj_jax.main --config="$config"
     --workdir="$workdir" --distributed=auto "$@")
if ((dry_run)); then
  show "HANDOBJ_DATA_DIR=$HANDOBJ_DATA_DIR" "${cmd[@]}"
  echo
  exit 0
fi
"${cmd[@]}"
