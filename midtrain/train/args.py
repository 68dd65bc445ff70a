"""The ``train:`` and ``eval:`` sections of a run config. Keys match the original configs. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from midtrain.errors import ConfigError


@dataclass
class TrainArgs:
    """Training-length, batch and optimisation settings (the ``train:`` section)."""

    save_interval: Optional[int] = 1000
    """Optimizer steps between checkpoints."""
    log_interval: int = 1
    """Optimizer steps between metric logs."""
    global_batch_size: int = 64
    """Samples per optimizer step, over all ranks."""
    micro_batch_size: int = 4
    """Samples per forward pass on one rank."""
    max_steps: Optional[int] = None
    """Optimizer steps of the whole run (pretrain and its midtrains share this LR horizon)."""
    max_additional_steps: Optional[int] = None
    """Optimizer steps to run from where this job starts (original key)."""
    max_iters: Optional[int] = None
    """Original key: micro-batch iterations of the whole run; converted to optimizer steps."""
    max_tokens: Optional[int] = None
    """Tokens of the whole run; converted to optimizer steps when max_steps is not set."""
    max_seq_length: Optional[int] = None
    """Training sequence length (defaults to the model's block size)."""
    tie_embeddings: Optional[bool] = None
    max_norm: Optional[float] = None
    """Gradient clipping norm."""
    max_lr: Optional[float] = None
    """Peak LR (defaults to the optimizer's lr)."""
    min_lr: float = 6e-5
    lr_scheduler: Literal["cosine", "wsd", "decay", "constant"] = "cosine"
    lr_warmup_steps: Optional[int] = None
    lr_warmup_fraction: Optional[float] = None
    """Warmup as a fraction of max_steps."""
    stable_steps: Optional[int] = None
    """WSD: steps at peak LR after warmup (default: until the decay phase)."""
    decay_fraction: float = 0.1
    """WSD: fraction of max_steps spent decaying to min_lr."""
    decay_shape: Literal["linear", "cosine", "sqrt"] = "linear"
    """WSD / decay: the curve from the current LR to min_lr."""

    def __post_init__(self) -> None:
        if self.lr_warmup_fraction is not None and self.lr_warmup_steps is not None:
            raise ConfigError("train.lr_warmup_fraction", "give lr_warmup_fraction or lr_warmup_steps, not both")
        if self.lr_warmup_fraction is not None and not 0 <= self.lr_warmup_fraction <= 1:
            raise ConfigError("train.lr_warmup_fraction", f"must be in [0, 1], got {self.lr_warmup_fraction}")
        for name in ("global_batch_size", "micro_batch_size", "log_interval"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}", f"must be >= 1, got {getattr(self, name)}")
        if self.global_batch_size % self.micro_batch_size:
            raise ConfigError("train.global_batch_size", f"{self.global_batch_size} is not a multiple of "
                              f"train.micro_batch_size {self.micro_batch_size}")

    def total_steps(self, devices: int = 1, num_nodes: int = 1, seq_length: int | None = None) -> int | None:
        """The whole run's optimizer steps, from max_steps, max_iters or max_tokens (in that order)."""
        if self.max_steps is not None:
            return self.max_steps
        if self.max_iters is not None:
            per_rank = self.global_batch_size // (devices * num_nodes)
            return self.max_iters // max(1, per_rank // self.micro_batch_size)
        if self.max_tokens is not None and seq_length:
            return self.max_tokens // (self.global_batch_size * seq_length)
        return None


@dataclass
class EvalArgs:
    """Validation settings (the ``eval:`` section)."""

    interval: int = 600
    """Optimizer steps between validations."""
    max_iters: int = 100
    """Batches per validation set."""
    initial_validation: bool = False
    final_validation: bool = True
