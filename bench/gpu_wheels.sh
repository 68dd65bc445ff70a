#!/bin/bash
# Download the wheels bench/gpu.sh needs on a GPU image that has torch, lightning and numpy but not this
# project's other dependencies and no network (Python 3.12, x86-64) into .whl/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
for pkg in litgpt==0.5.13 litdata==0.2.76 "jsonargparse[signatures]==4.41.0" docstring-parser typeshed-client \
           boto3 botocore s3transfer jmespath obstore tifffile; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl "$pkg" || echo "warning: could not download $pkg" >&2
done
ls .whl
