#!/bin/bash
# Supervised fine-tuning of one checkpoint (the paper's posttraining), sbatch-able.
#
#   sbatch training_scripts/sft.sh CHECKPOINT DATA.jsonl OUT_DIR [extra `midtrain sft` options]
#   e.g. sbatch training_scripts/sft.sh $CKPT_ROOT/midtrain/pythia-160m-math12-from20k/final \
#          data/gsm8k_train.jsonl results/sft/math12 --lrs '[3e-4,1e-3,3e-3]' --epochs 4 \
#          --pretrain_val_path $DATA_ROOT/val
# Writes OUT_DIR/metrics.json (LR sweep on val, held-out test loss, forgetting) and OUT_DIR/model.
# Skips at once when OUT_DIR/metrics.json exists.
#SBATCH --job-name=midtrain-sft
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00
#SBATCH --open-mode=append
#SBATCH --output=midtrain-sft-%j.out
set -euo pipefail
cd "${MIDTRAIN_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}"
midtrain() { "$PWD/bin/midtrain" "$@"; }  # this clone's code, whatever other clones share the venv

if [ $# -lt 3 ]; then
  echo "usage: sft.sh CHECKPOINT DATA.jsonl OUT_DIR [midtrain sft options]" >&2
  exit 2
fi
checkpoint="$1"; data="$2"; out_dir="$3"; shift 3
if [ -f "$out_dir/metrics.json" ]; then
  echo "already done: $out_dir/metrics.json"
  exit 0
fi
if [ "${SLURM_NTASKS:-1}" -gt 1 ]; then
  echo "note: sft runs one process on one device; this job holds $SLURM_NTASKS tasks and uses one of them (submit with --ntasks=1 to leave the rest to others)"
fi
mkdir -p "$out_dir"
midtrain sft --checkpoint "$checkpoint" --data "$data" --out "$out_dir/metrics.json" --save "$out_dir/model" "$@"
