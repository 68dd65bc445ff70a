"""Where a run starts: restore a checkpoint into the freshly built model, optimizer and loader.

``restore`` loads a checkpoint of this run (``resume``), of a base run (``resume_from``, midtraining)
or weights only (``initial_checkpoint_dir``); errors become one line naming the field. What a
foreign checkpoint (the original litgpt fork, a Hugging Face import) cannot carry is said and
recorded in the loader's notes, which every later checkpoint and the run's logs keep.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any, Optional

import torch

from midtrain.errors import ConfigError
from midtrain.train import checkpoint as ckpt


def restore(fabric, load_path: Path, state: dict[str, Any], start_kind: str, train, seq_len: int) -> None:
    """Load ``load_path`` into ``state`` (model, optimizer, loader, counters) for a resume or a midtrain start."""
    loader = state["train_dataloader"]
    fabric.print(f"loading {load_path}")
    if start_kind == "midtrain" and hasattr(loader, "accept_foreign"):
        loader.accept_foreign = True
    field = "resume_from" if start_kind == "midtrain" else "resume"
    translate_load_errors(lambda: _load(fabric, load_path / ckpt.MODEL_FILE, state), load_path / ckpt.MODEL_FILE, field)
    if getattr(loader, "imported", False):
        _announce_foreign(fabric, load_path, state, loader, train, seq_len)


def _load(fabric, path: Path, state: dict) -> None:
    remainder = fabric.load(path, state, strict=False)
    state.update({k: v for k, v in remainder.items() if k in state})


def _announce_foreign(fabric, load_path: Path, state: dict, loader, train, seq_len: int) -> None:
    loader.notes[-1]["at_step"] = state["step_count"]
    state["tokens"] = state["tokens"] or state["step_count"] * train.global_batch_size * seq_len
    if "optimizer" in loader.notes[-1]:  # `midtrain import` of a Hugging Face checkpoint
        fabric.print(f"resume_from: {load_path} was imported from Hugging Face: model and step "
                     f"{state['step_count']:,} continue (and the LR schedule with them); "
                     f"{loader.notes[-1]['optimizer']}: AdamW's moments start at zero"
                     + (f", the LR ramps back up over {train.rewarm_steps} step(s) (train.rewarm_steps)"
                        if train.rewarm_steps else "; train.rewarm_steps N would ramp the LR back up")
                     + "; every source starts a fresh seeded order (recorded in the stage history)")
    else:
        fabric.print(f"resume_from: {load_path} was written by the original litgpt fork: model, optimizer and "
                     f"step {state['step_count']:,} continue (and the LR schedule with them); its litdata data "
                     "position cannot be mapped, so every source starts a fresh seeded order (recorded in the "
                     "stage history)")


def load_weights(model, path: Path) -> None:
    """Weights only, from our checkpoints ({"model": ...}) or plain litgpt/converted state dicts."""
    def load():
        state = torch.load(path, map_location="cpu", weights_only=False)
        model.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)

    translate_load_errors(load, path, "initial_checkpoint_dir")


def translate_load_errors(load, path: Path, field: str) -> None:
    try:
        load()
    except ConfigError:
        raise
    except RuntimeError as e:
        msg = " ".join(str(e).split())
        if "size mismatch" in msg or "Missing key" in msg or "Unexpected key" in msg:
            raise ConfigError(field, f"{path} does not match the model config ({msg[:200]})") from None
        raise ConfigError(field, f"{path} could not be loaded ({msg[:200]})") from None
    except (OSError, EOFError, ValueError, KeyError, pickle.UnpicklingError) as e:
        raise ConfigError(field, f"{path} is missing or corrupt ({type(e).__name__}: {str(e)[:200]})") from None


def hf_import_step(loader) -> Optional[int]:
    """The step of the `midtrain import` this run descends from (its fresh-optimizer note), else None."""
    for note in getattr(loader, "notes", None) or []:
        if "optimizer" in note and note.get("at_step") is not None:
            return int(note["at_step"])
    return None


def log_checkpoint_notes(fabric, loader) -> None:
    """An import's history (e.g. a fresh optimizer state) goes with this run's metrics, not only its checkpoints."""
    notes = [n for n in getattr(loader, "notes", None) or [] if "optimizer" in n or "imported" in n]
    if not notes:
        return
    for logger in fabric.loggers:
        try:  # TensorBoard and W&B keep it with the run's hyperparameters
            logger.log_hyperparams({"checkpoint_notes": json.dumps(notes, default=str)})
        except NotImplementedError:  # Fabric's CSV logger keeps none
            pass
        log_dir = getattr(logger, "log_dir", None)
        if log_dir and fabric.global_rank == 0:  # beside metrics.csv / the event files, whatever the logger
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            (Path(log_dir) / "checkpoint_notes.json").write_text(json.dumps(notes, indent=1, default=str) + "\n")
