#!/bin/bash
# Pretrain or midtrain one run config under SLURM, surviving preemption.
#
#   export model_config_file=midtrain_configs/pretrain/pythia-160m.yaml
#   sbatch training_scripts/small_model_pretrain.sh
#   sbatch training_scripts/small_model_pretrain.sh midtrain_configs/midtrain/pythia-160m-code20-from6k.yaml
#   sbatch --array=1-4 training_scripts/small_model_pretrain.sh      # line N of training_scripts/configs.txt
#   CONFIG_LIST=my_sweep.txt sbatch --array=1-8%2 training_scripts/small_model_pretrain.sh
#
# The config comes from, in order: $1, $model_config_file (the original variable),
# $MODEL_CONFIG_FILE / $MODEL_CONFIG, or line $SLURM_ARRAY_TASK_ID (1-based; blank and # lines
# skipped) of $CONFIG_LIST (default training_scripts/configs.txt). Arguments after $1 go to
# `midtrain pretrain` (e.g. --train.max_steps 100). Submit from the repository root (or set
# MIDTRAIN_HOME); relative paths resolve there. Nothing under midtrain_configs/ is ever written.
#
# Preemption: SLURM sends USR1 to this script 180 s before the time limit; the trap forwards it,
# the trainer checkpoints at the next step boundary and exits 75, and the job requeues itself and
# resumes (`--resume auto`) from that checkpoint: no step and no sample is repeated.
#
# The config's devices x num_nodes is the run's shape: srun starts one process per task, and the
# trainer refuses to start (one line, exit 2) unless the job has --nodes=num_nodes and
# --ntasks-per-node=devices. The defaults below fit a config with devices: 8, num_nodes: 1; for
# another shape pass e.g. `sbatch --nodes=2 --ntasks-per-node=8 --gpus-per-node=8 ...` (or use
# `midtrain study run --executor slurm`, which derives them). Size --cpus-per-task / --mem / --time /
# --partition for your cluster. srun is given the job's --cpus-per-task (since Slurm 22.05 it no
# longer inherits it: each rank would run its main thread, loader workers and NCCL on one core).
# A job given GPUs exports MIDTRAIN_EXPECT_CUDA=1: a node whose driver cannot run the installed CUDA
# build is refused in one line instead of training on CPU processes (accelerator: cpu opts out).
#SBATCH --job-name=midtrain
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=48:00:00
#SBATCH --signal=B:USR1@180
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=midtrain-%x-%j.out
# Traps come first: a USR1/TERM that lands before the trainer exists must not kill this script.
pending=""
trap 'pending=USR1' USR1
trap 'pending=TERM' TERM
set -euo pipefail

EXIT_REQUEUE=75  # midtrain.signals.EXIT_REQUEUE

requeue() {
  if [ -n "${SLURM_JOB_ID:-}" ]; then
    # an array task requeues itself only: its SLURM_JOB_ID may be the array's id, which requeues every task
    local job="$SLURM_JOB_ID"
    if [ -n "${SLURM_ARRAY_TASK_ID:-}" ] && [ -n "${SLURM_ARRAY_JOB_ID:-}" ]; then
      job="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
    fi
    echo "[$(date '+%F %T')] $1; requeueing job $job"
    scontrol requeue "$job"
  else
    echo "[$(date '+%F %T')] $1"
  fi
}

cd "${MIDTRAIN_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}"

config=""
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then
  config="$1"
  shift
fi
config="${config:-${model_config_file:-${MODEL_CONFIG_FILE:-${MODEL_CONFIG:-}}}}"
if [ -z "$config" ] && [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
  list="${CONFIG_LIST:-training_scripts/configs.txt}"
  if [ ! -f "$list" ]; then
    echo "error: CONFIG_LIST: $list does not exist (one config path per line)" >&2
    exit 2
  fi
  config=$(grep -v -E '^[[:space:]]*(#|$)' "$list" | sed -n "${SLURM_ARRAY_TASK_ID}p" | tr -d '[:space:]')
  if [ -z "$config" ]; then
    echo "error: CONFIG_LIST: $list has no line ${SLURM_ARRAY_TASK_ID} for SLURM_ARRAY_TASK_ID (lines are 1-based)" >&2
    exit 2
  fi
fi
if [ -z "$config" ]; then
  echo "error: no config: pass it as \$1, or set model_config_file, or submit an array job with a CONFIG_LIST" >&2
  exit 2
fi
if [ ! -f "$config" ]; then
  echo "error: config $config does not exist (relative to $PWD)" >&2
  exit 2
fi
# this clone's midtrain (bin/midtrain puts the clone's code first, whatever other clones share the venv)
MIDTRAIN="$PWD/bin/midtrain"
if [ ! -x "$MIDTRAIN" ]; then
  echo "error: $MIDTRAIN is missing: submit from the midtrain clone's root (or set MIDTRAIN_HOME)" >&2
  exit 2
fi
midtrain() { "$MIDTRAIN" "$@"; }

echo "[$(date '+%F %T')] job ${SLURM_JOB_ID:-local} (restart ${SLURM_RESTART_COUNT:-0}) on $(hostname): $config $*"
# one process: a complete run says so (exit 0); otherwise the mixture plan, checked (exit 3), or a refusal
rc=0
midtrain mix --config "$config" --check-complete "$@" || rc=$?
if [ "$rc" -eq 0 ]; then
  echo "run already complete: nothing to do"
  exit 0
fi
[ "$rc" -eq 3 ] || exit "$rc"

launch=()
if [ -n "${SLURM_JOB_ID:-}" ] && command -v srun >/dev/null 2>&1; then
  launch=(srun --kill-on-bad-exit=1)
  if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then
    launch+=("--cpus-per-task=$SLURM_CPUS_PER_TASK")
  fi
fi
if [ -n "${SLURM_JOB_GPUS:-}${SLURM_GPUS_ON_NODE:-}" ] && [ "${SLURM_GPUS_ON_NODE:-1}" != "0" ]; then
  export MIDTRAIN_EXPECT_CUDA=1  # this job was given GPUs: never fall back to CPU processes
fi
echo "[$(date '+%F %T')] launch: ${launch[*]} midtrain pretrain --config $config --resume auto $*"

if [ -n "$pending" ]; then
  requeue "$pending received before the trainer started: nothing to save"
  exit 0
fi
# Each trainer process writes a file in $ready once its stop handlers are in place; a USR1/TERM is held
# until every one has (a signal that reaches an interpreter still starting up kills it: no requeue). Under
# SLURM the folder is on the submit directory's (shared) file system: ranks on other nodes write there too.
if [ -n "${SLURM_JOB_ID:-}" ] && [ -n "${SLURM_SUBMIT_DIR:-}" ] && [ -w "${SLURM_SUBMIT_DIR}" ]; then
  ready="$SLURM_SUBMIT_DIR/.midtrain-ready-$SLURM_JOB_ID-$$"
  rm -rf "$ready" && mkdir -p "$ready"
else
  ready=$(mktemp -d)
fi
ranks=1
[ ${#launch[@]} -gt 0 ] && ranks="${SLURM_NTASKS:-${SLURM_JOB_NUM_NODES:-1}}"  # srun: one task per node by default
MIDTRAIN_SIGNALS_READY="$ready" "${launch[@]}" "$MIDTRAIN" pretrain --config "$config" --resume auto "$@" &
pid=$!
# polled, never a blocking wait: a signal trapped between a check and a `wait` would wait for the trainer's end
while kill -0 "$pid" 2>/dev/null; do
  if [ -n "$pending" ] && [ "$(ls -A "$ready" 2>/dev/null | wc -l)" -ge "$ranks" ]; then
    echo "[$(date '+%F %T')] $pending received: asking the trainer to checkpoint and stop"
    pending=""
    kill -USR1 "$pid" 2>/dev/null || true
  fi
  sleep 0.1
done
status=0
wait "$pid" || status=$?
trap - USR1 TERM
rm -rf "$ready"

if [ "$status" -eq "$EXIT_REQUEUE" ]; then
  requeue "the trainer stopped on a signal (checkpointed, or nothing to save yet)"
  exit 0
fi
exit "$status"
