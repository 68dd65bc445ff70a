#!/bin/bash
# The GPU benchmark, one prepared script (measured on one H200, 2026-12-04, bench/results/: the default two sizes
# 283 s with a cold compile cache, `--sizes 1b --quick` 198 s, plus about 30 s to start a lent machine): the paper's
# pythia-160m and pythia-410m configs as they run (per-rank micro-batch and gradient accumulation, bf16-true,
# seq 2048, compile), a checkpoint save + restore and a validation pass, DDP vs FSDP2 on every visible GPU when
# there are several, upstream `litgpt pretrain` side by side, and the paper grid's GPU-hours at the measured rate.
# One table; each line is printed (and appended to --out FILE) as soon as it is measured. See bench/gpu_bench.py.
#
#   bash bench/gpu.sh [--out table.md] [--with-1b]   # on a GPU machine whose python has this project's dependencies
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
