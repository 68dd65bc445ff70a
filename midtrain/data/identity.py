"""Which tokenizer made a shard (issue 27, class 10): recorded at ``prepare``, checked before a run.

A shard made with another tokenizer whose ids happen to fit the model's vocabulary trains without a
word (the model reads ``def f0(x):`` as ``iet ;0(x``). ``prepare`` writes ``midtrain_shard.json`` into
every shard it makes: the tokenizer's identity (a sha256 of its canonical ``tokenizer.json``, or of
``tokenizer.model``), its size and EOS id. ``check_same_tokenizer`` refuses a set of shards (a mixture
with its validation sets) whose records disagree with each other or with a run's ``tokenizer_dir``;
shards without a record (made before it existed, or by litdata directly) are accepted with a note.
Pure file reading: no torch.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from midtrain.errors import ConfigError

RECORD = "midtrain_shard.json"


def tokenizer_identity(tokenizer_dir: str | os.PathLike) -> str:
    """sha256 (first 16 hex digits) of what maps text to ids: ``tokenizer.json`` with its keys sorted (two saves
    of one tokenizer hash the same), or ``tokenizer.model`` (SentencePiece)."""
    folder = Path(tokenizer_dir)
    if (folder / "tokenizer.json").is_file():
        try:
            canonical = json.dumps(json.loads((folder / "tokenizer.json").read_text()), sort_keys=True)
        except (OSError, ValueError) as e:
            raise ConfigError(str(folder / "tokenizer.json"), f"unreadable ({e})") from None
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]
    if (folder / "tokenizer.model").is_file():
        return hashlib.sha256((folder / "tokenizer.model").read_bytes()).hexdigest()[:16]
    raise ConfigError(str(folder), "holds neither tokenizer.json nor tokenizer.model")


def write_record(shard_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike, vocab_size: int | None,
                 eos_id: int | None, tokens: int) -> None:
    record = {"tokenizer": tokenizer_identity(tokenizer_dir), "tokenizer_dir": os.path.abspath(tokenizer_dir),
              "vocab_size": vocab_size, "eos_id": eos_id, "tokens": tokens}
    Path(shard_dir, RECORD).write_text(json.dumps(record, indent=1) + "\n")


def read_record(shard_dir: str | os.PathLike) -> dict | None:
    path = Path(shard_dir, RECORD)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(str(path), f"unreadable ({e})") from None
    if not isinstance(record, dict) or not isinstance(record.get("tokenizer"), str):
        raise ConfigError(str(path), "records no tokenizer identity")
    return record


def check_same_tokenizer(shards: dict[str, str], field: str, tokenizer_dir: str | os.PathLike | None = None,
                         tokenizer_field: str = "tokenizer_dir") -> list[str]:
    """``shards``: a name (``main/1``, ``val gsm8k``) -> its folder. One line if two records disagree, or a record
    disagrees with ``tokenizer_dir``; returns notes (shards that record no tokenizer)."""
    records = {name: read_record(path) for name, path in shards.items()}
    known = {name: r["tokenizer"] for name, r in records.items() if r is not None}
    if len(set(known.values())) > 1:
        first, other = _two_groups(known)
        raise ConfigError(field, f"its shards were made with different tokenizers: {first[0]} with {first[1]}, "
                          f"{other[0]} with {other[1]} ({RECORD} in each): one model reads one tokenizer's ids")
    if tokenizer_dir is not None and known:
        mine = tokenizer_identity(tokenizer_dir)
        name, theirs = next(iter(known.items()))
        if theirs != mine:
            raise ConfigError(tokenizer_field, f"{tokenizer_dir} is tokenizer {mine}, and the shards were made with "
                              f"tokenizer {theirs} ({name}: {shards[name]}/{RECORD}): the model would read their ids "
                              "as other text")
    missing = sorted(name for name, r in records.items() if r is None)
    if not missing:
        return []
    return [f"note: {len(missing)} shard(s) record no tokenizer ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}: prepared before midtrain recorded it, or by litdata directly), so "
            "their tokenizer is not checked"]


def _two_groups(known: dict[str, str]) -> tuple[tuple[str, str], tuple[str, str]]:
    items = list(known.items())
    first = items[0]
    other = next(item for item in items if item[1] != first[1])
    return first, other
