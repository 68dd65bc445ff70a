"""Validation during training: the loss per validation set, over every token it covers."""

from __future__ import annotations

from typing import Callable, Optional

import torch

from midtrain import signals
from midtrain.train.args import EvalArgs
from midtrain.train.metrics import per_token_loss, perplexity


class CutShort(Exception):
    """A stop signal ended the validation loaders' workers (on some rank): every rank leaves validation alike."""


@torch.no_grad()
def validate(fabric, model, loader, max_iters: int, loss_of: Callable = per_token_loss) -> Optional[float]:
    """Mean cross-entropy per token over the batches ``loader`` gives this rank (at most ``max_iters``), summed over
    every rank; None over zero tokens (never a loss of 0).

    Every rank runs the same number of forward passes: a loader may give ranks unequal shares (litdata's
    ``drop_last=False`` hands the leftovers to the last rank), and under sharding each forward is a collective
    that would wait forever for a rank that has stopped. So before each batch the ranks agree whether any of them
    still has one, and whether any rank's loader failed (a stop signal ends loader workers at different moments
    on different ranks): then all leave together (``CutShort`` under a signal). A rank whose share is done runs
    its last batch again with weight 0. Each sample's tokens count once.

    The loss is the training loss's definition (``loss_of``: ``metrics.per_token_loss``, or the compiled
    ``token_loss`` the trainer uses under compile), so no fp32 copy of a batch's logits is made; the token count is
    kept on the host and the batches go to the device without blocking, so one process reads the device once per
    pass (at the end), not once per batch."""
    from midtrain.errors import ConfigError, config_error_line
    from midtrain.train.distributed import agree

    model.eval()
    try:
        loss_sum, count = torch.zeros((), dtype=torch.float64, device=fabric.device), 0
        seq = model.max_seq_length
        batches, spare = iter(loader), None
        for _ in range(max_iters):
            try:
                batch, failure = next(batches, None), None
            except Exception as e:
                batch, failure = None, e
            has, failed, signalled = agree(fabric, batch is not None, failure is not None,
                                            signals.requested() is not None)
            if failed:
                if signalled:
                    raise CutShort()
                if failure is not None:
                    line = config_error_line(failure)
                    if line is None:
                        raise failure
                    raise ConfigError(line, speaker="self") from None
                raise ConfigError("another rank's validation loader failed (its line is in the log)", speaker="quiet")
            if not has:
                break
            weight = 1.0
            if batch is None:  # this rank's share is done and another's is not: a forward that counts for nothing
                batch, weight = (spare if spare is not None else torch.zeros((1, seq + 1), dtype=torch.long)), 0.0
            spare = batch
            tokens = (batch[0] if isinstance(batch, (tuple, list)) else batch)
            tokens = tokens.to(fabric.device, non_blocking=True).long()
            inputs, targets = tokens[:, :seq].contiguous(), tokens[:, 1:seq + 1].contiguous()
            loss_sum += weight * loss_of(model(inputs), targets).sum().double()
            count += int(weight) * targets.numel()
        total = torch.stack([loss_sum, torch.tensor(float(count), dtype=torch.float64).to(fabric.device)])
        total = fabric.all_reduce(total, reduce_op="sum")
    finally:
        model.train()
    return None if total[1] == 0 else float(total[0] / total[1])  # None: no data, never a loss of 0


def log_validation(fabric, model, val_loaders, eval: EvalArgs, step: int, loss_of: Callable = per_token_loss) -> bool:
    """Validate on every set and log (``val_s``: the pass's seconds); False when a stop signal cut it short (its
    loader workers were ended)."""
    import time

    metrics, t0 = {}, time.perf_counter()
    for name, loader in val_loaders.items():
        try:
            loss = validate(fabric, model, loader, eval.max_iters, loss_of)
        except CutShort:
            who = signals.name(signals.requested()) if signals.requested() is not None else "a signal on another rank"
            fabric.print(f"validation at step {step} cut short by {who}: not logged")
            return False
        if loss is None:  # refused at start-up (check_val_sets); a loader of another DataModule may still be empty
            continue
        metrics[f"val_loss/{name}"] = loss
        metrics[f"val_ppl/{name}"] = perplexity(loss)
    metrics["val_s"] = time.perf_counter() - t0
    fabric.log_dict(metrics, step=step)
    fabric.print("validation " + " | ".join(f"{n} loss {metrics[f'val_loss/{n}']:.4f} ppl {metrics[f'val_ppl/{n}']:.2f}"
                                             if f"val_loss/{n}" in metrics else f"{n} no data (0 tokens)"
                                             for n in val_loaders))
    return True
