"""Writing token shards with ``litdata.optimize``, safely.

``litdata.optimize`` deletes ``$TMPDIR/chunks`` and ``$TMPDIR/data`` on every call unless its cache
folders are set, so we always point them at a private temp folder. A shard is written into a
hidden temp folder next to its destination and renamed into place when complete, so a crash
never leaves a folder that shard discovery would pick up (discovery skips dot-folders).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Iterable, Optional, Sequence

from midtrain.errors import ConfigError


@contextmanager
def private_litdata_cache():
    """Point litdata's optimize caches at a private folder for the duration of the block."""
    keys = ("DATA_OPTIMIZER_CACHE_FOLDER", "DATA_OPTIMIZER_DATA_CACHE_FOLDER")
    old = {k: os.environ.get(k) for k in keys}
    tmp = tempfile.mkdtemp(prefix="midtrain-litdata-")
    try:
        os.environ["DATA_OPTIMIZER_CACHE_FOLDER"] = os.path.join(tmp, "chunks")
        os.environ["DATA_OPTIMIZER_DATA_CACHE_FOLDER"] = os.path.join(tmp, "data")
        yield tmp
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(tmp, ignore_errors=True)


def _yield_tokens(doc):
    import torch

    yield torch.as_tensor(doc, dtype=torch.int32 if max(doc, default=0) < 2**31 else torch.int64)


def optimize_tokens(fn, inputs: list, output_dir: str, chunk_tokens: int, num_workers: int) -> None:
    """litdata.optimize into a TokensLoader shard, with private caches (it rmtree's $TMPDIR/chunks otherwise)."""
    from litdata import optimize
    from litdata.streaming import TokensLoader

    import sys

    with private_litdata_cache():  # progress bars only for a person at a terminal, not in logs and error output
        optimize(fn=fn, inputs=inputs, output_dir=output_dir, chunk_size=chunk_tokens, item_loader=TokensLoader(),
                 num_workers=num_workers, mode="overwrite", start_method="fork", verbose=sys.stderr.isatty())


def write_token_shard(out_dir: str | os.PathLike, docs: Sequence[Sequence[int]], chunk_tokens: int = 1 << 20,
                      num_workers: int = 1) -> str:
    """Write documents (lists of token ids) as one litdata TokensLoader shard at ``out_dir``, atomically."""
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir):
        raise ConfigError(out_dir, "already exists (refusing to overwrite a shard)")
    if not docs:
        raise ConfigError(out_dir, "no documents to write")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    try:
        optimize_tokens(_yield_tokens, [list(map(int, d)) for d in docs], tmp, chunk_tokens, num_workers)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def write_fake_index(out_dir: str | os.PathLike, chunk_tokens: Iterable[int], chunk_files: bool = True) -> str:
    """An index.json and sparse (all-zero, no disk used) chunk files of the right size: enough for
    discovery, weights, plans and file checks. For tests/benches; ``chunk_files=False`` skips them."""
    import json

    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    chunks = [{"chunk_bytes": 4 * (3 + int(d)), "chunk_size": 1, "dim": int(d), "filename": f"chunk-0-{i}.bin"}
              for i, d in enumerate(chunk_tokens)]
    index = {"chunks": chunks, "config": {"data_format": ["no_header_tensor:16"], "item_loader": "TokensLoader"}}
    with open(os.path.join(out_dir, "index.json"), "w") as f:
        json.dump(index, f)
    for c in chunks if chunk_files else ():
        with open(os.path.join(out_dir, c["filename"]), "wb") as f:
            f.truncate(c["chunk_bytes"])
    return out_dir


# ---- midtrain prepare: raw text -> one typed shard (+ its val shard) ----

_TOKENIZERS: dict = {}


def _tokenize_unit(unit: str, tokenizer_dir: str, field: str, split: str, val_fraction: float, error_dir: str):
    """litdata optimize fn: one input unit -> token tensors (EOS appended) of the documents in ``split``.

    Bad input (a malformed line, a missing field) is recorded in ``error_dir`` for the main process
    to report as one line, instead of a worker traceback."""
    try:
        yield from _tokenize_documents(unit, tokenizer_dir, field, split, val_fraction, error_dir)
    except ConfigError as e:
        import uuid

        with open(os.path.join(error_dir, uuid.uuid4().hex), "w") as f:
            f.write(str(e))


def in_val_split(text: str, val_fraction: float) -> bool:
    """Whether ``midtrain prepare`` puts a document in the val split: by content (crc32 of its text), so the
    split does not depend on where the files live, and duplicates never straddle it."""
    import zlib

    return val_fraction > 0 and zlib.crc32(text.encode()) / 2**32 < val_fraction


def _tokenize_documents(unit: str, tokenizer_dir: str, field: str, split: str, val_fraction: float,
                        notes_dir: str | None = None):
    """Token tensors of the documents of ``unit`` in ``split``; the count of documents holding a special
    token's text goes to ``notes_dir`` (a ``note-special-*`` file) for the main process to report."""
    import torch

    from midtrain.data.readers import read_documents

    from midtrain.tokenizer import load_tokenizer, special_token_texts

    if tokenizer_dir not in _TOKENIZERS:
        tok = load_tokenizer(tokenizer_dir, "--tokenizer_dir")
        _TOKENIZERS[tokenizer_dir] = (tok, special_token_texts(tok))
    tok, specials = _TOKENIZERS[tokenizer_dir]
    with_special = 0
    for text in read_documents(unit, field):
        if in_val_split(text, val_fraction) != (split == "val"):
            continue
        with_special += any(s in text for s in specials)
        # raw text as text (load_tokenizer): the only special token is this explicit EOS (litgpt's
        # encode(eos=True) would skip it when a text already ends in it)
        yield torch.cat([tok.encode(text, bos=False), torch.tensor([tok.eos_id])]).to(torch.int32)
    if with_special and notes_dir:
        import uuid

        with open(os.path.join(notes_dir, f"note-special-{uuid.uuid4().hex}"), "w") as f:
            f.write(str(with_special))


def _raise_recorded(error_dir: str) -> None:
    for name in sorted(os.listdir(error_dir)):
        if name.startswith("note-"):
            continue
        with open(os.path.join(error_dir, name)) as f:
            message = f.read()
        field, _, rest = message.partition(": ")
        raise ConfigError(field, rest)


def shard_folder_name(shard: str | None, type_name: str | None, index: int | None, shard_types=None) -> str:
    """``--shard main/7`` -> "7", ``--shard c3`` -> "c3", ``--type code --index 3`` -> "c3"."""
    from midtrain.data.shards import MAIN, parse_shard_name, resolve_shard_types

    types = resolve_shard_types(shard_types)
    if shard is not None:
        if type_name is not None or index is not None:
            raise ConfigError("--shard", "give --shard or --type/--index, not both")
        name = shard.split("/", 1)[1] if shard.startswith(f"{MAIN}/") else shard
        if parse_shard_name(name, types) is None:
            raise ConfigError("--shard", f"{shard!r} is not a shard id (main/7, c3, m1, ...; prefixes: "
                              f"{', '.join(f'{t}={p}' for t, p in types.items())})")
        return name
    if type_name is None or index is None:
        raise ConfigError("--type", "give --shard ID, or --type NAME with --index N")
    if index < 0:
        raise ConfigError("--index", f"must be >= 0, got {index}")
    if type_name == MAIN:
        return str(index)
    if type_name not in types:
        raise ConfigError("--type", f"unknown type {type_name!r} (known: main, {', '.join(types)}; add with --shard_types)")
    return f"{types[type_name]}{index}"


def prepare_shard(inputs: list[str], tokenizer_dir: str, out_dir: str, name: str, field: str = "text",
                  val_fraction: float = 0.0, val_dir: str | None = None, num_workers: int = 1,
                  chunk_tokens: int = 1 << 24) -> dict:
    """Tokenize ``inputs`` into ``out_dir/name`` (and ``val_dir/name``). Nothing appears until both are complete."""
    from functools import partial

    from midtrain.data.readers import input_units
    from midtrain.data.shards import read_index

    if not 0 <= val_fraction < 1:
        raise ConfigError("--val_fraction", f"must be in [0, 1), got {val_fraction}")
    if val_fraction > 0 and val_dir is None:
        raise ConfigError("--val_dir", "required with --val_fraction (where the val shard goes)")
    if val_dir is not None and val_fraction == 0:
        raise ConfigError("--val_fraction", f"is 0, so nothing would be written to --val_dir {val_dir}: give the "
                          "fraction of documents held out (e.g. 0.01), or drop --val_dir")
    if chunk_tokens < 1:
        raise ConfigError("--chunk_tokens", f"must be >= 1 (tokens per chunk file), got {chunk_tokens}")
    from midtrain.tokenizer import load_tokenizer

    tok_dir = os.path.abspath(tokenizer_dir)
    tok = load_tokenizer(tok_dir, "--tokenizer_dir")
    if tok.eos_id is None:
        raise ConfigError("--tokenizer_dir", f"{tokenizer_dir} defines no eos_token (needed between documents)")
    from midtrain.atomic import check_writable_dir, disk_full, disk_full_error

    units = input_units(inputs)
    check_writable_dir(out_dir, "--out_dir")
    if val_fraction > 0:
        check_writable_dir(val_dir, "--val_dir")
    targets = {"train": os.path.join(os.path.abspath(out_dir), name)}
    if val_fraction > 0:
        targets["val"] = os.path.join(os.path.abspath(val_dir), name)
    for split, dest in targets.items():
        if os.path.exists(dest):
            raise ConfigError(dest, "already exists (refusing to overwrite a shard)")
    temps: dict[str, str] = {}
    special_docs: dict[str, int] = {}
    created = _missing_folders(os.path.dirname(dest) for dest in targets.values())  # removed again on failure
    done = False
    errors = tempfile.mkdtemp(prefix="midtrain-prepare-errors-")  # bad input reported by the workers
    try:
        for split, dest in targets.items():
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            temps[split] = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=os.path.dirname(dest))
            fn = partial(_tokenize_unit, tokenizer_dir=tok_dir, field=field, split=split, val_fraction=val_fraction,
                         error_dir=errors)
            try:
                optimize_tokens(fn, units, temps[split], chunk_tokens, max(1, min(num_workers, len(units))))
            except Exception as e:
                _raise_recorded(errors)
                if disk_full(e):  # the shard takes ~4 bytes per token, about the input text's size
                    raise disk_full_error("--out_dir" if split == "train" else "--val_dir", os.path.dirname(dest),
                                          sum(os.path.getsize(u) for u in units if os.path.isfile(u))) from None
                raise
            _raise_recorded(errors)
            notes = [n for n in os.listdir(errors) if n.startswith("note-special-")]
            special_docs[split] = sum(int(open(os.path.join(errors, n)).read()) for n in notes)
            for n in notes:
                os.remove(os.path.join(errors, n))
            index = os.path.join(temps[split], "index.json")
            if not os.path.isfile(index) or sum(read_index(index)[0]) == 0:
                raise ConfigError("--val_fraction" if split == "val" else "--input",
                                  f"no documents went to the {split} shard" + (
                                      f" (--val_fraction {val_fraction} leaves none for training)"
                                      if split == "train" and val_fraction > 0 else
                                      f": each document goes to val with probability {val_fraction} (by a hash of "
                                      "its text), and none of these did; raise --val_fraction, or give more, "
                                      "smaller documents (a text file is one document; a JSONL line is one)"
                                      if split == "val" else f" (empty input, or no non-empty {field!r} text)"))
        from midtrain.data.identity import write_record
        from midtrain.tokenizer import tokenizer_vocab_size

        for split, temp in temps.items():  # which tokenizer made it, inside the shard (checked before a run)
            try:
                write_record(temp, tok_dir, tokenizer_vocab_size(tok), tok.eos_id,
                             sum(read_index(os.path.join(temp, "index.json"))[0]))
            except OSError as e:
                if disk_full(e):
                    raise disk_full_error("--out_dir" if split == "train" else "--val_dir", os.path.dirname(temp)) \
                        from None
                raise
        summary = {}
        for split, dest in targets.items():  # both complete: now make them visible
            os.replace(temps.pop(split), dest)
            dims, _ = read_index(os.path.join(dest, "index.json"))
            summary[split] = {"path": dest, "tokens": sum(dims), "chunks": len(dims),
                              "documents_with_special_token_text": special_docs.get(split, 0)}
        done = True
        return summary
    finally:
        for tmp in [*temps.values(), errors]:
            shutil.rmtree(tmp, ignore_errors=True)
        if not done:  # a refusal leaves nothing behind, not even the empty --out_dir / --val_dir it made
            for folder in created:
                try:
                    os.rmdir(folder)
                except OSError:
                    pass


def _missing_folders(folders) -> list[str]:
    """Folders (and their missing parents) that do not exist yet, deepest first."""
    missing: set[str] = set()
    for folder in folders:
        folder = os.path.abspath(folder)
        while not os.path.exists(folder) and folder != os.path.dirname(folder):
            missing.add(folder)
            folder = os.path.dirname(folder)
    return sorted(missing, key=lambda f: -f.count(os.sep))


def prepare(input: list[str], tokenizer_dir: str, out_dir: str, shard: Optional[str] = None,
            type: Optional[str] = None, index: Optional[int] = None, shard_types: Optional[dict[str, str]] = None,
            field: str = "text", val_fraction: float = 0.0, val_dir: Optional[str] = None,
            num_workers: int = max(1, (os.cpu_count() or 2) - 1), chunk_tokens: int = 1 << 24) -> int:
    """Tokenize raw text (JSONL, parquet, text files, HF save_to_disk folders) into one shard (`midtrain prepare`).

    Args:
        input: files or folders
        tokenizer_dir: a litgpt tokenizer folder (recorded in the shard)
        out_dir: the data_path the shard goes under
        shard: shard id: main/7, c3, m1, ...
        type: shard type (main, code, math, ...)
        index: shard number within the type
        shard_types: shard types of your own, type name -> id prefix (e.g. {"web": "w"})
        field: JSONL field / parquet column with the text
        val_fraction: the share of documents held out into a val shard (each by a hash of its text: a file with
            few documents may put none there)
        val_dir: where the val shard goes
        num_workers: tokenizing processes (default: the machine's cores less one)
        chunk_tokens: tokens per chunk file
    """
    name = shard_folder_name(shard, type, index, shard_types)
    summary = prepare_shard(input, tokenizer_dir, out_dir, name, field, val_fraction, val_dir, num_workers,
                            chunk_tokens)
    for split, info in summary.items():
        print(f"{split}: {info['path']} ({info['tokens']:,} tokens, {info['chunks']} chunks)")
        if info["documents_with_special_token_text"]:
            print(f"  {info['documents_with_special_token_text']:,} {split} document(s) contain a special token's text "
                  "(e.g. <|endoftext|>): tokenised as ordinary text; the only EOS is the one after each document")
    return 0
