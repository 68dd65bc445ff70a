"""The trainer's per-step overhead over a bare litgpt step, in one process (no start-up or scheduler noise).

Times, alternating in one process on the same model and batches: (a) the step litgpt's pretrain loop runs
(forward, chunked cross-entropy with reduction mean, backward, AdamW step) and (b) midtrain's step
(forward, per-token loss -> per-sample loss for the per-source meter, backward, AdamW step, the int32->int64
and contiguous input copies). Prints the median step time of each and their ratio (goal: bare / ours >= 0.98).
Usage: python bench/step_overhead.py [--steps 60] [--rounds 7]
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.trainer import MICRO, MODEL, SEQ  # noqa: E402


def main() -> None:
    from litgpt import Config
    from litgpt.model import GPT
    from litgpt.utils import chunked_cross_entropy

    from midtrain.train.metrics import SourceMeter
    from midtrain.train.metrics import per_token_loss

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = GPT(Config(**MODEL))
    model.max_seq_length = SEQ
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    batches = [torch.randint(0, 4096, (MICRO, SEQ + 2), dtype=torch.int32) for _ in range(8)]
    meter = SourceMeter(2, torch.device("cpu"))

    def bare(batch):
        tokens = batch[:, :SEQ + 1].long()
        logits = model(tokens[:, :-1])
        loss = chunked_cross_entropy(logits, tokens[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def ours(batch):  # the body of midtrain.train.pretrain.fit for one micro-batch per step
        tokens, sources = batch[:, :-1], batch[:, -1]
        tokens, sources = tokens.long(), sources.long() % 2
        inputs, targets = tokens[:, :SEQ].contiguous(), tokens[:, 1:SEQ + 1].contiguous()
        logits = model(inputs)
        per_sample = per_token_loss(logits, targets).mean(dim=1)
        per_sample.mean().backward()
        meter.add(sources, per_sample.detach())
        opt.step()
        opt.zero_grad(set_to_none=True)

    times = {"bare": [], "ours": []}
    for fn in (bare, ours):  # warm-up
        for b in batches[:3]:
            fn(b)
    # interleaved step by step (alternating which goes first), so a noisy machine's slow phases hit both alike
    for r in range(args.rounds):
        for i in range(args.steps):
            for name, fn in (("bare", bare), ("ours", ours)) if (r + i) % 2 == 0 else (("ours", ours), ("bare", bare)):
                t0 = time.perf_counter()
                fn(batches[i % len(batches)])
                times[name].append(time.perf_counter() - t0)
    b, o = statistics.median(times["bare"]), statistics.median(times["ours"])
    n = args.steps
    pairs = [statistics.median(times["bare"][k * n:(k + 1) * n]) / statistics.median(times["ours"][k * n:(k + 1) * n])
             for k in range(args.rounds)]
    print(f"# bench/step_overhead.py — CPU fp32, pythia-14m shape (vocab 4096), seq {SEQ}, batch {MICRO}, "
          f"{args.steps} steps x {args.rounds} rounds interleaved step by step, {torch.get_num_threads()} threads")
    print(f"median step: bare litgpt {b * 1e3:.1f} ms, midtrain {o * 1e3:.1f} ms")
    print(f"ratio bare / ours = {b / o:.3f} (goal >= 0.98); median of round ratios {statistics.median(pairs):.3f} "
          f"({', '.join(f'{p:.3f}' for p in pairs)})")


if __name__ == "__main__":
    main()
