"""What a run asks of each device, before it runs: strategy, memory per rank, and bf16-true's cost at its LRs.

``midtrain mix`` and ``midtrain study plan`` print it for every training run (the trainer prints the same
estimate at its start and checks it against the real tensors in ``memory.json``); a run that fits
on no strategy is refused before anything is submitted.

GPU memory comes from the run's GPU type (``GPUS``, vendor datasheets), named by the allocation
(``gpus-per-node: h100:8``), else ``DEFAULT_GPU`` (said in the output). ``auto`` resolves as the trainer
does: DDP when a replica fits, else FSDP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from midtrain.errors import ConfigError
from midtrain.train import memory, parallel
from midtrain.train.numerics import Survival, bf16_update_survival, neox_std

# name -> (memory GiB, dense bf16 TFLOP/s), from vendor datasheets (H100/H200 SXM; PCIe H100 is 756 TFLOP/s)
GPUS = {"a100-40": (40, 312), "a100": (80, 312), "h100-pcie": (80, 756), "h100": (80, 989), "h200": (141, 989),
        "gh200": (96, 989), "l40s": (48, 362), "b200": (180, 2250), "a6000": (48, 155), "v100": (32, 125)}
DEFAULT_GPU = "h100"


def gpu_spec(name: Optional[str]) -> tuple[str, Optional[int], Optional[float]]:
    """(name, memory GiB, bf16 TFLOP/s) for a GPU type or a device name (``NVIDIA H200``, ``a100:8``,
    ``NVIDIA A100-SXM4-40GB``): a size in the name wins over the table; an unknown GPU gives None (never refused)."""
    import re

    text = (name or DEFAULT_GPU).lower().replace("nvidia", "").replace(" ", "-").strip("-")
    size = re.search(r"(\d+)\s*gb", text)
    for key in sorted(GPUS, key=len, reverse=True):  # h100-pcie before h100, a100-40 before a100
        if key in text:
            memory, tflops = GPUS[key]
            return key, int(size.group(1)) if size else memory, tflops
    return text.split(":")[0] or "?", int(size.group(1)) if size else None, None


@dataclass(frozen=True)
class Footprint:
    world: int
    strategy: str
    precision: str
    estimate: memory.MemoryEstimate
    gpu: Optional[str]          # None on CPU
    device_gib: Optional[float]
    activation_checkpointing: bool
    assumed_gpu: bool = False

    @property
    def fits(self) -> bool:
        """Fits the device (True on CPU and on a GPU whose memory is unknown: not checked, and said)."""
        return self.gpu is None or self.device_gib is None or self.estimate.fits(self.device_gib * 2**30)

    def describe(self) -> str:
        assumed = ", assumed" if self.assumed_gpu else ""
        if self.gpu and self.device_gib is None:
            where = f"on {self.gpu} (an unknown GPU: memory not checked)"
        else:
            where = f"on {self.gpu} ({self.device_gib:.0f} GiB{assumed})" if self.gpu else "on CPU"
        ac = ", activation checkpointing" if self.activation_checkpointing else ""
        verdict = "" if self.fits else " -- DOES NOT FIT"
        return (f"{self.strategy} x {self.world}, {self.precision}{ac} {where}: memory {self.estimate.describe()}"
                f"{verdict}")


def footprint(model_config, micro: int, seq: int, precision: Optional[str], strategy: str, devices: int,
              num_nodes: int, accelerator: str, activation_checkpointing: bool = False, optimizer: str = "AdamW",
              gpu_type: Optional[str] = None, device_gib: Optional[float] = None, tied: bool = False) -> Footprint:
    """The strategy and per-rank memory of a run on ``gpu_type`` (None: ``DEFAULT_GPU``) or on CPU;
    ``device_gib``: the device's memory when known (a visible GPU's ``total_memory``), over the table's."""
    world = devices * num_nodes
    on_gpu = accelerator != "cpu"
    precision = precision or ("bf16-mixed" if on_gpu else "32-true")
    gpu, known_gib = None, None
    fits_replica = None
    if on_gpu:
        gpu, table_gib, _ = gpu_spec(gpu_type)
        known_gib = device_gib if device_gib is not None else table_gib
        if known_gib is not None:
            replica = memory.estimate(model_config, micro, seq, precision, "ddp", 1, activation_checkpointing,
                                      optimizer, tied)
            fits_replica = replica.fits(known_gib * 2**30)
    kind = parallel.resolve(strategy, world, num_nodes, "cuda" if on_gpu else "cpu", fits_replica)
    est = memory.estimate(model_config, micro, seq, precision, kind, parallel.shard_size(kind, world, num_nodes),
                          activation_checkpointing, optimizer, tied)
    return Footprint(world, kind, precision, est, gpu, known_gib, activation_checkpointing,
                     assumed_gpu=on_gpu and gpu_type is None)


ASSUMED = (f"(assumed: {DEFAULT_GPU}; name the GPU type of the training and SFT steps, e.g. slurm.pretrain, "
           "slurm.midtrain and slurm.sft: {gpus-per-node: a100:8}, or run mix on a GPU node)")


def refuse_if_too_big(fp: Footprint, where: str, keys: str = "") -> None:
    """One line when ``fp`` does not fit its GPU, with what would make it fit; ``keys``: the prefix of the options
    named there (``sft.options.`` for an SFT step; a run config's keys otherwise)."""
    if fp.fits:
        return
    hints = [h for h, ok in ((f"{keys}strategy: fsdp", fp.strategy in ("single", "ddp") and fp.world > 1),
                              (f"{keys}devices: 8 with {keys}strategy: fsdp (weights, gradients and AdamW state "
                               "sharded over the ranks)", fp.world == 1 and bool(keys)),
                              (f"{keys}activation_checkpointing: true", not fp.activation_checkpointing),
                              (f"a smaller {keys or 'train.'}micro_batch_size (the global batch stays)", True),
                              ("more devices", fp.world > 1 or not keys)) if ok]
    raise ConfigError(where, f"{fp.describe()}: more than the {fp.device_gib:.0f} GiB of one {fp.gpu} less headroom "
                      f"({memory.HEADROOM_FRACTION:.0%} + {memory.HEADROOM_BYTES / 2**30:.0f} GiB); try "
                      + ", ".join(hints))


def bf16_true_cost(precision: Optional[str], lrs: list[tuple[str, float]], n_embd: int) -> list[str]:
    """Lines saying what bf16-true loses at each named LR (``[("starts at step 40000", 9.6e-5), ...]``); none for
    other precisions."""
    if precision != "bf16-true":
        return []
    std = neox_std(n_embd)
    out = []
    for what, lr in lrs:
        s: Survival = bf16_update_survival(float(lr), std)
        out.append(f"bf16-true: {what} at LR {lr:.2g}: {s.moved:.0%} of weights ~N(0, {std:.3g}) move at all in 200 "
                   f"AdamW steps, mean update {s.magnitude:.2f}x fp32's (bf16-mixed: all of them)")
    return out


def schedule_lr(train, peak: float, horizon: int, step: int) -> Optional[float]:
    """The LR the trainer sets at ``step`` of a run (None for ``decay``, which continues a checkpoint's LR)."""
    from midtrain.train.schedules import Schedule, warmup_steps

    if train.lr_scheduler == "decay" or not horizon:
        return None
    return Schedule(train.lr_scheduler, peak, train.min_lr, horizon,
                    warmup_steps(horizon, train.lr_warmup_steps, train.lr_warmup_fraction), train.stable_steps,
                    train.decay_fraction, train.decay_shape).lr_at(min(step, horizon - 1))
