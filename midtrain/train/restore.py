"""Where a run starts: restore a checkpoint into the freshly built model, optimizer and loader.

``restore`` loads a checkpoint of this run (``resume``), of a base run (``resume_from``, midtraining)
or weights only (``initial_checkpoint_dir``); errors become one line naming the field. Any format into
any strategy: a sharded checkpoint is read through torch.distributed.checkpoint (each rank reads
its shard of a sharded model; a replica reads the whole), a full ``lit_model.pth`` through
``set_state_dict`` (into a sharded model rank 0's copy is broadcast, shard by shard). What a
foreign checkpoint (the original litgpt fork, a Hugging Face import) cannot carry is said and
recorded in the loader's notes, which every later checkpoint and the run's logs keep.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any, Optional

from midtrain.errors import ConfigError
from midtrain.train import checkpoint as ckpt


def restore(fabric, load_path: Path, state: dict[str, Any], start_kind: str, train, seq_len: int) -> None:
    """Load ``load_path`` into ``state`` (model, optimizer, loader, counters) for a resume or a midtrain start."""
    loader = state["train_dataloader"]
    fabric.print(f"loading {load_path}" + (" (sharded)" if ckpt.is_sharded(load_path) else ""))
    if start_kind == "midtrain" and hasattr(loader, "accept_foreign"):
        loader.accept_foreign = True
    field = "resume_from" if start_kind == "midtrain" else "resume"
    where = load_path / (ckpt.SHARDED_DIR if ckpt.is_sharded(load_path) else ckpt.MODEL_FILE)
    translate_load_errors(lambda: _load(load_path, state), where, field)
    if getattr(loader, "imported", False):
        _announce_foreign(fabric, load_path, state, loader, train, seq_len)


def _load(path: Path, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_state_dict, set_model_state_dict,
                                                         set_optimizer_state_dict, set_state_dict)

    from midtrain.train.parallel import is_sharded
    from midtrain.train.saver import COUNTERS, unwrap

    model, optimizer, loader = unwrap(state["model"]), unwrap(state["optimizer"]), state["train_dataloader"]
    if ckpt.is_sharded(path):
        import torch.distributed.checkpoint as dcp

        model_state, optim_state = get_state_dict(model, optimizer)
        import warnings

        import torch.distributed as dist

        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load({"model": model_state, "optimizer": optim_state}, checkpoint_id=path / ckpt.SHARDED_DIR,
                     no_dist=not (dist.is_available() and dist.is_initialized()))
        set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state)
        saved = ckpt.read_training_state(path)
        saved = {**saved, "step_count": saved.get("step"), "train_dataloader": saved.get("data")}
    else:
        saved = ckpt.load_file(path / ckpt.MODEL_FILE)
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=is_sharded(model), strict=True)
        set_model_state_dict(model, saved["model"], options=options)
        if saved.get("optimizer"):  # an import from Hugging Face has none: the optimizer starts fresh (said)
            set_optimizer_state_dict(model, optimizer, name_keyed(saved["optimizer"], model), options=options)
    if saved.get("train_dataloader") is not None and hasattr(loader, "load_state_dict"):
        loader.load_state_dict(saved["train_dataloader"])
    state.update({k: saved[k] for k in COUNTERS if saved.get(k) is not None})


def name_keyed(optim_state: dict, model) -> dict:
    """An optimizer state dict keyed by parameter name (what set_optimizer_state_dict takes) from one keyed by
    position (``optimizer.state_dict()``, as older checkpoints and the original fork wrote it)."""
    keys = list(optim_state.get("state", {})) + [p for g in optim_state.get("param_groups", []) for p in g["params"]]
    if not keys or not isinstance(keys[0], int):
        return optim_state
    names = [canonical_name(n) for n, _ in model.named_parameters()]
    return {"state": {names[i]: v for i, v in optim_state["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in optim_state["param_groups"]]}


def canonical_name(name: str) -> str:
    """A parameter's name without wrapper prefixes (activation checkpointing, torch.compile, DDP)."""
    for prefix in ("_checkpoint_wrapped_module.", "_orig_mod.", "module."):
        name = name.replace(prefix, "")
    return name


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
    """Weights only (``initial_checkpoint_dir``), from our checkpoints of either format or plain litgpt/converted
    state dicts."""
    translate_load_errors(lambda: ckpt.load_model_weights(path, model), path, "initial_checkpoint_dir")


def translate_load_errors(load, path: Path, field: str) -> None:
    try:
        _unwrapping_dcp(load)
    except ConfigError:
        raise
    except RuntimeError as e:
        msg = " ".join(str(e).split())
        if "size mismatch" in msg or "Missing key" in msg or "Unexpected key" in msg:
            raise ConfigError(field, f"{path} does not match the model config ({msg[:200]})") from None
        raise ConfigError(field, f"{path} could not be loaded ({msg[:200]})") from None
    except ValueError as e:
        msg = " ".join(str(e).split())
        if "Size mismatch" in msg or "size mismatch" in msg:  # torch.distributed.checkpoint's wording
            raise ConfigError(field, f"{path} does not match the model config ({msg[:200]})") from None
        raise ConfigError(field, f"{path} is missing or corrupt (ValueError: {msg[:200]})") from None
    except (OSError, EOFError, KeyError, pickle.UnpicklingError) as e:
        raise ConfigError(field, f"{path} is missing or corrupt ({type(e).__name__}: {str(e)[:200]})") from None


def _unwrapping_dcp(load) -> None:
    """torch.distributed.checkpoint raises CheckpointException (a BaseException) holding each rank's error: the
    first of them is raised instead, so a mismatched or missing shard reads like the same fault in a full file."""
    try:
        load()
    except BaseException as e:  # noqa: BLE001
        failures = getattr(e, "failures", None)
        if type(e).__name__ != "CheckpointException" or not isinstance(failures, dict) or not failures:
            raise
        first = next(iter(failures.values()))
        first = first[0] if isinstance(first, tuple) else first
        raise (first if isinstance(first, Exception) else RuntimeError(str(first))) from None


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
