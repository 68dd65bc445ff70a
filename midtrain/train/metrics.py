"""Per-source training metrics and throughput: what each log line and logger entry reports."""

from __future__ import annotations

import math
import time
from datetime import timedelta

import torch
import torch.nn.functional as F

from midtrain.errors import ConfigError


class SourceMeter:
    """Sums of per-sample loss and sample counts per source since the last log (on device)."""

    def __init__(self, n_sources: int, device) -> None:
        self.loss = torch.zeros(n_sources, dtype=torch.float64, device=device)
        self.count = torch.zeros(n_sources, dtype=torch.float64, device=device)

    def add(self, sources: torch.Tensor, per_sample_loss: torch.Tensor) -> None:
        self.loss.index_add_(0, sources, per_sample_loss.double())
        self.count.index_add_(0, sources, torch.ones_like(per_sample_loss, dtype=torch.float64))

    def reduce(self, fabric) -> tuple[torch.Tensor, torch.Tensor]:
        """Totals over all ranks, then reset."""
        # clone: on one process all_reduce returns the very tensor we zero below
        loss = fabric.all_reduce(self.loss.clone(), reduce_op="sum").cpu()
        count = fabric.all_reduce(self.count.clone(), reduce_op="sum").cpu()
        self.loss.zero_()
        self.count.zero_()
        return loss, count


class NoData(ConfigError):
    """A mean over zero items (tokens, examples): never reported as a number (one line, exit 2)."""


def mean_loss(total: float, count: float, what: str) -> float:
    """``total / count``; raises :class:`NoData` naming ``what`` when ``count`` is 0."""
    if not count:
        raise NoData(what, "no data (0 scorable tokens): a loss over nothing is not a number")
    return float(total) / float(count)


def unigram_entropy(counts: "torch.Tensor", what: str) -> float:
    """Entropy (nats) of the unigram distribution behind the token counts ``counts``: what a context-free
    predictor of that text's tokens achieves at best. A language model whose loss on the same tokens is at or
    above it predicts them no better than their frequencies: collapsed (``stats.regime_problems``).
    Miller-Madow estimate: the plug-in entropy of the counts plus (K - 1) / 2N (K distinct tokens, N tokens),
    since the plug-in one (the counts' own frequencies, fitted in-sample) lies below the true entropy by about
    that much, which would flag a model between the two, and by an amount that depends on how much was scored.
    Raises :class:`NoData` naming ``what`` over no tokens."""
    n = float(counts.sum())
    if not n:
        raise NoData(what, "no data (0 scorable tokens): an entropy over nothing is not a number")
    seen = counts[counts > 0].double()
    p = seen / n
    return float(-(p * p.log()).sum()) + (seen.numel() - 1) / (2 * n)


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50))  # capped: an untrained model's loss must not overflow


def gpu_peak(fabric, precision: str) -> tuple[float | None, str | None]:
    """(this GPU's dense peak FLOP/s at ``precision``, the line to print instead of an MFU when there is none):
    ``midtrain.train.flops``' table, on the name torch reports. (None, None) off CUDA: no MFU, nothing to say."""
    if fabric.device.type != "cuda":
        return None, None
    from midtrain.train import flops

    name = torch.cuda.get_device_name(fabric.device)
    dtype = flops.dtype_of(precision, torch.get_float32_matmul_precision())
    return flops.peak_flops(name, dtype), flops.mfu_note(name, dtype)


class Progress:
    """Tokens/s over the last interval (wall clock, not a timestamp) and ETA for the run."""

    def __init__(self, start_step: int, end_step: int) -> None:
        self.start_step, self.end_step = start_step, end_step
        self.t0 = self.t_last = time.perf_counter()
        self.tokens_last = 0
        self.data_wait = 0.0  # seconds the loop waited for the data loader since the last tick
        self.data_stall = 0.0  # the part of them that ended with the GPU's queue empty (the GPU waited too)

    def waited(self, seconds: float, device_idle: bool) -> None:
        """One wait for the loader; ``device_idle``: the device had run out of queued work when it ended (on CPU,
        always: nothing runs ahead of the loop there)."""
        self.data_wait += seconds
        if device_idle:
            self.data_stall += seconds

    def tick(self, step: int, tokens_since_start: int) -> tuple[float, str, float, float]:
        """(tokens/s, ETA, the shares of the interval's wall time spent waiting for data: every wait, and the waits
        that ended with the device idle). A wait while the GPU still works through queued micro-batches costs
        nothing; one that ends with its queue empty cost at most its length, so the second share is an upper
        bound on the time the loader took from the GPU, and the first can overstate it."""
        now = time.perf_counter()
        interval = max(now - self.t_last, 1e-9)
        rate = (tokens_since_start - self.tokens_last) / interval
        share, stall = min(1.0, self.data_wait / interval), min(1.0, self.data_stall / interval)
        self.t_last, self.tokens_last, self.data_wait, self.data_stall = now, tokens_since_start, 0.0, 0.0
        done = step - self.start_step
        eta = (now - self.t0) / done * (self.end_step - step) if done else 0.0
        return rate, str(timedelta(seconds=int(eta))), share, stall


LOSS_CHUNK_ROWS = 128


def per_token_loss(logits: torch.Tensor, targets: torch.Tensor, chunk_rows: int = LOSS_CHUNK_ROWS) -> torch.Tensor:
    """Cross-entropy per token, ``[batch, seq]``, in row chunks as litgpt's chunked_cross_entropy does (on CPU the
    full ``[batch*seq, vocab]`` softmax was ~9% of a step slower: bench/step_overhead.py); unreduced, so the
    loss can be split per sample and per source."""
    flat, flat_targets = logits.reshape(-1, logits.size(-1)), targets.reshape(-1)
    parts = [F.cross_entropy(lc.float(), tc, reduction="none")
             for lc, tc in zip(flat.split(chunk_rows), flat_targets.split(chunk_rows))]
    return torch.cat(parts).view(targets.shape)


def token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The same cross-entropy per token, ``[batch, seq]``, as one expression over all rows, upcast inside: the form
    ``torch.compile`` fuses (the upcast folds into the softmax reduction and its backward, so no fp32 copy of the
    logits is made and a micro-batch's loss is a few kernels instead of ``per_token_loss``'s ~6 per chunk). The
    trainer compiles it when ``compile`` is on; eager runs keep ``per_token_loss`` (measured faster on CPU)."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1),
                           reduction="none").view(targets.shape)
