"""`midtrain overlap` speed: a synthetic corpus of W words (JSONL, documents of ~500 words drawn from a
50,000-word Zipf vocabulary) streamed against 2,000 evaluation items with 13-gram matching, against the raw
read rate of the same file (every line read and JSON-decoded, no matching).

    python bench/overlap.py                      # the issue's target: 100M words, "in minutes" on 2 cores
    python bench/overlap.py --words 5000000 --repeats 1
Reports medians over --repeats (the file warm in the page cache after the first pass).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def write_corpus(path: Path, words: int, seed: int = 0, doc_words: int = 500) -> None:
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(50_000)])
    with open(path, "w") as f:
        left = words
        while left > 0:
            n = min(left, 1 << 20)
            ids = (rng.zipf(1.3, size=n) - 1) % len(vocab)
            toks = vocab[ids]
            for a in range(0, n, doc_words):
                f.write(json.dumps({"text": " ".join(toks[a:a + doc_words])}) + "\n")
            left -= n


def raw_read(path: Path) -> int:
    n = 0
    with open(path) as f:
        for line in f:
            n += len(json.loads(line)["text"].split())
    return n


def main() -> None:
    from midtrain.analysis.overlap import run_overlap

    ap = argparse.ArgumentParser()
    ap.add_argument("--words", type=int, default=100_000_000)
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus.jsonl"
        t = time.time()
        write_corpus(corpus, a.words)
        print(f"wrote {a.words:,} words ({corpus.stat().st_size / 1e9:.2f} GB) in {time.time() - t:.0f} s", flush=True)
        rng = np.random.default_rng(1)
        rows = [{"prompt": " ".join(f"q{rng.integers(1e6)}" for _ in range(10)),
                 "response": " ".join(f"r{rng.integers(1e6)}" for _ in range(8))} for _ in range(a.items)]
        (tmp / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        scans, reads = [], []
        for _ in range(a.repeats):
            t = time.time()
            res = run_overlap([f"eval={tmp / 'eval.jsonl'}"], [f"corpus={corpus}"], 13)
            scans.append(time.time() - t)
            t = time.time()
            raw_read(corpus)
            reads.append(time.time() - t)
        words = res["words_read"]["corpus"]
        scan, read = statistics.median(scans), statistics.median(reads)
        print(json.dumps({"words": words, "items": a.items, "n": 13, "scan_s": round(scan, 1),
                          "words_per_s": round(words / scan), "raw_read_s": round(read, 1),
                          "scan_over_raw_read": round(scan / read, 2), "false_positives": res["eval"]["eval"]["ngram_any"],
                          "repeats": a.repeats}, indent=1))


if __name__ == "__main__":
    main()
