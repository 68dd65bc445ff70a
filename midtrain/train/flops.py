"""Training FLOPs per token and the GPUs' dense peak FLOP/s: what MFU divides. Pure: no torch, no I/O.

**FLOPs per token** (``flops_per_token``): 6 x the parameters that do a matmul per token, plus the attention
scores, as in PaLM (Chowdhery et al. 2022, appendix B: 6N + 12·L·H·Q·T, H·Q = n_embd, T = the sequence
length; the causal mask's halving is not taken, as PaLM does not). The input embedding is a lookup, not a
matmul, so its parameters are left out (Kaplan et al. 2020, "non-embedding" N, and PaLM's N); the output
projection (lm_head) is a matmul and counts. With tied embeddings the one shared matrix is the lm_head's and
counts once. Counting the lookup overstated MFU by ~45% at 70M and ~10% at 1B (issue 31).

**Peaks** (``PEAKS``, ``peak_flops``): dense (no 2:4 sparsity) tensor-core figures from NVIDIA's datasheets,
per GPU, per dtype: bf16, fp16, tf32 (fp32 matmuls at torch's "high"/"medium" precision) and fp32 (at
"highest"). A name is matched on ``torch.cuda.get_device_name()``, lowercased, most specific pattern first
("h100 pcie" before "h100", "gb200" before "b200"); an unknown GPU, or a dtype its row lacks, gives None, said as "MFU: unknown GPU
<name>" (``mfu_note``), never a NaN. Lightning's table (``get_available_flops``) matched H200 only by names
containing "sxm1"/"nvl1", while torch reports "NVIDIA H200", and gave its sparse figure.
"""

from __future__ import annotations

from typing import Optional

T = 1e12
# pattern in the lowercased device name -> dense peak FLOP/s per dtype; sources:
# A100: NVIDIA A100 Tensor Core GPU datasheet (2021), SXM and PCIe alike for tensor math.
# H100 SXM / PCIe / NVL: NVIDIA H100 Tensor Core GPU datasheet (2023): the sparse figures halved.
# H200 SXM / NVL: NVIDIA H200 Tensor Core GPU datasheet (2024): the sparse figures halved.
# GH200: its GPU is an H100/H200-class Hopper at H100 SXM clocks (NVIDIA GH200 datasheet, 2023).
# B200: NVIDIA HGX B200 datasheet (2024): the 8-GPU figures / 8, sparse ones halved (TF32 18 PF sparse, BF16 36 PF
#   sparse, FP32 600 TF). GB200: NVIDIA GB200 NVL72 datasheet (2024): the 72-GPU figures / 72, sparse halved.
# L40S: NVIDIA L40S datasheet (2023): the sparse figures halved.
PEAKS: tuple[tuple[str, dict[str, float]], ...] = (
    ("gh200", {"bf16": 989.4 * T, "fp16": 989.4 * T, "tf32": 494.7 * T, "fp32": 67 * T}),
    ("h200 nvl", {"bf16": 835.5 * T, "fp16": 835.5 * T, "tf32": 417.5 * T, "fp32": 60 * T}),
    ("h200", {"bf16": 989.4 * T, "fp16": 989.4 * T, "tf32": 494.7 * T, "fp32": 67 * T}),
    ("h100 nvl", {"bf16": 835.5 * T, "fp16": 835.5 * T, "tf32": 417.5 * T, "fp32": 60 * T}),
    ("h100 pcie", {"bf16": 756 * T, "fp16": 756 * T, "tf32": 378 * T, "fp32": 51 * T}),
    ("h100", {"bf16": 989.4 * T, "fp16": 989.4 * T, "tf32": 494.7 * T, "fp32": 67 * T}),
    ("a100", {"bf16": 312 * T, "fp16": 312 * T, "tf32": 156 * T, "fp32": 19.5 * T}),
    ("gb200", {"bf16": 2500 * T, "fp16": 2500 * T, "tf32": 1250 * T, "fp32": 80 * T}),
    ("b200", {"bf16": 2250 * T, "fp16": 2250 * T, "tf32": 1125 * T, "fp32": 75 * T}),
    ("l40s", {"bf16": 362.05 * T, "fp16": 362.05 * T, "tf32": 183 * T, "fp32": 91.6 * T}),
)


def non_embedding_params(n_params: int, padded_vocab_size: int, n_embd: int, tied: bool = False) -> int:
    """``n_params`` (every parameter, a tied matrix once) less the input embedding's, which is a lookup; with
    ``tied`` embeddings the shared matrix is the output projection's and stays."""
    return n_params if tied else n_params - padded_vocab_size * n_embd


def flops_per_token(matmul_params: int, n_layer: int, n_embd: int, seq_len: int) -> float:
    """Training FLOPs per token (forward and backward): 6 x ``matmul_params`` (``non_embedding_params``) plus the
    attention scores, 12 · n_layer · n_embd · seq_len (PaLM appendix B)."""
    return 6.0 * matmul_params + 12.0 * n_layer * n_embd * seq_len


def dtype_of(precision: str, float32_matmul_precision: str = "highest") -> Optional[str]:
    """The peak's dtype for a Fabric precision string: bf16-*, 16-* (fp16), 32-true (tf32 unless torch's float32
    matmul precision is "highest", then fp32); None for anything else (64-true)."""
    if precision.startswith("bf16"):
        return "bf16"
    if precision.startswith("16"):
        return "fp16"
    if precision.startswith("32"):
        return "fp32" if float32_matmul_precision == "highest" else "tf32"
    return None


def peak_flops(device_name: str, dtype: Optional[str]) -> Optional[float]:
    """Dense peak FLOP/s of one GPU named ``device_name`` (``torch.cuda.get_device_name()``) at ``dtype``; None for
    an unknown GPU or dtype."""
    name = device_name.lower()
    for pattern, row in PEAKS:
        if pattern in name:
            return row.get(dtype) if dtype else None
    return None


def mfu_note(device_name: str, dtype: Optional[str]) -> Optional[str]:
    """What the log says instead of an MFU it cannot compute (None when it can)."""
    if peak_flops(device_name, dtype) is not None:
        return None
    if not any(p in device_name.lower() for p, _ in PEAKS):
        return f"MFU: unknown GPU {device_name}"
    return f"MFU: no {dtype or 'known'} peak for {device_name}"


def mfu(tokens_per_s: float, flops_per_tok: float, peak: float, world: int) -> float:
    """Model FLOPs utilisation: achieved training FLOP/s over ``world`` GPUs' peak."""
    return tokens_per_s * flops_per_tok / (peak * world)
