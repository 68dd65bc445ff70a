"""The exact mixer's data path: read samples the ``blend`` schedule names, straight from litdata chunks.

Chunks written by ``litdata.optimize(..., item_loader=TokensLoader())`` are ``[n u32][n+1 offsets
u32][tokens]``; sample t of chunk c is tokens ``[t*L, (t+1)*L)`` — the same blocks litdata's
TokensLoader yields. We memory-map them (bench/loader.py compares this with litdata random access).

Open maps are bounded: each np.memmap keeps a file descriptor, and a run reads every chunk of its
sources (a C4-sized corpus at 2^24-token chunks is ~9k chunks), so an unbounded cache stops a run
at ``ulimit -n``. At most ``MAX_OPEN_CHUNKS`` maps stay open per process, least recently used out
first; a source's order visits one chunk's samples before the next (``blend.SourceOrder``), so
reads stay on a few maps at a time.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from midtrain.data.blend import Blend, SourceOrder, StageSpec, micro_batch_starts
from midtrain.data.shards import Shard
from midtrain.errors import ConfigError

MAX_OPEN_CHUNKS = 64
_OPEN: OrderedDict[tuple[str, int, int], np.ndarray] = OrderedDict()  # (shard, block, chunk) -> rows, this process


def _numpy_dtype(data_format: str, where: str) -> np.dtype:
    from litdata.constants import _NUMPY_DTYPES_MAPPING, _TORCH_DTYPES_MAPPING

    name, _, code = data_format.partition(":")
    if name == "no_header_tensor":
        return torch.empty(0, dtype=_TORCH_DTYPES_MAPPING[int(code)]).numpy().dtype
    if name == "no_header_numpy":
        return np.dtype(_NUMPY_DTYPES_MAPPING[int(code)])
    raise ConfigError(where, f"data format {data_format!r} is not a TokensLoader token shard")


class ShardReader:
    """Random access to the samples of one TokensLoader shard, by (chunk, item)."""

    def __init__(self, path: str, block: int) -> None:
        index_path = os.path.join(path, "index.json")
        with open(index_path) as f:
            index = json.load(f)
        cfg = index.get("config", {})
        if cfg.get("compression") or cfg.get("encryption"):
            raise ConfigError(index_path, "compressed or encrypted shards are not supported by mixer 'exact' "
                              "(use mixer: litdata)")
        self.path, self.block = path, block
        self.dtype = _numpy_dtype((cfg.get("data_format") or ["?"])[0], index_path)
        self.chunks = index["chunks"]
        self.items = [int(c["dim"]) // block for c in self.chunks]
        for key in [k for k in _OPEN if k[0] == path]:  # a new reader sees the files as they are now
            del _OPEN[key]

    def chunk_file(self, c: int) -> tuple[str, int]:
        """(path, the size in bytes index.json implies) of chunk c: ``[n u32][n+1 offsets u32][tokens]``."""
        meta = self.chunks[c]
        return (os.path.join(self.path, meta["filename"]),
                (2 + int(meta["chunk_size"])) * 4 + int(meta["dim"]) * self.dtype.itemsize)

    def verify(self) -> None:
        """Every chunk file index.json lists exists and is complete (a stat each), or a one-line ConfigError."""
        for c in range(len(self.chunks)):
            path, expected = self.chunk_file(c)
            try:
                size = os.path.getsize(path)
            except OSError:
                raise ConfigError(path, "missing: the shard's index.json lists this chunk file") from None
            if size < expected:
                raise ConfigError(path, f"truncated: {size} bytes, its index.json implies {expected}")

    def _chunk(self, c: int) -> np.ndarray:
        key = (self.path, self.block, c)
        arr = _OPEN.get(key)
        if arr is not None:
            _OPEN.move_to_end(key)
            return arr
        meta = self.chunks[c]
        header = (1 + int(meta["chunk_size"]) + 1) * 4
        path, expected = self.chunk_file(c)
        while len(_OPEN) >= MAX_OPEN_CHUNKS:
            _OPEN.popitem(last=False)  # its map (and file descriptor) closes when the last view goes
        try:
            mm = np.memmap(path, dtype=self.dtype, mode="r", offset=header, shape=(int(meta["dim"]),))
        except (OSError, ValueError) as e:
            raise ConfigError(path, f"unreadable while training ({type(e).__name__}: {e}); the shard changed "
                              "or vanished under the run") from None
        # a plain ndarray view: indexing a np.memmap subclass costs more than the copy itself
        arr = _OPEN[key] = np.asarray(mm)[: self.items[c] * self.block].reshape(self.items[c], self.block)
        return arr

    def read(self, chunks: np.ndarray, items: np.ndarray, out: np.ndarray, rows: np.ndarray) -> None:
        """Copy sample ``items[k]`` of chunk ``chunks[k]`` into ``out[rows[k]]`` (one copy per row)."""
        for r, c, i in zip(rows.tolist(), chunks.tolist(), items.tolist()):
            out[r, : self.block] = self._chunk(c)[i]


class ExactMixDataset(IterableDataset):
    """Yields micro-batches for this (rank, worker), forever, as one flat tensor (one tensor crosses the worker
    boundary, not two): ``micro x (L + 1)`` tokens, then the ``micro`` samples' source indices. Its two parts are
    contiguous views (``split_batch``): a strided slice of a pinned batch is copied to a pageable temporary by
    ``.to(cuda, non_blocking=True)``, and a copy from pageable memory waits for the GPU's queue to drain."""

    def __init__(self, stages: Sequence[StageSpec], shards: dict[str, Shard], block: int, micro: int, seed: int) -> None:
        self.stages, self.shards, self.block, self.micro, self.seed = list(stages), shards, block, micro, seed
        self.start, self.rank, self.world = 0, 0, 1

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        blend = Blend(self.stages)
        # Sources of the current stage are read; earlier stages' sources only count positions.
        current = self.stages[blend.stage_of(self.start)].sources
        readers = {s: ShardReader(self.shards[s].path, self.block) for s in current}
        orders = {s: SourceOrder(r.items, blend.source_seeds(s), s) for s, r in readers.items()}
        dtype = np.result_type(np.int32, *[r.dtype for r in readers.values()])
        ids = blend.source_ids
        for g in micro_batch_starts(self.start, self.micro, self.rank, self.world, worker, workers):
            src, pos = blend.locate(g, self.micro)
            flat = np.empty(self.micro * (self.block + 1), dtype=dtype)
            batch = flat[: self.micro * self.block].reshape(self.micro, self.block)
            flat[self.micro * self.block:] = src
            for s in np.unique(src).tolist():
                sid = ids[s]
                if sid not in readers:  # a later stage began inside this iteration
                    readers[sid] = ShardReader(self.shards[sid].path, self.block)
                    orders[sid] = SourceOrder(readers[sid].items, blend.source_seeds(sid), sid)
                rows = np.flatnonzero(src == s)
                _, chunk, item = orders[sid].locate(pos[rows])
                readers[sid].read(chunk, item, batch, rows)
            yield torch.from_numpy(flat)


def split_batch(flat: torch.Tensor, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens [micro, L + 1], source ids [micro])`` of an ``ExactMixDataset`` batch: contiguous views of it."""
    n = flat.numel() - micro
    return flat[:n].view(micro, n // micro), flat[n:]


def out_of_vocab(tokens: torch.Tensor, vocab_size: int | None) -> tuple[int, int] | None:
    """(row, token id) of the first token outside [0, vocab_size), or None.

    Without this check the model would hit an opaque device-side assert in the embedding lookup. min/max run in
    numpy, single-threaded: torch splits a reduction of more than 32k elements (a micro-batch of 16 x 2049) over
    its intra-op thread pool, whose threads sleep between batches and take milliseconds to wake, in the main
    process, every micro-batch (on an H200 a 12.7% data wait for pythia-160m, 0.6% for 410m's micro-batch of
    8 x 2049: bench/loader_probe.py shows it on CPU too).
    """
    if vocab_size is None or not tokens.numel():
        return None
    rows = tokens.numpy()
    if int(rows.max()) < vocab_size and int(rows.min()) >= 0:
        return None
    bad = (tokens >= vocab_size) | (tokens < 0)
    row = int(bad.any(dim=1).nonzero()[0])
    return row, int(tokens[row][bad[row]][0])


def distributed_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("GLOBAL_RANK", os.environ.get("RANK", 0))), int(os.environ.get("WORLD_SIZE", 1))


class ExactMixLoader(DataLoader):
    """DataLoader over ExactMixDataset whose state is just (global samples consumed, stage history).

    Yields token tensors (litgpt-compatible) or, with ``with_source_ids``, ``(tokens, source_ids)``
    where source ids index ``source_ids``. Resume is O(1), exact, and valid for any world size,
    worker count or micro batch (the global batch sequence depends only on the samples consumed).
    """

    def __init__(self, dataset: ExactMixDataset, num_workers: int = 0, with_source_ids: bool = False,
                 vocab_size: int | None = None, on_resume=None) -> None:
        from midtrain.signals import worker_init

        super().__init__(dataset, batch_size=None, num_workers=num_workers, pin_memory=torch.cuda.is_available(),
                         persistent_workers=False, prefetch_factor=4 if num_workers else None,
                         worker_init_fn=worker_init if num_workers else None)
        self.samples = 0
        self.with_source_ids = with_source_ids
        self.vocab_size = vocab_size
        self.on_resume = on_resume  # DataModule hook: (saved state) -> new stage history
        self.source_ids = Blend(dataset.stages).source_ids
        self.notes: list[dict] = []  # history that is not a stage (an imported checkpoint), kept in every save
        self.accept_foreign = False  # the trainer sets it for resume_from: a checkpoint of the original fork
        self.imported = False  # set when such a foreign data state was loaded (and not mapped)

    @property
    def stages(self) -> list[StageSpec]:
        return self.dataset.stages

    def __iter__(self):
        ds: ExactMixDataset = self.dataset
        ds.rank, ds.world = distributed_rank_world()
        ds.start = self.samples
        per_batch = ds.micro * ds.world
        for batch in super().__iter__():
            tokens, src = split_batch(batch, ds.micro)
            self._check_vocab(tokens, src)
            self.samples += per_batch
            yield (tokens, src) if self.with_source_ids else tokens

    def _check_vocab(self, tokens: torch.Tensor, src: torch.Tensor) -> None:
        bad = out_of_vocab(tokens, self.vocab_size)
        if bad is not None:
            row, token = bad
            sid = self.source_ids[int(src[row])]
            raise ConfigError(self.dataset.shards[sid].path, f"token id {token} is outside the vocabulary "
                              f"[0, {self.vocab_size}): shard {sid} was tokenized with another tokenizer")

    def state_dict(self) -> dict[str, Any]:
        out = {"mixer": "exact", "samples": self.samples, "stages": [s.to_dict() for s in self.stages]}
        if self.notes:
            out["notes"] = list(self.notes)
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("mixer") is None and state.get("imported") == "hf" and self.accept_foreign:
            # `midtrain import`: no data position and no optimizer state in an HF checkpoint (said and recorded)
            self.samples, self.imported = 0, True
            self.notes = list(state.get("notes", []))
            return
        if state.get("mixer") is None and self.accept_foreign:
            # litgpt's / the original fork's litdata loader state: its positions cannot be mapped onto this
            # schedule, so every source starts its seeded order from the beginning (said and recorded).
            self.samples, self.imported = 0, True
            self.notes = [{"imported": "litdata loader state of the original fork (not mapped)",
                           "data_restarted": True}]
            return
        if state.get("mixer") is None:
            raise ConfigError("data.mixer", "the checkpoint's data state is litdata's (the original fork or upstream "
                              "litgpt): start from it with resume_from: <checkpoint> and a new out_dir (model, optimizer "
                              "and step continue; the data position cannot be mapped)")
        if state.get("mixer") != "exact":
            raise ConfigError("data.mixer", f"the checkpoint's data state is from mixer {state.get('mixer')!r}, "
                              "not 'exact'; it cannot be resumed sample-exactly")
        self.samples = int(state["samples"])
        self.notes = list(state.get("notes", []))
        saved = [StageSpec.from_dict(s) for s in state["stages"]]
        stages = self.on_resume(saved, self.samples) if self.on_resume else saved
        self.dataset.stages = stages
        self.source_ids = Blend(stages).source_ids
