"""Exact mixer vs litdata: throughput (P1), share accuracy (P3), resume cost (P5), uniqueness.

Usage: python bench/loader.py [--repeats 3] [--batches 200]
All ratios are measured side by side in one run; each figure is the median of --repeats runs.
Shards are generated once into a temp folder with litdata.optimize (private caches).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BLOCK = 2049  # max_seq_length 2048 + 1
BATCH = 8


def build(base, main_tokens, small_tokens):
    from midtrain.data.prepare import write_token_shard

    rng = np.random.default_rng(0)

    def docs(total, lo, hi):
        out, n = [], 0
        while n < total:
            d = rng.integers(lo, hi, size=int(rng.integers(500, 4000)))
            out.append(d.tolist())
            n += len(d)
        return out

    write_token_shard(os.path.join(base, "1"), docs(main_tokens, 0, 30000), chunk_tokens=1 << 20, num_workers=2)
    write_token_shard(os.path.join(base, "c1"), docs(small_tokens, 30000, 40000), chunk_tokens=1 << 20)
    for i, name in enumerate(["m1", "q1", "w1"]):
        write_token_shard(os.path.join(base, name), docs(small_tokens // 4, 40000 + i * 3000, 43000 + i * 3000),
                          chunk_tokens=1 << 19)


def tokens_per_s(make_iter, batches):
    it = make_iter()
    next(it)  # start-up (workers, first chunk) is not throughput
    t0 = time.perf_counter()
    n = 0
    for _ in range(batches):
        b = next(it)
        b = b[0] if isinstance(b, (tuple, list)) else b
        n += b.numel()
    return n / (time.perf_counter() - t0)


def median(f, repeats):
    return statistics.median(f() for _ in range(repeats))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--main-tokens", type=int, default=12_000_000)
    args = ap.parse_args()
    from litdata.streaming import CombinedStreamingDataset, StreamingDataLoader, StreamingDataset, TokensLoader

    from midtrain.data.sharded_mixed import ShardedMixedDataset

    tmp = tempfile.mkdtemp(prefix="midtrain-bench-")
    base = os.path.join(tmp, "data")
    build(base, args.main_tokens, args.main_tokens // 6)
    main_path = os.path.join(base, "1")

    def exact(workers, mix=None, literal=None, block=BLOCK - 1, micro=BATCH, glob=BATCH * 16):
        d = ShardedMixedDataset(data_path=base, mix_weights_str=mix, literal_weights_str=literal, num_workers=workers)
        d.connect(batch_size=micro, max_seq_length=block, global_batch_size=glob)
        return d

    def streaming(workers, path=main_path):
        ds = StreamingDataset(path, item_loader=TokensLoader(block_size=BLOCK), shuffle=True, drop_last=True)
        return StreamingDataLoader(ds, batch_size=BATCH, num_workers=workers, drop_last=True)

    def combined(workers, weights=(0.88, 0.12), block=BLOCK, batch=BATCH):
        dss = [StreamingDataset(os.path.join(base, n), item_loader=TokensLoader(block_size=block), shuffle=True,
                                drop_last=True) for n in ("1", "c1")]
        ds = CombinedStreamingDataset(dss, weights=list(weights), iterate_over_all=False, seed=42)
        return StreamingDataLoader(ds, batch_size=batch, num_workers=workers, drop_last=True)

    print(f"# bench/loader.py — block {BLOCK}, batch {BATCH}, median of {args.repeats}; main shard "
          f"{args.main_tokens / 1e6:.0f}M tokens")
    print("\n## P1 throughput (tokens/s), goal exact/StreamingDataset >= 0.95")
    print(f"{'workers':>7} {'memmap ceiling':>15} {'StreamingDataset':>17} {'exact (1 shard)':>16} {'ratio':>6} "
          f"{'exact 0.88/0.12':>16} {'Combined 0.88/0.12':>19} {'ratio':>6}")
    for workers in (0, 2):
        ceiling = median(lambda: memmap_ceiling(main_path, args.batches), args.repeats)
        sd = median(lambda: tokens_per_s(lambda: iter(streaming(workers)), args.batches), args.repeats)
        ex = median(lambda: tokens_per_s(lambda: iter(exact(workers, literal="main/1:1").train_dataloader()),
                                         args.batches), args.repeats)
        ex2 = median(lambda: tokens_per_s(lambda: iter(exact(workers, literal="main/1:0.88,c1:0.12").train_dataloader()),
                                          args.batches), args.repeats)
        co = median(lambda: tokens_per_s(lambda: iter(combined(workers)), args.batches), args.repeats)
        print(f"{workers:>7} {ceiling / 1e6:>13.1f}M {sd / 1e6:>15.1f}M {ex / 1e6:>14.1f}M {ex / sd:>6.2f} "
              f"{ex2 / 1e6:>14.1f}M {co / 1e6:>17.1f}M {co / sd:>6.2f}")

    print("\n## Reads: our chunk memmap vs litdata random access (same 2000 random samples)")
    reads(main_path, args.repeats)

    print("\n## P3 worst deviation from target per source over all global-batch windows (1024 samples), goal <= 1")
    for weights, names in (((0.88, 0.12), ("1", "c1")),
                           ((0.8, 0.15, 0.03, 0.015, 0.005), ("1", "c1", "m1", "q1", "w1"))):
        ours = p3_exact(base, names, weights)
        theirs = p3_litdata(base, names, weights)
        print(f"weights {'/'.join(map(str, weights))}: exact {ours:.3f} samples, litdata {theirs:.3f} samples")

    print("\n## P5 time to first batch after resume / fresh start, goal <= 1.2")
    for at in (10**6, 10**8):
        fresh = median(lambda: first_batch(exact(0, mix="main:0.8,code:0.2"), None), args.repeats)
        resumed = median(lambda: first_batch(exact(0, mix="main:0.8,code:0.2"), at), args.repeats)
        print(f"resume at sample {at:.0e}: {resumed * 1e3:.1f} ms vs fresh {fresh * 1e3:.1f} ms, ratio {resumed / fresh:.2f}")

    print("\n## Uniqueness of main samples over one full pass of main (0.88/0.12), goal 1.0")
    print(f"exact {uniq_exact(base):.3f}, litdata CombinedStreamingDataset {uniq_litdata(base):.3f}")


def memmap_ceiling(path, batches):
    import torch

    from midtrain.data.exact import ShardReader

    r = ShardReader(path, BLOCK)
    rows = [(c, i) for c, n in enumerate(r.items) for i in range(n)]
    t0 = time.perf_counter()
    n = 0
    for k in range(batches):
        sel = rows[(k * BATCH) % (len(rows) - BATCH):][:BATCH]
        out = np.empty((BATCH, BLOCK), dtype=r.dtype)
        for j, (c, i) in enumerate(sel):
            out[j] = r._chunk(c)[i]
        n += torch.from_numpy(out).numel()
    return n / (time.perf_counter() - t0)


def reads(path, repeats):
    from litdata.streaming import StreamingDataset, TokensLoader

    from midtrain.data.exact import ShardReader

    r = ShardReader(path, BLOCK)
    offsets = np.concatenate([[0], np.cumsum(r.items)])
    rng = np.random.default_rng(1)
    flat = rng.integers(0, offsets[-1], size=2000)
    chunk = np.searchsorted(offsets, flat, side="right") - 1
    item = flat - offsets[chunk]
    ds = StreamingDataset(path, item_loader=TokensLoader(block_size=BLOCK))

    def ours():
        t0 = time.perf_counter()
        out = np.empty((len(flat), BLOCK), dtype=r.dtype)
        r.read(chunk, item, out, np.arange(len(flat)))
        return len(flat) * BLOCK / (time.perf_counter() - t0)

    def theirs():
        t0 = time.perf_counter()
        for f in flat:
            ds[int(f)]
        return len(flat) * BLOCK / (time.perf_counter() - t0)

    a, b = median(ours, repeats), median(theirs, repeats)
    same = all(np.array_equal(ds[int(f)].numpy(), r._chunk(int(c))[int(i)]) for f, c, i in zip(flat[:50], chunk, item))
    print(f"chunk memmap {a / 1e6:.1f}M tok/s, litdata ds[i] {b / 1e6:.1f}M tok/s, ratio {a / b:.1f}x "
          f"(same samples: {same}) -> the exact mixer reads chunk files directly")


def p3_exact(base, names, weights, block=1024, windows=1000):
    from midtrain.data.blend import Blend, StageSpec, quantize_weights

    blend = Blend([StageSpec(0, tuple(names), tuple(quantize_weights(weights, block)), block, 0)])
    src, _ = blend.locate(0, block * windows)
    counts = np.stack([np.bincount(w, minlength=len(names)) for w in src.reshape(windows, block)])
    return float(np.abs(counts - np.array(weights) * block).max())


def p3_litdata(base, names, weights, block=1024, windows=100):
    from litdata.streaming import CombinedStreamingDataset, StreamingDataset, TokensLoader

    dss = [StreamingDataset(os.path.join(base, n), item_loader=TokensLoader(block_size=16), shuffle=True)
           for n in names]
    ds = CombinedStreamingDataset(dss, weights=list(weights), iterate_over_all=False, seed=42)
    src = []
    it = iter(ds)
    while len(src) < block * windows:
        try:
            tok = next(it)
        except StopIteration:
            it = iter(ds)
            continue
        v = int(tok[0])
        src.append(0 if v < 30000 else 1 if v < 40000 else 2 + (v - 40000) // 3000)
    counts = np.stack([np.bincount(w, minlength=len(names)) for w in np.array(src).reshape(windows, block)])
    return float(np.abs(counts - np.array(weights) * block).max())


def first_batch(data, at):
    loader = data.train_dataloader()
    t0 = time.perf_counter()
    if at is not None:
        state = loader.state_dict()
        state["samples"] = at
        loader.load_state_dict(state)
    next(iter(loader))
    return time.perf_counter() - t0


def uniq_exact(base):
    from midtrain.data.sharded_mixed import ShardedMixedDataset

    d = ShardedMixedDataset(data_path=base, literal_weights_str="main/1:0.88,q1:0.12", num_workers=0)
    d.connect(batch_size=64, max_seq_length=63, global_batch_size=64)
    n_main = d.discovery().by_id()["main/1"].samples(64)
    seen = []
    for tokens in d.train_dataloader():
        seen += [bytes(r.numpy()) for r in tokens if int(r[0]) < 30000]
        if len(seen) >= n_main:
            break
    return len(set(seen[:n_main])) / n_main


def uniq_litdata(base):
    from litdata.streaming import CombinedStreamingDataset, StreamingDataset, TokensLoader

    dss = [StreamingDataset(os.path.join(base, n), item_loader=TokensLoader(block_size=64), shuffle=True)
           for n in ("1", "q1")]  # q1 is 1/24 of main: it runs out long before main does
    ds = CombinedStreamingDataset(dss, weights=[0.88, 0.12], iterate_over_all=False, seed=42)
    n_main = len(dss[0])
    seen = []
    while len(seen) < n_main:
        for tok in ds:
            if int(tok[0]) < 30000:
                seen.append(bytes(tok.numpy()))
                if len(seen) >= n_main:
                    break
    return len(set(seen)) / n_main


if __name__ == "__main__":
    main()
