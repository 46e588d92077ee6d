#!/usr/bin/env bash
# Multi-host data-parallel training on a SLURM cluster, one process per node, all local GPUs per process.
#
#   sbatch --nodes=4 --gpus-per-node=8 launch/slurm.sh configs/cohesiv.py /shared/runs/cohesiv [--config.x=y ...]
#
# jax.distributed.initialize() reads the SLURM environment (main.py calls it when SLURM_NTASKS > 1). The global
# batch (config.batch_size) is split over all devices of all hosts; every host reads its own share of each split.
# Re-submitting the same command resumes from the workdir's latest checkpoint; SIGTERM (preemption, scancel)
# makes the job save the current step and exit with status 143 (not 0: the run is not finished), so SLURM
# records it as failed and `sbatch --requeue` / resubmission resumes it.
#SBATCH --ntasks-per-node=1
#SBATCH --signal=TERM@120
#SBATCH --output=slurm-%j.out
set -euo pipefail
config=${1:?usage: launch/slurm.sh CONFIG WORKDIR [FLAGS...]}
workdir=${2:?usage: launch/slurm.sh CONFIG WORKDIR [FLAGS...]}
shift 2
export HANDOBJ_DATA_DIR=${HANDOBJ_DATA_DIR:-$HOME/tensorflow_datasets}
srun --kill-on-bad-exit=1 python -m handobj_jax.main --config="$config" --workdir="$workdir" \
  --distributed=auto "$@"
