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
from typing import Iterable, Sequence

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


def write_token_shard(out_dir: str | os.PathLike, docs: Sequence[Sequence[int]], chunk_tokens: int = 1 << 20,
                      num_workers: int = 1, overwrite: bool = False) -> str:
    """Write documents (lists of token ids) as one litdata TokensLoader shard at ``out_dir``, atomically."""
    from litdata import optimize
    from litdata.streaming import TokensLoader

    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir) and not overwrite:
        raise ConfigError(out_dir, "already exists (refusing to overwrite a shard)")
    if not docs:
        raise ConfigError(out_dir, "no documents to write")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    try:
        with private_litdata_cache():
            optimize(fn=_yield_tokens, inputs=[list(map(int, d)) for d in docs], output_dir=tmp,
                     chunk_size=chunk_tokens, item_loader=TokensLoader(), num_workers=num_workers,
                     mode="overwrite", start_method="fork")
        if overwrite and os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def write_fake_index(out_dir: str | os.PathLike, chunk_tokens: Iterable[int]) -> str:
    """An index.json alone (no chunk files): enough for discovery, weights and plans. For tests/benches."""
    import json

    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    chunks = [{"chunk_bytes": 4 * d, "chunk_size": 1, "dim": int(d), "filename": f"chunk-0-{i}.bin"}
              for i, d in enumerate(chunk_tokens)]
    index = {"chunks": chunks, "config": {"data_format": ["no_header_tensor:16"], "item_loader": "TokensLoader"}}
    with open(os.path.join(out_dir, "index.json"), "w") as f:
        json.dump(index, f)
    return out_dir
