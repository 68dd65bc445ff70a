"""How a run is spread over its processes: the strategy, its DeviceMesh, the one init, activation checkpointing.

Strategies (the run config's ``strategy``):
- ``ddp``: every rank holds the whole model, gradients and optimizer state; gradients are all-reduced
  once per optimizer step (on the last micro-batch). The default wherever a full replica fits.
- ``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard`` per transformer Block, then at the root)
  over a 1-D DeviceMesh of all ``devices × num_nodes`` ranks: parameters, gradients and optimizer
  state sharded over every rank.
- ``hsdp``: FSDP2 over a 2-D mesh ``(num_nodes, devices)``: replicated across nodes, sharded within
  a node (all-gathers stay on the node's links).
- ``auto``: ``ddp`` when the memory estimate of a full replica fits the device (always on CPU),
  else ``fsdp``; one process: no strategy.
The mesh comes from the run config, never from ``torch.cuda.device_count()`` (FSDP1's HYBRID_SHARD took
"GPUs per node" from the visible devices and crashed ``devices: 2`` on a full node). Under sharding
every micro-batch's gradients are reduce-scattered, so gradients accumulate sharded (memory ∝ 1/shard);
DDP skips its all-reduce until the last micro-batch.

One init: ``build_model`` builds the model on CPU in fp32 from the seed and applies litgpt's GPT-NeoX
init (``litgpt.pretrain.initialize_weights``) whatever the strategy, so a run's step-0 weights are
bitwise those of the same config on one CPU process, under DDP and under sharding (litgpt skips that
init under FSDPStrategy, expecting meta tensors that an ``empty_init=False`` model never has: a multi-GPU
run kept torch's default init, embeddings N(0, 1)). A precision's dtype is a cast of those weights.
A model whose weights will come from a checkpoint is built on the meta device under sharding: nothing
is initialised that the load overwrites, and no rank holds a full copy.

Precision under sharding: ``bf16-mixed`` keeps fp32 parameters and optimizer state (the shards) and
computes in bf16: the Blocks' ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`` (inputs not
cast, so the residual stream stays fp32) plus autocast, with the root's parameters left fp32, so the
numerics are those of autocast on one device or under DDP; ``bf16-true`` shards bf16 parameters and state.
"""

from __future__ import annotations

import types
from typing import Optional

import torch

from midtrain.errors import ConfigError

STRATEGIES = ("auto", "ddp", "fsdp", "hsdp")
SHARDED = ("fsdp", "hsdp")


def resolve(strategy: str, world: int, num_nodes: int, accelerator: str, fits_replica: Optional[bool]) -> str:
    """The strategy a run uses: ``single`` (one process), ``ddp``, ``fsdp`` or ``hsdp``. Pure.

    ``fits_replica``: whether a full DDP replica fits one device (None: unknown, e.g. on CPU)."""
    if strategy not in STRATEGIES:
        raise ConfigError("strategy", f"expected one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if world == 1:
        return "single"
    if strategy == "hsdp" and num_nodes < 2:
        raise ConfigError("strategy", f"hsdp replicates across nodes and shards within one; num_nodes is {num_nodes}: "
                          "use fsdp to shard over the node's devices")
    if strategy != "auto":
        return strategy
    return "fsdp" if fits_replica is False else "ddp"


def mesh_shape(kind: str, world: int, num_nodes: int) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """(shape, dim names) of the DeviceMesh a sharded strategy shards over. Pure."""
    if kind == "fsdp":
        return (world,), ("shard",)
    if kind == "hsdp":
        return (num_nodes, world // num_nodes), ("replicate", "shard")
    raise ValueError(kind)


def shard_size(kind: str, world: int, num_nodes: int) -> int:
    """Ranks one parameter is split over: 1 for single/ddp, the world for fsdp, a node's devices for hsdp."""
    return mesh_shape(kind, world, num_nodes)[0][-1] if kind in SHARDED else 1


def build_model(config, seed: int, on_meta: bool = False, tie: bool = False):
    """The model with litgpt's GPT-NeoX init, on CPU in fp32, from ``seed`` (the same weights whatever the world
    size or strategy); ``on_meta``: shapes only, for weights that a checkpoint load will provide. ``tie``: one
    matrix for the input and output embeddings (``train.tie_embeddings``), as litgpt's pretrain ties them."""
    from litgpt.model import GPT
    from litgpt.pretrain import initialize_weights

    if on_meta:
        with torch.device("meta"):
            return tie_embeddings(GPT(config)) if tie else GPT(config)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        torch.manual_seed(seed)
        with torch.device("cpu"):
            model = GPT(config)
        # litgpt's init, told there is no FSDPStrategy (it would otherwise skip reset_parameters)
        initialize_weights(types.SimpleNamespace(strategy=None), model, n_layer=config.n_layer, n_embd=config.n_embd)
    finally:
        torch.set_default_dtype(default)
    return tie_embeddings(model) if tie else model


def tie_embeddings(model):
    """``wte`` takes ``lm_head``'s matrix, as litgpt's pretrain does after its init (one parameter: the optimizer,
    state dicts and parameter counts see it once; a state dict still names it under both keys)."""
    model.transformer.wte.weight = model.lm_head.weight
    return model


def param_dtype(precision: str) -> torch.dtype:
    """The dtype a precision stores the weights in (bf16 under bf16-true, fp16 under 16-true, else fp32)."""
    return torch.bfloat16 if str(precision).startswith("bf16-true") else (
        torch.float16 if str(precision).startswith("16-true") else torch.float32)


def cast_rope_cache(gpt, precision: str) -> None:
    """A model materialised from meta rebuilt its RoPE cache in fp32; a fresh model's is cast with its weights:
    the same cast, so that ``bf16-true`` computes alike on both paths."""
    dtype = param_dtype(precision)
    gpt.cos, gpt.sin = gpt.cos.to(dtype), gpt.sin.to(dtype)


def checkpoint_blocks(model) -> None:
    """Activation checkpointing per transformer Block (torch's non-reentrant checkpoint_wrapper, as torchtitan):
    a block's activations are recomputed in the backward pass instead of kept; state-dict keys are unchanged."""
    from litgpt.model import Block
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (apply_activation_checkpointing,
                                                                             checkpoint_wrapper)

    apply_activation_checkpointing(model, checkpoint_wrapper_fn=checkpoint_wrapper,
                                   check_fn=lambda m: isinstance(m, Block))


def compile_blocks(model) -> None:
    """torch.compile each transformer Block in place (regional compilation, as torchtitan compiles): the Blocks share
    one code object, so Dynamo traces one Block and every other Block reuses its graph; compile time stays that of
    one Block whatever the depth (a whole-model compile traces every Block: on CPU, 24 layers took 64 s against
    25 s). The embedding lookup, the final norm and the head run eagerly (one lookup, one norm, one GEMM); the loss
    is compiled apart (``metrics.token_loss``). In place, so state-dict keys are unchanged (no ``_orig_mod.``).
    Applied after activation checkpointing (its wrapper is what is compiled) and before Fabric's setup (DDP, or
    fully_shard per Block), the order torchtitan uses."""
    for block in model.transformer.h:
        block.compile()


def sharder(kind: str, world: int, num_nodes: int, precision: str, accelerator: str):
    """The ``parallelize_fn`` of Lightning's ModelParallelStrategy: fully_shard each Block, then the root, over the
    mesh of ``kind``."""
    def parallelize(model, _lightning_mesh):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        shape, names = mesh_shape(kind, world, num_nodes)
        mesh = init_device_mesh("cuda" if accelerator == "cuda" else "cpu", shape, mesh_dim_names=names)
        # bf16-mixed: Blocks compute with bf16 copies of their fp32 shards (gathered in bf16, gradients reduced in
        # fp32), and take their input as it comes: the residual stream stays fp32 as under autocast on one device.
        # The root (embeddings, final norm, head) keeps fp32 parameters, cast per op by autocast, as with DDP.
        blocks = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=False)
                  if precision == "bf16-mixed" else MixedPrecisionPolicy())
        for block in model.transformer.h:
            if precision == "bf16-mixed":  # norms compute in fp32 on fp32 input, as under autocast (their own units)
                for norm in [m for m in block.modules() if m is not block and "norm" in type(m).__name__.lower()]:
                    fully_shard(norm, mesh=mesh, mp_policy=MixedPrecisionPolicy())
            fully_shard(block, mesh=mesh, mp_policy=blocks)
        fully_shard(model, mesh=mesh, mp_policy=MixedPrecisionPolicy())
        return model

    return parallelize


def fabric_strategy(kind: str, timeout: float, accelerator: str, world: int, num_nodes: int, precision: str):
    """The Lightning strategy for ``kind`` whose process-group set-up is midtrain's rendezvous (or "auto")."""
    from midtrain.train import distributed

    if kind == "single":
        return "auto"
    if kind == "ddp":
        return distributed.strategy("ddp", timeout, process_group_backend="nccl" if accelerator == "cuda" else "gloo",
                                    gradient_as_bucket_view=True)
    return distributed.strategy("model_parallel", timeout, parallelize_fn=sharder(kind, world, num_nodes, precision, accelerator),
                                data_parallel_size=world, tensor_parallel_size=1,
                                process_group_backend="nccl" if accelerator == "cuda" else "gloo")


def is_sharded(model) -> bool:
    """Whether ``model`` (a Fabric-wrapped one included) holds DTensor shards."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())
