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
# A job of several tasks fine-tunes on all of them: srun starts one process per task, and `midtrain sft` is told
# that shape (--devices per node, --num_nodes); add --strategy fsdp for a model one GPU cannot hold. A --devices
# of your own that differs from the job's tasks is refused in one line.
launch=()
shape=()
if [ -n "${SLURM_JOB_ID:-}" ] && [ "${SLURM_NTASKS:-1}" -gt 1 ] && command -v srun >/dev/null 2>&1; then
  nodes="${SLURM_JOB_NUM_NODES:-1}"
  if [ $((SLURM_NTASKS % nodes)) -ne 0 ]; then
    echo "sft.sh: error: $SLURM_NTASKS tasks over $nodes nodes: give every node the same number (--ntasks-per-node)" >&2
    exit 2
  fi
  launch=(srun --kill-on-bad-exit=1)
  if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then
    launch+=("--cpus-per-task=$SLURM_CPUS_PER_TASK")
  fi
  shape=(--devices "$((SLURM_NTASKS / nodes))" --num_nodes "$nodes")
  echo "sft: $SLURM_NTASKS processes, one per task ($((SLURM_NTASKS / nodes)) per node x $nodes node(s))"
fi
if [ -n "${SLURM_JOB_GPUS:-}${SLURM_GPUS_ON_NODE:-}" ] && [ "${SLURM_GPUS_ON_NODE:-1}" != "0" ]; then
  export MIDTRAIN_EXPECT_CUDA=1  # this job was given GPUs: never fall back to CPU processes
fi
mkdir -p "$out_dir"
# (${a[@]+"${a[@]}"}: an empty array under set -u, which bash before 4.4 calls unbound)
${launch[@]+"${launch[@]}"} "$PWD/bin/midtrain" sft --checkpoint "$checkpoint" --data "$data" \
  --out "$out_dir/metrics.json" --save "$out_dir/model" ${shape[@]+"${shape[@]}"} "$@"
