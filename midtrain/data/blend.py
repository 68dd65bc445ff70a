"""The exact mixer's schedule: which source, and which sample of it, is global sample g. Pure.

No torch and no I/O (numpy only), so every property can be tested exhaustively.

**Blocks.** A stage's samples are cut into blocks of ``B`` samples (B = the global batch, so each
optimizer step is one block). Weights are quantised to units of ``1/(B*P)`` (``P = 2**16``) by
largest remainder: source i gets ``q_i`` units, ``sum(q) = B*P``. Every block holds ``q_i // P``
samples of source i plus at most one "extra": the ``R = sum(q_i % P) / P`` extras of a block go to
the sources whose arc (length ``q_i % P`` on a circle of length ``R*P``) contains one of the points
``rev(b mod P) + j*P`` (``rev`` = bit reversal, i.e. the van der Corput sequence). Hence

- every block holds ``floor(w_i*B)`` or ``ceil(w_i*B)`` samples of source i (within 1 of target);
- every ``P`` blocks each source gets exactly ``q_i`` samples per ``P`` blocks: long-run shares are
  exactly the quantised weights (error <= 1/(B*P) per source);
- the count of source i before block b is a closed form, O(log P): resume needs no replay.

Inside a block the samples are shuffled with a generator seeded by (seed, stage, block).

**Stages.** Midtraining appends a stage (start sample, sources, weights). Each source's position
continues from where the previous stages left it; a new source starts at 0.

**Sources cycle on their own.** A source's k-th sample maps to (epoch, item) with a fresh seeded
permutation per epoch: a shuffled chunk order, then shuffled items within each chunk (reads stay
local). A small source wrapping around never restarts any other source.

**A new seed never repeats or skips a sample.** Each stage stores its seed. The seed of a source's
epoch is the seed of the stage in force when that epoch *began* (``Blend.source_seeds``): an epoch
in progress keeps its permutation through any later stage, so within an epoch every sample is read
exactly once whatever seeds later stages carry. A stage with a new seed (a seed replicate of a
midtrain arm, or ``data.seed`` changed on resume) therefore reorders: the blocks of the new stage,
the sources that first appear in it, and every source epoch that begins from it on.

**The sample length is part of a stage** (``sample_len``, tokens per sample incl. the target
shift): positions count samples of that length, so a resume with another length is refused by
``append_stage`` (0 = recorded by an older version: unknown).
"""

from __future__ import annotations

import zlib
from bisect import bisect_right
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

PERIOD_BITS = 16
PERIOD = 1 << PERIOD_BITS


def quantize_weights(weights: Sequence[float], block: int, period: int = PERIOD) -> list[int]:
    """Integer units per source summing to ``block * period`` (largest remainder rounding)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0 or (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"weights must be non-negative, finite and not all zero: {list(weights)}")
    units = block * period
    raw = w / w.sum() * units
    q = np.floor(raw).astype(np.int64)
    short = units - int(q.sum())
    order = np.argsort(-(raw - q), kind="stable")
    q[order[:short]] += 1
    return [int(x) for x in q]


def bit_reverse(x: np.ndarray | int, bits: int = PERIOD_BITS):
    x = np.asarray(x, dtype=np.int64)
    out = np.zeros_like(x)
    for _ in range(bits):
        out = (out << 1) | (x & 1)
        x = x >> 1
    return out


def count_reversed_below(t: int, x: np.ndarray, bits: int = PERIOD_BITS) -> np.ndarray:
    """``#{s in [0, t) : rev(s) < x}`` for each x (0 <= t, x <= 2**bits), in O(bits)."""
    x = np.asarray(x, dtype=np.int64).copy()
    acc = np.zeros_like(x)
    T = np.full_like(x, t)
    for n in range(bits, 0, -1):
        half = 1 << (n - 1)
        hi = x >= half
        up = (T + 1) // 2  # s even: rev's top bit is 0
        acc = acc + np.where(hi, up, 0)
        x = np.where(hi, x - half, x)
        T = np.where(hi, T // 2, up)
    return acc + T * (x > 0)


@dataclass(frozen=True)
class StageSpec:
    """One mixture stage, as stored in checkpoints (JSON-friendly)."""

    start: int  # first global sample of the stage
    sources: tuple[str, ...]  # source (shard) ids
    units: tuple[int, ...]  # quantised weights, sum = block * PERIOD
    block: int  # samples per block (the global batch)
    seed: int
    fingerprints: tuple = ()  # per source, for resume checks (opaque here)
    sample_len: int = 0  # tokens per sample (max_seq_length + 1); 0 = unknown (older checkpoints)

    @property
    def weights(self) -> dict[str, float]:
        total = self.block * PERIOD
        return {s: u / total for s, u in zip(self.sources, self.units)}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sources"], d["units"], d["fingerprints"] = list(self.sources), list(self.units), list(self.fingerprints)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "StageSpec":
        return cls(int(d["start"]), tuple(d["sources"]), tuple(int(u) for u in d["units"]), int(d["block"]),
                   int(d["seed"]), tuple(d.get("fingerprints", ())), int(d.get("sample_len", 0)))


class StageSchedule:
    """The sample -> (source, rank) map of one stage, relative to the stage start."""

    def __init__(self, spec: StageSpec, index: int) -> None:
        q = np.asarray(spec.units, dtype=np.int64)
        if len(q) != len(spec.sources) or int(q.sum()) != spec.block * PERIOD or (q < 0).any():
            raise ValueError(f"stage {index}: units must be non-negative and sum to block * {PERIOD}")
        self.spec, self.index, self.block, self.k = spec, index, spec.block, len(q)
        self.base = q // PERIOD
        self.rem = q % PERIOD
        self.extras = int(self.rem.sum()) // PERIOD
        self.arc_start = (np.cumsum(self.rem) - self.rem) % PERIOD  # arcs on the circle, taken mod P
        self._blocks: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def extra_mask(self, b: int) -> np.ndarray:
        m = int(bit_reverse(b % PERIOD))
        return ((m - self.arc_start) % PERIOD) < self.rem

    def block_counts(self, b: int) -> np.ndarray:
        return self.base + self.extra_mask(b)

    def counts_before_block(self, b: int) -> np.ndarray:
        """Samples of each source in blocks [0, b) of this stage (closed form)."""
        full, t = divmod(b, PERIOD)
        lo = self.arc_start
        end = lo + self.rem
        partial = (count_reversed_below(t, np.minimum(end, PERIOD)) - count_reversed_below(t, lo)
                   + count_reversed_below(t, np.maximum(end - PERIOD, 0)))
        return self.base * b + full * self.rem + partial

    def block_order(self, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(source of each of the B samples, its rank among its source's samples in the block,
        samples of each source before the block). Cached: consecutive micro-batches share a block."""
        hit = self._blocks.get(b)
        if hit is not None:
            self._blocks.move_to_end(b)
            return hit
        counts = self.block_counts(b)
        sources = np.repeat(np.arange(self.k, dtype=np.int64), counts)
        np.random.default_rng([self.spec.seed, self.index, b]).shuffle(sources)
        order = np.argsort(sources, kind="stable")
        first = np.cumsum(counts) - counts
        rank = np.empty(self.block, dtype=np.int64)
        rank[order] = np.arange(self.block) - first[sources[order]]
        hit = self._blocks[b] = (sources, rank, self.counts_before_block(b))
        if len(self._blocks) > 4:
            self._blocks.popitem(last=False)
        return hit

    def counts_before(self, r: int) -> np.ndarray:
        """Samples of each source among the first r samples of the stage."""
        b, p = divmod(r, self.block)
        if not p:
            return self.counts_before_block(b)
        sources, _, before = self.block_order(b)
        return before + np.bincount(sources[:p], minlength=self.k)

    def locate(self, r0: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Source index and position-within-stage of stage samples [r0, r0 + n)."""
        src = np.empty(n, dtype=np.int64)
        pos = np.empty(n, dtype=np.int64)
        done = 0
        while done < n:
            b, p = divmod(r0 + done, self.block)
            take = min(n - done, self.block - p)
            sources, rank, before = self.block_order(b)
            s = sources[p:p + take]
            src[done:done + take] = s
            pos[done:done + take] = before[s] + rank[p:p + take]
            done += take
        return src, pos


class Blend:
    """All stages of a run: global sample g -> (source id, position in that source's stream)."""

    def __init__(self, stages: Sequence[StageSpec]) -> None:
        if not stages:
            raise ValueError("a blend needs at least one stage")
        starts = [s.start for s in stages]
        if starts[0] != 0 or any(a >= b for a, b in zip(starts, starts[1:])):
            raise ValueError(f"stage starts must begin at 0 and increase: {starts}")
        self.specs = list(stages)
        self.stages = [StageSchedule(s, i) for i, s in enumerate(stages)]
        self.starts = starts
        self.source_ids: list[str] = []
        for s in stages:
            self.source_ids += [x for x in s.sources if x not in self.source_ids]
        index = {sid: i for i, sid in enumerate(self.source_ids)}
        self._to_global = [np.array([index[x] for x in s.sources], dtype=np.int64) for s in stages]
        # Where each source stands when each stage begins: sources continue, new ones start at 0.
        self.offsets = [np.zeros(len(self.source_ids), dtype=np.int64)]
        for i, stage in enumerate(self.stages[:-1]):
            nxt = self.offsets[-1].copy()
            nxt[self._to_global[i]] += stage.counts_before(starts[i + 1] - starts[i])
            self.offsets.append(nxt)

    def stage_of(self, g: int) -> int:
        return bisect_right(self.starts, g) - 1

    def source_seeds(self, source_id: str) -> list[tuple[int, int]]:
        """``[(stream position, seed)]``: from each position on, epochs of the source that *begin*
        there or later use that seed (see ``SourceOrder``). One entry per stage that reads the source."""
        i = self.source_ids.index(source_id)
        return [(int(self.offsets[k][i]), spec.seed) for k, spec in enumerate(self.specs) if source_id in spec.sources]

    def locate(self, g0: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(global source index, position in that source's stream) for samples [g0, g0 + n)."""
        src = np.empty(n, dtype=np.int64)
        pos = np.empty(n, dtype=np.int64)
        done = 0
        while done < n:
            g = g0 + done
            s = self.stage_of(g)
            end = self.starts[s + 1] if s + 1 < len(self.starts) else g0 + n
            take = min(n - done, end - g)
            local, p = self.stages[s].locate(g - self.starts[s], take)
            gsrc = self._to_global[s][local]
            src[done:done + take] = gsrc
            pos[done:done + take] = self.offsets[s][gsrc] + p
            done += take
        return src, pos

    def consumed(self, g: int) -> dict[str, int]:
        """Samples each source has given up to global sample g (for accounting and plans)."""
        s = self.stage_of(g)
        out = self.offsets[s].copy()
        out[self._to_global[s]] += self.stages[s].counts_before(g - self.starts[s])
        return {sid: int(c) for sid, c in zip(self.source_ids, out)}


def _key(source_id: str) -> int:
    return zlib.crc32(source_id.encode())


class SourceOrder:
    """A source's k-th sample -> (chunk, item in chunk): a fresh seeded permutation per epoch.

    ``seed`` is an int, or ``[(stream position, seed), ...]`` (``Blend.source_seeds``): epoch e uses
    the seed of the last entry whose position is <= e * total, i.e. the seed in force when the epoch
    began. An epoch's permutation is therefore fixed once it has begun.
    """

    def __init__(self, chunk_items: Sequence[int], seed, source_id: str, cache: int = 64) -> None:
        self.items = np.asarray(chunk_items, dtype=np.int64)
        self.total = int(self.items.sum())
        if self.total <= 0:
            raise ValueError(f"source {source_id!r} has no samples")
        breaks = [(0, int(seed))] if isinstance(seed, (int, np.integer)) else [(int(p), int(x)) for p, x in seed]
        if not breaks or breaks[0][0] != 0 or any(a[0] > b[0] for a, b in zip(breaks, breaks[1:])):
            raise ValueError(f"source {source_id!r}: seed breaks must start at position 0 and not decrease: {breaks}")
        self._break_pos = [p for p, _ in breaks]
        self._break_seed = [x for _, x in breaks]
        self.seed, self.key = self._break_seed[0], _key(source_id)
        self._epochs: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._perms: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cache = cache

    def epoch_seed(self, e: int) -> int:
        """The seed in force when epoch e began (its first sample is stream position e * total)."""
        return self._break_seed[bisect_right(self._break_pos, e * self.total) - 1]

    def _epoch(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        hit = self._epochs.get(e)
        if hit is None:
            order = np.random.default_rng([self.epoch_seed(e), self.key, e]).permutation(len(self.items))
            order = order[self.items[order] > 0]
            cum = np.concatenate([[0], np.cumsum(self.items[order])])
            hit = self._epochs[e] = (order, cum)
            if len(self._epochs) > 4:
                self._epochs.popitem(last=False)
        return hit

    def _perm(self, e: int, chunk: int) -> np.ndarray:
        hit = self._perms.get((e, chunk))
        if hit is None:
            hit = self._perms[(e, chunk)] = np.random.default_rng([self.epoch_seed(e), self.key, e, chunk, 1]).permutation(
                int(self.items[chunk]))
            if len(self._perms) > self._cache:
                self._perms.popitem(last=False)
        return hit

    def locate(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(epoch, chunk index, item index within the chunk) for positions in the source's stream."""
        pos = np.asarray(pos, dtype=np.int64)
        epoch, j = np.divmod(pos, self.total)
        chunk = np.empty_like(pos)
        item = np.empty_like(pos)
        for e in np.unique(epoch):
            sel = epoch == e
            order, cum = self._epoch(int(e))
            k = np.searchsorted(cum, j[sel], side="right") - 1
            chunks = order[k]
            within = j[sel] - cum[k]
            chunk[sel] = chunks
            items = np.empty_like(within)
            for c in np.unique(chunks):
                at = chunks == c
                items[at] = self._perm(int(e), int(c))[within[at]]
            item[sel] = items
        return epoch, chunk, item


def micro_batch_starts(start_sample: int, micro: int, rank: int, world: int, worker: int = 0,
                       num_workers: int = 1):
    """Global first-sample index of each micro-batch this (rank, worker) yields, in order, forever.

    Global micro-batch m covers samples [m*micro, (m+1)*micro); rank r takes m = m0 + r + world*j and
    worker w takes local j = w, w + num_workers, ... — the order DataLoader round-robins workers in,
    so the sequence of global batches does not depend on the number of workers.
    """
    if start_sample % micro:
        raise ValueError(f"resume point {start_sample} is not a multiple of the micro batch {micro}")
    m = start_sample // micro + rank + world * worker
    step = world * num_workers
    while True:
        yield m * micro
        m += step


def same_mixture(a: StageSpec, b: StageSpec) -> bool:
    return a.sources == b.sources and a.units == b.units and a.block == b.block and a.seed == b.seed


def describe_change(old: StageSpec, new: StageSpec) -> str:
    """The old -> new mixture diff printed when a run resumes with a new mixture."""
    ow, nw = old.weights, new.weights
    lines = [f"mixture change at sample {new.start:,} (block {old.block} -> {new.block}):"]
    for sid in list(ow) + [s for s in nw if s not in ow]:
        a, b = ow.get(sid, 0.0), nw.get(sid, 0.0)
        tag = "new" if sid not in ow else ("dropped" if sid not in nw else ("" if abs(a - b) < 1e-12 else "changed"))
        lines.append(f"  {sid:<12} {a:8.4f} -> {b:8.4f}  {tag}".rstrip())
    if old.seed != new.seed:
        lines.append(f"  seed {old.seed} -> {new.seed}: blocks from sample {new.start:,} on, the sources new here and "
                     "every source epoch that begins from here on are shuffled with the new seed; epochs in "
                     "progress keep their order (no sample is repeated or skipped)")
    return "\n".join(lines)


def append_stage(history: Sequence[StageSpec], new: StageSpec, allow_data_change: bool = False) -> list[StageSpec]:
    """The stage history after resuming at ``new.start`` with ``new``'s mixture.

    Same mixture as the last stage: history unchanged. A stage that has not consumed a sample yet
    is replaced. A source used before whose shard content changed (fingerprint) is an error unless
    ``allow_data_change``: positions in its stream would point at different samples.
    """
    from midtrain.errors import ConfigError

    history = list(history)
    if not history:
        return [StageSpec(0, new.sources, new.units, new.block, new.seed, new.fingerprints, new.sample_len)]
    last = history[-1]
    known = next((s.sample_len for s in reversed(history) if s.sample_len), 0)
    if known and new.sample_len and known != new.sample_len:
        raise ConfigError("train.max_seq_length", f"{new.sample_len - 1} differs from the checkpoint's {known - 1}: "
                          "data positions count samples of that length, so the run would read other samples; "
                          "keep the checkpoint's max_seq_length (or start a fresh run)")
    if new.sample_len == 0 and known:
        new = StageSpec(new.start, new.sources, new.units, new.block, new.seed, new.fingerprints, known)
    if last.sample_len == 0 and new.sample_len:  # an older checkpoint: record the length from now on
        history[-1] = last = StageSpec(last.start, last.sources, last.units, last.block, last.seed,
                                       last.fingerprints, new.sample_len)
    if new.start < last.start:
        raise ConfigError("data", f"resume point {new.start} is before the last mixture stage start {last.start}")
    if same_mixture(last, new):
        return history
    seen: dict[str, object] = {}
    for stage in history:
        seen.update(zip(stage.sources, stage.fingerprints))
    for sid, fp in zip(new.sources, new.fingerprints):
        if sid in seen and seen[sid] != fp and not allow_data_change:
            raise ConfigError("data.allow_data_change", f"shard {sid!r} changed since the checkpoint (token counts or "
                              "chunk list differ); set allow_data_change: true to continue with the new content")
    if new.start == last.start:
        history.pop()
        if not history:
            return [StageSpec(0, new.sources, new.units, new.block, new.seed, new.fingerprints, new.sample_len)]
    return history + [new]
