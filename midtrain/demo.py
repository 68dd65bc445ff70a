"""``midtrain demo`` (``make demo``): the paper's experiment in miniature, offline, on CPU.

1. Corpus from this Python installation: English prose (stdlib docstrings + pydoc topics) as the
   main corpus, stdlib source as code, generated arithmetic word problems as math; a downstream
   SFT task of new arithmetic word problems (prompt -> answer).
2. A BPE tokenizer, typed shards (1, 2 main; c1 code; m1 math) and val shards.
3. A tiny base run (midtrain_configs/demo/pretrain.yaml); from its half-way checkpoint, with equal
   total steps: (a) pretrain-only (the base run itself), (b) midtrain with 20% math,
   (c) continued pretraining on 100% math.
4. SFT of each arm on the downstream task (LR picked on val, loss on held-out test), forgetting on
   the main corpus; a table, a PNG and the runtime. Fixed seeds; nothing is tuned to force a result.
"""

from __future__ import annotations

import ast
import json
import os
import random
import sys
import sysconfig
import time
from pathlib import Path

from midtrain.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "midtrain_configs" / "demo"
NAMES = ["Ada", "Ben", "Chloe", "Dev", "Eva", "Farid", "Grace", "Hugo", "Ines", "Jon", "Kira", "Liam"]
ITEMS = ["apples", "books", "coins", "marbles", "pencils", "stamps", "shells", "cards"]


def stdlib_files(limit_bytes: int, seed: int) -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "test" not in p.parts and "site-packages" not in p.parts)
    random.Random(seed).shuffle(files)
    out, total = [], 0
    for p in files:
        size = p.stat().st_size
        if 2_000 < size < 60_000:
            out.append(p)
            total += size
            if total >= limit_bytes:
                break
    return out


def prose_documents(limit_chars: int, seed: int) -> list[str]:
    """Docstrings of stdlib modules, classes and functions, plus pydoc's topic texts: English prose."""
    docs = []
    try:
        from pydoc_data.topics import topics

        docs += [t for t in topics.values() if len(t) > 300]
    except ImportError:
        pass
    for path in stdlib_files(40_000_000, seed + 1):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 200:
                    docs.append(doc)
        if sum(map(len, docs)) > limit_chars:
            break
    random.Random(seed).shuffle(docs)
    out, total = [], 0
    for d in docs:
        out.append(d)
        total += len(d)
        if total >= limit_chars:
            break
    return out


def word_problem(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randrange(2, 60), rng.randrange(2, 40)
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    kind = rng.randrange(3)
    if kind == 0:
        return f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?", f"{a} + {b} = {a + b}"
    if kind == 1:
        a, b = max(a, b), min(a, b)
        return f"{name} had {a} {item} and gave away {b}. How many {item} are left?", f"{a} - {b} = {a - b}"
    c = rng.randrange(2, 10)
    return f"{name} buys {c} boxes with {b} {item} in each. How many {item} is that?", f"{c} * {b} = {c * b}"


def math_documents(n: int, seed: int) -> list[str]:
    """Worked arithmetic: word problems with solutions and plain equation drills."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        lines = []
        for _ in range(rng.randrange(4, 9)):
            if rng.random() < 0.6:
                q, a = word_problem(rng)
                lines.append(f"Question: {q}\nAnswer: {a}.")
            else:
                x, y = rng.randrange(100), rng.randrange(100)
                op = rng.choice("+-*")
                lines.append(f"Compute {x} {op} {y}. {x} {op} {y} = {eval(f'{x}{op}{y}')}.")
        docs.append("\n".join(lines))
    return docs


def sft_task(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": f"Question: {q}\nAnswer:", "response": f" {a}."} for q, a in (word_problem(rng) for _ in range(n))]


def write_jsonl(path: Path, docs, key="text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for d in docs:
            f.write(json.dumps(d if isinstance(d, dict) else {key: d}) + "\n")
    return path


def build_data(root: Path, quick: bool, seed: int = 0) -> dict:
    from midtrain.data.prepare import prepare_shard
    from midtrain.tokenizer import train_bpe

    raw = root / "raw"
    scale = 0.25 if quick else 1.0
    prose = prose_documents(int(2_400_000 * scale), seed)
    code_files = stdlib_files(int(1_200_000 * scale), seed + 2)
    code = [p.read_text(encoding="utf-8") for p in code_files]
    math = math_documents(int(2_000 * scale), seed + 3)
    half = len(prose) // 2
    inputs = {"1": write_jsonl(raw / "main1.jsonl", prose[:half]), "2": write_jsonl(raw / "main2.jsonl", prose[half:]),
              "c1": write_jsonl(raw / "code.jsonl", code), "m1": write_jsonl(raw / "math.jsonl", math)}
    sft = sft_task(600 if quick else 1200, seed + 4)
    write_jsonl(raw / "sft.jsonl", sft)
    sample = prose[: len(prose) // 2] + code[: len(code) // 2] + math[: len(math) // 2]
    random.Random(seed).shuffle(sample)
    tok = train_bpe(sample, root / "tokenizer", vocab_size=2048)
    data = root / "data"
    for name, path in inputs.items():
        prepare_shard([str(path)], str(tok), str(data / "shards"), name, val_fraction=0.05, val_dir=str(data / "val"),
                      num_workers=1, chunk_tokens=1 << 18)
    return {"tokenizer": tok, "data": data, "sft": raw / "sft.jsonl",
            "chars": {"main": sum(map(len, prose)), "code": sum(map(len, code)), "math": sum(map(len, math))}}


def _cli(fn, argv: list[str], name: str) -> None:
    from midtrain.cli import run_command

    code = run_command(fn, argv, name)
    if code != 0:
        raise SystemExit(code)


def run_demo(out: Path, quick: bool = False) -> dict:
    from midtrain import cli
    from midtrain.posttrain.sft import format_sft, run_sft
    from midtrain.report import plot_runs, read_metrics

    t0 = time.time()
    out = Path(out).resolve()
    if (out / "data").exists() or (out / "ckpt").exists():
        raise ConfigError("--out", f"{out} already holds a demo; remove it or pick another folder")
    print(f"[demo] building the corpus from {sysconfig.get_paths()['stdlib']} (offline) ...", flush=True)
    built = build_data(out, quick)
    print(f"[demo] corpus chars: {built['chars']}; tokenizer + shards ready ({time.time() - t0:.0f}s)", flush=True)
    os.environ["DATA_ROOT"], os.environ["CKPT_ROOT"] = str(built["data"]), str(out / "ckpt")
    common = ["--tokenizer_dir", str(built["tokenizer"]), "--logger_name", "csv"]
    steps, half = (40, 20) if quick else (120, 60)
    short = ["--train.max_steps", str(steps), "--train.save_interval", str(half), "--eval.interval", str(half // 2)]
    _cli(cli.pretrain, ["--config", str(CONFIGS / "pretrain.yaml"), *common, *short], "pretrain")
    start = out / "ckpt" / "demo" / "base" / f"step-{half:08d}"
    for arm in ("midtrain", "cpt"):
        _cli(cli.pretrain, ["--config", str(CONFIGS / f"{arm}.yaml"), *common, *short, "--resume_from", str(start)],
             "pretrain")
    arms = {"(a) pretrain-only": out / "ckpt" / "demo" / "base", "(b) midtrain 20% math": out / "ckpt" / "demo" / "midtrain",
            "(c) 100% math (CPT)": out / "ckpt" / "demo" / "cpt"}
    results = {}
    for label_, run in arms.items():
        print(f"[demo] SFT of {label_} on arithmetic word problems ...", flush=True)
        m = run_sft(run / "final", built["sft"], tokenizer_dir=built["tokenizer"], lrs=(1e-3, 3e-3),
                    epochs=2 if quick else 3, micro_batch_size=16, global_batch_size=16,
                    pretrain_val_path=built["data"] / "val", forgetting_batches=4, seed=0,
                    out=out / "sft" / f"{run.name}.json")
        print(format_sft(m), flush=True)
        val = read_metrics(run)
        results[label_] = {
            "main": _last(val, "val_loss/main"), "code": _last(val, "val_loss/code"), "math": _last(val, "val_loss/math"),
            "sft_test": m["test_loss"], "forgetting": m["forgetting"]["main"]["increase"],
            "main_after_sft": m["forgetting"]["main"]["after"],
        }
    png = plot_runs([str(p) for p in arms.values()], str(out / "val_loss.png"))
    table = format_demo_table(results)
    print("\n" + table)
    print("\n" + verdict(results))
    print(f"\nplot: {png}\ntotal runtime: {time.time() - t0:.0f} s")
    (out / "results.md").write_text(table + "\n\n" + verdict(results) + "\n")
    return results


def _last(metrics: dict, key: str) -> float:
    series = metrics.get(key, {})
    return series[max(series)] if series else float("nan")


def format_demo_table(results: dict) -> str:
    head = "| arm | main val loss | math val loss | code val loss | downstream SFT test loss | forgetting (main, after SFT - before) |"
    lines = [head, "|---|---|---|---|---|---|"]
    for arm, r in results.items():
        lines.append(f"| {arm} | {r['main']:.4f} | {r['math']:.4f} | {r['code']:.4f} | {r['sft_test']:.4f} | "
                     f"{r['forgetting']:+.4f} |")
    return "\n".join(lines)


def verdict(results: dict) -> str:
    a, b, c = (results[k] for k in results)
    lines = ["What the paper reports, checked at this scale (no tuning; a tiny model, a few minutes of CPU):"]
    ok1 = b["sft_test"] < a["sft_test"]
    lines.append(f"- midtraining on the target domain lowers downstream SFT loss vs pretrain-only: "
                 f"{b['sft_test']:.4f} vs {a['sft_test']:.4f} -> {'yes, as reported' if ok1 else 'NO, not reproduced here'}")
    ok2 = b["main_after_sft"] < c["main_after_sft"]
    lines.append(f"- midtraining keeps the main corpus better than 100% domain continued pretraining (main val "
                 f"loss after SFT): {b['main_after_sft']:.4f} vs {c['main_after_sft']:.4f} -> "
                 f"{'yes, as reported' if ok2 else 'NO, not reproduced here'}")
    better = "lower" if c["sft_test"] < b["sft_test"] else "higher"
    lines.append(f"- for reference, 100% math continued pretraining reaches a {better} downstream SFT loss than "
                 f"midtraining here ({c['sft_test']:.4f} vs {b['sft_test']:.4f}), with main val loss "
                 f"{c['main']:.4f} vs {b['main']:.4f} before SFT")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    from midtrain.cli import _parser

    parser = _parser("Run the paper's experiment in miniature on CPU, offline (corpus from the Python stdlib).")
    parser.add_argument("--out", type=str, default="out/demo")
    parser.add_argument("--quick", action="store_true", help="a smaller corpus and 40 steps (the test uses it)")
    a = parser.parse_args(argv)
    run_demo(Path(a.out), a.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
