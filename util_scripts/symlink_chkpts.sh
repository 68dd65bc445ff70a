#!/bin/bash
# The original's midtraining layout: symlink a base run's checkpoints into a new run folder, so
# that `resume: true` in the new folder starts from them (midtrain detects the changed mixture and
# appends a stage). With the new trainer, `resume_from: BASE/step-XXXXXXXX` does this without links.
#
#   util_scripts/symlink_chkpts.sh BASE_RUN_DIR NEW_RUN_DIR STEP [STEP ...]
#   util_scripts/symlink_chkpts.sh $CKPT_ROOT/pretrain/pythia-160m $CKPT_ROOT/midtrain/my-run 40000
# Links only the named steps (the newest linked one is where the new run resumes). Never replaces
# an existing entry.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: symlink_chkpts.sh BASE_RUN_DIR NEW_RUN_DIR STEP [STEP ...]" >&2
  exit 2
fi
base="$(cd "$1" 2>/dev/null && pwd)" || { echo "error: BASE_RUN_DIR: $1 is not a directory" >&2; exit 2; }
new="$2"; shift 2
for step in "$@"; do
  case "$step" in (*[!0-9]*|'') echo "error: STEP: '$step' is not a step number" >&2; exit 2;; esac
  name=$(printf 'step-%08d' "$((10#$step))")
  [ -f "$base/$name/lit_model.pth" ] || { echo "error: STEP: $base/$name has no lit_model.pth" >&2; exit 2; }
done
mkdir -p "$new"
for step in "$@"; do
  name=$(printf 'step-%08d' "$((10#$step))")
  if [ -e "$new/$name" ] || [ -L "$new/$name" ]; then
    echo "exists, left alone: $new/$name"
  else
    ln -s "$base/$name" "$new/$name"
    echo "linked $new/$name -> $base/$name"
  fi
done
