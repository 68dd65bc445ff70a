"""Raw-text inputs for ``midtrain prepare`` and ``midtrain tokenizer train``: one iterator of documents.

Supported: JSONL (``.jsonl``/``.json``, one object per line, text under ``field``), parquet
(column ``field``), plain text files (one document per file), and a folder saved with HF
``datasets.save_to_disk`` (its ``.arrow`` files, read with pyarrow). A folder of files is read
recursively in sorted order.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

from midtrain.errors import ConfigError

TEXT_SUFFIXES = {".txt", ".md", ".py", ".rst", ".text", ""}


def input_units(paths: list[str | os.PathLike]) -> list[str]:
    """Expand inputs into readable units (files, or HF dataset folders), sorted, validated."""
    units: list[str] = []
    for p in map(Path, paths):
        if not p.exists():
            raise ConfigError("--input", f"{p} does not exist")
        if p.is_dir() and (p / "state.json").is_file() and (p / "dataset_info.json").is_file():
            units.append(str(p))
        elif p.is_dir():  # hidden files and folders (.git/, .cache/) are not documents
            units += sorted(str(f) for f in p.rglob("*")
                            if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts))
        else:
            units.append(str(p))
    if not units:
        raise ConfigError("--input", f"no files under {', '.join(map(str, paths))}")
    return units


def read_documents(unit: str, field: str = "text") -> Iterator[str]:
    p = Path(unit)
    if p.is_dir():
        yield from _read_hf_saved(p, field)
    elif p.suffix in (".jsonl", ".json"):
        yield from _read_jsonl(p, field)
    elif p.suffix == ".parquet":
        yield from _read_parquet(p, field)
    else:
        raw = p.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(_where(p, raw, e.start), f"is not UTF-8 text: byte 0x{raw[e.start]:02x} (give .jsonl, "
                              ".parquet, text files or a save_to_disk folder, in UTF-8)") from None
        text = text.replace("\r\n", "\n").replace("\r", "\n")  # universal newlines, as read_text gave
        if text.strip():
            yield text


def _where(p: Path, raw: bytes, offset: int) -> str:
    """``file:line:column`` of a byte offset (1-based)."""
    line = raw.count(b"\n", 0, offset) + 1
    column = offset - (raw.rfind(b"\n", 0, offset) + 1) + 1
    return f"{p}:{line}:{column}"


def checked_text(value: str, where: str) -> str:
    """Text a tokenizer can encode: a lone surrogate (valid JSON, ``"\\ud83d"``: half of an emoji's escape) is
    not Unicode text, and the tokenizer would fail on it deep in a worker."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ConfigError(where, f"holds {value[e.start]!r} at character {e.start}, a lone surrogate (half of a "
                          "UTF-16 pair, not text): fix or drop the document") from None
    return value


def _read_jsonl(p: Path, field: str) -> Iterator[str]:
    with open(p, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ConfigError(f"{p}:{n}:{e.start + 1}", f"is not UTF-8: byte 0x{raw[e.start]:02x}") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise ConfigError(f"{p}:{n}", f"not a JSON line ({e})") from None
            if not isinstance(obj, dict) or field not in obj:
                raise ConfigError(f"{p}:{n}", f"no field {field!r} (set --field)")
            if obj[field] is not None and not isinstance(obj[field], str):
                raise ConfigError(f"{p}:{n}", f"field {field!r} holds {type(obj[field]).__name__}, not text (set --field)")
            if obj[field]:
                yield checked_text(obj[field], f"{p}:{n}")


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
        return pyarrow
    except ImportError:
        raise ConfigError("--input", "reading parquet / arrow needs pyarrow (pip install pyarrow)") from None


def _read_parquet(p: Path, field: str) -> Iterator[str]:
    pa = _pyarrow()
    pf = pa.parquet.ParquetFile(p)
    if field not in pf.schema_arrow.names:
        raise ConfigError(str(p), f"no column {field!r} (columns: {', '.join(pf.schema_arrow.names)}; set --field)")
    row = 0
    for batch in pf.iter_batches(columns=[field]):
        try:
            values = batch.column(0).to_pylist()
        except (UnicodeDecodeError, pa.ArrowInvalid) as e:
            raise ConfigError(f"{p}: rows {row}-{row + len(batch) - 1}", f"not UTF-8 text ({e})") from None
        for t in values:
            if t is not None and not isinstance(t, str):
                raise ConfigError(f"{p}: row {row}", f"column {field!r} holds {type(t).__name__}, not text (set --field)")
            if t:
                yield checked_text(t, f"{p}: row {row}")
            row += 1


def _read_hf_saved(p: Path, field: str) -> Iterator[str]:
    pa = _pyarrow()
    files = sorted(p.glob("*.arrow"))
    if not files:
        raise ConfigError(str(p), "a save_to_disk folder without .arrow files")
    for f in files:
        with pa.memory_map(str(f)) as source:
            try:
                reader = pa.ipc.open_stream(source)
            except pa.ArrowInvalid:
                reader = pa.ipc.open_file(source)
            table = reader.read_all()
        if field not in table.column_names:
            raise ConfigError(str(f), f"no column {field!r} (columns: {', '.join(table.column_names)}; set --field)")
        try:
            values = table.column(field).to_pylist()
        except (UnicodeDecodeError, pa.ArrowInvalid) as e:
            raise ConfigError(str(f), f"column {field!r} is not UTF-8 text ({e})") from None
        for row, t in enumerate(values):
            if t is not None and not isinstance(t, str):
                raise ConfigError(f"{f}: row {row}", f"column {field!r} holds {type(t).__name__}, not text (set --field)")
            if t:
                yield checked_text(t, f"{f}: row {row}")
