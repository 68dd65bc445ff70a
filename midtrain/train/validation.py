"""Validation during training: the loss per validation set, over every token it covers."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from midtrain import signals
from midtrain.train.args import EvalArgs
from midtrain.train.metrics import perplexity


@torch.no_grad()
def validate(fabric, model, loader, max_iters: int) -> Optional[float]:
    """Mean cross-entropy per token over the batches ``loader`` gives this rank (at most ``max_iters``), summed over
    every rank; None over zero tokens (never a loss of 0).

    Every rank runs the same number of forward passes: a loader may give ranks unequal shares (litdata's
    ``drop_last=False`` hands the leftovers to the last rank), and under sharding each forward is a collective
    that would wait forever for a rank that has stopped. So the ranks agree before each batch whether any of
    them still has one; a rank whose share is done runs its last batch again with weight 0. Each sample's tokens
    count once."""
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=fabric.device)
    seq = model.max_seq_length
    batches, spare = iter(loader), None
    for _ in range(max_iters):
        batch = next(batches, None)
        if fabric.world_size > 1:
            if not _any_rank_has(fabric, batch is not None):
                break
        elif batch is None:
            break
        weight = 1.0
        if batch is None:  # this rank's share is done and another's is not: a forward that counts for nothing
            batch, weight = (spare if spare is not None else torch.zeros((1, seq + 1), dtype=torch.long)), 0.0
        spare = batch
        tokens = fabric.to_device((batch[0] if isinstance(batch, (tuple, list)) else batch).long())
        logits = model(tokens[:, :seq])
        targets = tokens[:, 1:seq + 1]
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), reduction="sum")
        total += weight * torch.stack([loss.double(), torch.tensor(targets.numel(), dtype=torch.float64,
                                                                   device=fabric.device)])
    total = fabric.all_reduce(total, reduce_op="sum")
    model.train()
    return None if total[1] == 0 else float(total[0] / total[1])  # None: no data, never a loss of 0


def _any_rank_has(fabric, has: bool) -> bool:
    flag = torch.tensor(1.0 if has else 0.0, device=fabric.device)
    return bool(fabric.all_reduce(flag, reduce_op="sum") > 0)


def log_validation(fabric, model, val_loaders, eval: EvalArgs, step: int) -> bool:
    """Validate on every set and log; False when a stop signal cut it short (its loader workers were ended)."""
    metrics = {}
    for name, loader in val_loaders.items():
        try:
            loss = validate(fabric, model, loader, eval.max_iters)
        except Exception:
            if signals.requested() is None:
                raise
            model.train()
            fabric.print(f"validation at step {step} cut short by {signals.name(signals.requested())}: not logged")
            return False
        if loss is None:  # refused at start-up (check_val_sets); a loader of another DataModule may still be empty
            continue
        metrics[f"val_loss/{name}"] = loss
        metrics[f"val_ppl/{name}"] = perplexity(loss)
    fabric.log_dict(metrics, step=step)
    fabric.print("validation " + " | ".join(f"{n} loss {metrics[f'val_loss/{n}']:.4f} ppl {metrics[f'val_ppl/{n}']:.2f}"
                                             if f"val_loss/{n}" in metrics else f"{n} no data (0 tokens)"
                                             for n in val_loaders))
    return True
