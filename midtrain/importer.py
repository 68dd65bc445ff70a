"""``midtrain import``: a Hugging Face checkpoint folder -> a midtrain checkpoint at a known step.

Public intermediate checkpoints (Pythia's ``stepN`` revisions, OLMo 1 and 2's, SmolLM2's, TinyLlama's,
Amber's) are what most researchers can afford to midtrain. ``FAMILIES`` lists the HF model types taken:
GPT-NeoX, OLMo 2, Llama (SmolLM2, TinyLlama, Amber, Llama 3.2) and OLMo 1. This turns one into a checkpoint that ``resume_from`` (a midtrain arm),
``midtrain sft`` and ``midtrain evaluate export-hf`` accept:

- The weights go through litgpt's own converters (``litgpt.scripts.convert_hf_checkpoint``'s
  ``copy_weights_gpt_neox`` / ``copy_weights_olmo2`` / ``copy_weights_hf_llama`` and their weight maps),
  into the model config
  of a *run config* whose ``train:`` describes the original schedule, so a run resuming from the
  import continues the LR curve from step ``S``.
- The HF ``config.json`` is matched against that model config (vocabulary, layers, heads, widths,
  norms, rotary settings and llama3's RoPE scaling, GQA groups, the structure litgpt builds, tied
  embeddings against ``train.tie_embeddings``): a mismatch is one line naming both values; a key the
  importer does not know is refused. Pythia's padded vocabulary
  (50,304 rows for a 50,277-token tokenizer) is litgpt's ``padded_vocab_size``, as in litgpt.
- An HF checkpoint holds no optimizer state and no data position: the AdamW moments start fresh
  and every source starts its seeded order. Both are recorded in the checkpoint's data notes
  (``training_state.json`` and every later checkpoint and metrics file that copies them) and said
  at start-up; ``train.rewarm_steps`` ramps the LR back up over N steps as a documented remedy.
- The tokenizer files (``tokenizer.json``, ``tokenizer_config.json``) are copied beside the weights.

Input: ``config.json`` + ``*.safetensors`` (or ``pytorch_model*.bin``), sharded or not, as
``save_pretrained`` writes it or as a hub snapshot sits on disk. Nothing is written unless the whole
import succeeds (a hidden ``.NAME.partial`` folder, renamed at the end).

Size (~610 lines, over the house's ~450): one job, an import checked end to end (config keys, shapes, revision
names and steps per family, the schedule's phase, the tokenizer); the families are one table (``FAMILIES``).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Optional

from midtrain.errors import ConfigError

@dataclass(frozen=True)
class Family:
    """One HF ``model_type`` that ``import`` takes. Adding a family is one entry in ``FAMILIES``."""

    models: str
    """The public models of this type (said in messages and the families table of docs/public-checkpoints.md)."""
    converter: str
    """litgpt.scripts.convert_hf_checkpoint's copy function for it (its weight map; never a hand-written one)."""
    qkv: bool
    """The converter takes a holder in which split q/k/v projections are put back together."""
    compared: tuple
    """(config.json key, litgpt Config attribute) pairs that must be equal (read through ``hf_value``)."""
    structure: dict
    """litgpt Config attribute -> the value this family's computation needs (norm kind, MLP, biases, ...)."""
    tied: bool = True
    """Tied input/output embeddings (``tie_word_embeddings``) can be imported (``train.tie_embeddings: true``)."""


_LLAMA_SHAPE = (("vocab_size", "padded_vocab_size"), ("num_hidden_layers", "n_layer"),
                ("num_attention_heads", "n_head"), ("num_key_value_heads", "n_query_groups"),
                ("hidden_size", "n_embd"), ("intermediate_size", "intermediate_size"), ("head_dim", "head_size"),
                ("rope_theta", "rope_base"), ("rotary_pct", "rotary_percentage"))
# litgpt Config fields every imported family computes with their default (none of them has softcapping, sliding
# windows, condensed or interleaved RoPE, scaled embeddings, experts or latent attention)
_COMMON = {"lm_head_bias": False, "shared_attention_norm": False, "scale_embeddings": False,
           "attention_logit_softcapping": None, "final_logit_softcapping": None, "sliding_window_size": None,
           "sliding_window_indices": None, "attention_scores_scalar": None, "n_expert": 0, "rope_condense_ratio": 1,
           "rope_interleave": False, "rope_local_base_freq": None, "rope_indices": None, "latent_attention": None,
           "first_k_dense_replace": None}
_PLAIN = {**_COMMON, "bias": False, "attn_bias": False, "parallel_residual": False, "norm_qk": False,
          "post_attention_norm": False, "post_mlp_norm": False, "norm_1": True, "norm_2": True,
          "mlp_class_name": "LLaMAMLP"}
FAMILIES = {
    "gpt_neox": Family("Pythia", "copy_weights_gpt_neox", False, (
        ("vocab_size", "padded_vocab_size"), ("num_hidden_layers", "n_layer"), ("num_attention_heads", "n_head"),
        ("hidden_size", "n_embd"), ("intermediate_size", "intermediate_size"), ("rotary_pct", "rotary_percentage"),
        ("use_parallel_residual", "parallel_residual"), ("layer_norm_eps", "norm_eps"), ("rope_theta", "rope_base")),
        {**_COMMON, "norm_class_name": "LayerNorm", "mlp_class_name": "GptNeoxMLP", "rope_adjustments": None,
         "norm_qk": False, "post_attention_norm": False, "post_mlp_norm": False}, tied=False),
    "olmo2": Family("OLMo 2", "copy_weights_olmo2", True, (
        ("vocab_size", "padded_vocab_size"), ("num_hidden_layers", "n_layer"), ("num_attention_heads", "n_head"),
        ("num_key_value_heads", "n_query_groups"), ("hidden_size", "n_embd"),
        ("intermediate_size", "intermediate_size"), ("rms_norm_eps", "norm_eps"), ("rope_theta", "rope_base"),
        ("rotary_pct", "rotary_percentage")),
        {**_COMMON, "norm_class_name": "RMSNorm", "mlp_class_name": "LLaMAMLP", "norm_qk": True,
         "norm_qk_type": "olmo2", "post_attention_norm": True, "post_mlp_norm": True, "parallel_residual": False,
         "rope_adjustments": None}),
    "llama": Family("SmolLM2, TinyLlama, Amber, Llama 3.2", "copy_weights_hf_llama", True,
                    (*_LLAMA_SHAPE, ("rms_norm_eps", "norm_eps")), {**_PLAIN, "norm_class_name": "RMSNorm"}),
    # OLMo 1's LayerNorm has no weights: litgpt builds it so (elementwise_affine=False) for a LayerNorm config whose
    # name holds "OLMo" (Config.norm_class), and its eps is transformers' fixed 1e-5
    "olmo": Family("OLMo 1", "copy_weights_hf_llama", True, _LLAMA_SHAPE,
                   {**_PLAIN, "norm_class_name": "LayerNorm", "norm_eps": 1e-5}),
}
_ALIASES = {"rotary_pct": ("rotary_pct", "partial_rotary_factor"), "rope_theta": ("rope_theta", "rotary_emb_base")}
# what transformers' config classes take for a key a config.json omits (LlamaConfig: rms_norm_eps 1e-6,
# rope_theta 10000; OlmoConfig: rope_theta 10000; both: num_key_value_heads = num_attention_heads)
_DEFAULTS = {"olmo2": {"rotary_pct": 1.0}, "llama": {"rotary_pct": 1.0, "rms_norm_eps": 1e-6, "rope_theta": 10000.0},
             "olmo": {"rotary_pct": 1.0, "rope_theta": 10000.0}}


def hf_value(hf: dict, key: str):
    """A config.json value under any of its names, top level or in ``rope_parameters`` (None: absent)."""
    for name in _ALIASES.get(key, (key,)):
        for where in (hf, hf.get("rope_parameters") or {}, hf.get("rope_scaling") or {}):
            if isinstance(where, dict) and where.get(name) is not None:
                return where[name]
    if key == "num_key_value_heads" and hf.get("model_type") in ("llama", "olmo"):
        return hf.get("num_attention_heads")
    return _DEFAULTS.get(hf.get("model_type"), {}).get(key)


NOTE = "optimizer state: fresh (imported from HF)"

# Every other config.json key, per family: what litgpt's model computes for that key's value (compared:
# another value is refused), or why the key changes nothing litgpt computes (harmless). A key in neither
# is refused: it may change the function, and an import that ignored it would silently be another model.
def _gelu_act(config, tied) -> tuple:
    return ("gelu",) if config.gelu_approximate == "none" else ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def _rope(key: str):
    """A llama3 RoPE-scaling value as litgpt computes it (``Config.rope_adjustments``; None: plain RoPE)."""
    ours = {"factor": "factor", "low_freq_factor": "low_freq_factor", "high_freq_factor": "high_freq_factor",
            "original_max_position_embeddings": "original_max_seq_len"}[key]
    return lambda c, tied: ((c.rope_adjustments or {}).get(ours),)


_NO_DROPOUT = (lambda c, tied: (0, 0.0), "dropout (litgpt trains without)")
_TIED = (lambda c, tied: (bool(tied),), "tied input/output embeddings (the run config's train.tie_embeddings)")
_SILU = (lambda c, tied: ("silu",), "the MLP's activation (litgpt's LLaMAMLP: SiLU)")
_PLAIN_ROPE = {"rope_type": (lambda c, tied: ("default",), "the rotary scheme (litgpt: plain RoPE here)"),
               "rope_scaling": (lambda c, tied: (None,), "rotary scaling (litgpt: none here)")}
_LLAMA_REQUIRED = {
    "hidden_act": _SILU, "attention_dropout": _NO_DROPOUT, "tie_word_embeddings": _TIED,
    "attention_bias": (lambda c, tied: (False,), "biases in the q/k/v/o projections (litgpt's Llama: none)"),
    "mlp_bias": (lambda c, tied: (False,), "biases in the MLP (litgpt's LLaMAMLP: none)"),
    "pretraining_tp": (lambda c, tied: (1,), "transformers' sliced matmuls of Llama 2's tensor-parallel layout"),
    "rope_type": (lambda c, tied: ("llama3",) if c.rope_adjustments else ("default",),
                  "the rotary scheme (litgpt: rope_adjustments, llama3's, or plain RoPE)"),
    **{k: (_rope(k), f"llama3 RoPE scaling's {k} (litgpt: rope_adjustments)") for k in (
        "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")},
}
REQUIRED = {  # key -> (function of (the litgpt config, tied embeddings) -> accepted values, what it decides)
    "gpt_neox": {
        "hidden_act": (_gelu_act, "the MLP's activation (litgpt: GELU, gelu_approximate)"),
        "attention_bias": (lambda c, tied: (bool(c.bias),), "biases in the attention projections (litgpt: bias)"),
        "attention_dropout": _NO_DROPOUT, "hidden_dropout": _NO_DROPOUT,
        "tie_word_embeddings": (lambda c, tied: (False,), "tied input/output embeddings (litgpt's GPT-NeoX "
                                "converter maps embed_out alone)"),
        **_PLAIN_ROPE,
    },
    "olmo2": {
        "hidden_act": _SILU, "attention_dropout": _NO_DROPOUT, "tie_word_embeddings": _TIED,
        "attention_bias": (lambda c, tied: (bool(c.bias),), "biases in the attention projections (litgpt: bias)"),
        **_PLAIN_ROPE,
    },
    "llama": _LLAMA_REQUIRED,
    "olmo": {**_LLAMA_REQUIRED,
             "clip_qkv": (lambda c, tied: (None,), "OLMo's clipping of q/k/v activations (litgpt does not clip)")},
}
HARMLESS = {
    "architectures": "names the HF class; model_type decides the import",
    "model_type": "decides the import (checked above)",
    "transformers_version": "the writer's version",
    "torch_dtype": "the stored dtype; the run config's precision decides the compute",
    "dtype": "the stored dtype (transformers 5's name)",
    "use_cache": "HF generation's KV cache",
    "bos_token_id": "the tokenizer's business; the weights do not depend on it",
    "eos_token_id": "the tokenizer's business; the weights do not depend on it",
    "pad_token_id": "the tokenizer's business; the weights do not depend on it",
    "initializer_range": "the init of a fresh model; an import loads trained weights",
    "classifier_dropout": "only the sequence-classification head reads it",
    "is_decoder": "an encoder-decoder flag; the causal LM is a decoder either way",
    "max_position_embeddings": "the length HF precomputes RoPE for; litgpt's block_size bounds the run",
    "_name_or_path": "where it was loaded from",
    "rope_parameters": "holds rope_theta / partial_rotary_factor / rope_type and llama3's scaling, each checked",
    "is_llama_config": "a flag SmolLM2's nanotron export writes; transformers' Llama does not read it",
    "rope_interleaved": "a flag SmolLM2's nanotron export writes; transformers' Llama does not read it (its "
                        "weights are in HF's rotate-half layout, which litgpt's converter expects)",
}
_NESTED = {"llama": ("rope_parameters", "rope_scaling"), "olmo": ("rope_parameters", "rope_scaling")}


def check_config_keys(hf: dict, config, tied: bool = False) -> None:
    """Every key of config.json is compared (``Family.compared``), required to be what litgpt computes
    (``REQUIRED``) or known to change nothing (``HARMLESS``); any other key is refused in one line (issue 27,
    class 8: `hidden_act: relu` imported with exit 0 and 0.14 logit error). Llama-type families keep llama3 RoPE
    scaling in ``rope_scaling`` (transformers 4) or ``rope_parameters`` (5): each value inside is checked."""
    kind = hf["model_type"]
    compared = {k for k, _ in FAMILIES[kind].compared}
    compared |= {alias for k in compared for alias in _ALIASES.get(k, ())}
    required = REQUIRED[kind]
    holders = _NESTED.get(kind, ("rope_parameters",))
    nested = [(k, v, f"{h}.{k}") for h in holders if isinstance(hf.get(h), dict)  # (the scheme first: clearest)
              for k, v in sorted(hf[h].items(), key=lambda kv: kv[0] not in ("rope_type", "type"))]
    for key, value, shown in [*((k, v, k) for k, v in hf.items()), *nested]:
        if key in compared or key in HARMLESS or (key in holders and (value is None or isinstance(value, dict))):
            continue
        if key in required:
            accepted, what = required[key]
            ok = accepted(config, tied)
            if value not in ok:
                raise ConfigError("--hf_dir", f"config.json {shown}: {value!r}, and the run's model computes "
                                  f"{ok[0]!r} ({what}): importing it would give another function")
            continue
        raise ConfigError("--hf_dir", f"config.json has {shown}: {value!r}, a key the importer does not know "
                          f"for {kind}: it may change what the model computes, so it is refused rather than "
                          "ignored (known keys: midtrain/importer.py REQUIRED / HARMLESS)")
    extra = sorted(set(config.rope_adjustments or {}) - {"factor", "low_freq_factor", "high_freq_factor",
                                                          "original_max_seq_len"})
    if extra:
        raise ConfigError("model_config.rope_adjustments", f"has {extra[0]!r}: litgpt then computes another RoPE "
                          f"scaling than llama3's, which is all a {kind} checkpoint's config.json can hold here")
    if kind in _NESTED and config.rope_adjustments and not any(
            isinstance(hf.get(h), dict) and hf[h].get("rope_type", hf[h].get("type")) == "llama3" for h in holders):
        raise ConfigError("--hf_dir", "config.json has no llama3 RoPE scaling, and the run's model has "
                          f"rope_adjustments {config.rope_adjustments}: importing it would give another function")


def read_hf_config(hf_dir: Path) -> dict:
    path = Path(hf_dir) / "config.json"
    if not Path(hf_dir).is_dir():
        raise ConfigError("--hf_dir", f"{hf_dir} is not a folder")
    if not path.is_file():
        raise ConfigError("--hf_dir", f"{hf_dir} has no config.json (a Hugging Face checkpoint folder, as "
                          "save_pretrained writes it)")
    try:
        cfg = json.loads(path.read_text())
    except ValueError as e:
        raise ConfigError(str(path), f"not JSON ({e})") from None
    if cfg.get("model_type") not in FAMILIES:
        known = "; ".join(f"{k} ({f.models})" for k, f in FAMILIES.items())
        raise ConfigError("--hf_dir", f"model_type {cfg.get('model_type')!r} ({', '.join(cfg.get('architectures') or [])})"
                          f" cannot be imported: supported are {known}")
    return cfg


# litgpt chooses its converters by the config's name before its MLP class (convert_lit_checkpoint, and
# convert_hf_checkpoint alike): a Llama-type model named like one of these would be exported as another family.
# A name holding "Gemma" also gives RMSNorm a unit offset (Config.norm_class) and makes the export drop lm_head.
_NAMED_FAMILIES = (("falcon", "Falcon"), ("gemma", "Gemma"), ("phi", "Phi"),
                   ("qwen2.5", "Qwen 2.5"), ("qwq", "QwQ"), ("olmo-2-", "OLMo 2"), ("qwen3", "Qwen 3"))


def litgpt_family(name: str) -> Optional[str]:
    """The family litgpt's converters take a model of this config name for (None: by its MLP class)."""
    low = name.lower()
    for prefix, family in _NAMED_FAMILIES:
        if (prefix in low) if prefix in ("falcon", "gemma") else low.startswith(prefix):
            return family
    return None


def check_shapes(hf: dict, config, tied: bool = False) -> None:
    """The HF config against the run's litgpt model config (and the run's ``train.tie_embeddings``): one line
    for the first mismatch."""
    kind = hf["model_type"]
    family = FAMILIES[kind]
    for hf_key, attr in family.compared:
        theirs = hf_value(hf, hf_key)
        if theirs is None:
            continue
        ours = getattr(config, attr)
        same = abs(float(ours) - float(theirs)) <= 1e-12 * max(1.0, abs(float(theirs))) if isinstance(
            theirs, float) or isinstance(ours, float) else ours == theirs
        if not same:
            raise ConfigError("model_config", f"{attr} is {ours!r}, but the HF checkpoint's {hf_key} is {theirs!r}: "
                              "the run config describes another model")
    for attr, needed in family.structure.items():
        if getattr(config, attr, None) != needed:
            raise ConfigError(f"model_config.{attr}", f"{getattr(config, attr, None)!r}, but a {family.models} "
                              f"checkpoint ({kind}) computes with {attr} {needed!r}: the run config describes another "
                              "model")
    named = litgpt_family(config.name)
    if kind == "olmo2" and named != "OLMo 2":
        raise ConfigError("model_config.name", f"{config.name!r}: litgpt chooses OLMo 2's converters by a name "
                          "starting with OLMo-2- (export-hf would map the weights as another architecture)")
    if kind in ("llama", "olmo") and named is not None:
        raise ConfigError("model_config.name", f"{config.name!r}: litgpt's converters take a model of this name for "
                          f"{named} (they choose by name), so export-hf would map these weights as another family")
    if kind == "olmo" and "OLMo" not in config.name:
        raise ConfigError("model_config.name", f"{config.name!r}: OLMo 1's LayerNorm has no weights, which litgpt "
                          "builds only for a LayerNorm model whose name holds 'OLMo' (e.g. model_name: OLMo-1B-hf)")
    if hf.get("tie_word_embeddings") and not family.tied:
        raise ConfigError("--hf_dir", f"tied input/output embeddings in a {kind} checkpoint are not supported "
                          f"(litgpt's {family.converter} maps the output embedding alone)")
    if bool(hf.get("tie_word_embeddings", False)) != bool(tied):  # (transformers' default: untied)
        raise ConfigError("train.tie_embeddings", f"{tied}, but the HF checkpoint's tie_word_embeddings is "
                          f"{bool(hf.get('tie_word_embeddings', False))}: set train.tie_embeddings: "
                          f"{str(bool(hf.get('tie_word_embeddings', False))).lower()} in the run config (tied "
                          "embeddings are one matrix; untied, a run would train two)")
    check_config_keys(hf, config, tied)


def weight_files(hf_dir: Path) -> list[Path]:
    """The checkpoint's weight files: from an index (sharded) or every *.safetensors / *.bin."""
    hf_dir = Path(hf_dir)
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (hf_dir / index).is_file():
            files = sorted({hf_dir / f for f in json.loads((hf_dir / index).read_text())["weight_map"].values()})
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise ConfigError("--hf_dir", f"{index} lists {missing[0]}, which is not in {hf_dir}")
            return files
    files = sorted(hf_dir.glob("*.safetensors")) or sorted(f for f in hf_dir.glob("*.bin")
                                                           if f.name != "training_args.bin")
    if not files:
        raise ConfigError("--hf_dir", f"{hf_dir} holds no *.safetensors or pytorch_model*.bin weights")
    return files


def convert_weights(hf_dir: Path, hf: dict, config) -> dict:
    """litgpt state dict from the HF weights, through litgpt's converter for the architecture."""
    import torch
    from litgpt.scripts import convert_hf_checkpoint as conv
    from litgpt.utils import lazy_load

    family = FAMILIES[hf["model_type"]]
    name = family.converter
    copy = partial(getattr(conv, name), config, {}) if family.qkv else partial(getattr(conv, name), config)
    files = weight_files(hf_dir)
    # litgpt's Llama and OLMo 2 converters give lm_head the input embedding after *each file* that lacks one (their
    # tied case): the file holding the embedding goes first, so that a later file's own lm_head is never preceded
    # by a KeyError or a copy
    first = _file_holding(hf_dir, "model.embed_tokens.weight")
    if first is not None and first in files:
        files = [first] + [f for f in files if f != first]
    sd: dict[str, Any] = {}
    seen: set[str] = set()
    for f in files:
        weights = conv.load_safetensors(f) if f.suffix == ".safetensors" else lazy_load(f)
        seen |= set(weights)
        try:
            copy(sd, weights, saver=None, dtype=torch.float32)
        except KeyError as e:
            raise ConfigError("--hf_dir", f"{f.name} holds {e.args[0]!r}, which litgpt's {name} does not map "
                              "(another architecture than its config.json says?)") from None
    if family.qkv and not hf.get("tie_word_embeddings", False) and "lm_head.weight" not in seen:
        raise ConfigError("--hf_dir", "untied (tie_word_embeddings false), but the weights hold no lm_head.weight: "
                          "litgpt's converter would make the input embedding the output layer, where transformers "
                          "starts a random one; the checkpoint is incomplete")
    return {k: (v if isinstance(v, torch.Tensor) else conv.load_param(v, k, torch.float32)).contiguous()
            for k, v in sd.items()}


def _file_holding(hf_dir: Path, weight: str) -> Optional[Path]:
    """The file a sharded checkpoint's index names for ``weight`` (None: not sharded, or not named)."""
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (Path(hf_dir) / index).is_file():
            held = json.loads((Path(hf_dir) / index).read_text()).get("weight_map", {}).get(weight)
            return Path(hf_dir) / held if held else None
    return None


def import_hf(hf_dir: Path, run_config: Path, step: Optional[int], out: Path, pretraining_data: str | None = None,
              revision: Optional[str] = None, stage: int = 1) -> dict:
    """Write ``out`` (a midtrain checkpoint at ``step``); returns a summary. See the module docstring.
    ``pretraining_data`` declares what the checkpoint was pretrained on (e.g. "the Pile, deduplicated"),
    recorded beside the import so that nothing is compared as if it came from another corpus. ``revision``: the
    published revision the folder holds (default: the folder's name); ``resolve_step`` reads the step from it
    where the family's names encode one, and checks a given ``step`` and the schedule's tokens against it.
    ``stage``: the training stage the run config's schedule describes (OLMo 2's stage-2 revisions restart their
    steps: one of them against a stage-1 schedule is refused)."""
    import torch
    import yaml
    from litgpt import GPT
    from litgpt.utils import save_config

    from midtrain.atomic import check_writable_dir, fsync_tree
    from midtrain.train import checkpoint as ckpt

    hf_dir, out = Path(hf_dir), Path(out)
    hf = read_hf_config(hf_dir)
    if out.exists():
        raise ConfigError("--out", f"{out} already exists (checkpoints are never overwritten)")
    check_writable_dir(out.parent, "--out")
    model_config, train, raw = _run_model_and_schedule(run_config)
    seq = train.max_seq_length or model_config.block_size
    horizon = train.total_steps(1, 1, seq)
    step, named = resolve_step(step, revision, hf_dir, train.global_batch_size * seq, stage)
    if step < 0:
        raise ConfigError("--step", f"must be >= 0, got {step}")
    if horizon is None:
        raise ConfigError(f"{run_config}: train.max_steps", "the run config must give the original schedule's length "
                          "(train.max_steps): the LR continues from where --step sits on it")
    if step >= horizon:
        raise ConfigError("--step", f"{step:,} is not before the end of the schedule (train.max_steps {horizon:,} in "
                          f"{run_config}): nothing would be left to train")
    lr, phase = start_lr(train, raw, horizon, step)  # (before anything is written: a bad schedule is one line)
    tied = bool(train.tie_embeddings)
    check_shapes(hf, model_config, tied)
    tok_vocab = _tokenizer_vocab(hf_dir)
    if tok_vocab is not None and tok_vocab > model_config.padded_vocab_size:
        raise ConfigError("--hf_dir", f"the tokenizer has {tok_vocab:,} tokens, more than the model's "
                          f"padded_vocab_size {model_config.padded_vocab_size:,}")
    sd = convert_weights(hf_dir, hf, model_config)
    model = GPT(model_config)
    if tied:
        from midtrain.train.parallel import tie_embeddings

        tie_embeddings(model)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ConfigError("model_config", f"the converted weights do not fit the run's model "
                          f"({' '.join(str(e).split())[:240]})") from None
    note = {"imported": f"Hugging Face checkpoint {hf_dir.resolve()} ({hf['model_type']})", "at_step": step,
            "optimizer": NOTE, "data_restarted": True,
            "pretraining_data": pretraining_data or "not declared (--pretraining_data)",
            **({"revision": named["name"]} if named else {})}
    tokens = step * train.global_batch_size * (train.max_seq_length or model_config.block_size)
    data_state = {"mixer": None, "imported": "hf", "notes": [note]}
    partial_dir = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial_dir, ignore_errors=True)
    partial_dir.mkdir(parents=True)
    try:
        # what identifies these weights (a study hashes its steps with it: another import at the same path re-runs them)
        note["weights_sha256"] = weights_sha256(model.state_dict())
        torch.save({"model": model.state_dict(), "train_dataloader": data_state, "iter_num": 0, "step_count": step,
                    "tokens": tokens}, partial_dir / ckpt.MODEL_FILE)
        save_config(model_config, partial_dir)
        ckpt.copy_side_files(hf_dir, partial_dir)  # tokenizer files and config.json (for export-hf)
        (partial_dir / ckpt.STATE_FILE).write_text(json.dumps(
            {"step": step, "iter_num": 0, "tokens": tokens, "end_step": None, "segment_start": None,
             "source_tokens": {}, "data": data_state}, indent=1))
        (partial_dir / "hyperparameters.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        fsync_tree(partial_dir)
        partial_dir.rename(out)
    except BaseException:
        shutil.rmtree(partial_dir, ignore_errors=True)
        raise
    return {"out": str(out), "step": step, "horizon": horizon, "model_type": hf["model_type"],
            "parameters": sum(p.numel() for p in model.parameters()), "tokenizer": tok_vocab, "note": note,
            "revision": named, "lr": lr, "phase": phase}


def start_lr(train, raw: dict, horizon: int, step: int):
    """(the LR the run config ``raw``'s schedule gives at ``step``, its phase; ``study plan`` prints the same); a
    schedule the trainer would refuse is one line here too."""
    from midtrain.train.footprint import schedule_lr
    from midtrain.train.startup import optimizer_lr

    peak = train.max_lr if train.max_lr is not None else optimizer_lr(raw.get("optimizer", "AdamW"))
    if peak is not None and train.min_lr > peak:
        raise ConfigError("train.min_lr", f"{train.min_lr} is above the peak LR {peak}")
    if not horizon:
        return None, "no schedule length"
    try:
        return (schedule_lr(train, peak, horizon, step) if peak else None), schedule_phase(train, horizon, step)
    except ValueError as e:
        raise ConfigError("train", f"the schedule is invalid ({e})") from None


def resolve_step(step: Optional[int], revision: Optional[str], hf_dir: Path, tokens_per_step: int,
                 stage: int = 1):
    """(the step, what the revision name said) from ``--step`` and the revision name (``--revision``, else the
    folder's name): the name's step where ``--step`` is not given; a given one must agree with it (a rounded name,
    TinyLlama's, within its rounding); and the tokens the schedule puts at that step must agree with the name's."""
    import dataclasses

    from midtrain import revisions

    where = "--revision" if revision else "the folder name"
    name = revision or Path(hf_dir).resolve().name
    rev = revisions.parse(name)
    said = None if rev is None else {"name": name, **dataclasses.asdict(rev)}
    if rev is None and revision:  # said, recorded, and said to be unchecked
        unchecked = revisions.Revision(None, None, None, note="no published naming scheme: nothing in it was checked")
        said = {"name": name, **dataclasses.asdict(unchecked)}
    if rev is not None and rev.stage is not None and rev.stage != stage:
        raise ConfigError("--stage", f"{stage}, but {where} {name!r} is a stage-{rev.stage} revision, whose steps "
                          f"count from that stage's start: import it with a run config describing stage "
                          f"{rev.stage}'s schedule and --stage {rev.stage}")
    if step is None:
        if rev is None or rev.step is None:
            why = f": {rev.note}" if rev is not None and rev.note else " of a published naming scheme"
            raise ConfigError("--step", f"not given, and {where} {name!r} names no step{why} (give --step, the "
                              "optimizer step the checkpoint was saved at)")
        step = rev.step
        said["step_from_name"] = True
    elif rev is not None and rev.step is not None and abs(rev.step - step) > (500 if rev.rounded else 0):
        raise ConfigError("--step", f"{step:,}, but {where} {name!r} is step {rev.step:,}"
                          f"{' (rounded to thousands)' if rev.rounded else ''}: give the revision it is (--revision) "
                          "or the step it was saved at")
    if rev is not None and not revisions.tokens_agree(rev, step * tokens_per_step, tokens_per_step):
        field = "train.global_batch_size" if rev.step is not None else "--step"
        raise ConfigError(field, f"the run config's {tokens_per_step:,} tokens per step put step {step:,} at "
                          f"{step * tokens_per_step / 1e9:,.1f}B tokens, but {where} {name!r} says "
                          f"{rev.tokens / 1e9:,.1f}B: either the step or the schedule's batch (global_batch_size x "
                          "max_seq_length) is not this checkpoint's")
    return step, said


def schedule_phase(train, horizon: int, step: int) -> str:
    """Where ``step`` sits on the run config's schedule: warmup, then stable/decay (wsd) or decay (cosine)."""
    from midtrain.train.schedules import Schedule, warmup_steps

    warm = warmup_steps(horizon, train.lr_warmup_steps, train.lr_warmup_fraction)
    if step < warm:
        return f"warmup ({step:,} of {warm:,} steps)"
    if train.lr_scheduler == "wsd":
        start = Schedule("wsd", 1.0, 0.0, horizon, warm, train.stable_steps, train.decay_fraction).decay_start
        return (f"stable (WSD's decay starts at step {start:,})" if step < start else
                f"decay (WSD's decay, from step {start:,} to {horizon:,})")
    return f"{train.lr_scheduler} ({step / horizon:.0%} of {horizon:,} steps)"


def weights_sha256(state_dict: dict) -> str:
    """sha256 over the tensors (name, dtype, shape, bytes) in name order."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
    return h.hexdigest()


def _tokenizer_vocab(hf_dir: Path) -> int | None:
    path = Path(hf_dir) / "tokenizer.json"
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path)).get_vocab_size(with_added_tokens=True)
    except Exception as e:  # a damaged tokenizer.json: say which file
        raise ConfigError(str(path), f"not a tokenizers file ({type(e).__name__}: {str(e)[:120]})") from None


def _run_model_and_schedule(run_config: Path):
    """(litgpt Config, TrainArgs, the raw YAML mapping) of a run config, as `midtrain pretrain` reads them."""
    import yaml

    from litgpt import Config

    from midtrain.train.args import TrainArgs
    from midtrain.train.startup import resolve_model_config

    path = Path(run_config)
    if not path.is_file():
        raise ConfigError("--config", f"{run_config} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError("--config", f"{run_config} is not YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError("--config", f"{run_config} is not a YAML mapping")
    mc = raw.get("model_config")
    if mc is not None and not isinstance(mc, dict):
        raise ConfigError(f"{run_config}: model_config", "expected a mapping of litgpt Config fields")
    try:
        model_config = resolve_model_config(raw.get("model_name"), Config(**mc) if mc else None)
    except TypeError as e:
        raise ConfigError(f"{run_config}: model_config", str(e)) from None
    known = set(TrainArgs.__dataclass_fields__)
    train_raw = raw.get("train") or {}
    unknown = sorted(set(train_raw) - known)
    if unknown:
        raise ConfigError(f"{run_config}: train.{unknown[0]}", "is not a train option")
    try:
        train = TrainArgs(**train_raw)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{run_config}: train", str(e)) from None
    return model_config, train, raw


def format_import(summary: dict) -> str:
    rev = summary.get("revision")
    named = "" if not rev else (
        f"  revision {rev['name']!r}" + (f" ({rev['scheme']}'s names): " if rev["scheme"] else ": ")
        + (f"step {rev['step']:,}{' (rounded)' if rev['rounded'] else ''}" if rev["step"] is not None else "no step")
        + (f", {rev['tokens'] / 1e9:,.1f}B tokens (agrees with the schedule)" if rev["tokens"] else "")
        + (", the step read from it" if rev.get("step_from_name") else "") + (f"; {rev['note']}" if rev["note"] else "")
        + "\n")
    lr = "" if summary.get("lr") is None else (f"  LR at step {summary['step']:,}: {summary['lr']:.3g}, "
                                               f"{summary['phase']}\n")
    return (f"imported {summary['model_type']} ({summary['parameters'] / 1e6:.1f}M parameters) at step "
            f"{summary['step']:,} of a {summary['horizon']:,}-step schedule -> {summary['out']}\n" + named + lr +
            f"  {NOTE}: AdamW's moments start at zero (train.rewarm_steps N ramps the LR back up over N steps)\n"
            f"  data position: not in an HF checkpoint; every source starts its seeded order\n"
            f"  pretraining data: {summary['note']['pretraining_data']}"
            + ("" if summary["tokenizer"] is None else f"\n  tokenizer: {summary['tokenizer']:,} tokens (copied)"))


def import_checkpoint(hf_dir: str, config: str, out: str, step: Optional[int] = None, revision: Optional[str] = None,
                      stage: int = 1, pretraining_data: Optional[str] = None) -> int:
    """Import a Hugging Face checkpoint at a step of a run config's schedule; optimizer moments start fresh.

    Families: Pythia, OLMo 1 and 2, SmolLM2, TinyLlama, Amber, Llama 3.2. The step is that of the schedule in
    --config's train: section, and the fresh optimizer moments are recorded.

    Args:
        hf_dir: config.json + *.safetensors / pytorch_model*.bin
        config: a run config: its model (matched against config.json) and its train: schedule
        out: the checkpoint folder to write (never overwritten)
        step: the optimizer step the checkpoint was saved at (default: read from the revision name where the
            family's names give it: Pythia step100000, OLMo step1000-tokens4B, SmolLM2 step-160000, TinyLlama
            step-480k-1T)
        revision: the published revision the folder holds (default: the folder's name); its step and tokens are
            checked against --step and the schedule
        stage: the training stage --config's schedule describes (OLMo 2's stage2-... revisions restart their
            steps: they need a stage-2 run config and --stage 2)
        pretraining_data: what the checkpoint was pretrained on (recorded; e.g. 'the Pile (deduplicated)')
    """
    print(format_import(import_hf(hf_dir, config, step, out, pretraining_data, revision, stage)))
    return 0
