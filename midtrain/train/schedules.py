"""Learning-rate schedules as pure functions of the optimizer step. No torch.

One horizon, ``total_steps``, for the whole run: a midtraining job resumed at step S keeps the
base run's curve (the original hard-coded the horizon, so the LR annealed right for one GPU count
only). ``lr_at(step)`` is the LR used for the optimizer step that takes ``step`` to ``step + 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

SCHEDULERS = ("cosine", "wsd", "decay", "constant")
SHAPES = ("linear", "cosine", "sqrt")


def anneal(frac: float, start: float, end: float, shape: str = "linear") -> float:
    """From ``start`` (frac 0) to ``end`` (frac 1) along ``shape``."""
    frac = min(max(frac, 0.0), 1.0)
    if shape == "linear":
        k = frac
    elif shape == "cosine":
        k = 0.5 * (1 - math.cos(math.pi * frac))
    elif shape == "sqrt":
        k = math.sqrt(frac)
    else:
        raise ValueError(f"unknown decay shape {shape!r}")
    return start + (end - start) * k


@dataclass(frozen=True)
class Schedule:
    scheduler: str
    max_lr: float
    min_lr: float
    total_steps: int
    warmup_steps: int = 0
    stable_steps: Optional[int] = None  # wsd: steps at max_lr after warmup
    decay_fraction: float = 0.1  # wsd: share of total_steps spent decaying (when stable_steps is None)
    decay_shape: str = "linear"
    decay_from_step: int = 0  # decay: the resumed step the anneal starts from
    decay_from_lr: Optional[float] = None  # decay: the LR at that step (default max_lr)

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        if self.decay_shape not in SHAPES:
            raise ValueError(f"decay shape must be one of {SHAPES}, got {self.decay_shape!r}")
        if self.total_steps < 1 or self.warmup_steps < 0 or self.min_lr < 0 or self.max_lr < self.min_lr:
            raise ValueError(f"invalid schedule {self}")

    @property
    def decay_start(self) -> int:
        """wsd: the first step of the decay phase."""
        if self.stable_steps is not None:
            return min(self.total_steps, self.warmup_steps + self.stable_steps)
        return max(self.warmup_steps, self.total_steps - round(self.decay_fraction * self.total_steps))

    def lr_at(self, step: int) -> float:
        if self.scheduler == "decay":
            # Anneal from the checkpoint's LR to min_lr over the remaining steps (OLMo-style midtrain).
            start = self.max_lr if self.decay_from_lr is None else self.decay_from_lr
            span = max(1, self.total_steps - self.decay_from_step)
            return anneal((step - self.decay_from_step) / span, start, self.min_lr, self.decay_shape)
        if step < self.warmup_steps:
            return self.max_lr * (step + 1) / self.warmup_steps
        if self.scheduler == "constant":
            return self.max_lr
        if self.scheduler == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            return anneal((step - self.warmup_steps) / span, self.max_lr, self.min_lr, "cosine")
        start = self.decay_start  # wsd
        if step < start:
            return self.max_lr
        return anneal((step - start) / max(1, self.total_steps - start), self.max_lr, self.min_lr, self.decay_shape)


def warmup_steps(total_steps: int, lr_warmup_steps: Optional[int], lr_warmup_fraction: Optional[float]) -> int:
    if lr_warmup_steps is not None:
        return min(lr_warmup_steps, total_steps)
    if lr_warmup_fraction is not None:
        return min(total_steps, round(lr_warmup_fraction * total_steps))
    return 0


def rewarm_factor(step: int, import_step: Optional[int], rewarm_steps: int) -> float:
    """LR multiplier at ``step``: (step - S + 1) / N for S <= step < S + N after an import at S, else 1. Pure."""
    if not rewarm_steps or import_step is None or not import_step <= step < import_step + rewarm_steps:
        return 1.0
    return (step - import_step + 1) / rewarm_steps


def config_schedule(config, total_steps: int) -> "Schedule":
    """The trainer's schedule of a run config (its ``train:`` and ``optimizer:`` sections, a plain mapping) over
    the run's horizon ``total_steps``: peak = train.max_lr, else the optimizer's lr (refused in one line when
    neither is set)."""
    from midtrain.errors import ConfigError
    from midtrain.train.startup import optimizer_lr

    train = config.get("train") or {}
    peak = train.get("max_lr") or optimizer_lr(config.get("optimizer"))
    if not peak:
        raise ConfigError("optimizer", "sets no lr (nor train.max_lr): the schedule needs the peak LR")
    return Schedule(train.get("lr_scheduler", "cosine"), float(peak), float(train.get("min_lr", 6e-5)), total_steps,
                    warmup_steps(total_steps, train.get("lr_warmup_steps"), train.get("lr_warmup_fraction")),
                    train.get("stable_steps"), float(train.get("decay_fraction", 0.1)),
                    train.get("decay_shape", "linear"))


def lr_fraction(config, step: int, total_steps: int) -> float:
    """LR at ``step`` (the one the optimizer step ``step -> step + 1`` uses) over the peak LR of a run config
    (``config_schedule``)."""
    sched = config_schedule(config, total_steps)
    return sched.lr_at(step) / sched.max_lr


def lr_steps(config, start: int, total_steps: int) -> float:
    """The LR-weighted number of optimizer steps from ``start`` to ``total_steps``: the sum of ``lr_fraction`` over
    them (an arm's dose of learning: its start and duration; a late arm's steps count for little)."""
    sched = config_schedule(config, total_steps)
    return sum(sched.lr_at(t) for t in range(start, total_steps)) / sched.max_lr
