"""Discovery + mixture weights for 10,000 synthetic shards (index.json only). Goal: < 1 s.

Usage: python bench/discovery.py [--shards 10000] [--repeats 5]
Prints the median wall time of discover() + resolve_mixture() over the repeats (files warm in the
page cache after the first run; the first, cold run is printed too).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from midtrain.data.mixture import mix_spec, resolve_mixture  # noqa: E402
from midtrain.data.prepare import write_fake_index  # noqa: E402
from midtrain.data.shards import discover  # noqa: E402


def build_tree(base: str, n: int) -> None:
    prefixes = ["", "c", "m", "q", "w"]
    for i in range(n):
        p = prefixes[i % len(prefixes)]
        write_fake_index(os.path.join(base, f"{p}{i // len(prefixes) + 1}"), [2_000_000, 1_500_000, 700_001], chunk_files=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        build_tree(tmp, args.shards)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            d = discover(tmp)
            m = resolve_mixture(mix_spec(mix_weights_str="main:0.6,code:0.2,math:0.1,qa:0.05,web:0.05",
                                         within_type="tokens"), d)
            times.append(time.perf_counter() - t0)
        assert len(d.shards) == args.shards and len(m.sources) == args.shards
    med = statistics.median(times)
    print(f"discovery+weights, {args.shards} shards: median {med:.3f} s over {args.repeats} runs "
          f"(first {times[0]:.3f} s) — goal < 1 s: {'PASS' if med < 1 else 'FAIL'}")


if __name__ == "__main__":
    main()
