"""The training loader alone at a run's cadence (run by bench/gpu.sh): is a run's data wait the loader's own, or
the run's (its host work competing with the loader's delivery)?

Each micro-batch: ``next(loader)`` (timed), a non-blocking copy of the batch to the device, then the device is kept
busy for as long as the run's micro-batch took (``torch.cuda._sleep``, which needs no host work; on CPU a sleep),
and after every ``accum`` micro-batches the loop waits for the device, as the trainer's logging step does;
``--host-busy-ms`` adds pure-Python work on the main thread per micro-batch (the loader's pin-memory thread needs
the GIL too). The loader is the trainer's (ShardedMixedDataset, mixer exact, pinned on GPU). Prints one JSON
line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from midtrain.data import ShardedMixedDataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--vocab", type=int, required=True)
    ap.add_argument("--micro", type=int, required=True)
    ap.add_argument("--accum", type=int, required=True)
    ap.add_argument("--seq", type=int, required=True)
    ap.add_argument("--workers", type=int, required=True)
    ap.add_argument("--seconds-per-micro", type=float, required=True)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--host-busy-ms", type=float, default=0.0, help="per micro-batch, pure-Python work on the main "
                    "thread (holding the GIL, as launching a compiled graph's kernels does) while the device works")
    args = ap.parse_args()
    data = ShardedMixedDataset(data_path=args.data, mix_weights_str="main:0.8,code:0.2", num_workers=args.workers,
                               vocab_size=args.vocab)
    data.connect(batch_size=args.micro, max_seq_length=args.seq, global_batch_size=args.micro * args.accum)
    data.setup()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    cycles_per_s = 0.0
    if cuda:  # torch.cuda._sleep spins for a number of GPU clock cycles: calibrate them to seconds
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(10**6)
        start.record()
        torch.cuda._sleep(10**8)
        end.record()
        end.synchronize()
        cycles_per_s = 1e8 / (start.elapsed_time(end) / 1e3)
    stream = torch.cuda.current_stream() if cuda else None
    batches = iter(data.train_dataloader(with_source_ids=True))
    waits: list[float] = []
    stall, t0 = 0.0, 0.0
    for i in range(args.accum * (args.steps + 2)):
        if i == 2 * args.accum:  # the first two steps start the workers and fill the queues
            waits, stall, t0 = [], 0.0, time.perf_counter()
        t = time.perf_counter()
        tokens, sources = next(batches)
        wait = time.perf_counter() - t
        waits.append(wait)
        stall += wait if stream is None or stream.query() else 0.0
        tokens.to(device, non_blocking=True)
        sources.to(device, non_blocking=True)
        if cuda:
            torch.cuda._sleep(int(cycles_per_s * args.seconds_per_micro))
        busy_until = time.perf_counter() + args.host_busy_ms / 1e3
        while time.perf_counter() < busy_until:
            sum(range(100))
        if not cuda:
            time.sleep(max(0.0, args.seconds_per_micro - args.host_busy_ms / 1e3))
        if (i + 1) % args.accum == 0 and cuda:
            torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    ms = sorted(w * 1e3 for w in waits)
    print(json.dumps({"median_ms": statistics.median(ms), "p90_ms": ms[int(0.9 * (len(ms) - 1))],
                      "wait_share": sum(waits) / wall, "stall_share": stall / wall, "batches": len(ms)}))


if __name__ == "__main__":
    main()
