"""What ``bf16-true`` costs at a given learning rate: the share of AdamW updates that survive bf16 rounding.

bf16 keeps 8 significant bits: an update smaller than about half a unit in the last place of the weight
(|w|·2^-9 to |w|·2^-8) rounds away, every step, so late-schedule LRs (the paper's midtraining starts at
40k/50k steps run at ~9.6e-5/2.9e-5) change a shrinking share of a bf16 model's weights, and weight
decay at such LRs vanishes entirely. ``bf16-mixed`` keeps fp32 master weights and optimizer state and
loses none of them.

``bf16_update_survival`` measures it the way the field notes did, by running it: AdamW (wd 0.1, betas
0.9/0.95) for 200 steps on weights ~N(0, std), with a consistent-sign gradient plus noise, once with
bf16 weights and state and once in fp32, from the same start and the same gradients. It reports the
share of bf16 weights that moved at all and the mean |Δw| relative to fp32. Deterministic (fixed seed),
CPU only, ~0.1 s; results are cached per (lr, std).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Survival:
    lr: float
    std: float
    moved: float
    """Share of bf16 weights that changed at all over the steps."""
    magnitude: float
    """Mean |Δw| under bf16-true relative to fp32."""

    def describe(self) -> str:
        return (f"bf16-true at LR {self.lr:.2g}: {self.moved:.0%} of weights ~N(0, {self.std:.3g}) move, mean update "
                f"{self.magnitude:.2f}x fp32's (bf16-mixed: all)")


@functools.lru_cache(maxsize=256)
def bf16_update_survival(lr: float, std: float, steps: int = 200, n: int = 4096, seed: int = 0) -> Survival:
    if not lr > 0:
        return Survival(lr, std, 0.0, 0.0)
    g = torch.Generator().manual_seed(seed)
    start = torch.randn(n, generator=g) * std
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    grads = [sign * 0.5 + torch.randn(n, generator=g) for _ in range(steps)]
    ends = {}
    for dtype in (torch.float32, torch.bfloat16):
        w = torch.nn.Parameter(start.to(dtype).clone())
        opt = torch.optim.AdamW([w], lr=lr, betas=(0.9, 0.95), weight_decay=0.1, foreach=False)
        for grad in grads:
            w.grad = grad.to(dtype)
            opt.step()
        ends[dtype] = w.detach().float()
    moved = float((ends[torch.bfloat16] != start.to(torch.bfloat16).float()).float().mean())
    full = (ends[torch.float32] - start).abs().mean()
    half = (ends[torch.bfloat16] - start.to(torch.bfloat16).float()).abs().mean()
    return Survival(lr, std, moved, float(half / full) if full > 0 else 0.0)


def neox_std(n_embd: int) -> float:
    """The GPT-NeoX init std of most weights (litgpt's initialize_weights): sqrt(2 / (5 * n_embd))."""
    return math.sqrt(2.0 / (5 * n_embd))
