"""``midtrain sft``: full fine-tuning of a checkpoint on prompt/response pairs, the paper's posttraining.

- The loss covers response tokens only (prompt positions are masked with -100).
- Epochs, warmup fraction then cosine to ``min_lr_ratio * lr``, micro and global batch.
- An LR sweep (``--lrs``) fine-tunes from the same checkpoint per LR, picks the best LR on the
  validation split and reports the loss on a separate held-out test split (never used to choose).
- Forgetting: loss on the pretraining validation sets after SFT (the paper's definition); the loss
  before SFT and the increase are recorded beside it (``increase``, never called forgetting).
- ``--score_every_lr``: every LR of the sweep also gets its test loss and forgetting (so that the LR can
  later be chosen per checkpoint, on validation loss averaged over seeds); otherwise only the kept LR.
- ``--precision``: ``32-true``, ``bf16-mixed`` (autocast) or ``bf16-true`` (bf16 weights and optimizer);
  default bf16-mixed on CUDA, 32-true on CPU; recorded in the metrics. Fabric applies it, as in the trainer.
- ``--devices`` × ``--num_nodes`` processes, ``--strategy`` and ``--activation_checkpointing`` as in a run config
  (``midtrain.train.parallel``): ``fsdp`` shards weights, gradients and AdamW state over the ranks (FSDP2), so a
  7B model fine-tunes on a node of GPUs that one GPU cannot hold. Each global batch is split over the ranks and
  the gradient stays the token mean over the whole batch; evaluation batches are spread over them and summed.
  One process or several, the same examples make the same updates (to float rounding).
- A stop signal (SIGTERM/SIGUSR1/SIGINT) ends it at the next optimizer step with exit 75: SFT keeps no
  checkpoint of its own and starts again from its input checkpoint when run again.
- Writes a metrics JSON (and, with ``--save``, the fine-tuned checkpoint in litgpt layout).

Size (~790 lines, over the house's ~450): one job, the SFT measurement (encode, sweep, score, forgetting) with its
own loop and launch; a split would put the loss over items and the loop that must count items the same way in
two files. Its loading could move beside ``train.restore`` (not yet done).
"""

from __future__ import annotations

import gc
import json
import random
import weakref
from pathlib import Path
from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F

from midtrain.errors import ConfigError
from midtrain.train.schedules import Schedule

IGNORE = -100
PRECISIONS = ("32-true", "bf16-mixed", "bf16-true")


def resolve_precision(precision: Optional[str], device: torch.device) -> str:
    """``precision`` checked against ``device`` (default: bf16-mixed on CUDA, 32-true on CPU); one line if the
    device cannot run it."""
    if precision is None:
        return "bf16-mixed" if device.type == "cuda" else "32-true"
    if precision not in PRECISIONS:
        raise ConfigError("--precision", f"expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision.startswith("bf16") and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("--precision", f"{precision}: this GPU ({torch.cuda.get_device_name()}) has no bfloat16 "
                          "support; use 32-true")
    return precision


def checkpoint_notes(checkpoint: Path) -> list:
    """The history a checkpoint carries that is not a mixture stage (an HF import with its fresh optimizer
    state, an original-fork import): copied into SFT metrics so that every downstream number says it."""
    path = Path(checkpoint) / "training_state.json"
    try:
        return list((json.loads(path.read_text()).get("data") or {}).get("notes") or [])
    except (OSError, ValueError, AttributeError):
        return []


def load_examples(path: Path, prompt_key: str = "prompt", response_key: str = "response") -> list[tuple[str, str]]:
    """JSON list or JSONL of objects with a prompt and a response."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("--data", f"{path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        rows = json.loads(text) if text.lstrip().startswith("[") else [json.loads(l) for l in text.splitlines() if l.strip()]
    except ValueError as e:
        raise ConfigError(str(path), f"not JSON or JSONL ({e})") from None
    out = []
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or prompt_key not in row or response_key not in row:
            raise ConfigError(f"{path}:{n}", f"needs {prompt_key!r} and {response_key!r} (set --prompt_key/--response_key)")
        out.append((str(row[prompt_key]), str(row[response_key])))
    if not out:
        raise ConfigError(str(path), "no examples")
    return out


def encode_example(tokenizer, prompt: str, response: str, max_len: int) -> tuple[list[int], list[int]]:
    """(input ids, labels): labels are -100 on prompt tokens, the response + EOS are learned."""
    p = tokenizer.encode(prompt, bos=False).tolist()
    r = tokenizer.encode(response, bos=False).tolist() + [tokenizer.eos_id]
    ids = (p + r)[: max_len + 1]
    labels = ([IGNORE] * len(p) + r)[: max_len + 1]
    return ids, labels


def scorable(example: tuple[list[int], list[int]]) -> int:
    """Response tokens of an encoded example that are a training target (after the shift by one)."""
    return sum(1 for t in example[1][1:] if t != IGNORE)


def drop_unscorable(split: str, encoded: list, max_len: int, field: str) -> tuple[list, int]:
    """``encoded`` without the examples whose every response token fell past ``max_len`` (printed with a
    count). A split left with nothing is refused (one line): its loss would be a mean over zero tokens."""
    kept = [e for e in encoded if scorable(e)]
    dropped = len(encoded) - len(kept)
    if not kept:
        raise ConfigError(field, f"no {split} example keeps a response token within max_seq_length {max_len} "
                          f"(all {len(encoded)} prompts fill it, or the responses are empty): a loss over zero tokens")
    if dropped:
        print(f"sft: dropped {dropped} of {len(encoded)} {split} examples: no response token is left to learn or score "
              f"within max_seq_length {max_len} (a prompt that fills it, or an empty response)", flush=True)
    return kept, dropped


def collate(batch: list[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to the longest example; returns (inputs, targets) shifted by one."""
    n = max(len(ids) for ids, _ in batch)
    ids = torch.zeros(len(batch), n, dtype=torch.long)
    labels = torch.full((len(batch), n), IGNORE, dtype=torch.long)
    for i, (x, y) in enumerate(batch):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
    return ids[:, :-1], labels[:, 1:]


def masked_loss(model, inputs: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    logits = model(inputs)  # (under Fabric, in its precision)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=IGNORE,
                           reduction=reduction)


def _world(fabric) -> tuple[int, int]:
    """(processes, this one's rank): (1, 0) without Fabric."""
    return (fabric.world_size, fabric.global_rank) if fabric is not None else (1, 0)


def _spread_sums(fabric, batches: list, score, size: int) -> torch.Tensor:
    """The sum of ``score(batch)`` (a float64 vector of ``size``) over ``batches``, each batch scored on one rank
    (batch k on rank k mod world) and the sums added over the ranks. Every rank runs the same number of forward
    passes (under sharding each is a collective): a rank with no batch left scores batch 0 and discards it. On one
    process: the batches in order, as a plain loop would add them."""
    world, rank = _world(fabric)
    total = torch.zeros(size, dtype=torch.float64)
    for r in range(-(-len(batches) // world)):
        k = r * world + rank
        out = score(batches[k] if k < len(batches) else batches[0])
        if k < len(batches):
            total += out
    if world > 1:
        total = fabric.all_reduce(total.to(fabric.device), reduce_op="sum").cpu()
    return total


@torch.no_grad()
def example_losses(model, encoded, batch_size: int, device, fabric=None) -> list[list]:
    """[loss summed over its response tokens, their count] of each example of ``encoded``, in order: what a
    test-item bootstrap resamples (``stats.variance_levels``). Batched as ``examples_loss``; over several ranks each
    batch is scored on one and every rank gets every example's pair (``_spread_sums``)."""
    n = len(encoded)

    def score(batch, start):
        x, y = collate(batch)
        x, y = x.to(device), y.to(device)
        logits = model(x)
        per_token = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1), ignore_index=IGNORE,
                                    reduction="none").reshape(y.shape)
        out = torch.zeros(2 * n, dtype=torch.float64)
        out[2 * start:2 * (start + len(batch)):2] = per_token.double().sum(dim=1).cpu()
        out[2 * start + 1:2 * (start + len(batch)):2] = (y != IGNORE).sum(dim=1).double().cpu()
        return out

    model.eval()
    starts = list(range(0, n, batch_size))
    batches = [(encoded[i:i + batch_size], i) for i in starts]
    total = _spread_sums(fabric, batches, lambda b: score(*b), 2 * n) if batches else torch.zeros(0)
    reshard(model)
    model.train()
    return [[float(total[2 * i]), int(total[2 * i + 1])] for i in range(n)]


def items_loss(items: list[list], what: str) -> float:
    """The token-weighted mean loss of ``example_losses``' pairs: the test loss is defined from its items, so the
    reported loss and the items a bootstrap resamples are one measurement."""
    from midtrain.train.metrics import mean_loss

    return mean_loss(sum(x for x, _ in items), sum(c for _, c in items), what)


@torch.no_grad()
def examples_loss(model, encoded, batch_size: int, device, fabric=None) -> float:
    """Token-weighted mean loss over the response tokens of ``encoded``; :class:`NoData` when there are none.
    With ``fabric`` over several ranks, the batches are spread over them (``_spread_sums``)."""
    from midtrain.train.metrics import mean_loss

    def score(batch):
        x, y = collate(batch)
        x, y = x.to(device), y.to(device)
        return torch.tensor([float(masked_loss(model, x, y, reduction="sum")), float((y != IGNORE).sum())],
                            dtype=torch.float64)

    model.eval()
    batches = [encoded[i:i + batch_size] for i in range(0, len(encoded), batch_size)]
    total, count = _spread_sums(fabric, batches, score, 2).tolist() if batches else (0.0, 0)
    reshard(model)
    model.train()
    return mean_loss(total, int(count), "SFT examples")


def accumulate_gradients(model, batch: list, micro: int, device, fabric=None) -> float:
    """Backward of one global batch in micro-batches of ``micro`` examples; returns its loss.

    The loss is the mean over every response token of ``batch``: each micro-batch's summed token loss is
    divided by the token count of the whole batch, so the accumulated gradient equals the one of a single
    pass over ``batch``, whatever ``micro`` is (micro-batches with few tokens do not weigh more).

    With ``fabric`` over W ranks, rank r takes the r-th W-th of ``batch`` (``batch`` is the same list on every
    rank) and scales its loss by W: DDP and FSDP2 average gradients over the ranks, so the reduced gradient is
    again the token mean over the whole batch. The returned loss is summed over the ranks."""
    n_tokens = sum(scorable(e) for e in batch)
    if n_tokens == 0:  # unscorable examples are dropped before training (drop_unscorable)
        raise ConfigError("--data", "an SFT batch without a response token to learn")
    world, rank = _world(fabric)
    per = len(batch) // world
    mine = batch[rank * per:(rank + 1) * per]
    from midtrain.train.parallel import is_sharded

    sharded = fabric is not None and is_sharded(model)
    total = 0.0
    for a in range(0, len(mine), micro):
        x, y = collate(mine[a:a + micro])
        loss = masked_loss(model, x.to(device), y.to(device), reduction="sum") / n_tokens
        if fabric is None:
            loss.backward()
        else:  # DDP all-reduces once, on the last micro-batch; FSDP2 reduce-scatters each (sharded gradients)
            with fabric.no_backward_sync(model, enabled=a + micro < len(mine) and not sharded):
                fabric.backward(loss * world)
        total += loss.item()
    if world > 1:
        total = float(fabric.all_reduce(torch.tensor(total, dtype=torch.float64, device=fabric.device), reduce_op="sum"))
    return total


def reshard(model) -> None:
    """Put an FSDP2 model's parameters back in shards after forward passes without a backward. The root module keeps
    its parameters gathered after a forward (its backward would need them at once); with no backward to follow,
    they stay gathered (plain tensors where the DTensor shards were: the embeddings, the final norm, the head), and
    an optimizer built then would hold those copies instead of the shards, whose updates the next gather overwrites
    (measured: the first LR, trained after the zero-shot evaluation, ended 0.4% above one process's val loss; the LRs
    after it matched to 1e-7)."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


class Stopped(Exception):
    """A stop signal reached ``midtrain sft``: it keeps no checkpoint, and starts again from its input checkpoint
    when run again (the CLI exits 75)."""


def _check_stop(fabric) -> None:
    from midtrain import signals
    from midtrain.train.distributed import any_rank

    if any_rank(fabric, signals.requested() is not None):
        raise Stopped(f"signal {signals.name(signals.requested())} received")


def finetune(model, train_enc, lr: float, epochs: int, micro: int, global_batch: int, warmup_fraction: float,
             min_lr_ratio: float, weight_decay: float, seed: int, device, fabric=None) -> list[float]:
    """In-place full fine-tuning; returns the loss of each optimizer step.

    Each optimizer step covers ``global_batch`` examples; its loss is the mean over the response tokens of
    the whole global batch (the sum of every micro-batch's token losses over the batch's token count), so
    the update does not depend on ``micro`` (token-weighted, not micro-batch-weighted), nor on the number of
    ranks (``accumulate_gradients``). Every epoch runs ``len(train_enc) // global_batch`` steps on a fresh
    shuffle; the remainder waits for the next epoch. With ``fabric``, a stop signal on any rank ends it at the next
    step boundary (:class:`Stopped`)."""
    world, _ = _world(fabric)
    if global_batch % (micro * world):
        raise ConfigError("--global_batch_size", f"{global_batch} is not a multiple of --micro_batch_size {micro}"
                          + (f" x {world} processes" if world > 1 else ""))
    if len(train_enc) < global_batch:
        raise ConfigError("--global_batch_size", f"{global_batch} is more than the {len(train_enc)} training examples: "
                          "an epoch would have no optimizer step")
    steps_per_epoch = len(train_enc) // global_batch
    total = steps_per_epoch * epochs
    sched = Schedule("cosine", lr, lr * min_lr_ratio, total, round(warmup_fraction * total))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))
    if fabric is not None:
        opt = fabric.setup_optimizers(opt)
    rng = random.Random(seed)
    losses = []
    model.train()
    step = 0
    for _ in range(epochs):
        order = list(range(len(train_enc)))
        rng.shuffle(order)
        for s in range(steps_per_epoch):
            if fabric is not None:
                _check_stop(fabric)
            for g in opt.param_groups:
                g["lr"] = sched.lr_at(step)
            step_loss = accumulate_gradients(model, [train_enc[i] for i in order[s * global_batch:(s + 1) * global_batch]],
                                             micro, device, fabric)
            if fabric is None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            else:  # the norm over every rank's shard
                fabric.clip_gradients(model, opt, max_norm=1.0, error_if_nonfinite=False)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(step_loss)
            step += 1
    return losses


def pretrain_val_losses(model, val_path: Optional[Path], seq: int, batch_size: int, max_batches: Optional[int],
                        device, field: str = "--pretrain_val_path", unigram: Optional[dict] = None,
                        fabric=None, sets: Optional[Sequence[str]] = None) -> dict:
    """Token-mean loss on each pretraining validation set (the forgetting probe). A set that holds not one
    sample of ``seq + 1`` tokens is refused (``field``: one line), never scored as 0. ``unigram``: a dict that
    gets, per set, the unigram entropy of the very tokens scored (``metrics.unigram_entropy``: the collapse
    reference of ``stats.regime_problems``). With ``fabric`` over several ranks, each set's batches are spread
    over them (``_spread_sums``): the same batches, the same sums. ``sets``: score only these sets (names that
    ``check_forgetting_sets`` checked are in ``val_path``); None: every set."""
    if val_path is None:
        return {}
    from midtrain.data.sharded_mixed import ShardedMixedDataset

    data = ShardedMixedDataset(data_path=Path(val_path), val_data_path=Path(val_path), num_workers=0)
    data.connect(batch_size=batch_size, max_seq_length=seq)
    try:
        data.check_val_sets()
    except ConfigError as e:
        raise ConfigError(field, str(e).split(": ", 1)[1]) from None
    from midtrain.train.metrics import mean_loss, unigram_entropy

    out = {}
    model.eval()
    with torch.no_grad():
        for name, loader in data.val_dataloaders(whole=True).items():
            if sets is not None and name not in sets:
                continue
            batches = []
            for k, batch in enumerate(loader):
                if max_batches is not None and k >= max_batches:
                    break
                batches.append(batch)
            def score(batch):
                tokens = batch.long().to(device)
                logits = model(tokens[:, :-1])
                vocab = logits.size(-1)
                loss = float(F.cross_entropy(logits.reshape(-1, vocab).float(), tokens[:, 1:].reshape(-1),
                                             reduction="sum"))
                head = torch.tensor([loss, float(tokens[:, 1:].numel())], dtype=torch.float64)
                if unigram is None:
                    return head
                freq = torch.bincount(tokens[:, 1:].reshape(-1).cpu(), minlength=vocab).to(torch.float64)
                return torch.cat([head, freq])

            if not batches:
                out[name] = mean_loss(0.0, 0, f"validation set {name!r}")
                continue
            size = 2 if unigram is None else 2 + _vocab_of(model)
            sums = _spread_sums(fabric, batches, score, size)
            out[name] = mean_loss(float(sums[0]), int(sums[1]), f"validation set {name!r}")
            if unigram is not None:
                unigram[name] = unigram_entropy(sums[2:].round().long(), f"validation set {name!r}")
    reshard(model)
    model.train()
    return out


def _vocab_of(model) -> int:
    """The logits' width: the model config's ``padded_vocab_size``."""
    from midtrain.train.saver import unwrap

    return int(unwrap(model).config.padded_vocab_size)


def split_examples(examples, val_fraction: float, test_fraction: float, seed: int):
    idx = list(range(len(examples)))
    random.Random(seed).shuffle(idx)
    n_val, n_test = round(val_fraction * len(idx)), round(test_fraction * len(idx))
    test = [examples[i] for i in idx[:n_test]]
    val = [examples[i] for i in idx[n_test:n_test + n_val]]
    train = [examples[i] for i in idx[n_test + n_val:]]
    return train, val, test


def check_forgetting_sets(sets, val_path) -> None:
    """``--forgetting_sets``: distinct names of validation sets in ``val_path`` (refused in one line otherwise, before
    anything trains: a misspelt name would leave forgetting unmeasured after the whole sweep)."""
    if isinstance(sets, str) or not sets or len(set(sets)) != len(sets):
        raise ConfigError("--forgetting_sets", f"give distinct validation set names, got {sets!r}")
    if val_path is None:
        raise ConfigError("--forgetting_sets", "needs --pretrain_val_path, the folder the sets are in")
    from midtrain.data.shards import discover_val_sets

    have = discover_val_sets(Path(val_path), field_name="--pretrain_val_path")
    missing = [x for x in sets if x not in have]
    if missing:
        raise ConfigError("--forgetting_sets", f"{missing[0]!r} is not a validation set in {val_path} (it has: "
                          f"{', '.join(sorted(have))})")


def check_sft_args(*, epochs, micro_batch_size, global_batch_size, val_fraction, test_fraction, warmup_fraction,
                   min_lr_ratio, forgetting_batches, max_seq_length, lrs, out, save, pretrain_val_path, devices=1,
                   num_nodes=1, strategy="auto", forgetting_sets=None) -> None:
    """Every option that could fail or mislead after the sweep has run is checked before it starts."""
    from midtrain.atomic import check_writable_dir
    from midtrain.train.parallel import STRATEGIES

    for name, value in (("--epochs", epochs), ("--micro_batch_size", micro_batch_size),
                        ("--global_batch_size", global_batch_size),
                        ("--forgetting_batches", 1 if forgetting_batches is None else forgetting_batches),
                        ("--devices", devices), ("--num_nodes", num_nodes)):
        if value < 1:
            raise ConfigError(name, f"must be >= 1, got {value}")
    if strategy not in STRATEGIES:
        raise ConfigError("--strategy", f"expected one of {', '.join(STRATEGIES)}, got {strategy!r}")
    world = devices * num_nodes
    if global_batch_size % (micro_batch_size * world):
        raise ConfigError("--global_batch_size", f"{global_batch_size} is not a multiple of --micro_batch_size "
                          f"{micro_batch_size}" + (f" x {world} processes (devices x num_nodes)" if world > 1 else ""))
    for name, value in (("--val_fraction", val_fraction), ("--test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise ConfigError(name, f"must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1:
        raise ConfigError("--val_fraction", f"{val_fraction} + --test_fraction {test_fraction} leaves no training data")
    for name, value in (("--warmup_fraction", warmup_fraction), ("--min_lr_ratio", min_lr_ratio)):
        if not 0 <= value <= 1:
            raise ConfigError(name, f"must be in [0, 1], got {value}")
    if max_seq_length is not None and max_seq_length < 1:
        raise ConfigError("--max_seq_length", f"must be >= 1, got {max_seq_length}")
    if not lrs or any(not lr > 0 for lr in lrs):
        raise ConfigError("--lrs", f"give one or more positive learning rates, got {list(lrs)}")
    if pretrain_val_path is not None and not Path(pretrain_val_path).is_dir():
        raise ConfigError("--pretrain_val_path", f"{pretrain_val_path} is not a folder of validation shards")
    if forgetting_sets is not None:
        check_forgetting_sets(forgetting_sets, pretrain_val_path)
    if out is not None:
        if Path(out).is_dir():
            raise ConfigError("--out", f"{out} is a folder; give the metrics JSON file's path")
        check_writable_dir(Path(out).parent, "--out")
    if save is not None:
        if Path(save).exists():
            raise ConfigError("--save", f"{save} already exists")
        check_writable_dir(Path(save).parent, "--save")


def run_sft(checkpoint: Path, data: Path, tokenizer_dir: Optional[Path] = None, val_data: Optional[Path] = None,
            test_data: Optional[Path] = None, val_fraction: float = 0.1, test_fraction: float = 0.1,
            lrs: tuple[float, ...] = (1e-3,), epochs: int = 4, micro_batch_size: int = 8, global_batch_size: int = 16,
            warmup_fraction: float = 0.1, min_lr_ratio: float = 0.0, weight_decay: float = 0.0,
            max_seq_length: Optional[int] = None, pretrain_val_path: Optional[Path] = None, forgetting_batches: Optional[int] = 8,
            forgetting_sets: Optional[list[str]] = None,
            prompt_key: str = "prompt", response_key: str = "response", seed: int = 42, out: Optional[Path] = None,
            save: Optional[Path] = None, task: Optional[str] = None, arm: Optional[str] = None,
            score_every_lr: bool = False,
            precision: Optional[str] = None, devices: int = 1, num_nodes: int = 1,
            strategy: Literal["auto", "ddp", "fsdp", "hsdp"] = "auto", activation_checkpointing: bool = False) -> dict:
    """Fine-tune ``checkpoint`` once per LR, keep the LR with the lowest val loss, report its test loss
    and the pretraining val losses before/after (forgetting). ``task`` / ``arm`` only label the metrics
    (default task: the data file's stem) so that ``midtrain report`` can aggregate seeds of one arm.

    ``devices`` × ``num_nodes`` processes (Fabric starts them, or ``srun``/``torchrun`` did: the count must match)
    with ``strategy`` as a run config's (``midtrain.train.parallel``: ddp, or fsdp/hsdp over FSDP2 for a model whose
    weights, gradients and AdamW state do not fit one device; auto: ddp where a replica fits) and
    ``activation_checkpointing`` per Block. Each LR loads the checkpoint afresh: one copy of the weights is held
    at a time, whatever the sweep's length (the kept LR's test loss and forgetting are measured, and its model
    saved, when it becomes the best so far).

    Forgetting is each pretraining validation set's loss before and after SFT (``pretrain_val_path``; at most
    ``forgetting_batches`` batches of each, None: all), on every set, or only on ``forgetting_sets`` (set names:
    a study that reads only its main set's forgetting need not pay for the others)."""
    from midtrain.tokenizer import check_tokenizer_fits, load_tokenizer

    check_sft_args(epochs=epochs, micro_batch_size=micro_batch_size, global_batch_size=global_batch_size,
                   val_fraction=val_fraction, test_fraction=test_fraction, warmup_fraction=warmup_fraction,
                   min_lr_ratio=min_lr_ratio, forgetting_batches=forgetting_batches, max_seq_length=max_seq_length,
                   lrs=lrs, out=out, save=save, pretrain_val_path=pretrain_val_path, devices=devices,
                   num_nodes=num_nodes, strategy=strategy, forgetting_sets=forgetting_sets)
    checkpoint = Path(checkpoint)
    from midtrain.train import distributed

    distributed.check_expected_cuda()
    accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    precision = resolve_precision(precision, torch.device(accelerator))
    config, tied = checkpoint_config(checkpoint)
    if max_seq_length is not None and max_seq_length > config.block_size:
        raise ConfigError("--max_seq_length", f"{max_seq_length} is longer than the model's block_size {config.block_size}")
    tok = load_tokenizer(Path(tokenizer_dir) if tokenizer_dir else checkpoint)
    if tok.eos_id is None:
        raise ConfigError("--tokenizer_dir", "the tokenizer defines no eos_token")
    check_tokenizer_fits(tok, config.padded_vocab_size, "--tokenizer_dir" if tokenizer_dir else "--checkpoint")
    seq = max_seq_length or config.block_size
    examples = load_examples(Path(data), prompt_key, response_key)
    train, val, test = split_examples(examples, 0 if val_data else val_fraction, 0 if test_data else test_fraction, seed)
    if val_data:
        val = load_examples(Path(val_data), prompt_key, response_key)
    if test_data:
        test = load_examples(Path(test_data), prompt_key, response_key)
    if not train or not val or not test:
        raise ConfigError("--data", f"splits too small: train {len(train)}, val {len(val)}, test {len(test)}")
    enc = {name: [encode_example(tok, p, r, seq) for p, r in split] for name, split in
           (("train", train), ("val", val), ("test", test))}
    field = {"train": "--data", "val": "--val_data" if val_data else "--data",
             "test": "--test_data" if test_data else "--data"}
    dropped = {}
    for name in enc:
        enc[name], dropped[name] = drop_unscorable(name, enc[name], seq, field[name])
    if len(enc["train"]) < global_batch_size:
        raise ConfigError("--global_batch_size", f"{global_batch_size} is more than the {len(enc['train'])} training "
                          "examples: an epoch would have no optimizer step (lower it, or give more data)")
    fabric, kind = launch(config, micro_batch_size, seq, precision, strategy, devices, num_nodes, accelerator,
                          activation_checkpointing, tied)
    tmp = Path(save).with_name(f".{Path(save).name}.partial") if save is not None else None
    try:
        sweep, best = _sweep(fabric, kind, checkpoint, config, tied, seq, precision, activation_checkpointing, enc,
                             lrs, epochs, micro_batch_size, global_batch_size, warmup_fraction, min_lr_ratio,
                             weight_decay, seed, pretrain_val_path, forgetting_batches, score_every_lr, tmp,
                             forgetting_sets)
    except Stopped:
        if tmp is not None and fabric.global_rank == 0:  # nothing half-saved stays behind
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        raise
    metrics = {
        "checkpoint": str(checkpoint), "data": str(data), "task": task or Path(data).stem, "arm": arm, "seed": seed,
        "examples": {k: len(v) for k, v in enc.items()}, "dropped_unscorable": dropped,
        "response_tokens": {k: sum(scorable(e) for e in v) for k, v in enc.items()},
        "epochs": epochs, "precision": precision, "lr_sweep": sweep, "best_lr": best["lr"],
        "val_loss": best["val_loss"], "test_loss": best["test_loss"], "zero_shot_val_loss": best["zero_shot_val"],
        "test_items": best["test_items"],  # per scorable test example, in order: [loss sum, response tokens]
        "checkpoint_notes": checkpoint_notes(checkpoint),
        "forgetting": best["forgetting"],
    }
    if fabric.world_size > 1:  # how it ran; a one-process run's metrics stay as they always were
        metrics["processes"] = {"world": fabric.world_size, "strategy": kind}
    def write():
        if tmp is not None:
            _finish_save(config, checkpoint, tmp, Path(save), metrics, tied)
        if out is not None:
            from midtrain.atomic import write_text_atomic

            Path(out).parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(out, json.dumps(metrics, indent=2))

    on_rank0(fabric, write, "--save" if save is not None and out is None else "--out")
    return metrics


def on_rank0(fabric, write, field: str) -> None:
    """``write()`` on rank 0, and every rank learns whether it worked: a failure there (a full disk, a folder that
    appeared) ends every rank, in one line on rank 0 (an OSError as ``field``'s), instead of leaving the others
    waiting at a barrier."""
    from midtrain.train.distributed import any_rank

    error = None
    if fabric.global_rank == 0:
        try:
            write()
        except OSError as e:
            error = ConfigError(field, f"could not be written ({type(e).__name__}: {e})", speaker="self")
        except Exception as e:  # noqa: BLE001 - re-raised below, after the other ranks know
            error = e
    if any_rank(fabric, error is not None):
        if error is not None:
            raise error
        raise ConfigError("rank 0 could not write SFT's outputs (its line is in the log)", speaker="quiet")


def _sweep(fabric, kind, checkpoint, config, tied, seq, precision, checkpointing, enc, lrs, epochs, micro, global_batch,
           warmup_fraction, min_lr_ratio, weight_decay, seed, pretrain_val_path, forgetting_batches, score_every_lr,
           tmp, forgetting_sets=None) -> tuple[dict, dict]:
    """Fine-tune a fresh load of ``checkpoint`` per LR; returns (the sweep's rows, the kept LR's: lr, val and test
    loss, forgetting, and the checkpoint's own zero-shot val loss). The kept LR's test loss and forgetting are
    measured, and its weights written to ``tmp``, when it becomes the best so far (by val loss)."""
    device = fabric.device
    unigram: dict = {}
    before = zero_shot_val = None
    sweep, best = {}, None
    for lr in lrs:  # (a stop ends the sweep at an LR's start or an optimizer step; a trained LR is scored)
        _check_stop(fabric)
        fabric.print(f"sft: lr {lr:g}: {len(enc['train']) // global_batch * epochs} steps on "
                     f"{fabric.world_size} process(es) ({kind}, {precision})", flush=True)
        model = load_for_training(fabric, checkpoint, config, tied, seq, kind, precision, checkpointing)
        if before is None:  # the checkpoint itself, before any fine-tuning
            before = pretrain_val_losses(model, pretrain_val_path, seq, micro, forgetting_batches, device,
                                         unigram=unigram, fabric=fabric, sets=forgetting_sets)
            zero_shot_val = examples_loss(model, enc["val"], micro, device, fabric)
        torch.manual_seed(seed)
        losses = finetune(model, enc["train"], lr, epochs, micro, global_batch, warmup_fraction, min_lr_ratio,
                          weight_decay, seed, device, fabric)
        val_loss = examples_loss(model, enc["val"], micro, device, fabric)
        row = sweep[f"{lr:g}"] = {"val_loss": val_loss, "final_train_loss": losses[-1], "steps": len(losses)}
        if best is None or val_loss < best["val_loss"]:
            after = pretrain_val_losses(model, pretrain_val_path, seq, micro, forgetting_batches, device, fabric=fabric,
                                        sets=forgetting_sets)
            items = example_losses(model, enc["test"], micro, device, fabric)
            best = {"lr": lr, "val_loss": val_loss, "forgetting": _forgetting(before, after, unigram),
                    "test_loss": items_loss(items, "SFT examples"), "test_items": items, "zero_shot_val": zero_shot_val}
            if tmp is not None:
                _write_weights(fabric, model, kind, tmp)
        if score_every_lr and len(lrs) > 1:
            if best["lr"] == lr:
                row.update(test_loss=best["test_loss"], forgetting=best["forgetting"], test_items=best["test_items"])
            else:
                after = pretrain_val_losses(model, pretrain_val_path, seq, micro, forgetting_batches, device,
                                            fabric=fabric, sets=forgetting_sets)
                items = example_losses(model, enc["test"], micro, device, fabric)
                row.update(test_loss=items_loss(items, "SFT examples"), test_items=items,
                           forgetting=_forgetting(before, after, unigram))
        # one copy of the weights at a time: freed now, not later. An FSDP2 module and its parameter groups refer
        # to each other, so only a collection frees them; elsewhere refcounting already has, and a full collection
        # (~0.25 s in a study's step runner, which holds many objects) is skipped
        weights = weakref.ref(next(iter(model.parameters())))
        del model
        if weights() is not None:
            gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return sweep, best


def checkpoint_config(checkpoint: Path):
    """(litgpt Config, tied embeddings) of a checkpoint folder, refused in one line if it is none."""
    from litgpt import Config

    from midtrain.train import checkpoint as ckpt

    if not ckpt.is_checkpoint(checkpoint) or not (checkpoint / "model_config.yaml").is_file():
        raise ConfigError("--checkpoint", f"{checkpoint} needs lit_model.pth (or sharded/) and model_config.yaml")
    return Config.from_file(checkpoint / "model_config.yaml"), ckpt.tied_embeddings(checkpoint)


def _strategy(config, micro, seq, precision, strategy, devices, num_nodes, accelerator, checkpointing, tied,
              gib) -> str:
    """The strategy ``auto`` resolves to (a replica per GPU where weights, gradients and AdamW fit the visible one,
    ``gib``, else sharded): ``footprint``. Run forked (its trace leaves autograd threads); it never calls CUDA."""
    from midtrain.train.footprint import footprint

    return footprint(config, micro, seq, precision, strategy, devices, num_nodes, accelerator, checkpointing,
                     "AdamW", None, gib, tied).strategy


def launch(config, micro, seq, precision, strategy, devices, num_nodes, accelerator, checkpointing, tied):
    """(Fabric with its processes started, strategy kind). The process count is checked against the launcher's
    (``distributed.check_world``); a stop during the rendezvous is :class:`Stopped`."""
    import warnings

    import lightning as L

    from midtrain.forked import run_forked
    from midtrain.train import distributed, parallel

    distributed.check_world(devices, num_nodes, "--devices", "--num_nodes", "`midtrain sft`'s options")
    world = devices * num_nodes
    if world == 1 or strategy != "auto" or accelerator != "cuda":
        kind = parallel.resolve(strategy, world, num_nodes, accelerator, None)
    else:  # the device's memory is read here: a forked child must not call CUDA
        gib = torch.cuda.get_device_properties(0).total_memory / 2**30
        kind = run_forked(_strategy, config, micro, seq, precision, strategy, devices, num_nodes, accelerator,
                          checkpointing, tied, gib)
    warnings.filterwarnings("ignore", message="The `srun` command is available on your system but is not used")
    fabric = L.Fabric(accelerator=accelerator, devices=devices, num_nodes=num_nodes, precision=precision,
                      strategy=parallel.fabric_strategy(kind, distributed.DEFAULT_TIMEOUT_S, accelerator, world,
                                                        num_nodes, precision))
    try:
        fabric.launch()
    except distributed.StopDuringRendezvous as e:
        raise Stopped(str(e)) from None
    except distributed.RendezvousTimeout as e:
        raise ConfigError("--devices", str(e)) from None
    return fabric, kind


def load_for_training(fabric, checkpoint: Path, config, tied: bool, seq: int, kind: str, precision: str,
                      checkpointing: bool):
    """The checkpoint's model set up on Fabric's devices at ``precision``: built on CPU and loaded before the setup
    (one process, ddp), or built on meta, sharded, then loaded shard by shard (fsdp/hsdp: no rank holds a full
    copy; a full ``lit_model.pth`` is read memory-mapped and broadcast from rank 0)."""
    from litgpt import GPT

    from midtrain.train import checkpoint as ckpt
    from midtrain.train import parallel

    sharded = kind in parallel.SHARDED
    if sharded:
        with torch.device("meta"):
            model = GPT(config)
    else:
        model = GPT(config)
    if tied:  # one matrix, as it was trained (an untied copy would train two)
        parallel.tie_embeddings(model)
    if not sharded:
        _translated(lambda: ckpt.load_model_weights(checkpoint, model), checkpoint)
    model.max_seq_length = seq
    if checkpointing:
        parallel.checkpoint_blocks(model)
    model = fabric.setup_module(model)
    if sharded:
        _translated(lambda: ckpt.load_sharded_model_weights(checkpoint, model.module), checkpoint)
        if precision in ("bf16-true", "16-true"):  # materialised from meta, the rope cache was rebuilt in fp32
            parallel.cast_rope_cache(model.module, precision)
    return model


def _translated(load, checkpoint: Path) -> None:
    try:
        load()
    except (RuntimeError, OSError, EOFError, ValueError, KeyError) as e:
        raise ConfigError("--checkpoint", f"{checkpoint} could not be loaded ({str(e)[:200]})") from None


def load_checkpoint_model(checkpoint: Path):
    """A litgpt GPT from ``checkpoint/model_config.yaml`` and its weights, full (``lit_model.pth``, ours or litgpt's
    layout; memory-mapped, so an optimizer state beside the weights is never read) or sharded (``sharded/``)."""
    from litgpt import GPT

    from midtrain.train import checkpoint as ckpt

    checkpoint = Path(checkpoint)
    config, tied = checkpoint_config(checkpoint)
    model = GPT(config)
    if tied:  # one matrix, as it was trained (an untied copy would train two)
        from midtrain.train.parallel import tie_embeddings

        tie_embeddings(model)
    _translated(lambda: ckpt.load_model_weights(checkpoint, model), checkpoint)
    return model, config


def _write_weights(fabric, model, kind: str, tmp: Path) -> None:
    """The model's weights into ``tmp/lit_model.pth`` (replacing an earlier LR's): gathered to rank 0's CPU when
    sharded."""
    from midtrain.train.parallel import SHARDED

    module = model.module if hasattr(model, "module") else model
    if kind in SHARDED:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        state = module.state_dict()
    def write():
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save({"model": state}, tmp / "lit_model.pth")

    on_rank0(fabric, write, "--save")


def _finish_save(config, source: Path, tmp: Path, dest: Path, metrics: dict, tied: bool) -> None:
    """Config, tokenizer side files and metrics beside the kept LR's weights, then ``tmp`` becomes ``dest``."""
    from litgpt.utils import save_config

    from midtrain.train.checkpoint import copy_side_files

    if dest.exists():
        raise ConfigError("--save", f"{dest} already exists")
    save_config(config, tmp)
    copy_side_files(source, tmp)
    if tied:  # the record load_checkpoint_model reads
        (tmp / "hyperparameters.yaml").write_text("train:\n  tie_embeddings: true\n")
    (tmp / "sft_metrics.json").write_text(json.dumps(metrics, indent=2))
    tmp.rename(dest)


def _forgetting(before: dict, after: dict, unigram: dict) -> dict:
    """Per pretraining val set: ``after`` (forgetting: the loss after SFT), ``before``, ``increase`` and
    ``unigram_entropy`` (of the same tokens: a loss at or above it is collapse)."""
    return {name: {"before": before[name], "after": after[name], "increase": after[name] - before[name],
                   "unigram_entropy": unigram[name]} for name in before}


def format_sft(metrics: dict) -> str:
    lines = [f"SFT of {metrics['checkpoint']} on {metrics['data']} ({metrics['examples']})"]
    for lr, m in metrics["lr_sweep"].items():
        lines.append(f"  lr {lr:>8}: val loss {m['val_loss']:.4f} (train {m['final_train_loss']:.4f}, {m['steps']} steps)")
    lines.append(f"best lr {metrics['best_lr']:g}: val {metrics['val_loss']:.4f}, held-out test {metrics['test_loss']:.4f} "
                 f"(before SFT: val {metrics['zero_shot_val_loss']:.4f})")
    for name, f in metrics["forgetting"].items():
        lines.append(f"  forgetting on {name} (loss after SFT): {f['after']:.4f} (before {f['before']:.4f}, "
                     f"increase {f['increase']:+.4f}; unigram entropy of its tokens {f['unigram_entropy']:.4f})")
    return "\n".join(lines)

