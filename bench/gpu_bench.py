"""GPU benchmark of `midtrain pretrain` as the paper runs it: one table, each row printed as soon as it is measured.

Cases (run it through bench/gpu.sh):
- pythia-160m and pythia-410m (and pythia-1b with --with-1b), each from its paper config
  (midtrain_configs/pretrain/pythia-*.yaml) on one GPU with the config's per-rank micro-batch and gradient
  accumulation (global 1024 = micro x accumulation x 8 GPUs: 8 micro-batches of 16 per step for 160m, 16 of 8 for
  410m, 32 of 4 for 1b), its precision (bf16-true), seq 2048 and the trainer's default compile (on, one GPU);
  synthetic shards (main 0.8 / code 0.2, exact mixer).
- pythia-160m also saves a checkpoint after step --steps - 1 and at the end (save s: their median), restores it in
  a second run (restore s), and validates on the config's eval.max_iters batches before step 1 (the pass that
  compiles the no-grad graph) and after step --steps - 1 (val s: that second pass).
- Where more than one GPU is visible: pythia-160m on all of them, DDP and FSDP2 (the same per-rank work), both
  eager (the trainer compiles DDP by default and FSDP2 never yet: compiled against eager would compare compilers).
- `--sizes 160m` runs one size (the first listed gets the save/restore/val, multi-GPU and litgpt rows);
  `--timeout` bounds each launched run (default 600 s), so one hung run cannot take the device budget; `--quick`
  runs the first size alone (with its save and validation), to check one change on a short budget.
- The loader alone at the first size's measured cadence (bench/loader_probe.py: the device kept busy with
  torch.cuda._sleep, no model): whether the run's data wait is the loader's own or the run's host work.
- Upstream `litgpt pretrain` on the pythia-160m case, side by side: its tokens/s over its last window (Lightning's
  ThroughputMonitor, 5 steps) against ours over the same steps; target ours/litgpt >= 0.98.
- The paper grid: each measured size's training tokens in midtrain_configs/studies/paper-main.yaml (what `study
  plan` counts: pretraining and midtraining segments, SFT left out) / the measured tokens/s per GPU = GPU-hours,
  and the days on the configs' 8 GPUs at that rate.
Figures are medians over the logged steps after --skip (compilation and warm-up excluded). `--smoke` runs every
branch on CPU with a tiny model (2 CPU ranks stand in for 2 GPUs; litgpt runs with TorchDynamo off, as compiling
on CPU would only cost time), so the script is tested before a GPU ever sees it. `--out FILE` appends each line
there too, as it is printed.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
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
PAPER_GPUS = 8  # devices x num_nodes of the paper configs
OUT: list = []


def say(line: str = "") -> None:
    print(line, flush=True)
    for path in OUT:
        with open(path, "a") as f:
            f.write(line + "\n")


def make_shards(base: str, tokens: int, vocab: int, doc_len: int = 4096, val_tokens: int = 64 * 4096) -> str:
    from midtrain.data.prepare import write_token_shard

    rng = np.random.default_rng(0)
    for name, share in (("1", 0.8), ("c1", 0.2)):
        n_docs = max(4, int(tokens * share) // doc_len)
        docs = rng.integers(0, vocab, size=(n_docs, doc_len), dtype=np.int64).tolist()
        write_token_shard(os.path.join(base, name), docs, chunk_tokens=1 << 22)
    val = os.path.join(os.path.dirname(base), "val", "main")
    n_val = max(4, -(-val_tokens // doc_len) + 1)  # enough for the config's whole val pass (eval.max_iters batches)
    write_token_shard(val, rng.integers(0, vocab, size=(n_val, doc_len), dtype=np.int64).tolist(), chunk_tokens=1 << 22)
    return base


def paper_case(size: str) -> dict:
    """The run-shaping fields of midtrain_configs/pretrain/pythia-<size>.yaml, per rank as the paper runs them."""
    with open(os.path.join(REPO, "midtrain_configs", "pretrain", f"pythia-{size}.yaml")) as f:
        cfg = yaml.safe_load(f)
    t = cfg["train"]
    ranks = cfg.get("devices", 1) * cfg.get("num_nodes", 1)
    return {"model": {"model_name": cfg["model_name"]}, "precision": cfg["precision"], "micro": t["micro_batch_size"],
            "accum": t["global_batch_size"] // (t["micro_batch_size"] * ranks), "seq": t["max_seq_length"],
            "max_norm": t.get("max_norm"), "optimizer": cfg["optimizer"], "val_iters": cfg["eval"]["max_iters"]}


def config(tmp: str, data: str, label: str, case: dict, devices: int, strategy: str, steps: int, workers: int,
           compile_=None, extras: bool = False, resume_from: str | None = None) -> str:
    out = os.path.join(tmp, label)
    cfg = {**case["model"], "out_dir": out, "precision": case["precision"], "devices": devices, "strategy": strategy,
           "logger_name": "csv",
           "data": {"class_path": "midtrain.data.ShardedMixedDataset",
                    "init_args": {"data_path": data, "val_data_path": os.path.join(os.path.dirname(data), "val"),
                                  "mix_weights_str": "main:0.8,code:0.2", "num_workers": workers}},
           "train": {"max_steps": steps, "global_batch_size": case["micro"] * case["accum"] * devices,
                     "micro_batch_size": case["micro"], "max_seq_length": case["seq"], "log_interval": 1,
                     "save_interval": steps - 1 if extras else 0, "lr_warmup_steps": 2, "min_lr": 3e-5,
                     "max_norm": case["max_norm"]},
           # with extras, validation runs before step 1 (its first pass compiles the no-grad graph) and after step
           # steps - 1: val s is that second pass's
           "eval": {"interval": steps - 1 if extras else 0, "max_iters": case["val_iters"], "initial_validation": extras,
                    "final_validation": False},
           "optimizer": case["optimizer"]}
    if compile_ is not None:
        cfg["compile"] = compile_
    if resume_from is not None:
        cfg["resume_from"] = resume_from
    path = os.path.join(tmp, f"{label}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


def litgpt_config(tmp: str, data: str, case: dict, steps: int, workers: int) -> str:
    tokens = steps * case["micro"] * case["accum"] * case["seq"]
    cfg = {**case["model"], "out_dir": os.path.join(tmp, "litgpt"), "precision": case["precision"], "devices": 1,
           "logger_name": "csv",
           "data": {"class_path": "midtrain.data.ShardedMixedDataset",
                    "init_args": {"data_path": data, "val_data_path": os.path.join(os.path.dirname(data), "val"),
                                  "mix_weights_str": "main:0.8,code:0.2", "num_workers": workers}},
           "train": {"max_tokens": tokens, "global_batch_size": case["micro"] * case["accum"],
                     "micro_batch_size": case["micro"], "max_seq_length": case["seq"], "log_interval": 1,
                     "save_interval": 10**9, "lr_warmup_steps": 2, "min_lr": 3e-5, "max_norm": case["max_norm"] or 1.0},
           "eval": {"interval": 10**9, "max_iters": 2, "initial_validation": False, "final_validation": False},
           "optimizer": case["optimizer"]}
    if "model_config" in case["model"]:
        cfg["model_name"] = "pythia-14m"  # litgpt's CLI requires a name; model_config overrides it
    path = os.path.join(tmp, "litgpt.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


TIMEOUT = [600.0]  # seconds per launch (--timeout): one hung run (a compile, a collective) must not take the budget


def launch(cmd: list[str], env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=TIMEOUT[0],
                           env=dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
                                    **(env or {})))
    except subprocess.TimeoutExpired:
        r = subprocess.CompletedProcess(cmd, 124, "", f"timed out after {TIMEOUT[0]:.0f} s (--timeout)")
    except OSError as e:
        r = subprocess.CompletedProcess(cmd, 127, "", f"{cmd[0]}: {e}")
    return r, time.perf_counter() - t0


def csv_rows(out: str) -> list[dict]:
    rows = []
    for path in sorted(glob.glob(os.path.join(out, "logs", "csv", "version_*", "metrics.csv"))):
        with open(path) as f:
            rows += list(csv.DictReader(f))
    return rows


def med(rows: list[dict], key: str, scale: float = 1.0) -> float | None:
    vals = [float(r[key]) * scale for r in rows if r.get(key) not in (None, "")]
    return statistics.median(vals) if vals else None


def last(rows: list[dict], key: str) -> float | None:
    vals = [float(r[key]) for r in rows if r.get(key) not in (None, "")]
    return vals[-1] if vals else None


def midtrain_case(tmp, data, label, case, devices, strategy, steps, skip, workers, extras, compile_=None,
                  restore: bool = True) -> dict:
    path = config(tmp, data, label, case, devices, strategy, steps, workers, compile_=compile_, extras=extras)
    r, wall = launch([sys.executable, "-m", "midtrain", "pretrain", "--config", path])
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["?"])[-1][:300], "wall": wall}
    rows = csv_rows(os.path.join(tmp, label))
    steps_rows = [x for x in rows if x.get("tokens_per_sec") and int(x["step"]) > skip]
    result = {"wall": wall, "tokens_per_sec": med(steps_rows, "tokens_per_sec"), "mfu": med(steps_rows, "mfu", 100),
              "peak_gb": med(steps_rows, "peak_mem_gb"), "data_wait": med(steps_rows, "data_wait_share", 100),
              "data_stall": med(steps_rows, "data_stall_share", 100),
              "save_s": med(rows, "save_s"), "val_s": last(rows, "val_s"), "rows": steps_rows}
    if extras and restore:  # the restore: model, optimizer and data position from the final checkpoint, one more step, in a new
        # process (no compile: its cost is not the restore's)
        path = config(tmp, data, f"{label}-restored", case, devices, strategy, steps + 1, workers, compile_=False,
                      resume_from=os.path.join(tmp, label, "final"))
        r, _ = launch([sys.executable, "-m", "midtrain", "pretrain", "--config", path])
        if r.returncode != 0:
            result["restore_error"] = (r.stderr.strip().splitlines() or ["?"])[-1][:300]
        else:
            result["restore_s"] = med(csv_rows(os.path.join(tmp, f"{label}-restored")), "restore_s")
    return result


def litgpt_case(tmp, data, case, steps, workers, smoke) -> dict:
    path = litgpt_config(tmp, data, case, steps, workers)
    r, wall = launch([sys.executable, "-m", "litgpt", "pretrain", "--config", path],  # (no console script needed)
                     env={"TORCHDYNAMO_DISABLE": "1"} if smoke else None)
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["?"])[-1][:300], "wall": wall}
    rows = [x for x in csv_rows(os.path.join(tmp, "litgpt")) if x.get("throughput/device/items_per_sec")
            or x.get("device/items_per_sec") or x.get("items_per_sec")]
    if not rows:
        return {"error": "no throughput in litgpt's metrics.csv", "wall": wall}
    last = rows[-1]
    rate = next(float(last[k]) for k in ("throughput/device/items_per_sec", "device/items_per_sec", "items_per_sec")
                if last.get(k))
    # (its CSV's "step" column is the micro-batch index: Fabric's log step; "iter" counts micro-batches)
    return {"wall": wall, "tokens_per_sec": rate, "step": int(float(last["iter"])) // case["accum"]}


def probe_row(size: str, case: dict, data: str, vocab: int, workers: int, rate: float, busy: float) -> str:
    """The loader alone at the run's cadence (bench/loader_probe.py), the main thread idle or ``busy`` (a share of
    each micro-batch's time in pure Python, holding the GIL): one line."""
    per_micro = case["micro"] * case["seq"] / rate
    r, wall = launch([sys.executable, os.path.join(REPO, "bench", "loader_probe.py"), "--data", data, "--vocab",
                      str(vocab), "--micro", str(case["micro"]), "--accum", str(case["accum"]), "--seq",
                      str(case["seq"]), "--workers", str(workers), "--seconds-per-micro", f"{per_micro:.6f}",
                      "--host-busy-ms", f"{busy * per_micro * 1e3:.3f}"])
    head = (f"loader alone at {size}'s cadence ({workers} workers, {per_micro * 1e3:.0f} ms of device work per "
            f"micro-batch, main thread {'busy in Python for ' + format(busy, '.0%') + ' of it' if busy else 'idle'})")
    if r.returncode != 0:
        return f"{head}: FAILED after {wall:.0f} s: {(r.stderr.strip().splitlines() or ['?'])[-1][:300]}"
    p = json.loads(r.stdout.strip().splitlines()[-1])
    return (f"{head}: next() median {p['median_ms']:.2f} ms, p90 {p['p90_ms']:.2f} ms over {p['batches']} batches; "
            f"data wait {100 * p['wait_share']:.1f}% (GPU idle {100 * p['stall_share']:.1f}%)")


def fmt(x, spec: str, unit: str = "") -> str:
    return "-" if x is None else f"{x:{spec}}{unit}"


def row(label: str, r: dict) -> str:
    if "error" in r:
        return f"| {label} | FAILED after {r['wall']:.0f} s: {r['error']} |"
    restore = r.get("restore_s") if "restore_error" not in r else f"FAILED: {r['restore_error']}"
    return (f"| {label} | {fmt(r['tokens_per_sec'], ',.0f')} | {fmt(r['mfu'], '.1f', '%')} | {fmt(r['peak_gb'], '.1f')} | "
            f"{fmt(r['data_wait'], '.1f', '%')} ({fmt(r.get('data_stall'), '.1f', '%')}) | {fmt(r.get('save_s'), '.1f')} | "
            f"{restore if isinstance(restore, str) else fmt(restore, '.1f')} | {fmt(r.get('val_s'), '.1f')} | "
            f"{r['wall']:.0f} |")


def grid_tokens() -> dict:
    """Training tokens per size of the paper's main grid, as `midtrain study plan` counts them."""
    from midtrain.study.files import load_plan

    for var in ("DATA_ROOT", "CKPT_ROOT", "TOKENIZER_DIR", "SFT_ROOT"):
        os.environ.setdefault(var, f"/nonexistent/{var.lower()}")
    plan = load_plan(os.path.join(REPO, "midtrain_configs", "studies", "paper-main.yaml"), check_files=False,
                     estimate=False)
    out: dict = {}
    for s in plan.steps:
        if s.kind in ("pretrain", "midtrain") and s.tokens and not s.reused:
            out[s.labels.get("size")] = out.get(s.labels.get("size"), 0) + s.tokens
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--skip", type=int, default=4, help="logged steps <= this are excluded (compile, warm-up)")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny model: test the script itself")
    ap.add_argument("--with-1b", action="store_true", help="also pythia-1b on one GPU")
    ap.add_argument("--sizes", default="160m,410m", help="paper sizes to run, the first with save/restore/val, DDP vs "
                    "FSDP2 and litgpt (e.g. 160m alone first, on a short device budget)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per launched run")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--out", help="also append every line to this file as it is printed")
    ap.add_argument("--quick", action="store_true", help="the first size's run alone, its save and validation "
                    "included (no restore, no multi-GPU rows, no upstream litgpt, no grid): to check one change on "
                    "a short device budget")
    args = ap.parse_args()
    if args.out:
        OUT.append(args.out)
    TIMEOUT[0] = args.timeout
    import torch

    gpus = torch.cuda.device_count()
    if not args.smoke and gpus == 0:
        print("bench/gpu.sh: no GPU visible (use --smoke to test the script on CPU)", file=sys.stderr)
        return 2
    if args.steps < args.skip + 2:
        print(f"bench/gpu.sh: --steps {args.steps} leaves fewer than 2 steps after --skip {args.skip}", file=sys.stderr)
        return 2
    if args.smoke:
        tiny = {"model": {"model_config": TINY}, "precision": "32-true", "micro": 4, "accum": 2, "seq": 64,
                "max_norm": 1.0, "optimizer": paper_case("160m")["optimizer"], "val_iters": 4}
        sizes, first, n = {"tiny": tiny}, "tiny", 2
        vocab, tokens, where = 512, 400_000, "CPU"
    else:
        names = [x.strip() for x in args.sizes.split(",") if x.strip()] + (["1b"] if args.with_1b else [])
        unknown = [x for x in names if not os.path.exists(os.path.join(REPO, "midtrain_configs", "pretrain",
                                                                       f"pythia-{x}.yaml"))]
        if not names or unknown:
            print(f"bench/gpu.sh: --sizes: no paper config for {unknown or 'nothing'} (70m, 160m, 410m, 1b)",
                  file=sys.stderr)
            return 2
        sizes = {x: paper_case(x) for x in dict.fromkeys(names[:1] if args.quick else names)}
        first, n = names[0], gpus
        vocab, tokens, where = 50_000, 2 * 16 * 8 * 2048 * (args.steps + 3) * max(1, gpus), "GPU"
    say(f"# bench/gpu.sh{' --smoke' if args.smoke else ''}: torch {torch.__version__}, "
        f"{gpus} GPU(s){': ' + torch.cuda.get_device_name(0) if gpus else ''}; {args.steps} steps, medians after "
        f"step {args.skip}")
    failed = 0
    with tempfile.TemporaryDirectory(prefix="midtrain-gpu-bench-") as tmp:
        t0 = time.perf_counter()
        first_case = sizes[first]
        data = make_shards(os.path.join(tmp, "data"), tokens, vocab,
                           val_tokens=first_case["val_iters"] * first_case["micro"] * (first_case["seq"] + 1))
        say(f"synthetic shards: {tokens:,} tokens in {time.perf_counter() - t0:.0f} s")
        say("| run | tokens/s | MFU | peak GB | data wait (GPU idle) | save s | restore s | val s | wall s |")
        say("|---|---|---|---|---|---|---|---|---|")
        measured = {}
        for size, case in sizes.items():
            label = f"{size} 1x{where} {case['precision']} micro {case['micro']} x accum {case['accum']}"
            r = midtrain_case(tmp, data, f"{size}-1", case, 1, "auto", args.steps, args.skip, args.workers,
                              extras=size == first, restore=not args.quick)
            say(row(label, r))
            failed += "error" in r or "restore_error" in r
            if "error" not in r:
                measured[size] = r
        if first in measured:  # is the run's data wait the loader's own? (seconds: the loader at that cadence)
            for busy in (0.5,) if args.smoke else (0.0, 0.5):  # (smoke: the one code path, once)
                say(probe_row(first, sizes[first], data, vocab, args.workers, measured[first]["tokens_per_sec"], busy))
        if args.quick:
            say("(--quick: no restore, multi-GPU, upstream litgpt or grid rows)")
            return 1 if failed else 0
        if n > 1:
            for strategy in ("ddp", "fsdp"):
                case = sizes[first]
                r = midtrain_case(tmp, data, f"{first}-{n}-{strategy}", case, n, strategy, args.steps, args.skip,
                                  args.workers, extras=False, compile_=False)
                say(row(f"{first} {n}x{where} {strategy} eager {case['precision']} micro {case['micro']} x accum "
                        f"{case['accum']}", r))
                failed += "error" in r
        theirs = litgpt_case(tmp, data, sizes[first], args.steps, args.workers, args.smoke)
        if "error" in theirs:
            say(f"upstream litgpt pretrain ({first}, 1x{where}): FAILED after {theirs['wall']:.0f} s: {theirs['error']}")
            failed += 1
        elif first in measured:
            ours_rows = [x for x in measured[first]["rows"] if int(x["step"]) > theirs["step"] - 5]
            ours = med(ours_rows, "tokens_per_sec") or measured[first]["tokens_per_sec"]
            say(f"upstream litgpt pretrain ({first}, 1x{where}, the same config): {theirs['tokens_per_sec']:,.0f} "
                f"tokens/s over its last 5 steps; midtrain {ours:,.0f} over the same steps: ratio midtrain/litgpt = "
                f"{ours / theirs['tokens_per_sec']:.3f} (target >= 0.98)")
    try:
        grid = grid_tokens()
    except Exception as e:  # the table above stands without it
        say(f"paper grid: not extrapolated ({type(e).__name__}: {e})")
        return 1
    say("paper grid (midtrain_configs/studies/paper-main.yaml, pretraining + midtraining tokens, SFT left out), "
        "at the tokens/s per GPU measured above:")
    for size, tokens in grid.items():
        rate = measured.get(size, {}).get("tokens_per_sec") if not args.smoke else \
            measured.get(first, {}).get("tokens_per_sec")
        if rate:
            hours = tokens / rate / 3600
            say(f"- {size}: {tokens / 1e9:,.1f}B tokens -> {hours:,.0f} GPU-hours, {hours / PAPER_GPUS / 24:,.1f} days "
                f"on {PAPER_GPUS} GPUs" + (" (smoke: the tiny model's rate, meaningless)" if args.smoke else ""))
        else:
            say(f"- {size}: {tokens / 1e9:,.1f}B tokens (not measured here)")
    say("data wait = share of wall time in next(loader) (GPU idle: the waits that ended with the GPU's queue empty, "
        "an upper bound on what the loader cost); MFU counts 6 x non-embedding parameters + attention "
        "(midtrain/train/flops.py); peak GB = torch.cuda.max_memory_allocated")
    return 1 if failed else 0


if __name__ == "__main__":
    started = time.perf_counter()
    code = main()
    say(f"bench/gpu.sh: {time.perf_counter() - started:.0f} s in all, this script's own time (exit {code})")
    sys.exit(code)
