"""The demo's data, built offline from this Python installation and generators, leak-free by construction
and by check.

- **main** (pretraining corpus): English prose, docstrings of stdlib modules, classes and functions
  plus pydoc's topic texts;
- **code** (midtraining): stdlib source files, minus the held-out modules;
- **math** (midtraining): arithmetic derivations, worked expressions and tables (``(23 + 14) * 3 =
  37 * 3 = 111``), never word problems;
- SFT **math**: word problems in a ``Word problem: ... / Work it out:`` prompt/response format that no
  corpus uses; SFT **code**: "complete the body of this function" from stdlib modules held out of the
  code shards and of the prose.

SFT val and test items are deduplicated (normalised exact match: lower case, whitespace collapsed)
against each other, against SFT train, and against every pretraining and midtraining document (a
val/test prompt, response or whole item that occurs inside a document is dropped). ``overlaps``
counts what remains (all 0 when the data is written) and is printed and saved.
"""

from __future__ import annotations

import ast
import json
import random
import re
import sysconfig
import textwrap
from dataclasses import dataclass
from pathlib import Path

NAMES = ["Ada", "Ben", "Chloe", "Dev", "Eva", "Farid", "Grace", "Hugo", "Ines", "Jon", "Kira", "Liam"]
ITEMS = ["apples", "books", "coins", "marbles", "pencils", "stamps", "shells", "cards"]


@dataclass(frozen=True)
class Scale:
    prose_chars: int
    code_bytes: int
    math_docs: int
    sft_train: int
    sft_eval: int  # val and test each (before deduplication)


SCALES = {"tiny": Scale(300_000, 200_000, 300, 120, 30), "quick": Scale(1_200_000, 700_000, 1_200, 400, 80),
          "full": Scale(2_400_000, 1_200_000, 2_000, 800, 120)}


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def stdlib_sources(seed: int) -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "test" not in p.parts and "site-packages" not in p.parts
                   and "idlelib" not in p.parts and 2_000 < p.stat().st_size < 60_000)
    random.Random(seed).shuffle(files)
    return files


def split_modules(seed: int, held_out_share: float = 0.2) -> tuple[list[Path], list[Path]]:
    """(corpus modules, held-out modules): the held-out ones feed only the code SFT task."""
    files = stdlib_sources(seed)
    k = int(len(files) * held_out_share)
    return files[k:], files[:k]


def prose_documents(modules: list[Path], limit_chars: int, seed: int) -> list[str]:
    docs = []
    try:
        from pydoc_data.topics import topics

        docs += [t for t in topics.values() if len(t) > 300]
    except ImportError:
        pass
    for path in modules:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 200:
                    docs.append(doc)
        if sum(map(len, docs)) > 2 * limit_chars:
            break
    random.Random(seed).shuffle(docs)
    out, total = [], 0
    for d in docs:
        out.append(d)
        total += len(d)
        if total >= limit_chars:
            break
    return out


def code_documents(modules: list[Path], limit_bytes: int, max_chars: int = 1500) -> list[str]:
    """Source files cut at blank lines into documents of at most ``max_chars`` (whole files would be too few
    documents for a content-hashed val split to be sure to get any)."""
    out, total = [], 0
    for p in modules:
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        doc: list[str] = []
        size = 0
        for block in text.split("\n\n"):
            if doc and size + len(block) > max_chars:
                out.append("\n\n".join(doc))
                doc, size = [], 0
            doc.append(block)
            size += len(block) + 2
        if doc and "".join(doc).strip():
            out.append("\n\n".join(doc))
        total += len(text)
        if total >= limit_bytes:
            break
    return out


def math_documents(n: int, seed: int) -> list[str]:
    """Arithmetic derivations, worked expressions and tables (no word problems, no Q/A format)."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        lines = []
        for _ in range(rng.randrange(4, 9)):
            kind = rng.randrange(4)
            a, b, c = rng.randrange(2, 60), rng.randrange(2, 40), rng.randrange(2, 10)
            if kind == 0:
                lines.append(f"({a} + {b}) * {c} = {a + b} * {c} = {(a + b) * c}")
            elif kind == 1:
                t = rng.randrange(2, 13)
                lines.append(f"Table of {t}: " + ", ".join(f"{t} * {i} = {t * i}" for i in range(1, 11)))
            elif kind == 2:
                lines.append(f"Let x = {a}. Then {c} * x - {b} = {c * a} - {b} = {c * a - b}.")
            else:
                lines.append(f"{a} + {b} = {a + b}; {a + b} - {c} = {a + b - c}; so {a} + {b} - {c} = {a + b - c}.")
        docs.append("\n".join(lines))
    return docs


def word_problem(rng: random.Random) -> dict:
    a, b = rng.randrange(2, 60), rng.randrange(2, 40)
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    kind = rng.randrange(3)
    if kind == 0:
        q, work, ans = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?", f"{a} + {b}", a + b
    elif kind == 1:
        a, b = max(a, b), min(a, b)
        q, work, ans = f"{name} had {a} {item} and gave away {b}. How many {item} are left?", f"{a} - {b}", a - b
    else:
        c = rng.randrange(2, 10)
        q, work, ans = f"{name} buys {c} boxes with {b} {item} in each. How many {item} is that?", f"{c} * {b}", c * b
    return {"prompt": f"Word problem: {q}\nWork it out:", "response": f" {work} = {ans}. The answer is {ans}."}


def math_sft(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [word_problem(rng) for _ in range(n)]


def code_sft(modules: list[Path], n: int, seed: int, max_chars: int = 360) -> list[dict]:
    """"Complete the body" items from small documented functions of the held-out modules."""
    items = []
    for path in modules:
        try:
            src = path.read_text(encoding="utf-8")
            tree = ast.parse(src)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef) or not ast.get_docstring(node) or len(node.body) < 2:
                continue
            seg = ast.get_source_segment(src, node)
            if not seg or len(seg) > max_chars:
                continue
            lines = textwrap.dedent(" " * node.col_offset + seg).splitlines()
            body_start = node.body[1].lineno - node.lineno  # after the docstring
            head, body = lines[:body_start], lines[body_start:]
            if not body or not "".join(body).strip():
                continue
            items.append({"prompt": "# Complete the body of this function.\n" + "\n".join(head) + "\n",
                          "response": "\n".join(body) + "\n"})
    random.Random(seed).shuffle(items)
    return items[:n]


def _dedup(train: list[dict], evals: list[list[dict]], corpus_text: str) -> list[list[dict]]:
    seen_prompts = {normalise(r["prompt"]) for r in train}
    seen_items = {normalise(r["prompt"] + r["response"]) for r in train}
    out = []
    for split in evals:
        kept = []
        for r in split:
            p, whole, resp = normalise(r["prompt"]), normalise(r["prompt"] + r["response"]), normalise(r["response"])
            if p in seen_prompts or whole in seen_items or p in corpus_text or whole in corpus_text or \
                    resp in corpus_text:
                continue
            seen_prompts.add(p)
            seen_items.add(whole)
            kept.append(r)
        out.append(kept)
    return out


def overlaps(sft: dict[str, dict[str, list[dict]]], corpora: dict[str, list[str]]) -> dict:
    """Per task and eval split: how many items share a prompt or whole item with SFT train or another
    eval split, and how many have a prompt, response or whole item inside a corpus document."""
    corpus_text = "\x00".join(normalise(d) for docs in corpora.values() for d in docs)
    out = {}
    for task, splits in sft.items():
        train_p = {normalise(r["prompt"]) for r in splits["train"]}
        train_w = {normalise(r["prompt"] + r["response"]) for r in splits["train"]}
        val_p = {normalise(r["prompt"]) for r in splits["val"]}
        for name in ("val", "test"):
            rows = splits[name]
            out[f"{task}/{name}"] = {
                "items": len(rows),
                "in_sft_train": sum(normalise(r["prompt"]) in train_p or normalise(r["prompt"] + r["response"])
                                    in train_w for r in rows),
                "test_in_val": sum(normalise(r["prompt"]) in val_p for r in rows) if name == "test" else 0,
                "in_corpora": sum(any(x in corpus_text for x in (normalise(r["prompt"]), normalise(r["response"]),
                                                                 normalise(r["prompt"] + r["response"])))
                                  for r in rows),
            }
    return out


def build_texts(scale: Scale, seed: int = 0) -> tuple[dict[str, list[str]], dict[str, dict[str, list[dict]]], dict]:
    """(corpora: name -> documents, sft: task -> split -> items, dedup counts)."""
    corpus_mods, held_out = split_modules(seed)
    prose = prose_documents(corpus_mods, scale.prose_chars, seed)
    corpora = {"main": prose, "code": code_documents(corpus_mods, scale.code_bytes),
               "math": math_documents(scale.math_docs, seed + 3)}
    corpus_text = "\x00".join(normalise(d) for docs in corpora.values() for d in docs)
    sft, dropped = {}, {}
    for task, items in (("math", math_sft(scale.sft_train + 2 * scale.sft_eval, seed + 4)),
                        ("code", code_sft(held_out, scale.sft_train + 2 * scale.sft_eval, seed + 5))):
        n_eval = min(scale.sft_eval, len(items) // 5)
        val, test, train = items[:n_eval], items[n_eval:2 * n_eval], items[2 * n_eval:2 * n_eval + scale.sft_train]
        val2, test2 = _dedup(train, [val, test], corpus_text)
        dropped[task] = {"val": len(val) - len(val2), "test": len(test) - len(test2)}
        sft[task] = {"train": train, "val": val2, "test": test2}
    return corpora, sft, dropped


def write_jsonl(path: Path, rows, key: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r if isinstance(r, dict) else {key: r}) + "\n")
    return path


def read_jsonl(path: Path) -> list:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
