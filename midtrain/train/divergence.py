"""The first non-finite training loss or gradient norm ends a run (issue 27, class 5).

``Divergence`` keeps, on the device, the first optimizer step whose loss or gradient norm was NaN or
infinite: one ``minimum`` per micro-batch, no host sync per step. ``check`` reads it where the loop
syncs anyway (log steps) and before every checkpoint is written, agreed over all ranks, so:
- no checkpoint of non-finite weights is ever written (a save checks the weights too), so ``keep_last_n`` can
  never prune the last finite checkpoint away in favour of a diverged one;
- the run ends with one line naming the step and the last finite checkpoint, exit 2, and no
  ``final/`` (``status`` does not call it complete; a study marks the step failed with that line).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from midtrain.errors import ConfigError


class Divergence:
    def __init__(self, device, out_dir: Path) -> None:
        self.first = torch.full((), math.inf, device=device)
        self.out_dir = Path(out_dir)

    def watch(self, values: torch.Tensor, step: int) -> None:
        """Remember ``step`` if any of ``values`` (per-sample losses, a gradient norm) is not finite."""
        if hasattr(values, "full_tensor"):  # a DTensor (FSDP2's gradient norm): its value, the same on every rank
            values = values.full_tensor()
        bad = ~torch.isfinite(values.detach().float()).all()
        self.first = torch.minimum(self.first, torch.where(bad, float(step), math.inf))

    def check(self, fabric, model=None, step: int | None = None) -> None:
        """Raise the run's one line if any rank has seen a non-finite value (a collective when world > 1).
        With ``model`` (before a save), its weights are checked too, as ``step``'s: an update can overflow
        the weights while the loss that produced it was finite."""
        first = self.first.clone()
        if model is not None:
            bad = torch.zeros((), dtype=torch.bool, device=first.device)
            for p in model.parameters():
                local = p.to_local() if hasattr(p, "to_local") else p  # a DTensor shard: this rank's part
                bad |= ~torch.isfinite(local.detach()).all()
            first = torch.minimum(first, torch.where(bad, float(step), math.inf))
        if fabric.world_size > 1:
            torch.distributed.all_reduce(first, op=torch.distributed.ReduceOp.MIN)
        step = first.item()
        if math.isinf(step):
            return
        from midtrain.train import checkpoint as ckpt

        found = ckpt.list_checkpoints(self.out_dir)
        last = f"the last checkpoint, {found[-1][1]}, is from before it" if found else "no checkpoint was written"
        raise ConfigError("train", f"the loss, gradient norm or weights are not finite at step {int(step)}: the run "
                          f"diverged and stops here without saving ({last}); lower the LR or set train.max_norm")
