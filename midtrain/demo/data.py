"""The demo's data, built offline from this Python installation and generators, decontaminated by
construction and by check.

- **main** (pretraining corpus): English prose, docstrings of stdlib modules, classes and functions
  plus pydoc's topic texts;
- **code** (midtraining): stdlib source files, minus the held-out modules;
- **math** (midtraining): arithmetic derivations, worked expressions and tables (``(23 + 14) * 3 =
  37 * 3 = 111``), never word problems;
- SFT **math**: multi-step word problems in a ``Word problem: ... / Work it out:`` prompt/response format
  that no corpus uses; SFT **code**: "complete the body of this function" from stdlib modules held out
  of the code shards and of the prose.

Decontamination (``midtrain.analysis.overlap``, the same core as ``midtrain overlap``):
- math items are split **compositionally**: each (item noun, sequence of operations) pair belongs to
  train or to val/test, never both, so no val/test response equals a training response after renaming
  names and numbers (the renamed-entity check would flag any template shared with train);
- a val/test item is dropped when its prompt, response or whole text occurs inside a corpus document
  (normalised exact match), when it shares a normalised 13-word n-gram (its whole text when shorter)
  with any corpus document or SFT training item, when its response equals a training response after
  renaming, or when its prompt repeats another val/test prompt.
``build_texts`` returns what it dropped and why; ``midtrain demo`` then runs ``midtrain overlap`` on the
written files and refuses to train unless every count is 0.
"""

from __future__ import annotations

import ast
import itertools
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
    sft_train: dict  # task -> training items (sized so SFT tokens stay a small fraction of the domain tokens)
    sft_eval: int    # val and test each, per task (before decontamination)


SCALES = {"tiny": Scale(600_000, 300_000, 600, {"math": 22, "code": 25}, 40),
          "quick": Scale(1_600_000, 800_000, 2_000, {"math": 55, "code": 70}, 80),
          "full": Scale(1_600_000, 1_200_000, 2_400, {"math": 55, "code": 70}, 120)}


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


def prose_modules(held_out: list[Path], seed: int) -> list[Path]:
    """Every stdlib module outside tests, of any size, except the held-out ones (their docstrings are the
    code SFT prompts): the docstrings of the size-filtered corpus modules alone are too little prose."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = set(held_out)
    files = sorted(p for p in root.rglob("*.py") if "test" not in p.parts and "tests" not in p.parts
                   and "site-packages" not in p.parts and "idlelib" not in p.parts and p not in skip)
    random.Random(seed).shuffle(files)
    return files


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


OPS = ("plus", "minus", "times")


def word_problem(rng: random.Random, item: str, ops: tuple[str, ...]) -> dict:
    """A multi-step word problem about ``item`` applying ``ops`` in order (no step goes below 0)."""
    name = rng.choice(NAMES)
    value = rng.randrange(5, 60)
    clauses, work = [f"{name} starts with {value} {item}."], []
    for op in ops:
        if op == "plus":
            b = rng.randrange(2, 40)
            clauses.append(f"{name} gets {b} more.")
            new = value + b
        elif op == "minus":
            b = rng.randrange(1, max(2, value))
            clauses.append(f"{name} gives away {b}.")
            new = value - b
        else:
            b = rng.randrange(2, 6)
            clauses.append(f"{name} ends up with {b} times as many.")
            new = value * b
        work.append(f"{value} {item} {op} {b} is {new} {item}")
        value = new
    q = " ".join(clauses) + f" How many {item} does {name} have at the end?"
    return {"prompt": f"Word problem: {q}\nWork it out:", "response": f" {'; '.join(work)}. The answer is {value}."}


def math_combos(seed: int, eval_share: float = 0.3) -> tuple[list, list]:
    """(train combos, eval combos): every (item noun, operation sequence of 2 or 3 steps), split at random."""
    combos = [(item, ops) for item in ITEMS for k in (2, 3) for ops in itertools.product(OPS, repeat=k)]
    random.Random(seed).shuffle(combos)
    k = int(len(combos) * eval_share)
    return combos[k:], combos[:k]


def math_sft(n_train: int, n_eval: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(train items, val+test candidates): compositionally split (``math_combos``)."""
    rng = random.Random(seed)
    train_combos, eval_combos = math_combos(seed)
    train = [word_problem(rng, *rng.choice(train_combos)) for _ in range(n_train)]
    evals = [word_problem(rng, *rng.choice(eval_combos)) for _ in range(n_eval)]
    return train, evals


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


def decontaminate(train: list[dict], evals: list[dict], corpora: dict[str, list[str]], n: int = 13
                  ) -> tuple[list[dict], dict]:
    """The ``evals`` candidates that share no normalised ``n``-gram with any corpus document or training
    item, whose response differs from every training response after renaming (``overlap.entity_key``), and
    whose prompt repeats no earlier candidate's; (kept, {reason: dropped})."""
    from midtrain.analysis import overlap as O

    items = [O.EvalItem("eval", i, tuple(O.normalise(r["prompt"] + " " + r["response"]).split()),
                        O.entity_key(r["response"])) for i, r in enumerate(evals)]
    index = O.Index(items, n)
    for name, docs in corpora.items():
        index.scan(name, docs)
    index.scan("sft-train", (r["prompt"] + " " + r["response"] for r in train))
    O.mark_same_responses(items, "sft-train", [r["response"] for r in train])
    corpus_text = "\x00".join(normalise(d) for docs in corpora.values() for d in docs)
    kept, dropped, prompts = [], {"exact": 0, "ngram": 0, "same_response": 0, "repeated_prompt": 0}, set()
    for item, r in zip(items, evals):
        p = O.normalise(r["prompt"])
        if any(normalise(x) in corpus_text for x in (r["prompt"], r["response"], r["prompt"] + r["response"])):
            dropped["exact"] += 1  # a prompt, response or whole item inside a document (the exact check's rule)
        elif item.hits:
            dropped["ngram"] += 1
        elif item.same_response:
            dropped["same_response"] += 1
        elif p in prompts:
            dropped["repeated_prompt"] += 1
        else:
            prompts.add(p)
            kept.append(r)
    return kept, dropped


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
    """(corpora: name -> documents, sft: task -> split -> items, dropped: task -> reason -> count)."""
    corpus_mods, held_out = split_modules(seed)
    prose = prose_documents(prose_modules(held_out, seed), scale.prose_chars, seed)
    corpora = {"main": prose, "code": code_documents(corpus_mods, scale.code_bytes),
               "math": math_documents(scale.math_docs, seed + 3)}
    sft, dropped = {}, {}
    n_math, n_code = scale.sft_train["math"], scale.sft_train["code"]
    # four times the eval items needed as candidates: decontamination drops some
    math_train, math_cand = math_sft(n_math, 4 * scale.sft_eval, seed + 4)
    code_items = code_sft(held_out, n_code + 4 * scale.sft_eval, seed + 5)
    for task, train, cand in (("math", math_train, math_cand),
                              ("code", code_items[:n_code], code_items[n_code:])):
        kept, why = decontaminate(train, cand, corpora)
        n_eval = min(scale.sft_eval, len(kept) // 2)
        sft[task] = {"train": train, "val": kept[:n_eval], "test": kept[n_eval:2 * n_eval]}
        dropped[task] = {**why, "candidates": len(cand)}
    return corpora, sft, dropped


def write_jsonl(path: Path, rows, key: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r if isinstance(r, dict) else {key: r}) + "\n")
    return path


def read_jsonl(path: Path) -> list:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
