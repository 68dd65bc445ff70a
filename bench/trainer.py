"""P4: midtrain's training throughput vs upstream ``litgpt pretrain`` on the same model and data.

Usage: python bench/trainer.py [--repeats 5] [--compile true]
Both run as subprocesses on the same tiny model (pythia-14m shape, vocab 4096, seq 256, batch 8),
the same shards (read through midtrain.data.ShardedMixedDataset, which upstream litgpt accepts),
fp32 on CPU, and the same compile setting (litgpt always compiles, so --compile true is the fair
default). Tokens/s is *marginal*: (tokens of a long run - tokens of a short run) / (wall time
difference), so start-up and compilation cancel out. Goal: ours / litgpt >= 0.98. Medians of --repeats,
and the median of the per-pair ratios (each pair runs back to back, so slow phases of a noisy machine cancel).
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MODEL = {"name": "pythia-14m-v4096", "block_size": 256, "vocab_size": 4096, "padded_vocab_size": 4096,
         "n_layer": 6, "n_head": 4, "n_embd": 128, "rotary_percentage": 0.25, "parallel_residual": True,
         "bias": True, "norm_class_name": "LayerNorm", "mlp_class_name": "GptNeoxMLP", "intermediate_size": 512}
MICRO, SEQ = 8, 256


def build(base):
    from midtrain.data.prepare import write_token_shard

    rng = np.random.default_rng(0)
    for name in ("1", "2"):
        docs = [rng.integers(0, 4096, size=2000).tolist() for _ in range(1000)]
        write_token_shard(os.path.join(base, name), docs, chunk_tokens=1 << 19)


def config(tmp, data, steps, which, compile_):
    cfg = {"model_config": MODEL, "out_dir": os.path.join(tmp, f"{which}-{steps}-{time.time_ns()}"),
           "precision": "32-true", "logger_name": "csv", "devices": 1,
           "data": {"class_path": "midtrain.data.ShardedMixedDataset",
                    "init_args": {"data_path": data, "val_data_path": os.path.join(data, "2"), "num_workers": 0}},
           "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 3e-4, "weight_decay": 0.1}},
           "eval": {"interval": 10**6, "max_iters": 1, "initial_validation": False, "final_validation": False}}
    train = {"global_batch_size": MICRO, "micro_batch_size": MICRO, "max_seq_length": SEQ, "log_interval": 10**6,
             "save_interval": 10**6, "lr_warmup_steps": 1, "min_lr": 3e-5}
    if which == "litgpt":
        train["max_tokens"] = steps * MICRO * SEQ
        cfg["model_name"] = "pythia-14m"  # required by litgpt's CLI; model_config overrides it
        cfg["train"] = train
    else:
        train["max_steps"] = steps
        cfg["train"] = train
        cfg["compile"] = compile_
    path = os.path.join(tmp, f"{which}-{steps}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


def wall(cmd):
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--short", type=int, default=5)
    ap.add_argument("--long", type=int, default=45)
    ap.add_argument("--compile", choices=["true", "false"], default="true")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="midtrain-bench-trainer-")
    data = os.path.join(tmp, "data")
    build(data)
    bin_dir = os.path.dirname(sys.executable)
    runs = {
        "midtrain": lambda path: [sys.executable, "-m", "midtrain", "pretrain", "--config", path],
        "litgpt": lambda path: [os.path.join(bin_dir, "litgpt"), "pretrain", "--config", path],
    }
    rates = {k: [] for k in runs}
    for which, cmd in runs.items():  # warm-up, discarded: the first runs fill compile and file caches
        wall(cmd(config(tmp, data, args.short, which, args.compile == "true")))
    for _ in range(args.repeats):
        for which, cmd in runs.items():  # side by side, alternating
            t_short = wall(cmd(config(tmp, data, args.short, which, args.compile == "true")))
            t_long = wall(cmd(config(tmp, data, args.long, which, args.compile == "true")))
            rates[which].append((args.long - args.short) * MICRO * SEQ / (t_long - t_short))
    ours, theirs = statistics.median(rates["midtrain"]), statistics.median(rates["litgpt"])
    pairs = [a / b for a, b in zip(rates["midtrain"], rates["litgpt"])]  # each pair ran back to back
    print(f"# bench/trainer.py — CPU fp32, pythia-14m shape (vocab 4096), seq {SEQ}, batch {MICRO}, "
          f"compile {args.compile}, marginal over steps {args.short}->{args.long}, median of {args.repeats}")
    print(f"midtrain pretrain: {ours:,.0f} tokens/s  (runs: {', '.join(f'{r:,.0f}' for r in rates['midtrain'])})")
    print(f"litgpt pretrain:   {theirs:,.0f} tokens/s  (runs: {', '.join(f'{r:,.0f}' for r in rates['litgpt'])})")
    print(f"P4 ratio midtrain / litgpt = {ours / theirs:.3f} (goal >= 0.98); median of the {len(pairs)} pair ratios "
          f"{statistics.median(pairs):.3f} (pairs: {', '.join(f'{p:.3f}' for p in pairs)})")


if __name__ == "__main__":
    main()
