"""Discovery of typed token shards under a base folder.

Layout (one folder per shard, each a litdata dataset with an ``index.json``)::

    data_path/
      1/ 2/ ... 60/        main corpus shards ("main/1", "main/2", ...)
      c1/ c2/              code shards (type "code", prefix "c")
      m1/                  math shards
      q1/ ... q4/          QA shards

A shard folder is named ``<prefix><n>``; the prefix maps to a type. Types are data: the defaults
below can be extended or overridden by a config field, never by editing code. A name only matches
a prefix when the remainder is all digits, so ``c`` and ``cc`` never capture each other's folders
(``cc1`` is ``cc`` + ``1``; ``c`` + ``c1`` is not a match). Two types with the same prefix are an
error. Folders that match no type, matched folders without ``index.json`` and stray files are
collected in ``Discovery.ignored`` so that a typo is visible rather than silently dropped.

No torch here: discovery is listdir + reading small JSON files.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Mapping

from midtrain.errors import ConfigError

MAIN = "main"
INDEX_FILE = "index.json"

DEFAULT_SHARD_TYPES: dict[str, str] = {
    "code": "c",
    "math": "m",
    "instruct": "i",
    "qa": "q",
    "books": "b",
    "news": "n",
    "papers": "p",
    "web": "w",
}

_PREFIX_RE = re.compile(r"^[A-Za-z_][A-Za-z_\-]*$")
_NAME_RE = re.compile(r"^(?P<prefix>[^\d]*)(?P<index>\d+)$")


@dataclass(frozen=True)
class Shard:
    """One litdata dataset folder. ``chunk_tokens`` are the per-chunk token counts from index.json."""

    id: str  # "main/3", "c1"
    type: str  # "main", "code", ...
    index: int
    path: str
    chunk_tokens: tuple[int, ...]
    chunk_files: tuple[str, ...] = ()

    @property
    def tokens(self) -> int:
        return sum(self.chunk_tokens)

    def samples(self, block_size: int) -> int:
        """Samples of ``block_size`` tokens litdata's TokensLoader yields: blocks never span chunks."""
        return sum(t // block_size for t in self.chunk_tokens)

    def fingerprint(self) -> dict:
        """What identifies the shard's content for resume checks (token counts + chunk list)."""
        return {"tokens": self.tokens, "chunks": list(self.chunk_files), "chunk_tokens": list(self.chunk_tokens)}


@dataclass(frozen=True)
class Ignored:
    name: str
    reason: str


@dataclass
class Discovery:
    base: str
    shards: list[Shard]
    ignored: list[Ignored] = field(default_factory=list)
    types: dict[str, str] = field(default_factory=dict)  # type name -> prefix, as used

    def by_type(self) -> dict[str, list[Shard]]:
        out: dict[str, list[Shard]] = {}
        for s in self.shards:
            out.setdefault(s.type, []).append(s)
        return out

    def by_id(self) -> dict[str, Shard]:
        return {s.id: s for s in self.shards}


def resolve_shard_types(overrides: Mapping[str, str] | None = None, field_name: str = "shard_types") -> dict[str, str]:
    """Defaults updated with ``overrides`` (type name -> prefix), validated."""
    types = dict(DEFAULT_SHARD_TYPES)
    for name, prefix in (overrides or {}).items():
        if not isinstance(name, str) or not name or name == MAIN or "/" in name:
            raise ConfigError(field_name, f"type name {name!r} is not allowed (non-empty, not 'main', no '/')")
        if not isinstance(prefix, str) or not _PREFIX_RE.match(prefix):
            raise ConfigError(field_name, f"prefix {prefix!r} for type {name!r} must be letters (e.g. 'c', 'cc')")
        types[name] = prefix
    seen: dict[str, str] = {}
    for name, prefix in types.items():
        if prefix in seen:
            raise ConfigError(field_name, f"types {seen[prefix]!r} and {name!r} share the prefix {prefix!r}")
        seen[prefix] = name
    return types


def parse_shard_name(name: str, types: Mapping[str, str]) -> tuple[str, int] | None:
    """``"12"`` -> ("main", 12); ``"c3"`` -> ("code", 3); no match -> None. Pure."""
    m = _NAME_RE.match(name)
    if m is None:
        return None
    prefix, index = m.group("prefix"), int(m.group("index"))
    if prefix == "":
        return MAIN, index
    for type_name, p in types.items():
        if p == prefix:
            return type_name, index
    return None


def shard_id(folder_name: str, type_name: str) -> str:
    """The id users write in literal weights: ``main/<folder>`` for main shards, else the folder name."""
    return f"{MAIN}/{folder_name}" if type_name == MAIN else folder_name


def read_index(index_path: str) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Per-chunk token counts and file names from a litdata index.json written with TokensLoader."""
    try:
        with open(index_path) as f:
            index = json.load(f)
        chunks = index["chunks"]
        dims = tuple(int(c["dim"]) for c in chunks)
        files = tuple(str(c.get("filename", "")) for c in chunks)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(index_path, f"not a readable litdata token index ({type(e).__name__}: {e})") from None
    bad = next((i for i, d in enumerate(dims) if d < 0), None)
    if bad is not None:
        raise ConfigError(index_path, f"chunk {bad} ({files[bad]}) has a negative token count {dims[bad]}")
    return dims, files


def type_order(type_name: str) -> tuple[int, str]:
    return (0 if type_name == MAIN else 1, type_name)


def _open_base(base, shard_types, field_name: str, single_name: str):
    """(base path, shard types, the base as one shard if it is itself a litdata dataset, else None)."""
    base = os.fspath(base)
    types = resolve_shard_types(shard_types)
    if not os.path.isdir(base):
        raise ConfigError(field_name, f"{base} is not a directory")
    if os.path.isfile(os.path.join(base, INDEX_FILE)):
        dims, files = read_index(os.path.join(base, INDEX_FILE))
        return base, types, Shard(single_name, single_name, 0, base, dims, files)
    return base, types, None


def discover(base: str | os.PathLike, shard_types: Mapping[str, str] | None = None, field_name: str = "data_path") -> Discovery:
    """All shards under ``base`` in natural order (main first, then types by name, then index)."""
    base, types, single = _open_base(base, shard_types, field_name, MAIN)
    if single is not None:  # the base folder is itself one litdata dataset: a single main shard
        return Discovery(base, [single], [], types)

    shards: list[Shard] = []
    ignored: list[Ignored] = []
    with os.scandir(base) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            ignored.append(Ignored(entry.name, "not a folder"))
            continue
        parsed = parse_shard_name(entry.name, types)
        if parsed is None:
            ignored.append(Ignored(entry.name, "name matches no shard type"))
            continue
        index_path = os.path.join(entry.path, INDEX_FILE)
        if not os.path.isfile(index_path):
            ignored.append(Ignored(entry.name, f"no {INDEX_FILE}"))
            continue
        type_name, index = parsed
        dims, files = read_index(index_path)
        shards.append(Shard(shard_id(entry.name, type_name), type_name, index, entry.path, dims, files))
    shards.sort(key=lambda s: (type_order(s.type), s.index))
    return Discovery(base, shards, ignored, types)


def discover_val_sets(base: str | os.PathLike, shard_types: Mapping[str, str] | None = None,
                      field_name: str = "val_data_path") -> dict[str, list[Shard]]:
    """Validation sets under ``base``, each reported separately (name -> shards).

    ``base`` itself a litdata dataset -> ``{"val": [it]}``. Otherwise each subfolder with an
    index.json is a set: typed shard folders are grouped by type (``1``, ``2`` -> "main";
    ``c1`` -> "code"), any other folder is a set named after itself (``gsm8k/`` -> "gsm8k").
    """
    base, types, single = _open_base(base, shard_types, field_name, "val")
    if single is not None:
        return {"val": [single]}
    sets: dict[str, list[Shard]] = {}
    with os.scandir(base) as it:
        entries = sorted((e for e in it if e.is_dir() and not e.name.startswith(".")), key=lambda e: e.name)
    for entry in entries:
        index_path = os.path.join(entry.path, INDEX_FILE)
        if not os.path.isfile(index_path):
            continue
        dims, files = read_index(index_path)
        parsed = parse_shard_name(entry.name, types)
        if parsed is None:
            name, index = entry.name, 0
        else:
            name, index = parsed
        sets.setdefault(name, []).append(Shard(shard_id(entry.name, name) if parsed else entry.name, name, index,
                                               entry.path, dims, files))
    if not sets:
        raise ConfigError(field_name, f"no litdata datasets (folders with {INDEX_FILE}) under {base}")
    for shards in sets.values():
        shards.sort(key=lambda s: s.index)
    return dict(sorted(sets.items(), key=lambda kv: type_order(kv[0])))
