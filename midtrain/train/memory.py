"""Memory per rank of a training run, before it runs: what the estimate counts, and how.

Terms, in bytes on one rank (rank 0, the largest shard) at the peak of an optimizer step:
- ``params``: the parameters as stored (fp32 under ``32-true``/``bf16-mixed``, bf16 under ``bf16-true``),
  split over the shard group as FSDP2 cuts them (dim 0 in ``ceil(rows / shard)`` chunks; 1 for DDP).
- ``grads``: the same dtype and split as the parameters.
- ``optimizer``: per parameter, the optimizer's state tensors in the parameter dtype (AdamW: exp_avg and
  exp_avg_sq) and a 4-byte ``step`` per tensor, split like the parameters.
- ``gathered`` (sharded only): the unsharded compute copies FSDP2 holds while computing: the root
  module's (embeddings, final norm, head) and two Blocks' (the one computing and the one prefetched),
  plus one Block's unsharded gradient before its reduce-scatter.
- ``activations``: the bytes autograd saves in one micro-batch's forward and loss, traced on
  ``FakeTensorMode`` (shapes and dtypes only: no memory, no device) for 1 and 2 layers at micro-batches
  of 2 and 3 and extended linearly in both: the tensors the
  real run saves, counted once per storage and without the parameters (on CPU it equals the real
  run's saved bytes exactly, tests/test_parallel.py). Under DDP's ``bf16-mixed`` this includes
  autocast's bf16 copies of the weights; with activation checkpointing, each Block's input. Traced
  with CPU autocast's op lists (CUDA's cast the same matmuls; no CUDA device is needed to plan).
- ``recompute`` (activation checkpointing only): one Block's activations, alive again while it is
  recomputed in the backward pass.
- ``logits_grad``: the fp32 gradient of the logits (micro × seq × padded vocab × 4), alive when the
  backward pass starts.
Not counted: the CUDA context, NCCL buffers, allocator fragmentation and compile workspaces;
``fits`` keeps ``HEADROOM_FRACTION`` of the device plus ``HEADROOM_BYTES`` free for them.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass

import torch

HEADROOM_FRACTION = 0.10
HEADROOM_BYTES = 2 * 2**30
OPTIMIZER_STATES = {"AdamW": 2, "Adam": 2, "SGD": 1, "RMSprop": 1, "Adagrad": 1, "Adafactor": 1}
GIB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    params: int
    grads: int
    optimizer: int
    gathered: int
    activations: int
    recompute: int
    logits_grad: int
    shard: int
    optimizer_known: bool = True

    @property
    def states(self) -> int:
        """Parameters, gradients and optimizer state: what sharding divides."""
        return self.params + self.grads + self.optimizer

    @property
    def total(self) -> int:
        return self.states + self.gathered + self.activations + self.recompute + self.logits_grad

    def fits(self, device_bytes: int) -> bool:
        return self.total <= device_bytes * (1 - HEADROOM_FRACTION) - HEADROOM_BYTES

    def describe(self) -> str:
        unit, scale = next((u, x) for u, x in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10), ("B", 1))
                           if self.total >= x or x == 1)
        g = lambda b: f"{b / scale:.2f}"  # noqa: E731
        opt = g(self.optimizer) if self.optimizer_known else "? (unknown optimizer)"
        parts = [f"params {g(self.params)}", f"grads {g(self.grads)}", f"optimizer {opt}"]
        if self.gathered:
            parts.append(f"gathered {g(self.gathered)}")
        parts.append(f"activations {g(self.activations)}")
        if self.recompute:
            parts.append(f"recompute {g(self.recompute)}")
        parts.append(f"logits grad {g(self.logits_grad)}")
        split = f", states split over {self.shard} ranks" if self.shard > 1 else ""
        return f"{g(self.total)} {unit} per rank ({', '.join(parts)} {unit}{split})"

    def to_dict(self) -> dict:
        return {**asdict(self), "states": self.states, "total": self.total}


def estimate(config, micro: int, seq: int, precision: str, kind: str, shard: int,
             activation_checkpointing: bool = False, optimizer: str = "AdamW", tied: bool = False) -> MemoryEstimate:
    """The per-rank memory of a run (see the module docstring for each term). ``kind``: single, ddp, fsdp, hsdp;
    ``shard``: ranks a parameter is split over (1 unless sharded); ``tied``: ``train.tie_embeddings`` (one
    embedding matrix, its gradient and optimizer state counted once)."""
    from midtrain.train.parallel import param_dtype

    shapes = _param_shapes(_key(config), tied)
    dtype = param_dtype(precision)
    size = torch.empty((), dtype=dtype).element_size()
    sharded = kind in ("fsdp", "hsdp")
    split = shard if sharded else 1
    local = sum(math.ceil(s[0] / split) * math.prod(s[1:]) if s else 1 for _, s in shapes)
    name = optimizer.rsplit(".", 1)[-1] if isinstance(optimizer, str) else "AdamW"
    states = OPTIMIZER_STATES.get(name)
    optimizer_bytes = (states or 0) * local * size + (4 * len(shapes) if name in ("AdamW", "Adam") else 0)
    gathered = 0
    if sharded:
        compute = 2 if precision == "bf16-mixed" else size  # Blocks gather bf16 copies; the root stays as stored
        block = sum(math.prod(s) for n, s in shapes if n.startswith("transformer.h.0."))
        root = sum(math.prod(s) for n, s in shapes if not n.startswith("transformer.h."))
        gathered = root * size + 2 * block * compute + block * (4 if precision == "bf16-mixed" else size)
    autocast = precision == "bf16-mixed"
    # under FSDP2's bf16-mixed the Blocks hold bf16 parameters (their norms and the root fp32): trace that model
    blocks = "bf16" if sharded and autocast else ""
    acts = _activation_bytes(_key(config), micro, seq, str(dtype), autocast, activation_checkpointing,
                             config.n_layer, blocks)
    recompute = 0
    if activation_checkpointing:
        plain = _activation_bytes(_key(config), micro, seq, str(dtype), autocast, False, 2, blocks)
        recompute = plain - _activation_bytes(_key(config), micro, seq, str(dtype), autocast, False, 1, blocks)
    return MemoryEstimate(params=local * size, grads=local * size, optimizer=optimizer_bytes, gathered=gathered,
                          activations=acts, recompute=recompute,
                          logits_grad=micro * seq * config.padded_vocab_size * 4, shard=split,
                          optimizer_known=states is not None)


def _key(config) -> str:
    return json.dumps(asdict(config), sort_keys=True, default=str)


def _config(key: str, **changes):
    from litgpt import Config

    fields = json.loads(key)
    fields.update(changes)
    return Config(**{k: v for k, v in fields.items() if k in Config.__dataclass_fields__ and
                     Config.__dataclass_fields__[k].init})


@functools.lru_cache(maxsize=64)
def _param_shapes(key: str, tied: bool = False) -> tuple[tuple[str, tuple[int, ...]], ...]:
    from litgpt.model import GPT

    with torch.device("meta"):
        model = GPT(_config(key))
    if tied:  # (named_parameters lists a shared parameter once)
        from midtrain.train.parallel import tie_embeddings

        tie_embeddings(model)
    return tuple((n, tuple(p.shape)) for n, p in model.named_parameters())


@functools.lru_cache(maxsize=256)
def _activation_bytes(key: str, micro: int, seq: int, dtype: str, autocast: bool, checkpointing: bool,
                      n_layer: int, blocks: str = "") -> int:
    """Saved bytes of the whole model from traces of 1 and 2 layers at micro-batches of 2 and 3: Blocks are identical
    (linear in depth) and every saved tensor either has a batch dimension or none (linear in the micro-batch)."""
    dt = getattr(torch, dtype.split(".")[-1])

    def traced(layers: int, batch: int) -> int:
        return saved_tensor_bytes(_config(key, n_layer=layers), batch, seq, dt, autocast, checkpointing,
                                  bf16_blocks=bool(blocks))

    def at(batch: int) -> int:
        one = traced(1, batch)
        return one if n_layer == 1 else one + (n_layer - 1) * (traced(2, batch) - one)

    if micro <= 3:
        return at(micro)
    second, third = at(2), at(3)  # (a batch of 1 can alias what a larger one copies: not a base point)
    return second + (micro - 2) * (third - second)


def saved_tensor_bytes(config, micro: int, seq: int, dtype: torch.dtype = torch.float32, autocast: bool = False,
                       checkpointing: bool = False, fake: bool = True, bf16_blocks: bool = False) -> int:
    """Bytes autograd saves for the backward pass of one forward + the trainer's loss, once per storage, parameters
    excluded. ``fake``: on FakeTensorMode (no memory); False: real CPU tensors (to check the fake trace).
    ``bf16_blocks``: the Blocks' parameters in bf16 but their norms' (FSDP2's bf16-mixed compute copies)."""
    import contextlib

    from litgpt.model import GPT
    from torch._subclasses.fake_tensor import FakeTensorMode

    from midtrain.train.metrics import LOSS_CHUNK_ROWS, per_token_loss

    default = torch.get_default_dtype()
    with FakeTensorMode() if fake else contextlib.nullcontext():
        torch.set_default_dtype(dtype)
        try:
            with torch.device("cpu"):
                model = GPT(config)
                if bf16_blocks:
                    torch.set_default_dtype(torch.bfloat16)
                    half = GPT(config)
                    for full, low in zip(model.transformer.h, half.transformer.h):
                        for name, child in list(low.named_children()):
                            if "norm" in type(child).__name__.lower():
                                setattr(low, name, getattr(full, name))
                    model.transformer.h = half.transformer.h
        finally:
            torch.set_default_dtype(default)
        model.max_seq_length = seq
        if checkpointing:
            from midtrain.train.parallel import checkpoint_blocks

            checkpoint_blocks(model)
        params = {p.untyped_storage()._cdata for p in model.parameters()}
        tokens = torch.zeros((micro, seq + 1), dtype=torch.long)
        seen: dict[int, int] = {}

        def pack(t):
            storage = t.untyped_storage()
            if storage._cdata not in params:
                seen[storage._cdata] = storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                logits = model(tokens[:, :seq])
            if not fake:
                per_token_loss(logits, tokens[:, 1:]).mean()
        if fake:  # the loss's chunks are alike: trace one of each size (a fake cross-entropy costs ~20 ms)
            rows, vocab = micro * seq, logits.size(-1)
            full, rest = divmod(rows, LOSS_CHUNK_ROWS)
            extra = full * _chunk_bytes(LOSS_CHUNK_ROWS, vocab, logits.dtype) + (
                _chunk_bytes(rest, vocab, logits.dtype) if rest else 0)
            extra += rows * 8  # the targets: one contiguous int64 copy the chunks' cross-entropies keep
            return sum(seen.values()) + extra
    return sum(seen.values())


@functools.lru_cache(maxsize=64)
def _chunk_bytes(rows: int, vocab: int, dtype: torch.dtype) -> int:
    """What the trainer's loss saves for one chunk of ``rows`` logits (its fp32 log-softmax), beyond the logits and
    targets (saved by the forward already)."""
    import torch.nn.functional as F
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        logits = torch.zeros((rows, vocab), dtype=dtype, requires_grad=True)
        targets = torch.zeros(rows, dtype=torch.long)
        known = {logits.untyped_storage()._cdata, targets.untyped_storage()._cdata}
        seen: dict[int, int] = {}

        def pack(t):
            if t.untyped_storage()._cdata not in known:
                seen[t.untyped_storage()._cdata] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            F.cross_entropy(logits.float(), targets, reduction="none")
    return sum(seen.values())


def measured_state_bytes(model, optimizer) -> dict[str, int]:
    """Bytes of this rank's parameters, gradients and optimizer state as they are now (a DTensor counts its local
    shard): what ``estimate``'s params/grads/optimizer terms predict."""
    def local(t):
        return t.to_local() if hasattr(t, "to_local") else t

    params = [local(p) for p in model.parameters()]
    grads = [local(p.grad) for p in model.parameters() if p.grad is not None]
    states = [local(v) for st in optimizer.state.values() for v in st.values() if isinstance(v, torch.Tensor)]
    size = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
    return {"params": size(params), "grads": size(grads), "optimizer": size(states)}
