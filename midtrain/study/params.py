"""A litgpt GPT's parameter count from its config, without torch.

`midtrain study plan` needs each size's parameter count for its FLOPs and GPU-hours estimate. Building the
model on the meta device costs ~6 s of imports (torch, litgpt) and ~1 GB, on login nodes, every time; the
count is arithmetic over the config's fields. ``gpt_param_count`` mirrors ``litgpt.model.GPT``'s modules
(tests/test_study_params.py checks it against ``sum(p.numel())`` of the real model).

Named configs (``model_name``) and the fields ``litgpt.Config.__post_init__`` derives (head_size,
n_query_groups, padded_vocab_size, intermediate_size ...) come from litgpt's own ``config.py``: it imports
no torch, but ``import litgpt.config`` runs ``litgpt/__init__`` which does, so the file is loaded on its
own (``litgpt_config_module``), from wherever litgpt is installed.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any, Mapping

_STANDALONE = "midtrain._litgpt_config"  # litgpt/config.py loaded outside its package


class Unsupported(ValueError):
    """An architecture this count does not know (it would rather say nothing than something wrong)."""


def litgpt_config_module():
    """litgpt's ``config`` module, torch-free: the real one if already imported, else its file loaded alone.

    None if litgpt is not installed."""
    for name in ("litgpt.config", _STANDALONE):
        if name in sys.modules:
            return sys.modules[name]
    try:
        pkg = importlib.util.find_spec("litgpt")  # finds the package without running its __init__
    except (ImportError, ValueError):
        pkg = None
    if pkg is None or not pkg.submodule_search_locations:
        return None
    path = Path(list(pkg.submodule_search_locations)[0]) / "config.py"
    try:
        spec = importlib.util.spec_from_file_location(_STANDALONE, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[_STANDALONE] = module  # dataclasses look their module up while the class is made
        spec.loader.exec_module(module)
        return module
    except Exception:  # noqa: BLE001 - a litgpt whose config.py needs its package: import it the slow way
        sys.modules.pop(_STANDALONE, None)
        try:
            import litgpt.config

            return litgpt.config
        except Exception:  # noqa: BLE001
            return None


def litgpt_config(model_name: str | None = None, model_config: Mapping[str, Any] | None = None):
    """A ``litgpt.Config`` (from litgpt's config.py, torch-free): ``model_config`` if given, else the named one.

    Raises ValueError / TypeError / AssertionError as litgpt does for a bad name or fields; LookupError
    without litgpt."""
    module = litgpt_config_module()
    if module is None:
        raise LookupError("litgpt is not installed")
    if model_config:
        return module.Config(**dict(model_config))
    if not model_name:
        raise ValueError("give model_name or model_config")
    return module.Config.from_name(model_name)


def _linear(n_in: int, n_out: int, bias: bool) -> int:
    return n_in * n_out + (n_out if bias else 0)


def _norm(c, size: int) -> int:
    """``config.norm_class(size)``: RMSNorm has a weight; torch's LayerNorm a weight and a bias, except for
    OLMo (``elementwise_affine=False``)."""
    if c.norm_class_name == "RMSNorm":
        return size
    if c.norm_class_name == "LayerNorm":
        return 0 if "OLMo" in c.name else 2 * size
    raise Unsupported(f"norm_class_name {c.norm_class_name!r}")


def _llama_mlp(c, intermediate_size: int | None = None) -> int:
    inter = intermediate_size or c.intermediate_size
    return 2 * _linear(c.n_embd, inter, c.bias) + _linear(inter, c.n_embd, c.bias)


def _mlp(c) -> int:
    name = c.mlp_class_name
    if name == "GptNeoxMLP":
        return _linear(c.n_embd, c.intermediate_size, c.bias) + _linear(c.intermediate_size, c.n_embd, c.bias)
    if name in ("LLaMAMLP", "GemmaMLP"):
        return _llama_mlp(c)
    if name == "LLaMAMoE":
        # the gate: nn.Linear(n_embd, n_expert, bias=False), or GroupedTopkRouter's weight of the same shape
        total = c.n_embd * c.n_expert + c.n_expert * _llama_mlp(c, c.moe_intermediate_size)
        if getattr(c, "n_shared_expert", None):
            total += _llama_mlp(c, c.moe_intermediate_size * c.n_shared_expert)
        return total
    raise Unsupported(f"mlp_class_name {name!r}")


def _attention(c) -> int:
    if getattr(c, "latent_attention", None):  # MultiheadLatentAttention (its two norms are always RMSNorm)
        return (_linear(c.n_embd, c.q_lora_rank, c.attn_bias) + c.q_lora_rank
                + _linear(c.q_lora_rank, c.n_head * c.qk_head_dim, c.bias)
                + _linear(c.n_embd, c.kv_lora_rank + c.qk_rope_head_dim, c.attn_bias) + c.kv_lora_rank
                + _linear(c.kv_lora_rank, c.n_query_groups * (c.qk_nope_head_dim + c.v_head_dim), c.bias)
                + _linear(c.n_head * c.v_head_dim, c.n_embd, c.bias))
    total = (_linear(c.n_embd, (c.n_head + 2 * c.n_query_groups) * c.head_size, c.bias or getattr(c, "attn_bias", False))
             + _linear(c.head_size * c.n_head, c.n_embd, c.bias))
    if getattr(c, "norm_qk", False):
        olmo2 = getattr(c, "norm_qk_type", "default") == "olmo2"
        total += _norm(c, c.n_head * c.head_size if olmo2 else c.head_size)
        total += _norm(c, c.n_query_groups * c.head_size if olmo2 else c.head_size)
    return total


def _block(c, index: int) -> int:
    if not c.parallel_residual and c.shared_attention_norm:
        raise Unsupported("non-parallel residual with a shared attention norm (litgpt refuses it)")
    total = _norm(c, c.n_embd) if getattr(c, "norm_1", True) else 0
    total += _attention(c)
    if getattr(c, "post_attention_norm", False):
        total += _norm(c, c.n_embd)
    if getattr(c, "norm_2", True) and not c.shared_attention_norm:
        total += _norm(c, c.n_embd)
    dense = getattr(c, "first_k_dense_replace", None)
    total += _llama_mlp(c) if dense is not None and index < dense else _mlp(c)
    if getattr(c, "post_mlp_norm", False):
        total += _norm(c, c.n_embd)
    return total


def gpt_param_count(c, tied: bool = False) -> int:
    """Parameters of ``litgpt.GPT(c)`` for a litgpt Config ``c`` (what ``sum(p.numel() for p in
    model.parameters())`` gives); ``tied``: ``wte`` shares ``lm_head``'s matrix (``train.tie_embeddings``), counted
    once. Raises ``Unsupported`` for a module this count does not know."""
    total = _linear(c.n_embd, c.padded_vocab_size, getattr(c, "lm_head_bias", False))  # lm_head
    total += 0 if tied else c.padded_vocab_size * c.n_embd  # wte
    total += sum(_block(c, i) for i in range(c.n_layer))
    return total + _norm(c, c.n_embd)  # ln_f


def params_of(config: Mapping[str, Any]) -> int | None:
    """The parameter count of a run config's model (``model_config``, else ``model_name``), or None when
    it has no model litgpt knows or an architecture this count does not."""
    try:
        tied = bool((config.get("train") or {}).get("tie_embeddings"))
        return gpt_param_count(litgpt_config(config.get("model_name"), config.get("model_config")), tied)
    except Exception:  # noqa: BLE001 - an estimate only: the plan says when it has none
        return None


def flops_per_token_of(config: Mapping[str, Any]) -> float | None:
    """Training FLOPs per token of a run config's model at its ``train.max_seq_length`` (else the block size):
    ``midtrain.train.flops.flops_per_token``, the same count the trainer's MFU uses (the input embedding left
    out); None when the model is not one this count knows."""
    from midtrain.train.flops import flops_per_token, non_embedding_params

    try:
        tied = bool((config.get("train") or {}).get("tie_embeddings"))
        c = litgpt_config(config.get("model_name"), config.get("model_config"))
        seq = int((config.get("train") or {}).get("max_seq_length") or c.block_size)
        return flops_per_token(non_embedding_params(gpt_param_count(c, tied), c.padded_vocab_size, c.n_embd, tied),
                               c.n_layer, c.n_embd, seq)
    except Exception:  # noqa: BLE001 - an estimate only: the plan says when it has none
        return None
