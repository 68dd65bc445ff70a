"""``midtrain evaluate``: offline loss of a checkpoint on shard folders, lm-eval through litgpt, HF export."""

from __future__ import annotations

import contextlib

import json
from pathlib import Path
from typing import Optional

from midtrain.errors import ConfigError


def loss_on_shards(checkpoint: Path, data: Path, max_seq_length: Optional[int] = None, batch_size: int = 8,
                   max_batches: int = 100, precision: Optional[str] = None) -> dict:
    """Loss and perplexity per validation set under ``data`` (one dataset, or a folder of them): ``{set: {loss,
    ppl}}``, plus ``precision`` (the forward pass's: ``midtrain.posttrain.numerics``; None: bf16-mixed on a GPU
    with bf16, else 32-true) and ``checkpoint_notes`` when the checkpoint carries history that is not a mixture
    stage (an HF import's fresh optimizer state)."""
    import torch

    from midtrain.posttrain import numerics
    from midtrain.posttrain.sft import load_checkpoint_model, pretrain_val_losses
    from midtrain.train.distributed import check_expected_cuda
    from midtrain.train.metrics import perplexity

    check_expected_cuda()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = numerics.resolve(precision, device)
    model, config = load_checkpoint_model(checkpoint)
    seq = max_seq_length or config.block_size
    model.max_seq_length = seq
    model.to(device)
    with numerics.forward_context(precision, device):
        losses = pretrain_val_losses(model, data, seq, batch_size, max_batches, device, field="--data")
    out = {name: {"loss": loss, "ppl": perplexity(loss)} for name, loss in losses.items()}
    out["precision"] = precision
    from midtrain.posttrain.sft import checkpoint_notes

    notes = checkpoint_notes(checkpoint)  # e.g. "optimizer state: fresh (imported from HF)": said with every number
    return {**out, "checkpoint_notes": notes} if notes else out


def loss_over_checkpoints(run_dir: Path, data: Path, max_seq_length: Optional[int] = None, batch_size: int = 8,
                          max_batches: int = 100, precision: Optional[str] = None) -> dict:
    """``loss_on_shards`` of every saved checkpoint of a run folder (step-* and final, oldest first):
    ``{set: {loss, ppl}}`` of the final checkpoint (as for one checkpoint) plus ``by_step``:
    ``{step: {set: {loss, ppl}}}`` (a final checkpoint at the same step as a step-* one is evaluated once)."""
    from midtrain.train.checkpoint import list_checkpoints

    found = list_checkpoints(Path(run_dir))
    if not found or found[-1][1].name != "final":
        raise ConfigError("--checkpoint", f"{run_dir} is not a finished run folder (no final checkpoint among "
                          f"{[p.name for _, p in found] or 'no checkpoints'})")
    by_step = {}
    for step, path in found:
        by_step[step] = loss_on_shards(path, data, max_seq_length, batch_size, max_batches, precision)
    return {**by_step[found[-1][0]], "by_step": by_step}


def lm_eval(checkpoint: Path, tasks: str, out_dir: Path, batch_size: int = 1, num_fewshot: Optional[int] = None,
            limit: Optional[float] = None, include_path: Optional[Path] = None,
            tokenizer_dir: Optional[Path] = None, precision: Optional[str] = None) -> dict:
    """lm-evaluation-harness on a checkpoint, offline: the litgpt model is wrapped as an lm-eval ``LM`` directly
    (no conversion to an HF model, so locally trained models work), with exactly the tasks given; local
    tasks (a YAML + JSONL data files) come from ``include_path``. ``batch_size`` requests are scored per forward
    pass; ``precision`` as in ``loss_on_shards`` (written to results.json). Returns {task: {metric: value}}."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise ConfigError("midtrain evaluate lm-eval", "needs the eval extra: pip install -e '.[eval]'") from None
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from midtrain.atomic import check_writable_dir, write_text_atomic
    from midtrain.posttrain.lm_eval_adapter import LitLM

    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        raise ConfigError("--tasks", "give one or more comma-separated lm-eval task names")
    if include_path is not None and not Path(include_path).is_dir():
        raise ConfigError("--include_path", f"{include_path} is not a folder of task YAMLs")
    if batch_size < 1:
        raise ConfigError("--batch_size", f"must be >= 1, got {batch_size}")
    import torch

    from midtrain.posttrain import numerics

    numerics.resolve(precision, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    check_writable_dir(Path(out_dir), "--out_dir")
    manager = TaskManager(include_path=str(include_path) if include_path else None)
    unknown = [t for t in names if t not in manager.all_tasks]
    if unknown:
        raise ConfigError("--tasks", f"unknown task(s) {', '.join(unknown)} (local tasks need --include_path)")
    specs = [local_task_config(manager, name, Path(include_path)) if include_path else name for name in names]
    model = LitLM(Path(checkpoint), Path(tokenizer_dir) if tokenizer_dir else None, batch_size, precision)
    results = simple_evaluate(model=model, tasks=specs, num_fewshot=num_fewshot, limit=limit, task_manager=manager,
                              log_samples=False)
    table = {task: {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "alias"}
             for task, metrics in results["results"].items()}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(out_dir) / "results.json", json.dumps({"checkpoint": str(checkpoint), "results": table,
                                                                 "precision": model.precision,
                                                                 "n_samples": results.get("n-samples", {})},
                                                                indent=2, default=str))
    return table


def _resolve_data_files(files, base: Path, where: str):
    """``data_files`` (a path, a list, or split -> path/list) with relative paths resolved against ``base``."""
    if isinstance(files, dict):
        return {split: _resolve_data_files(f, base, where) for split, f in files.items()}
    if isinstance(files, (list, tuple)):
        return [_resolve_data_files(f, base, where) for f in files]
    path = Path(str(files)).expanduser()
    if path.is_absolute() or "://" in str(files):
        return files
    if (base / path).exists() or any(base.glob(str(path))):
        return str(base / path)
    if path.exists():  # lm-eval's own rule (the working directory): still found, and said
        print(f"lm-eval: {where}: {files} is not beside the task YAML; read from the working directory {Path.cwd()}",
              flush=True)
        return str(path.resolve())
    raise ConfigError(where, f"{files} not found beside the task YAML ({base / path}) nor in the working directory")


def local_task_config(manager, name: str, include_path: Path):
    """The config of a task defined under ``include_path`` with its ``dataset_kwargs.data_files`` resolved
    against the YAML's own folder (lm-eval resolves them against the working directory, so a local task
    worked only when run from its folder). Anything else (a built-in task, a group, a tag): ``name``."""
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = manager.task_index.get(name)
    path = getattr(entry, "yaml_path", None)
    if path is None or getattr(entry, "kind", None) is None or entry.kind.name != "TASK":
        return name
    path = Path(path).resolve()
    if not path.is_relative_to(include_path.resolve()):
        return name
    cfg = load_yaml(path, resolve_func=True)
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if files is None:
        return name
    cfg["dataset_kwargs"] = dict(cfg["dataset_kwargs"],
                                 data_files=_resolve_data_files(files, path.parent, f"{path}: dataset_kwargs.data_files"))
    return cfg


def format_lm_eval_metrics(metrics: dict) -> list[str]:
    """``{"acc,none": 0.5, "acc_stderr,none": 0.1, "sample_len": 24}`` -> ``["acc 0.5000 ± 0.1000 (n=24)"]``."""
    n = metrics.get("sample_len")
    out = []
    for key, value in metrics.items():
        name, _, filt = key.partition(",")
        if name.endswith("_stderr") or name == "sample_len":
            continue
        err = metrics.get(f"{name}_stderr,{filt}" if filt else f"{name}_stderr")
        out.append(f"{name} {value:.4f}" + (f" ± {err:.4f}" if isinstance(err, (int, float)) else "")
                   + (f" (n={int(n)})" if n else ""))
    return out


@contextlib.contextmanager
def _olmo2_export_fix():
    """litgpt 0.5.13's OLMo 2 converters disagree on one name: its import map (convert_hf_checkpoint) puts
    HF ``post_attention_layernorm`` into ``transformer.h.N.post_attention_norm`` (the module litgpt's OLMo 2
    config builds, with ``norm_2`` off), while its export map (convert_lit_checkpoint.copy_weights_olmo2)
    only knows that HF name as ``norm_2``, so every OLMo 2 export fails on a KeyError. While converting,
    the export is handed the same tensor under the name its own map expects, and only when the model has
    no ``norm_2`` weights of its own: the weights are litgpt's maps end to end. test_import checks the
    exported folder against transformers' logits, so an upstream change to either map shows there."""
    import litgpt.scripts.convert_lit_checkpoint as lit

    original = lit.copy_weights_olmo2

    def copy_weights_olmo2(config, state_dict, lit_weights, *args, **kwargs):
        if not any(".norm_2." in k for k in lit_weights):
            lit_weights = {k.replace(".post_attention_norm.", ".norm_2."): v for k, v in lit_weights.items()}
        return original(config, state_dict, lit_weights, *args, **kwargs)

    lit.copy_weights_olmo2 = copy_weights_olmo2
    try:
        yield
    finally:
        lit.copy_weights_olmo2 = original


def export_hf(checkpoint: Path, out_dir: Path) -> Path:
    """Convert a checkpoint to the HF transformers layout with litgpt's converter (``model.pth``). When the
    checkpoint carries an HF ``config.json`` (a `midtrain import`, and every run continuing one), the folder
    is also a complete HF checkpoint: ``model.safetensors`` + ``config.json`` + tokenizer files, which
    ``transformers.AutoModelForCausalLM.from_pretrained(out_dir)`` loads. Written to a hidden folder first:
    a refusal leaves nothing behind."""
    import shutil

    from litgpt.scripts.convert_lit_checkpoint import convert_lit_checkpoint

    from midtrain.train import checkpoint as ckpt
    from midtrain.train.checkpoint import copy_side_files

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if not ckpt.is_checkpoint(checkpoint):
        raise ConfigError("--checkpoint", f"{checkpoint} has no lit_model.pth (nor sharded/)")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError("--out", f"{out_dir} exists and is not empty")
    from midtrain.atomic import disk_full, disk_full_error, free_bytes, write_error

    need = ckpt_bytes(checkpoint)
    if free_bytes(out_dir.parent) < need:  # checked first: torch.save reports a full disk as a zip error
        raise disk_full_error("--out", out_dir.parent, need)
    tmp = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    whole = out_dir.with_name(f".{out_dir.name}.consolidated")
    try:
        source = checkpoint
        if ckpt.is_sharded(checkpoint):  # litgpt's converter reads one lit_model.pth: gather the shards first
            import torch

            from midtrain.posttrain.sft import load_checkpoint_model

            shutil.rmtree(whole, ignore_errors=True)
            whole.mkdir(parents=True)
            model, _ = load_checkpoint_model(checkpoint)
            torch.save({"model": model.state_dict()}, whole / "lit_model.pth")
            shutil.copy(checkpoint / "model_config.yaml", whole / "model_config.yaml")
            source = whole
        try:
            with _olmo2_export_fix():
                convert_lit_checkpoint(source, tmp)
        except KeyError as e:  # litgpt's map for this architecture lacks a weight (e.g. OLMo 2's q/k norms)
            raise ConfigError("--checkpoint", f"litgpt's converter cannot export this architecture (no HF name for "
                              f"{e.args[0]!r})") from None
        if (checkpoint / "config.json").is_file():
            import torch
            from litgpt import Config
            from safetensors.torch import save_file

            from midtrain.importer import FAMILIES, check_shapes

            hf = json.loads((checkpoint / "config.json").read_text())
            if hf.get("model_type") in FAMILIES:  # it must describe these weights, or it is not written
                try:
                    check_shapes(hf, Config.from_file(checkpoint / "model_config.yaml"),
                                 ckpt.tied_embeddings(checkpoint))
                except ConfigError as e:
                    raise ConfigError("--checkpoint", f"{checkpoint}/config.json describes another model than "
                                      f"model_config.yaml and hyperparameters.yaml ({e})") from None

            state = torch.load(tmp / "model.pth", map_location="cpu", weights_only=True)
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"),
                      metadata={"format": "pt"})
            copy_side_files(checkpoint, tmp)
        if out_dir.exists():
            out_dir.rmdir()
        tmp.rename(out_dir)
    except (OSError, RuntimeError) as e:  # a full disk: one line; the hidden folder goes as for any failure
        full = disk_full(write_error(e, out_dir.parent) or e)  # (read before the partial files are removed)
        shutil.rmtree(tmp, ignore_errors=True)
        if full:  # (torch.save's zip writer hides the ENOSPC)
            raise disk_full_error("--out", out_dir.parent, need) from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(whole, ignore_errors=True)
    return out_dir / "model.pth"


def ckpt_bytes(checkpoint: Path) -> int:
    """What an export writes: the model's weights (not the optimizer state a training checkpoint also holds),
    twice when an HF config.json makes it write model.safetensors beside model.pth. 0 when unknown (sharded)."""
    import torch

    path = Path(checkpoint) / "lit_model.pth"
    if not path.is_file():
        return 0
    state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    model = state.get("model", state) if isinstance(state, dict) else {}
    weights = sum(t.numel() * t.element_size() for t in model.values() if isinstance(t, torch.Tensor))
    return weights * (2 if (Path(checkpoint) / "config.json").is_file() else 1)


def write_json(obj: dict, path: Optional[str]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(obj, indent=2))
