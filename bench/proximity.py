"""Proximity counting speed: N datasets × T tokens each (real TokensLoader chunk files, written here
with numpy in litdata's layout), counted by `midtrain.analysis.counting` (bincount over memory-mapped
chunks), against the raw read rate of the same chunks (every token read once, no counting).

    python bench/proximity.py                       # the issue's target: 10 × 10M tokens, < 30 s
    python bench/proximity.py --datasets 3 --tokens 2000000 --repeats 1
Reports medians over --repeats (files warm in the page cache after the first pass).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def write_shard(path: Path, tokens: int, vocab: int, seed: int, chunk_tokens: int = 1 << 22) -> None:
    """A TokensLoader shard: chunk files [n u32][n+1 offsets u32][int32 tokens], one item per chunk."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    chunks = []
    for i, start in enumerate(range(0, tokens, chunk_tokens)):
        n = min(chunk_tokens, tokens - start)
        ids = (rng.zipf(1.2, size=n) + seed * 7) % vocab
        header = np.array([1, 12, 12 + 4 * n], dtype=np.uint32)
        name = f"chunk-0-{i}.bin"
        with open(path / name, "wb") as f:
            f.write(header.tobytes())
            f.write(ids.astype(np.int32).tobytes())
        chunks.append({"chunk_bytes": 12 + 4 * n, "chunk_size": 1, "dim": n, "filename": name})
    index = {"chunks": chunks, "config": {"data_format": ["no_header_tensor:15"], "item_loader": "TokensLoader"}}
    (path / "index.json").write_text(json.dumps(index))


def raw_read(paths: list[Path]) -> int:
    from midtrain.analysis.counting import shard_segments

    total = 0
    for p in paths:
        for seg in shard_segments(p):
            total += int(np.asarray(seg).sum(dtype=np.int64) >= 0) * len(seg)  # touch every token once
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=10_000_000)
    ap.add_argument("--vocab", type=int, default=50_304)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    from midtrain.analysis.counting import count_dataset

    with tempfile.TemporaryDirectory(prefix="midtrain-bench-prox-") as tmp:
        paths = [Path(tmp) / f"d{i}" for i in range(a.datasets)]
        for i, p in enumerate(paths):
            write_shard(p, a.tokens, a.vocab, i)
        raw_read(paths)  # warm the page cache for both sides
        reads, counts = [], []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            n = raw_read(paths)
            reads.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            counted = sum(count_dataset(p.name, p, a.tokens, 0).tokens for p in paths)
            counts.append(time.perf_counter() - t0)
        assert counted == n == a.datasets * a.tokens
        read_s, count_s = statistics.median(reads), statistics.median(counts)
        print(f"{a.datasets} datasets x {a.tokens:,} tokens (vocab {a.vocab:,}), median of {a.repeats}:")
        print(f"  raw read:  {read_s:6.2f} s  ({n / read_s / 1e6:7.1f} Mtok/s)")
        print(f"  counting:  {count_s:6.2f} s  ({n / count_s / 1e6:7.1f} Mtok/s)   target < 30 s: "
              f"{'met' if count_s < 30 else 'MISSED'}")
        print(f"  counting / raw read time: {count_s / read_s:.2f}x")


if __name__ == "__main__":
    main()
