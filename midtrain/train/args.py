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
    """One matrix for the input and output embeddings (``wte`` takes ``lm_head``'s, as litgpt's pretrain ties
    them): SmolLM2, Llama 3.2 1B and OLMo 1B are tied. A checkpoint records it in its hyperparameters.yaml; a run,
    an import or an SFT from a checkpoint must agree with it (refused otherwise)."""
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
    rewarm_steps: int = 0
    """After `midtrain import` (fresh optimizer moments): ramp the LR linearly from 0 back to the schedule
    over this many steps from the imported step (factor (t - S + 1) / N at step t). Only for imports."""

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
        for name in ("max_steps", "max_additional_steps", "max_iters", "max_tokens", "max_seq_length",
                     "lr_warmup_steps", "stable_steps"):
            value = getattr(self, name)
            if value is not None and (value < 1 if name not in ("lr_warmup_steps", "stable_steps") else value < 0):
                bound = ">= 0" if name in ("lr_warmup_steps", "stable_steps") else ">= 1"
                raise ConfigError(f"train.{name}", f"must be {bound} (or null), got {value}")
        if self.save_interval is not None and self.save_interval < 0:
            raise ConfigError("train.save_interval", f"must be >= 1, or 0/null for no checkpoints but the final one, "
                              f"got {self.save_interval}")
        if self.max_lr is not None and not self.max_lr > 0:
            raise ConfigError("train.max_lr", f"must be > 0, got {self.max_lr}")
        if self.min_lr < 0:
            raise ConfigError("train.min_lr", f"must be >= 0, got {self.min_lr}")
        if self.max_norm is not None and not self.max_norm > 0:
            raise ConfigError("train.max_norm", f"must be > 0 (or null for no clipping), got {self.max_norm}")
        if self.stable_steps is not None and self.lr_scheduler != "wsd":
            raise ConfigError("train.stable_steps", f"only lr_scheduler: wsd reads it (here: {self.lr_scheduler}); "
                              "remove it, or use wsd")
        if self.rewarm_steps < 0:
            raise ConfigError("train.rewarm_steps", f"must be >= 0, got {self.rewarm_steps}")
        if not 0 < self.decay_fraction <= 1:
            raise ConfigError("train.decay_fraction", f"must be in (0, 1], got {self.decay_fraction}")

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
    """Optimizer steps between validations (0: only the initial/final validation)."""
    max_iters: int = 100
    """Batches per validation set."""
    initial_validation: bool = False
    final_validation: bool = True

    def __post_init__(self) -> None:
        if self.interval < 0:
            raise ConfigError("eval.interval", f"must be >= 1, or 0 for no periodic validation, got {self.interval}")
        if self.max_iters < 1:
            raise ConfigError("eval.max_iters", f"must be >= 1, got {self.max_iters}")
