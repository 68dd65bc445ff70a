"""Near-duplicate decontamination: which evaluation items overlap a corpus or a training set, beyond exact
matches. Pure core (text in, counts out; numpy only); ``run_overlap`` is the thin file shell and ``overlap`` the
command (its parser built from the signature by ``midtrain.cli``).

Guarantees:
- **Normalisation** (``normalise``): NFKC, lower case, every run of characters that are not letters or
  digits becomes one space; an item's words are the normalised text split on spaces. Whitespace, case and
  punctuation changes therefore never hide an overlap.
- **n-gram overlap**: an item overlaps a document when they share a normalised word n-gram of length
  ``n`` (default 13, common decontamination practice). An item shorter than ``n`` words is matched on its
  whole normalised text (an n-gram of its own length), so a short item inside a document is found too.
  n-grams never span two documents.
- **Renamed entities** (``entity_key``): a response also counts as leaked when it equals a training
  response after replacing every number by ``0`` and every capitalised word by ``X`` (then normalising):
  "Tom has 3 apples." and "Ann has 5 apples." are the same answer.
- **Scale**: the evaluation side (small) is indexed once as a sorted array of 64-bit hashes of its n-grams;
  corpora are streamed in batches of documents, their n-grams hashed with numpy (a polynomial hash of word
  ids over a sliding window) and looked up with ``np.isin``: memory is O(evaluation n-grams + one batch).
  Hash collisions (64-bit) can only add a false match, never hide one; every reported match is re-checked
  on the words themselves, so a collision is never reported.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import numpy as np

_NON_WORD = re.compile(r"[\W_]+")  # any script's letters and digits are words
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_CAPITALISED = re.compile(r"\b[A-Z][a-zA-Z]*\b")
SEP = 0  # word id of a document boundary (no n-gram spans it)
_P = np.uint64(1_000_003)


def normalise(text: str) -> str:
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def entity_key(text: str) -> str:
    """A response with its names and numbers blanked: equal keys = the same answer about other entities."""
    text = _NUMBER.sub("0", unicodedata.normalize("NFKC", text))
    return normalise(_CAPITALISED.sub("X", text))


@dataclass
class EvalItem:
    set: str
    index: int
    words: tuple[str, ...]
    response_key: str | None = None
    hits: dict = field(default_factory=dict)        # corpus name -> number of matching documents
    same_response: list = field(default_factory=list)  # training sets holding a response with the same key


class Vocab:
    """Word -> id (ids from 1; 0 is the document separator)."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def encode(self, words: Iterable[str]) -> list[int]:
        ids = self.ids
        out = []
        for w in words:
            i = ids.get(w)
            if i is None:
                i = ids[w] = len(ids) + 1
            out.append(i)
        return out


def _window_hashes(ids: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(start positions, hashes) of every window of ``length`` ids without a separator."""
    if len(ids) < length:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint64)
    windows = np.lib.stride_tricks.sliding_window_view(ids.astype(np.uint64), length)
    powers = _P ** np.arange(length - 1, -1, -1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        hashes = (windows * powers).sum(axis=1, dtype=np.uint64)
    seps = np.concatenate([[0], np.cumsum(ids == SEP)])
    clean = (seps[length:] - seps[:-length]) == 0
    starts = np.nonzero(clean)[0]
    return starts, hashes[clean]


class Index:
    """The evaluation items' n-grams, for streaming corpora against them."""

    def __init__(self, items: Sequence[EvalItem], n: int = 13) -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.items, self.n, self.vocab = list(items), n, Vocab()
        self.by_length: dict[int, dict[int, set[int]]] = {}  # length -> hash -> item positions
        for pos, item in enumerate(self.items):
            if not item.words:
                continue
            length = min(n, len(item.words))
            ids = np.asarray(self.vocab.encode(item.words), dtype=np.int64)
            _, hashes = _window_hashes(ids, length)
            table = self.by_length.setdefault(length, {})
            for h in set(hashes.tolist()):
                table.setdefault(h, set()).add(pos)
        self.sorted = {length: np.array(sorted(t), dtype=np.uint64) for length, t in self.by_length.items()}

    def scan(self, corpus: str, documents: Iterable[str], batch_words: int = 1 << 20) -> int:
        """Stream ``documents`` (raw text); count, per item, the documents sharing one of its n-grams.
        Returns the number of words read."""
        total, batch, bounds = 0, [], []
        for doc in documents:
            words = normalise(doc).split()
            if not words:
                continue
            bounds.append((len(batch), words))
            batch.extend(self.vocab.encode(words))
            batch.append(SEP)
            total += len(words)
            if len(batch) >= batch_words:
                self._match(corpus, batch, bounds)
                batch, bounds = [], []
        if batch:
            self._match(corpus, batch, bounds)
        return total

    def _match(self, corpus: str, batch: list[int], bounds: list) -> None:
        ids = np.asarray(batch, dtype=np.int64)
        starts_of_docs = np.array([b[0] for b in bounds], dtype=np.int64)
        for length, table in self.by_length.items():
            starts, hashes = _window_hashes(ids, length)
            found = np.isin(hashes, self.sorted[length])
            seen: set[tuple[int, int]] = set()
            for start, h in zip(starts[found].tolist(), hashes[found].tolist()):
                doc = int(np.searchsorted(starts_of_docs, start, side="right") - 1)
                doc_start, words = bounds[doc]
                gram = tuple(words[start - doc_start:start - doc_start + length])
                for pos in table.get(h, ()):
                    if (pos, doc) in seen:
                        continue
                    item = self.items[pos]
                    if _contains(item.words, gram):  # re-checked on the words: a hash collision is never reported
                        seen.add((pos, doc))
                        item.hits[corpus] = item.hits.get(corpus, 0) + 1


def _contains(words: tuple[str, ...], gram: tuple[str, ...]) -> bool:
    n = len(gram)
    return any(words[i:i + n] == gram for i in range(len(words) - n + 1))


def mark_same_responses(items: Sequence[EvalItem], train: str, responses: Iterable[str]) -> None:
    """Mark the items whose response has the same ``entity_key`` as one of ``responses`` (a training set)."""
    keys = {entity_key(r) for r in responses}
    keys.discard("")
    for item in items:
        if item.response_key and item.response_key in keys:
            item.same_response.append(train)


def summary(items: Sequence[EvalItem], corpora: Sequence[str], trains: Sequence[str]) -> dict:
    """Per evaluation set: items, items with an n-gram overlap (per corpus and any), items whose response
    equals a training response after renaming (per training set and any)."""
    out: dict[str, dict] = {}
    for item in items:
        s = out.setdefault(item.set, {"items": 0, "ngram": {c: 0 for c in corpora}, "ngram_any": 0,
                                      "same_response": {t: 0 for t in trains}, "same_response_any": 0,
                                      "examples": []})
        s["items"] += 1
        for c in item.hits:
            s["ngram"][c] += 1
        for t in item.same_response:
            s["same_response"][t] += 1
        s["ngram_any"] += bool(item.hits)
        s["same_response_any"] += bool(item.same_response)
        if (item.hits or item.same_response) and len(s["examples"]) < 5:
            s["examples"].append({"index": item.index, "text": " ".join(item.words)[:160],
                                  "corpora": sorted(item.hits), "same_response_as": item.same_response})
    return out


def format_summary(result: dict, n: int) -> str:
    lines = [f"| eval set | items | share a {n}-gram (normalised) with | same response after renaming (names, numbers) |",
             "|---|---|---|---|"]
    for name, s in result.items():
        ng = ", ".join(f"{c}: {k}" for c, k in s["ngram"].items()) or "-"
        sr = ", ".join(f"{t}: {k}" for t, k in s["same_response"].items()) or "-"
        lines.append(f"| {name} | {s['items']} | {s['ngram_any']} ({ng}) | {s['same_response_any']} ({sr}) |")
    return "\n".join(lines)


# ---- the file shell: `midtrain overlap` ----

def _named(values: Sequence[str], key: str) -> dict[str, str]:
    from midtrain.errors import ConfigError

    out = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise ConfigError(key, f"expected NAME=PATH, got {v!r}")
        if name in out:
            raise ConfigError(key, f"{name!r} is given twice")
        out[name] = path
    return out


def _rows(path, key: str):
    """Rows of a JSONL file (or a JSON list): dicts; one line naming the file for anything else."""
    import json
    from pathlib import Path

    from midtrain.errors import ConfigError

    path = Path(path)
    if path.suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise ConfigError(key, f"{path} is not JSON ({e})") from None
        yield from rows if isinstance(rows, list) else [rows]
        return
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError as e:
                    raise ConfigError(key, f"{path}:{i} is not a JSON line ({e})") from None


def _documents(path: str, key: str, responses: list[str], prompt_key: str = "prompt", response_key: str = "response"):
    """Documents of a corpus or training set, read as ``midtrain prepare`` reads its ``--input`` (the same files of a
    folder, ``midtrain.data.readers``): JSONL/JSON rows ("text", or prompt + response: the responses are collected
    for the renamed-entity check), parquet and ``save_to_disk`` folders (column "text"), and any other file as one
    text document (.txt, .py, .md, ...)."""
    from pathlib import Path

    from midtrain.data.readers import input_units, read_documents
    from midtrain.errors import ConfigError

    p = Path(path)
    if not p.exists():
        raise ConfigError(key, f"{path} does not exist")
    if (p / "index.json").is_file() or (p.is_dir() and any(p.rglob("index.json"))):
        raise ConfigError(key, f"{path} holds token shards: give the raw text they were prepared from "
                          "(n-grams are over normalised words)")
    try:
        units = input_units([p])
    except ConfigError as e:
        raise ConfigError(key, str(e).split(": ", 1)[-1]) from None
    for unit in map(Path, units):
        if unit.suffix not in (".jsonl", ".json") or unit.is_dir():
            try:
                yield from read_documents(str(unit))
            except ConfigError as e:
                raise ConfigError(key, str(e)) from None
            continue
        for row in _rows(unit, key):
            if not isinstance(row, dict):
                continue
            if "text" in row:
                yield str(row["text"])
            elif prompt_key in row or response_key in row:
                responses.append(str(row.get(response_key, "")))
                yield f"{row.get(prompt_key, '')} {row.get(response_key, '')}"


def run_overlap(evals: Sequence[str], against: Sequence[str], n: int = 13, json_out: str | None = None,
                prompt_key: str = "prompt", response_key: str = "response", keys: dict | None = None) -> dict:
    """``evals``: NAME=PATH of evaluation sets (prompt/response JSONL, or documents with "text"); ``against``: NAME=PATH of corpora and
    training sets; ``keys``: NAME -> (prompt key, response key) where a set's differ from the defaults.
    Returns {"n", "eval": summary(...), "words_read": {name: words}}; writes ``json_out``."""
    keys = dict(keys or {})
    import json
    from pathlib import Path

    from midtrain.errors import ConfigError

    if n < 1:
        raise ConfigError("--n", f"must be >= 1, got {n}")
    eval_paths, against_paths = _named(evals, "--eval"), _named(against, "--against")
    if json_out:
        from midtrain.atomic import check_writable_dir

        check_writable_dir(Path(json_out).parent, "--json")
    items = []
    for name, path in eval_paths.items():
        if not Path(path).is_file():
            raise ConfigError("--eval", f"{name}={path}: not a file")
        pk, rk = keys.get(name, (prompt_key, response_key))
        for i, row in enumerate(_rows(path, "--eval")):
            if isinstance(row, dict) and "text" in row and pk not in row and rk not in row:
                # a document (a corpus's val split): matched whole, with no response to compare
                items.append(EvalItem(name, i, tuple(normalise(str(row["text"])).split())))
                continue
            if not isinstance(row, dict) or pk not in row or rk not in row:
                raise ConfigError("--eval", f"{path}: item {i} has no {pk!r} and {rk!r} (nor \"text\")")
            text = f"{row[pk]} {row[rk]}"
            items.append(EvalItem(name, i, tuple(normalise(text).split()), entity_key(str(row[rk]))))
    if not items:
        raise ConfigError("--eval", "the evaluation sets hold no items")
    index = Index(items, n)
    words_read, trains = {}, []
    for name, path in against_paths.items():
        responses: list[str] = []
        words_read[name] = index.scan(name, _documents(path, "--against", responses,
                                                       *keys.get(name, (prompt_key, response_key))))
        if responses:
            mark_same_responses(items, name, responses)
            trains.append(name)
    result = {"n": n, "eval": summary(items, list(against_paths), trains), "words_read": words_read}
    if json_out:
        from midtrain.atomic import write_text_atomic

        write_text_atomic(json_out, json.dumps(result, indent=1) + "\n")
    return result


def overlap(eval: list[str], against: list[str], n: int = 13, prompt_key: str = "prompt",
            response_key: str = "response", json: Optional[str] = None) -> int:
    """Near-duplicate decontamination: per evaluation set, the items that share a normalised word n-gram with any
    document of --against (case, whitespace and punctuation ignored; an item shorter than n words is matched
    whole), and the items whose response equals a training response after replacing names and numbers.

    Args:
        eval: NAME=PATH of prompt/response JSONL sets (or JSONL documents with "text", such as a corpus's val split)
        against: NAME=PATH of corpora (read as `prepare --input` reads them: JSONL/parquet with text, any other file
            as a document, or a folder of them) and training sets (prompt/response JSONL: also checked for
            renamed-entity responses)
        n: n-gram length in words (13: common practice)
        prompt_key: the prompt's field in the JSONL sets
        response_key: the response's field in the JSONL sets
        json: also write the counts and examples as JSON
    """
    result = run_overlap(eval, against, n, json, prompt_key, response_key)
    print(format_summary(result["eval"], n))
    print("words read: " + ", ".join(f"{k} {v:,}" for k, v in result["words_read"].items()))
    return 0
