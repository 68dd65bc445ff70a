"""The numerics of evaluation (``midtrain evaluate loss`` and ``lm-eval``): the precision a forward pass runs in,
chosen once and written beside every number it produced.

- ``bf16-mixed``: bf16 autocast, TF32 for what stays in fp32 (``set_float32_matmul_precision("high")``); the
  default on a GPU with bf16 (10-15x faster than fp32 there; every arm of a study is scored the same way).
- ``32-true``: fp32 throughout, TF32 off; the default on CPU and on GPUs without bf16.
Losses and log-probabilities are computed from logits upcast to fp32 either way.
"""

from __future__ import annotations

import contextlib
from typing import Optional

from midtrain.errors import ConfigError

PRECISIONS = ("bf16-mixed", "32-true")


def resolve(precision: Optional[str], device, field: str = "--precision") -> str:
    """``precision`` checked, or the default for ``device`` when None."""
    import torch

    if precision is None:
        # (native bf16 only: torch counts emulated bf16 on V100/T4 as supported, and it is slow there)
        return ("bf16-mixed" if device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
                else "32-true")
    if precision not in PRECISIONS:
        raise ConfigError(field, f"expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def forward_context(precision: str, device):
    """The context a forward pass runs in under ``precision`` on ``device`` (sets torch's fp32 matmul precision)."""
    import torch

    if precision == "bf16-mixed":
        torch.set_float32_matmul_precision("high")
        return torch.autocast(device.type, dtype=torch.bfloat16)
    torch.set_float32_matmul_precision("highest")
    return contextlib.nullcontext()
