#!/usr/bin/env bash
# Data-parallel training on one machine with several GPUs.
#
#   bash launch/local_gpus.sh [--dry-run] [--processes=N] [--port=PORT] CONFIG WORKDIR [FLAGS...]
#
#   --dry-run        print the command(s) it would run, one per line, shell-quoted, with the environment set
#                    for each process, and exit 0 without running anything.
#   --processes=N    run N processes, one per GPU, on localhost: process i gets CUDA_VISIBLE_DEVICES=<GPU i>,
#                    JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT, JAX_NUM_PROCESSES=N and JAX_PROCESS_ID=i, which
#                    main.py passes to jax.distributed.initialize(). GPU i is the i-th entry of an existing
#                    CUDA_VISIBLE_DEVICES, else i. Without this flag (the default) one process sees all local
#                    GPUs (--distributed=off), which is the simpler choice on one machine.
#   --port=PORT      the coordinator's port for --processes (default 8476); give another one to a second run
#                    on the same machine.
#   CONFIG WORKDIR   passed to main.py as --config and --workdir; FLAGS (e.g. --config.batch_size=64) follow.
#   $HANDOBJ_PYTHON  the Python interpreter to run (default: python).
#
# With --processes, process 0 prints to the terminal and process k > 0 writes its stdout and stderr to
# WORKDIR/stdout.process<k>.txt (its library logs go to WORKDIR/log.process<k>.txt as usual). The launcher
# waits for all of them and exits with the first non-zero status (0 when all succeed). When one process fails,
# the others are sent SIGTERM (a multi-process run cannot go on without it). A SIGTERM to the launcher is
# passed on to every process: each saves the current step and exits 143, and so does the launcher. Ctrl-C
# reaches every process directly from the terminal, so the launcher does not pass it on; it keeps waiting.
# Rerunning the same command resumes from the workdir's latest checkpoint.
# Usage errors print one line and exit 2.
set -euo pipefail
# The shared helpers (fail, show) sit next to this script; under sbatch the script runs from a spool copy, so
# they are found through the submission directory (the repository root: sbatch launch/slurm.sh ...).
here=$(dirname "$0")
[[ -f $here/common.sh ]] || here=${SLURM_SUBMIT_DIR:-.}/launch
# shellcheck source=launch/common.sh
. "$here/common.sh"

usage() {
  echo "usage: launch/local_gpus.sh [--dry-run] [--processes=N] [--port=PORT] CONFIG WORKDIR [FLAGS...]" >&2
  exit 2
}

dry_run=0
processes=""
port=8476
while (($#)); do
  case $1 in
    --dry-run) dry_run=1 ;;
    --processes=*) processes=${1#*=} ;;
    --port=*) port=${1#*=} ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --*) fail "unknown launcher flag $1 (flags for main.py go after CONFIG WORKDIR)" ;;
    *) break ;;
  esac
  shift
done
(($# >= 2)) || usage
config=$1
workdir=$2
shift 2
[[ -n $config && -n $workdir ]] || usage
python=${HANDOBJ_PYTHON:-python}

if [[ -z $processes ]]; then
  cmd=("$python" -m handobj_jax.main --config="$config" --workdir="$workdir" --distributed=off "$@")
  if ((dry_run)); then
    show "${cmd[@]}"
    echo
    exit 0
  fi
  exec "${cmd[@]}"
fi

[[ $processes =~ ^[1-9][0-9]*$ ]] || fail "--processes=$processes: expected a positive integer"
if ! [[ $port =~ ^[1-9][0-9]{0,4}$ ]] || ((port > 65535)); then
  fail "--port=$port: expected a port number"
fi
if [[ -n ${CUDA_VISIBLE_DEVICES:-} ]]; then
  IFS=, read -r -a gpus <<<"$CUDA_VISIBLE_DEVICES"
else
  gpus=()
  for ((i = 0; i < processes; i++)); do gpus+=("$i"); done
fi
((processes <= ${#gpus[@]})) ||
  fail "--processes=$processes but CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES names ${#gpus[@]} GPU(s)"

# Sets `cmd` to process $1's command, its environment first as NAME=value words; main.py's FLAGS follow $1.
process_command() {
  local i=$1
  shift
  cmd=(CUDA_VISIBLE_DEVICES="${gpus[$i]}" JAX_COORDINATOR_ADDRESS="127.0.0.1:$port"
       JAX_NUM_PROCESSES="$processes" JAX_PROCESS_ID="$i"
       "$python" -m handobj_jax.main --config="$config" --workdir="$workdir" --distributed=on "$@")
}

if ((dry_run)); then
  show mkdir -p -- "$workdir"
  echo
  for ((i = 0; i < processes; i++)); do
    process_command "$i" "$@"
    show "${cmd[@]}"
    if ((i > 0)); then
      printf ' > %q 2>&1' "$workdir/stdout.process$i.txt"
    fi
    echo
  done
  exit 0
fi

mkdir -p -- "$workdir"  # For the output files of processes k > 0 (main.py would create it too).
pids=()
stop_all() {
  kill -TERM "${pids[@]}" 2>/dev/null || true
}
trap stop_all TERM
trap : INT
for ((i = 0; i < processes; i++)); do
  process_command "$i" "$@"
  if ((i == 0)); then
    env "${cmd[@]}" &
  else
    env "${cmd[@]}" >"$workdir/stdout.process$i.txt" 2>&1 &
  fi
  pids+=("$!")
done

# Wait for every process, in the order they end; the first non-zero status is the launcher's.
set +e
status=0
waiting=("${pids[@]}")
while ((${#waiting[@]})); do
  running=" $(jobs -rp | tr '\n' ' ') "
  still=()
  for pid in "${waiting[@]}"; do
    if [[ $running == *" $pid "* ]]; then
      still+=("$pid")
      continue
    fi
    wait "$pid"
    code=$?
    if ((code != 0 && status == 0)); then
      status=$code
      stop_all
    fi
  done
  waiting=("${still[@]+"${still[@]}"}")
  # An interruptible pause: a trapped signal ends `wait` at once.
  ((${#waiting[@]})) && { sleep 0.2 & wait "$!"; }
done
exit "$status"
