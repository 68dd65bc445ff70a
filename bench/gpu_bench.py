"""GPU benchmark of `midtrain pretrain`: tokens/s, MFU, peak memory and the data loader's share of step time.

pythia-160m and pythia-410m, bf16-true, seq 2048, synthetic shards (main 0.8 / code 0.2, exact mixer),
torch.compile on, one GPU; plus pythia-160m with 2-GPU FSDP when more than one GPU is present. Each run
trains --steps optimizer steps; the figures are medians over the logged intervals after --skip steps
(compilation and warm-up excluded). Run it through bench/gpu.sh. `--smoke` runs the same code path on
CPU with a tiny model (fp32, no compile) so the script is tested before a GPU ever sees it.
"""

from __future__ import annotations

import argparse
import csv
import glob
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

TINY = {"name": "tiny", "block_size": 64, "vocab_size": 512, "padded_vocab_size": 512, "n_layer": 2, "n_head": 2,
        "n_embd": 32, "rotary_percentage": 0.25, "parallel_residual": True, "bias": True,
        "norm_class_name": "LayerNorm", "mlp_class_name": "GptNeoxMLP", "intermediate_size": 128}


def make_shards(base: str, tokens: int, vocab: int, doc_len: int = 4096) -> str:
    from midtrain.data.prepare import write_token_shard

    rng = np.random.default_rng(0)
    for name, share in (("1", 0.8), ("c1", 0.2)):
        n_docs = max(4, int(tokens * share) // doc_len)
        docs = rng.integers(0, vocab, size=(n_docs, doc_len), dtype=np.int64).tolist()
        write_token_shard(os.path.join(base, name), docs, chunk_tokens=1 << 22)
    return base


def run(tmp: str, data: str, label: str, model: dict, devices: int, strategy: str, precision: str, seq: int,
        micro: int, steps: int, compile_: bool, workers: int) -> dict:
    out = os.path.join(tmp, label)
    cfg = {**model, "out_dir": out, "precision": precision, "devices": devices, "strategy": strategy,
           "logger_name": "csv", "compile": compile_,
           "data": {"class_path": "midtrain.data.ShardedMixedDataset",
                    "init_args": {"data_path": data, "mix_weights_str": "main:0.8,code:0.2", "num_workers": workers}},
           "train": {"max_steps": steps, "global_batch_size": micro * devices, "micro_batch_size": micro,
                     "max_seq_length": seq, "log_interval": 5, "save_interval": 0, "lr_warmup_steps": 2,
                     "min_lr": 3e-5, "max_norm": 1.0},
           "eval": {"interval": 0, "final_validation": False},
           "optimizer": {"class_path": "torch.optim.AdamW",
                         "init_args": {"lr": 3e-4, "weight_decay": 0.1, "betas": [0.9, 0.95]}}}
    path = os.path.join(tmp, f"{label}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "midtrain", "pretrain", "--config", path], capture_output=True, text=True,
                       cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", "")))
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        return {"label": label, "error": (r.stderr.strip().splitlines() or ["?"])[-1][:300], "wall_s": wall}
    (metrics,) = glob.glob(os.path.join(out, "logs", "csv", "version_*", "metrics.csv"))[-1:]
    with open(metrics) as f:
        rows = [row for row in csv.DictReader(f) if row.get("tokens_per_sec")]
    memory = {}
    if os.path.exists(os.path.join(out, "memory.json")):
        import json

        with open(os.path.join(out, "memory.json")) as f:
            memory = json.load(f)
    return {"label": label, "rows": rows, "wall_s": wall, "memory": memory}


def summarize(result: dict, skip: int) -> str:
    if "error" in result:
        return f"{result['label']:<28} FAILED after {result['wall_s']:.0f}s: {result['error']}"
    rows = [r for r in result["rows"] if int(r["step"]) > skip] or result["rows"]

    def med(key, scale=1.0):
        vals = [float(r[key]) * scale for r in rows if r.get(key) not in (None, "")]
        return statistics.median(vals) if vals else float("nan")

    mem = result.get("memory") or {}
    estimate = (mem.get("estimate") or {}).get("total", float("nan")) / 1e9
    return (f"{result['label']:<28} {med('tokens_per_sec'):>12,.0f} {med('mfu', 100):>6.1f}% "
            f"{med('peak_mem_gb'):>9.1f} {estimate:>8.2f} {med('data_wait_share', 100):>9.1f}% {result['wall_s']:>7.0f}s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--skip", type=int, default=10, help="logged steps <= this are excluded (compile, warm-up)")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny model: test the script itself")
    ap.add_argument("--workers", type=int, default=4)
    args = ap.parse_args()
    import torch

    gpus = torch.cuda.device_count()
    if not args.smoke and gpus == 0:
        print("bench/gpu.sh: no GPU visible (use --smoke to test the script on CPU)", file=sys.stderr)
        return 2
    if args.smoke:
        cases = [("tiny 1xCPU fp32", {"model_config": TINY}, 1, "auto", "32-true", 64, 4, False),
                 ("tiny 2xCPU FSDP bf16-mixed", {"model_config": TINY}, 2, "fsdp", "bf16-mixed", 64, 4, False)]
        vocab, tokens = 512, 200_000
    else:
        cases = [("pythia-160m 1xGPU bf16", {"model_name": "pythia-160m"}, 1, "auto", "bf16-true", 2048, 16, True),
                 ("pythia-410m 1xGPU bf16", {"model_name": "pythia-410m"}, 1, "auto", "bf16-true", 2048, 8, True)]
        if gpus > 1:
            cases.append(("pythia-160m 2xGPU FSDP bf16", {"model_name": "pythia-160m"}, 2, "fsdp", "bf16-true", 2048,
                          16, True))
        vocab, tokens = 50_000, 2 * 16 * 2048 * (args.steps + 2)
    print(f"torch {torch.__version__}, {gpus} GPU(s): {torch.cuda.get_device_name(0) if gpus else 'none'}")
    with tempfile.TemporaryDirectory(prefix="midtrain-gpu-bench-") as tmp:
        t0 = time.perf_counter()
        data = make_shards(os.path.join(tmp, "data"), tokens, vocab)
        print(f"synthetic shards: {tokens:,} tokens in {time.perf_counter() - t0:.0f}s")
        print(f"{'run':<28} {'tokens/s':>12} {'MFU':>7} {'peak GB':>9} {'est. GB':>8} {'data wait':>10} {'wall':>8}")
        failed = 0
        for label, model, devices, strategy, precision, seq, micro, compile_ in cases:
            result = run(tmp, data, label.replace(" ", "_"), model, devices, strategy, precision, seq, micro,
                         args.steps, compile_, args.workers)
            result["label"] = label
            print(summarize(result, args.skip), flush=True)
            failed += "error" in result
    print("medians over logged intervals after step", args.skip, "| data wait = share of wall time in next(loader) | "
          "est. = the per-rank memory estimate (memory.json; peak GB is torch.cuda.max_memory_allocated)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
