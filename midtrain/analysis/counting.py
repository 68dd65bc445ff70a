"""Token-unigram counts of a dataset: token shards read directly (memory-mapped, no detokenising) or
raw text tokenised exactly as ``midtrain prepare`` does (each document + EOS).

A dataset is a *token stream*: for shards, the chunks of its shard folder(s) in order (a folder of
shard folders is read in sorted order); for raw text, its documents in input order. Counting uses
a deterministic seeded sample of at most ``max_tokens`` tokens: the stream is cut into blocks of
``SAMPLE_BLOCK`` tokens, the blocks are permuted with ``numpy.random.default_rng(seed)`` and taken
in that order until ``max_tokens`` (the last one cut short). A stream no longer than
``max_tokens`` is counted whole, so shards and raw text holding the same documents give identical
counts. Memory is O(vocab) plus one bounded read buffer, not O(corpus) (raw text is tokenised in
memory: meant for SFT-sized sets). A dataset that cannot be read is a one-line error, never
placeholder data.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from midtrain.errors import ConfigError

SAMPLE_BLOCK = 2048
_BUFFER = 1 << 24  # tokens gathered before one bincount


@dataclass(frozen=True)
class Counts:
    name: str
    counts: np.ndarray  # int64, one entry per token id
    tokens: int         # tokens counted
    total: int          # tokens in the whole stream
    source: str         # "shards", "text" or "sft" (a prompt/response file: prompt + response per example)


def sample_ranges(total: int, max_tokens: int | None, seed: int, block: int = SAMPLE_BLOCK) -> list[tuple[int, int]]:
    """Sorted, disjoint [start, end) ranges of the stream to count (pure)."""
    if total <= 0:
        return []
    if max_tokens is None or max_tokens >= total:
        return [(0, total)]
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    n_blocks = -(-total // block)
    order = np.random.default_rng(seed).permutation(n_blocks)
    out, left = [], max_tokens
    for b in order.tolist():
        start = b * block
        length = min(block, total - start, left)
        out.append((start, start + length))
        left -= length
        if left == 0:
            break
    return sorted(out)


def _count_segments(segments: list[np.ndarray], ranges: list[tuple[int, int]], vocab: int | None) -> np.ndarray:
    """bincount of the ranges of the concatenated segments, gathering at most _BUFFER tokens at a time."""
    counts = np.zeros(vocab or 0, dtype=np.int64)
    starts = np.cumsum([0] + [len(s) for s in segments])
    pending: list[np.ndarray] = []
    size = 0

    def flush():
        nonlocal counts, pending, size
        if not pending:
            return
        ids = np.concatenate(pending) if len(pending) > 1 else pending[0]
        if ids.size and ids.min() < 0:
            raise ConfigError("tokens", f"negative token id {int(ids.min())}")
        c = np.bincount(ids, minlength=len(counts))
        if len(c) > len(counts):
            counts = np.concatenate([counts, np.zeros(len(c) - len(counts), dtype=np.int64)])
        counts[: len(c)] += c
        pending, size = [], 0

    seg = 0
    for start, end in ranges:
        while start < end:
            while starts[seg + 1] <= start:
                seg += 1
            local = start - starts[seg]
            take = min(end, starts[seg + 1]) - start
            pending.append(np.asarray(segments[seg][local: local + take]).astype(np.int64, copy=False))
            size += take
            start += take
            if size >= _BUFFER:
                flush()
    flush()
    return counts


def shard_folders(path: str | os.PathLike) -> list[Path]:
    """A shard folder (index.json), or every shard folder below ``path`` in sorted order."""
    path = Path(path)
    if (path / "index.json").is_file():
        return [path]
    if not path.is_dir():
        raise ConfigError(str(path), "does not exist" if not path.exists() else "is not a shard folder")
    found = sorted(p.parent for p in path.rglob("index.json") if not any(part.startswith(".") for part in
                                                                           p.relative_to(path).parts))
    if not found:
        raise ConfigError(str(path), "holds no token shard (no index.json below it)")
    return found


def shard_segments(path: str | os.PathLike) -> list[np.ndarray]:
    """The token arrays (memory-mapped) of every chunk of the shard(s) at ``path``, in order."""
    from midtrain.data.exact import _numpy_dtype

    segments = []
    for folder in shard_folders(path):
        index_path = folder / "index.json"
        try:
            index = json.loads(index_path.read_text())
            cfg = index.get("config", {})
            chunks = index["chunks"]
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise ConfigError(str(index_path), f"not a litdata index ({type(e).__name__}: {e})") from None
        if cfg.get("compression") or cfg.get("encryption"):
            raise ConfigError(str(index_path), "compressed or encrypted shards cannot be counted")
        if cfg.get("item_loader") not in (None, "TokensLoader"):
            raise ConfigError(str(index_path), f"item_loader {cfg.get('item_loader')!r} is not a TokensLoader token shard")
        dtype = _numpy_dtype((cfg.get("data_format") or ["?"])[0], str(index_path))
        for meta in chunks:
            file = folder / meta["filename"]
            dim, header = int(meta["dim"]), (2 + int(meta["chunk_size"])) * 4
            try:
                size = file.stat().st_size
            except OSError:
                raise ConfigError(str(file), "missing: the shard's index.json lists this chunk file") from None
            if size < header + dim * dtype.itemsize:
                raise ConfigError(str(file), f"truncated: {size} bytes, its index.json implies "
                                  f"{header + dim * dtype.itemsize}")
            if dim:
                segments.append(np.memmap(file, dtype=dtype, mode="r", offset=header, shape=(dim,)))
    return segments


def text_tokens(inputs: list[str], tokenizer_dir: str, field: str = "text") -> np.ndarray:
    """Raw text -> one token stream, each document + EOS, as ``midtrain prepare`` writes it."""
    from midtrain.data.readers import input_units, read_documents
    from midtrain.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_dir, "--tokenizer_dir")
    if tok.eos_id is None:
        raise ConfigError("--tokenizer_dir", f"{tokenizer_dir} defines no eos_token")
    parts = []
    for unit in input_units(inputs):
        for text in read_documents(unit, field):
            parts.append(np.asarray(tok.encode(text, bos=False).tolist() + [tok.eos_id], dtype=np.int64))
    if not parts:
        raise ConfigError(", ".join(map(str, inputs)), f"no documents (no non-empty {field!r} text)")
    return np.concatenate(parts)


def sft_tokens(path: str | os.PathLike, tok, prompt_key: str = "prompt", response_key: str = "response"
               ) -> np.ndarray:
    """An SFT set's text as proximity sees it, in order: each example's prompt + response, no EOS."""
    from pathlib import Path

    from midtrain.posttrain.sft import load_examples

    ids: list[int] = []
    for p, r in load_examples(Path(path), prompt_key, response_key):
        ids += tok.encode(p + r, bos=False).tolist()
    return np.asarray(ids, dtype=np.int64)


def sft_counts(path: str | os.PathLike, tok, prompt_key: str = "prompt", response_key: str = "response"
               ) -> np.ndarray:
    """Token counts of an SFT set (``sft_tokens``): the study report's task side, the demo's geometry table and
    ``midtrain proximity --targets`` on a prompt/response file."""
    return np.bincount(sft_tokens(path, tok, prompt_key, response_key))


def is_sft_file(path: str | os.PathLike, field: str = "text") -> bool:
    """Whether ``path`` is a JSONL file of prompt/response pairs (its first row has both and no ``field``): an SFT
    set, which proximity counts as prompt + response (``sft_counts``) wherever it meets one."""
    import json

    path = Path(path)
    if not (path.is_file() and path.suffix == ".jsonl"):
        return False
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                try:
                    row = json.loads(line)
                except ValueError:
                    return False
                return isinstance(row, dict) and field not in row and "prompt" in row and "response" in row
    return False


def is_shard_path(path: str | os.PathLike) -> bool:
    path = Path(path)
    return (path / "index.json").is_file() or (path.is_dir() and any(path.rglob("index.json")))


def count_dataset(name: str, path: str | os.PathLike, max_tokens: int | None, seed: int,
                  tokenizer_dir: str | None = None, field: str = "text", vocab: int | None = None) -> Counts:
    """Counts of one dataset: token shards when ``path`` holds index.json files, else raw text."""
    if not Path(path).exists():
        raise ConfigError(name, f"{path} does not exist")
    if is_shard_path(path):
        segments, source = shard_segments(path), "shards"
    else:
        if tokenizer_dir is None:
            raise ConfigError(name, f"{path} is raw text: give --tokenizer_dir to tokenise it")
        if is_sft_file(path, field):  # prompt/response pairs: counted as the study report counts an SFT task
            from midtrain.tokenizer import load_tokenizer

            segments, source = [sft_tokens(path, load_tokenizer(tokenizer_dir, "--tokenizer_dir"))], "sft"
        else:
            segments, source = [text_tokens([str(path)], tokenizer_dir, field)], "text"
    total = int(sum(len(s) for s in segments))
    if total == 0:
        raise ConfigError(name, f"{path} holds no tokens")
    ranges = sample_ranges(total, max_tokens, seed)
    counts = _count_segments(segments, ranges, vocab)
    if vocab is not None and len(counts) > vocab:
        raise ConfigError(name, f"{path} has token id {len(counts) - 1}, outside the tokenizer's vocabulary of "
                          f"{vocab} (tokenised with another tokenizer?)")
    return Counts(name, counts, int(sum(e - s for s, e in ranges)), total, source)


def pad_to(counts: np.ndarray, size: int) -> np.ndarray:
    return counts if len(counts) >= size else np.concatenate([counts, np.zeros(size - len(counts), dtype=counts.dtype)])
