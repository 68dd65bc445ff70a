"""``midtrain import``: a Hugging Face checkpoint folder -> a midtrain checkpoint at a known step.

Public intermediate checkpoints (Pythia's ``stepN`` revisions, OLMo 2's) are what most researchers
can afford to midtrain. This turns one into a checkpoint that ``resume_from`` (a midtrain arm),
``midtrain sft`` and ``midtrain evaluate export-hf`` accept:

- The weights go through litgpt's own converters (``litgpt.scripts.convert_hf_checkpoint``'s
  ``copy_weights_gpt_neox`` / ``copy_weights_olmo2`` and their weight maps), into the model config
  of a *run config* whose ``train:`` describes the original schedule, so a run resuming from the
  import continues the LR curve from step ``S``.
- The HF ``config.json`` is matched against that model config (vocabulary, layers, heads, widths,
  norms, rotary settings): a mismatch is one line naming both values. Pythia's padded vocabulary
  (50,304 rows for a 50,277-token tokenizer) is litgpt's ``padded_vocab_size``, as in litgpt.
- An HF checkpoint holds no optimizer state and no data position: the AdamW moments start fresh
  and every source starts its seeded order. Both are recorded in the checkpoint's data notes
  (``training_state.json`` and every later checkpoint and metrics file that copies them) and said
  at start-up; ``train.rewarm_steps`` ramps the LR back up over N steps as a documented remedy.
- The tokenizer files (``tokenizer.json``, ``tokenizer_config.json``) are copied beside the weights.

Input: ``config.json`` + ``*.safetensors`` (or ``pytorch_model*.bin``), sharded or not, as
``save_pretrained`` writes it or as a hub snapshot sits on disk. Nothing is written unless the whole
import succeeds (a hidden ``.NAME.partial`` folder, renamed at the end).
"""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path
from typing import Any

from midtrain.errors import ConfigError

# HF model_type -> (litgpt copy function name, [(HF config key, litgpt Config attribute), ...]). Keys are read
# through hf_value(): transformers 5 writes rotary settings under rope_parameters, hub snapshots of Pythia
# use rotary_pct / rotary_emb_base.
ARCHITECTURES = {
    "gpt_neox": ("copy_weights_gpt_neox", [
        ("vocab_size", "padded_vocab_size"), ("num_hidden_layers", "n_layer"), ("num_attention_heads", "n_head"),
        ("hidden_size", "n_embd"), ("intermediate_size", "intermediate_size"), ("rotary_pct", "rotary_percentage"),
        ("use_parallel_residual", "parallel_residual"), ("layer_norm_eps", "norm_eps"),
        ("rope_theta", "rope_base")]),
    "olmo2": ("copy_weights_olmo2", [
        ("vocab_size", "padded_vocab_size"), ("num_hidden_layers", "n_layer"), ("num_attention_heads", "n_head"),
        ("num_key_value_heads", "n_query_groups"), ("hidden_size", "n_embd"),
        ("intermediate_size", "intermediate_size"), ("rms_norm_eps", "norm_eps"), ("rope_theta", "rope_base"),
        ("rotary_pct", "rotary_percentage")]),
}
_ALIASES = {"rotary_pct": ("rotary_pct", "partial_rotary_factor"), "rope_theta": ("rope_theta", "rotary_emb_base")}
_DEFAULTS = {"olmo2": {"rotary_pct": 1.0}}


def hf_value(hf: dict, key: str):
    """A config.json value under any of its names, top level or in ``rope_parameters`` (None: absent)."""
    for name in _ALIASES.get(key, (key,)):
        for where in (hf, hf.get("rope_parameters") or {}, hf.get("rope_scaling") or {}):
            if isinstance(where, dict) and where.get(name) is not None:
                return where[name]
    return _DEFAULTS.get(hf.get("model_type"), {}).get(key)


NOTE = "optimizer state: fresh (imported from HF)"

# Every other config.json key, per architecture: what litgpt's model computes for that key's value (compared:
# another value is refused), or why the key changes nothing litgpt computes (harmless). A key in neither
# is refused: it may change the function, and an import that ignored it would silently be another model.
def _gelu_act(config) -> tuple:
    return ("gelu",) if config.gelu_approximate == "none" else ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


REQUIRED = {  # key -> (function of the litgpt config -> accepted values, what it decides)
    "gpt_neox": {
        "hidden_act": (_gelu_act, "the MLP's activation (litgpt: GELU, gelu_approximate)"),
        "attention_bias": (lambda c: (bool(c.bias),), "biases in the attention projections (litgpt: bias)"),
        "attention_dropout": (lambda c: (0, 0.0), "dropout (litgpt trains without)"),
        "hidden_dropout": (lambda c: (0, 0.0), "dropout (litgpt trains without)"),
        "tie_word_embeddings": (lambda c: (False,), "tied input/output embeddings (litgpt: untied)"),
        "rope_type": (lambda c: ("default",), "the rotary scheme (litgpt: plain RoPE here)"),
        "rope_scaling": (lambda c: (None,), "rotary scaling (litgpt: none here)"),
    },
    "olmo2": {
        "hidden_act": (lambda c: ("silu",), "the MLP's activation (litgpt's LLaMAMLP: SiLU)"),
        "attention_bias": (lambda c: (bool(c.bias),), "biases in the attention projections (litgpt: bias)"),
        "attention_dropout": (lambda c: (0, 0.0), "dropout (litgpt trains without)"),
        "tie_word_embeddings": (lambda c: (False,), "tied input/output embeddings (litgpt: untied)"),
        "rope_type": (lambda c: ("default",), "the rotary scheme (litgpt: plain RoPE here)"),
        "rope_scaling": (lambda c: (None,), "rotary scaling (litgpt: none here)"),
    },
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
    "rope_parameters": "holds rope_theta / partial_rotary_factor / rope_type, each checked",
}


def check_config_keys(hf: dict, config) -> None:
    """Every key of config.json is compared (``ARCHITECTURES``), required to be what litgpt computes
    (``REQUIRED``) or known to change nothing (``HARMLESS``); any other key is refused in one line (issue 27,
    class 8: `hidden_act: relu` imported with exit 0 and 0.14 logit error)."""
    kind = hf["model_type"]
    compared = {k for k, _ in ARCHITECTURES[kind][1]}
    compared |= {alias for k in compared for alias in _ALIASES.get(k, ())}
    required = REQUIRED[kind]
    nested = {k: v for k, v in (hf.get("rope_parameters") or {}).items()} if isinstance(
        hf.get("rope_parameters"), dict) else {}
    for key, value in [*hf.items(), *nested.items()]:
        if key in compared or key in HARMLESS:
            continue
        if key in required:
            accepted, what = required[key]
            ok = accepted(config)
            if value not in ok:
                raise ConfigError("--hf_dir", f"config.json {key}: {value!r}, and the run's model computes "
                                  f"{ok[0]!r} ({what}): importing it would give another function")
            continue
        raise ConfigError("--hf_dir", f"config.json has {key}: {value!r}, a key the importer does not know "
                          f"for {kind}: it may change what the model computes, so it is refused rather than "
                          "ignored (known keys: midtrain/importer.py REQUIRED / HARMLESS)")


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
    if cfg.get("model_type") not in ARCHITECTURES:
        raise ConfigError("--hf_dir", f"model_type {cfg.get('model_type')!r} ({', '.join(cfg.get('architectures') or [])})"
                          f" cannot be imported: supported are {', '.join(ARCHITECTURES)} (Pythia, OLMo 2)")
    return cfg


def check_shapes(hf: dict, config) -> None:
    """The HF config against the run's litgpt model config: one line per first mismatch."""
    _, pairs = ARCHITECTURES[hf["model_type"]]
    for hf_key, attr in pairs:
        theirs = hf_value(hf, hf_key)
        if theirs is None:
            continue
        ours = getattr(config, attr)
        same = abs(float(ours) - float(theirs)) <= 1e-12 * max(1.0, abs(float(theirs))) if isinstance(
            theirs, float) or isinstance(ours, float) else ours == theirs
        if not same:
            raise ConfigError("model_config", f"{attr} is {ours!r}, but the HF checkpoint's {hf_key} is {theirs!r}: "
                              "the run config describes another model")
    if hf["model_type"] == "olmo2" and not (getattr(config, "norm_qk", False) and config.post_attention_norm):
        raise ConfigError("model_config", "an OLMo 2 checkpoint needs an OLMo 2 model config (norm_qk, "
                          "post_attention_norm; e.g. model_name: OLMo-2-1124-7B)")
    if hf["model_type"] == "olmo2" and not config.name.lower().startswith("olmo-2-"):
        raise ConfigError("model_config.name", f"{config.name!r}: litgpt chooses OLMo 2's converters by a name "
                          "starting with OLMo-2- (export-hf would map the weights as another architecture)")
    if hf.get("tie_word_embeddings") and hf["model_type"] == "gpt_neox":
        raise ConfigError("--hf_dir", "tied input/output embeddings in a GPT-NeoX checkpoint are not supported")
    check_config_keys(hf, config)


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

    name, _ = ARCHITECTURES[hf["model_type"]]
    copy = getattr(conv, name)
    copy = partial(copy, config, {}) if hf["model_type"] == "olmo2" else partial(copy, config)
    sd: dict[str, Any] = {}
    for f in weight_files(hf_dir):
        weights = conv.load_safetensors(f) if f.suffix == ".safetensors" else lazy_load(f)
        try:
            copy(sd, weights, saver=None, dtype=torch.float32)
        except KeyError as e:
            raise ConfigError("--hf_dir", f"{f.name} holds {e.args[0]!r}, which litgpt's {name} does not map "
                              "(another architecture than its config.json says?)") from None
    return {k: (v if isinstance(v, torch.Tensor) else conv.load_param(v, k, torch.float32)).contiguous()
            for k, v in sd.items()}


def import_hf(hf_dir: Path, run_config: Path, step: int, out: Path, pretraining_data: str | None = None) -> dict:
    """Write ``out`` (a midtrain checkpoint at ``step``); returns a summary. See the module docstring.
    ``pretraining_data`` declares what the checkpoint was pretrained on (e.g. "the Pile, deduplicated"),
    recorded beside the import so that nothing is compared as if it came from another corpus."""
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
    horizon = train.total_steps(1, 1, train.max_seq_length or model_config.block_size)
    if step < 0:
        raise ConfigError("--step", f"must be >= 0, got {step}")
    if horizon is None:
        raise ConfigError(f"{run_config}: train.max_steps", "the run config must give the original schedule's length "
                          "(train.max_steps): the LR continues from where --step sits on it")
    if step >= horizon:
        raise ConfigError("--step", f"{step:,} is not before the end of the schedule (train.max_steps {horizon:,} in "
                          f"{run_config}): nothing would be left to train")
    check_shapes(hf, model_config)
    tok_vocab = _tokenizer_vocab(hf_dir)
    if tok_vocab is not None and tok_vocab > model_config.padded_vocab_size:
        raise ConfigError("--hf_dir", f"the tokenizer has {tok_vocab:,} tokens, more than the model's "
                          f"padded_vocab_size {model_config.padded_vocab_size:,}")
    sd = convert_weights(hf_dir, hf, model_config)
    model = GPT(model_config)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ConfigError("model_config", f"the converted weights do not fit the run's model "
                          f"({' '.join(str(e).split())[:240]})") from None
    note = {"imported": f"Hugging Face checkpoint {hf_dir.resolve()} ({hf['model_type']})", "at_step": step,
            "optimizer": NOTE, "data_restarted": True,
            "pretraining_data": pretraining_data or "not declared (--pretraining_data)"}
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
            "parameters": sum(p.numel() for p in model.parameters()), "tokenizer": tok_vocab, "note": note}


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
    return (f"imported {summary['model_type']} ({summary['parameters'] / 1e6:.1f}M parameters) at step "
            f"{summary['step']:,} of a {summary['horizon']:,}-step schedule -> {summary['out']}\n"
            f"  {NOTE}: AdamW's moments start at zero (train.rewarm_steps N ramps the LR back up over N steps)\n"
            f"  data position: not in an HF checkpoint; every source starts its seeded order\n"
            f"  pretraining data: {summary['note']['pretraining_data']}"
            + ("" if summary["tokenizer"] is None else f"\n  tokenizer: {summary['tokenizer']:,} tokens (copied)"))
