"""``midtrain evaluate``: offline loss of a checkpoint on shard folders, lm-eval through litgpt, HF export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from midtrain.errors import ConfigError


def loss_on_shards(checkpoint: Path, data: Path, max_seq_length: Optional[int] = None, batch_size: int = 8,
                   max_batches: int = 100) -> dict:
    """Loss and perplexity per validation set under ``data`` (one dataset, or a folder of them)."""
    import torch

    from midtrain.posttrain.sft import load_checkpoint_model, pretrain_val_losses
    from midtrain.train.metrics import perplexity

    model, config = load_checkpoint_model(checkpoint)
    seq = max_seq_length or config.block_size
    model.max_seq_length = seq
    from midtrain.train.distributed import check_expected_cuda

    check_expected_cuda()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    losses = pretrain_val_losses(model, data, seq, batch_size, max_batches, device, field="--data")
    return {name: {"loss": loss, "ppl": perplexity(loss)} for name, loss in losses.items()}


def lm_eval(checkpoint: Path, tasks: str, out_dir: Path, batch_size: int = 1, num_fewshot: Optional[int] = None,
            limit: Optional[float] = None, include_path: Optional[Path] = None,
            tokenizer_dir: Optional[Path] = None) -> dict:
    """lm-evaluation-harness on a checkpoint, offline: the litgpt model is wrapped as an lm-eval ``LM`` directly
    (no conversion to an HF model, so locally trained models work), with exactly the tasks given; local
    tasks (a YAML + JSONL data files) come from ``include_path``. Returns {task: {metric: value}}."""
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
    check_writable_dir(Path(out_dir), "--out_dir")
    manager = TaskManager(include_path=str(include_path) if include_path else None)
    unknown = [t for t in names if t not in manager.all_tasks]
    if unknown:
        raise ConfigError("--tasks", f"unknown task(s) {', '.join(unknown)} (local tasks need --include_path)")
    model = LitLM(Path(checkpoint), Path(tokenizer_dir) if tokenizer_dir else None, batch_size)
    results = simple_evaluate(model=model, tasks=names, num_fewshot=num_fewshot, limit=limit, task_manager=manager,
                              log_samples=False)
    table = {task: {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "alias"}
             for task, metrics in results["results"].items()}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(out_dir) / "results.json", json.dumps({"checkpoint": str(checkpoint), "results": table,
                                                                 "n_samples": results.get("n-samples", {})},
                                                                indent=2, default=str))
    return table


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


def export_hf(checkpoint: Path, out_dir: Path) -> Path:
    """Convert a checkpoint to the HF transformers layout with litgpt's converter."""
    from litgpt.scripts.convert_lit_checkpoint import convert_lit_checkpoint

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if not (checkpoint / "lit_model.pth").is_file():
        raise ConfigError("--checkpoint", f"{checkpoint} has no lit_model.pth")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError("--out", f"{out_dir} exists and is not empty")
    out_dir.mkdir(parents=True, exist_ok=True)
    convert_lit_checkpoint(checkpoint, out_dir)
    return out_dir / "model.pth"


def write_json(obj: dict, path: Optional[str]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(obj, indent=2))
