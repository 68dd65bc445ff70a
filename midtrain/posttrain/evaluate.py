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
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    losses = pretrain_val_losses(model, data, seq, batch_size, max_batches, device)
    return {name: {"loss": loss, "ppl": perplexity(loss)} for name, loss in losses.items()}


def lm_eval(checkpoint: Path, tasks: str, out_dir: Path, batch_size: int = 1, num_fewshot: Optional[int] = None,
            limit: Optional[float] = None) -> None:
    """lm-eval-harness through litgpt's wrapper, with exactly the tasks given."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise ConfigError("midtrain evaluate lm-eval", "needs lm-eval: pip install 'lm-eval>=0.4.2,<0.4.9.1' "
                          "(its tasks download datasets, so it needs network access)") from None
    from litgpt.eval.evaluate import convert_and_evaluate

    if not tasks.strip():
        raise ConfigError("--tasks", "give one or more comma-separated lm-eval task names")
    convert_and_evaluate(Path(checkpoint), tasks=tasks, out_dir=Path(out_dir), batch_size=batch_size,
                         num_fewshot=num_fewshot, limit=limit, force_conversion=True)


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
