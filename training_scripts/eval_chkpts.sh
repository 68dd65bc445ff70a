#!/bin/bash
# Evaluate every checkpoint of a run (step-* and final) and skip the ones that already have results.
#
#   sbatch training_scripts/eval_chkpts.sh RUN_DIR VAL_DATA [TASKS]
#     RUN_DIR   a run's out_dir (its step-XXXXXXXX/ and final/ folders are evaluated)
#     VAL_DATA  a shard folder or a folder of val sets: offline loss per set -> CKPT/eval/loss.json
#     TASKS     optional comma-separated lm-eval tasks (needs lm-eval installed and network for the
#               task data): exactly these tasks are run -> CKPT/eval/lm_eval/
# Results land inside each checkpoint folder, so a rerun only evaluates new checkpoints.
#SBATCH --job-name=midtrain-eval
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00
#SBATCH --open-mode=append
#SBATCH --output=midtrain-eval-%j.out
set -euo pipefail
cd "${MIDTRAIN_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}"
midtrain() { "$PWD/bin/midtrain" "$@"; }  # this clone's code, whatever other clones share the venv

if [ $# -lt 2 ]; then
  echo "usage: eval_chkpts.sh RUN_DIR VAL_DATA [TASKS]" >&2
  exit 2
fi
run_dir="$1"; val_data="$2"; tasks="${3:-}"
[ -d "$run_dir" ] || { echo "error: RUN_DIR: $run_dir is not a directory" >&2; exit 2; }
[ -e "$val_data" ] || { echo "error: VAL_DATA: $val_data does not exist" >&2; exit 2; }

if [ "${SLURM_NTASKS:-1}" -gt 1 ]; then
  echo "note: evaluation runs one process on one device; this job holds $SLURM_NTASKS tasks and uses one of them (submit with --ntasks=1 to leave the rest to others)"
fi
shopt -s nullglob
checkpoints=("$run_dir"/step-* "$run_dir"/final)
evaluated=0
for ckpt in "${checkpoints[@]}"; do
  [ -f "$ckpt/lit_model.pth" ] || continue
  if [ ! -f "$ckpt/eval/loss.json" ]; then
    echo "[$(date '+%F %T')] loss: $ckpt"
    mkdir -p "$ckpt/eval"
    midtrain evaluate loss --checkpoint "$ckpt" --data "$val_data" --json "$ckpt/eval/loss.json"
    evaluated=$((evaluated + 1))
  fi
  if [ -n "$tasks" ] && [ ! -f "$ckpt/eval/lm_eval/results.json" ]; then
    echo "[$(date '+%F %T')] lm-eval ($tasks): $ckpt"
    midtrain evaluate lm-eval --checkpoint "$ckpt" --tasks "$tasks" --out_dir "$ckpt/eval/lm_eval"
  fi
done
echo "evaluated $evaluated new checkpoint(s) of $run_dir"
