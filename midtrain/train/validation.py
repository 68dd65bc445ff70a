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
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=fabric.device)
    seq = model.max_seq_length
    for k, batch in enumerate(loader):
        if k >= max_iters:
            break
        tokens = fabric.to_device((batch[0] if isinstance(batch, (tuple, list)) else batch).long())
        logits = model(tokens[:, :seq])
        targets = tokens[:, 1:seq + 1]
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), reduction="sum")
        total += torch.stack([loss.double(), torch.tensor(targets.numel(), dtype=torch.float64, device=fabric.device)])
    total = fabric.all_reduce(total, reduce_op="sum")
    model.train()
    return None if total[1] == 0 else float(total[0] / total[1])  # None: no data, never a loss of 0


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
