#!/bin/bash
# The GPU benchmark, one prepared script (< 8 minutes on one H100): pythia-160m and pythia-410m, bf16-true,
# seq 2048, synthetic shards, 1 GPU, and 2-GPU FSDP when more than one GPU is present. Prints tokens/s,
# MFU, peak memory and the data loader's share of step time (see bench/gpu_bench.py).
#
#   bash bench/gpu.sh            # on a GPU machine whose python has torch + this project's dependencies
#   bash bench/gpu.sh --smoke    # the same code path on CPU with a tiny model (tested in CI)
#
# A machine without the dependencies (e.g. an image with torch only and no network) takes wheels from
# .whl/ if present: `bash bench/gpu_wheels.sh` downloads them (Python 3.12, x86-64) on a machine that can.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c "import litgpt, litdata, jsonargparse" 2>/dev/null; then
  if [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/midtrain-site .whl/*.whl
    export PYTHONPATH="/tmp/midtrain-site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "bench/gpu.sh: $PY lacks litgpt/litdata/jsonargparse and there is no .whl/ (run bench/gpu_wheels.sh)" >&2
    exit 2
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PY" bench/gpu_bench.py "$@"
