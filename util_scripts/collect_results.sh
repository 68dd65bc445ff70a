#!/bin/bash
# Results -> CSV: final per-source validation losses of runs, plus SFT metrics matched to them.
#
#   util_scripts/collect_results.sh OUT.csv RUN_DIR [RUN_DIR ...] [-- SFT_METRICS.json ...]
set -euo pipefail
midtrain() { "$(dirname "$0")/../bin/midtrain" "$@"; }  # this clone's code, whatever other clones share the venv
if [ $# -lt 2 ]; then
  echo "usage: collect_results.sh OUT.csv RUN_DIR [RUN_DIR ...] [-- SFT_METRICS.json ...]" >&2
  exit 2
fi
out="$1"; shift
runs=(); sft=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do runs+=("$1"); shift; done
[ $# -gt 0 ] && shift
sft=("$@")
midtrain report --runs "${runs[@]}" --sft "${sft[@]}" --format csv --out "$out" >/dev/null
echo "wrote $out"
