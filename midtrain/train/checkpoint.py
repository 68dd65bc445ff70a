"""Checkpoints: atomic, never overwritten, litgpt-compatible layout, full or sharded.

``out_dir/step-00001000/`` holds the weights and optimizer state in one of two formats, which
``training_state.json`` records as ``"format"`` and the files show:
- **full**: ``lit_model.pth`` (``{"model", "optimizer", "train_dataloader", "iter_num", "step_count",
  ...}``, litgpt's pretrain layout, so litgpt tools load it), written by rank 0. The optimizer
  state is keyed by parameter name (``torch.distributed.checkpoint.state_dict``'s full state dict);
  older integer-keyed states still load.
- **sharded**: ``sharded/``, a torch distributed checkpoint (``.metadata`` + one ``__R_0.distcp``
  per rank, ``{"model", "optimizer"}``): each rank writes its own shard, and a resume reads only
  its own (at any world size: DCP reshards on load). The step checkpoints of a sharded run
  (``strategy: fsdp``/``hsdp``) are of this kind; ``final/`` is always full.
Beside them: ``model_config.yaml``, ``hyperparameters.yaml`` (the resolved run config), tokenizer files
and ``training_state.json`` (format, counters, data state, mixture stages: readable without torch;
a sharded checkpoint's counters are read from here). ``load_model_weights`` reads either format.

Writes go straight into a hidden ``.step-XXXXXXXX.partial`` folder of the run (never staged in
``$TMPDIR``: cluster nodes often have a small node-local /tmp), are fsynced, then renamed into place;
the ``latest`` pointer file is replaced last. A process killed mid-write leaves only the hidden
folder, which discovery ignores and the next save clears: the previous checkpoint stays valid.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Optional

import yaml

from midtrain.atomic import disk_full, free_bytes, fsync_dir, fsync_tree, write_error, write_text_atomic
from midtrain.errors import ConfigError

MODEL_FILE = "lit_model.pth"
SHARDED_DIR = "sharded"
STATE_FILE = "training_state.json"
LATEST = "latest"
FINAL = "final"
_STEP_RE = re.compile(r"^step-(\d+)$")


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def checkpoint_step(path: Path) -> Optional[int]:
    """The optimizer step a checkpoint folder holds (from its name or training_state.json)."""
    state = Path(path) / STATE_FILE
    if state.is_file():
        try:
            return int(json.loads(state.read_text())["step"])
        except (ValueError, KeyError, OSError):
            return None
    m = _STEP_RE.match(Path(path).name)
    return int(m.group(1)) if m else None


def is_sharded(path: Path) -> bool:
    """A sharded checkpoint folder: a torch distributed checkpoint under ``sharded/`` and its training_state.json
    (which holds the counters and data position a sharded checkpoint keeps nowhere else)."""
    return (Path(path) / SHARDED_DIR / ".metadata").is_file() and (Path(path) / STATE_FILE).is_file()


def is_checkpoint(path: Path) -> bool:
    """A complete checkpoint folder of either format."""
    return (Path(path) / MODEL_FILE).is_file() or is_sharded(path)


def list_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in out_dir (step-* and final, symlinks included), oldest first."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = []
    for entry in out_dir.iterdir():
        if entry.name.startswith(".") or not (_STEP_RE.match(entry.name) or entry.name == FINAL):
            continue
        if not is_checkpoint(entry):
            continue
        step = checkpoint_step(entry)
        if step is not None:
            found.append((step, entry))
    return sorted(found, key=lambda x: (x[0], x[1].name == FINAL))


def latest_checkpoint(out_dir: Path) -> Optional[Path]:
    found = list_checkpoints(out_dir)
    return found[-1][1] if found else None


def read_training_state(path: Path) -> dict:
    try:
        return json.loads((Path(path) / STATE_FILE).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ConfigError(str(Path(path) / STATE_FILE), f"unreadable ({e})") from None


def check_checkpoint(path: Path, field: str) -> Path:
    path = Path(path)
    if path.is_file() and path.name == MODEL_FILE:
        path = path.parent
    if not is_checkpoint(path):
        raise ConfigError(field, f"{path} is not a checkpoint (no {MODEL_FILE} or {SHARDED_DIR}/)")
    return path


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")
MODEL_FILES = ("config.json", "generation_config.json")  # an imported model's HF config (what export-hf needs)
SIDE_FILES = TOKENIZER_FILES + MODEL_FILES


def copy_side_files(source: Path, dest: Path) -> None:
    """The tokenizer files and an HF ``config.json`` from ``source``; never ``model_config.yaml``, which
    is the run's own (litgpt's copy_config_files would overwrite it)."""
    write_side_files(read_side_files(None, source), dest)


def read_side_files(tokenizer_dir: Optional[Path], checkpoint: Optional[Path]) -> dict[str, bytes]:
    """What every checkpoint of a run carries beside the weights, read once at its start (a later prune may
    delete the checkpoint it came from): tokenizer files from ``tokenizer_dir`` (else from ``checkpoint``),
    the HF ``config.json`` only from ``checkpoint``, the model this run continues (a tokenizer folder's
    config.json may describe another model)."""
    out: dict[str, bytes] = {}
    for folder, names in ((checkpoint, MODEL_FILES), (tokenizer_dir or checkpoint, TOKENIZER_FILES)):
        for name in names if folder is not None else ():
            if (Path(folder) / name).is_file():
                out[name] = (Path(folder) / name).read_bytes()
    return out


def write_side_files(files: dict[str, bytes], dest: Path) -> None:
    for name, data in files.items():
        (Path(dest) / name).write_bytes(data)


def save_checkpoint(fabric, out_dir: Path, name: str, model, optimizer, extra: dict, training_state: dict,
                    hparams: dict, model_config, side_files: Optional[dict], keep_last_n: Optional[int],
                    sharded: bool) -> Path:
    """Write checkpoint ``out_dir/name`` atomically, every rank taking part; rank 0 finalises it.

    ``model``/``optimizer``: the (unwrapped) module and optimizer; ``extra``: what ``lit_model.pth`` carries
    beside them (counters, data state); ``sharded``: each rank writes its shard (torch distributed checkpoint)
    instead of rank 0 writing the full state. ``side_files``: name -> bytes written beside the weights."""
    from litgpt.utils import save_config

    out_dir = Path(out_dir)
    final = out_dir / name
    partial = out_dir / f".{name}.partial"
    if final.exists() or final.is_symlink():
        raise ConfigError(str(final), "already exists; checkpoint folders are never overwritten "
                          "(use a new out_dir, or remove it yourself)")
    rank0 = fabric.global_rank == 0

    def agree_or_raise(failure, original: BaseException | None = None) -> None:
        """Every rank learns whether any rank failed (a barrier would wait forever for a rank that raised): a
        write error is one line; any other error (``original``) is re-raised as it is on its rank."""
        failed = _failed_ranks(fabric, failure is not None or original is not None)
        if failed:
            if rank0:
                shutil.rmtree(partial, ignore_errors=True)
            if original is not None:
                raise original
            raise ConfigError(str(out_dir), _failed_save_line(out_dir, name, failure, model, optimizer),
                              speaker="self" if fabric.global_rank == failed[0] else "quiet")  # the first one says it

    def failure_of(e: BaseException) -> tuple:
        """(write error, None) for a failed write, else (None, e): another error, re-raised after agreeing."""
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise e
        err = write_error(e, partial)
        return (err, None) if err is not None else (None, e)

    failure = None
    if rank0:
        try:
            shutil.rmtree(partial, ignore_errors=True)  # left by a process killed mid-write
            partial.mkdir(parents=True)
        except OSError as e:
            failure = e
    agree_or_raise(failure)
    original = None
    try:
        write_model_state(fabric, partial, model, optimizer, extra, sharded)
    except BaseException as e:  # noqa: BLE001 - DCP's CheckpointException (a BaseException) wraps the ranks' errors
        failure, original = failure_of(e)  # (dcp.save raises on every rank, torch.save on rank 0 only)
    agree_or_raise(failure, original)
    if rank0:
        try:
            (partial / STATE_FILE).write_text(json.dumps({**training_state, "format": "sharded" if sharded else "full"},
                                                         indent=1))
            (partial / "hyperparameters.yaml").write_text(yaml.safe_dump(hparams, sort_keys=False))
            save_config(model_config, partial)
            write_side_files(side_files or {}, partial)
            fsync_tree(partial)
            os.rename(partial, final)
            fsync_dir(out_dir)
            write_text_atomic(out_dir / LATEST, name + "\n")
        except BaseException as e:  # noqa: BLE001 - agreed on first: the other ranks wait in the all-reduce
            failure, original = failure_of(e)
    agree_or_raise(failure, original)  # (a checkpoint renamed into place before `latest` failed is complete: discovery finds it)
    if rank0 and keep_last_n:
        try:
            prune(out_dir, keep_last_n)
        except OSError as e:  # e.g. NFS's .nfs* files: the new checkpoint is safe; old ones stay
            print(f"warning: could not remove old checkpoints of {out_dir} ({e}); keep_last_n not applied this time",
                  flush=True)
    fabric.barrier()
    return final


def _failed_ranks(fabric, failed: bool) -> list[int]:
    """The ranks whose step failed, known to every rank (a barrier would wait forever for a rank that raised)."""
    if fabric.world_size == 1:
        return [0] if failed else []
    import torch

    flags = torch.zeros(fabric.world_size, device=fabric.device)
    flags[fabric.global_rank] = float(failed)
    return [r for r, x in enumerate(fabric.all_reduce(flags, reduce_op="sum").tolist()) if x > 0]


def _failed_save_line(out_dir: Path, name: str, error: Optional[OSError], model, optimizer) -> str:
    """One line: which checkpoint could not be written, the bytes it needs and has, and what is still safe."""
    need = _state_bytes(model, optimizer)
    free = free_bytes(out_dir)
    previous = latest_checkpoint(out_dir)
    safe = f"the last complete checkpoint is {previous.name}" if previous else "no earlier checkpoint exists"
    what = ("disk full" if error is not None and disk_full(error)
            else f"{type(error).__name__}: {error.strerror or error}" if error is not None else "another rank failed")
    space = f"; it needs ~{need / 2**20:,.1f} MiB, {free / 2**20:,.1f} MiB free there"
    return (f"could not write checkpoint {name} ({what}{space}); the partial folder was removed and {safe}: free "
            "space (or raise the quota), then resume")


def _state_bytes(model, optimizer) -> int:
    """Bytes of the full model and optimizer state (what a full checkpoint holds; a sharded one in all)."""
    import torch

    def full(t):
        return int(t.numel()) * t.element_size()  # a DTensor's numel is its global size

    total = sum(full(p) for p in model.parameters())
    for st in optimizer.state.values():
        total += sum(full(v) for v in st.values() if isinstance(v, torch.Tensor))
    return total


def write_model_state(fabric, folder: Path, model, optimizer, extra: dict, sharded: bool) -> None:
    """Model and optimizer state into ``folder``: ``sharded/`` (every rank its shard) or ``lit_model.pth`` (rank 0;
    a sharded model is gathered to rank 0's CPU first). Written in place, never through ``$TMPDIR``."""
    import torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    if sharded:
        import torch.distributed.checkpoint as dcp

        model_state, optim_state = get_state_dict(model, optimizer)
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=Path(folder) / SHARDED_DIR)
        return
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state, optim_state = get_state_dict(model, optimizer, options=options)
    if fabric.global_rank == 0:
        with open(Path(folder) / MODEL_FILE, "wb") as f:  # a file object: a write error keeps its OSError (errno)
            torch.save({"model": model_state, "optimizer": optim_state, **extra}, f)


def load_file(path: Path) -> dict:
    """``torch.load`` of a full checkpoint file, memory-mapped (tensors are read when touched: an optimizer state
    beside the weights costs nothing unless used); files of torch's legacy format are read whole."""
    import torch

    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except RuntimeError as e:
        if "mmap" not in str(e):
            raise
        return torch.load(path, map_location="cpu", weights_only=False)


def tied_embeddings(path: Path) -> bool:
    """Whether the model of checkpoint folder ``path`` shares one matrix between ``transformer.wte`` and
    ``lm_head``: its ``hyperparameters.yaml``'s ``train.tie_embeddings`` (litgpt's pretrain key; the trainer,
    ``midtrain import`` and ``sft --save`` write it) and, where the folder holds an HF ``config.json`` (an import,
    a run continuing one, a folder litgpt downloaded), its ``tie_word_embeddings``. Both present and disagreeing:
    refused in one line. Neither: untied (litgpt's GPT)."""
    import json

    import yaml

    from midtrain.errors import ConfigError

    path = Path(path)
    record = hf = None
    hp = path / "hyperparameters.yaml"
    if hp.exists():
        try:
            saved = yaml.safe_load(hp.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(str(hp), f"cannot be read ({' '.join(str(e).split())[:160]})") from None
        train = saved.get("train") if isinstance(saved, dict) else None
        record = bool(isinstance(train, dict) and train.get("tie_embeddings"))
    cj = path / "config.json"
    if cj.exists():
        try:
            hf_config = json.loads(cj.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(str(cj), f"cannot be read ({' '.join(str(e).split())[:160]})") from None
        if isinstance(hf_config, dict) and "tie_word_embeddings" in hf_config:
            hf = bool(hf_config["tie_word_embeddings"])
    if record is not None and hf is not None and record != hf:
        raise ConfigError(str(path), f"hyperparameters.yaml says train.tie_embeddings: {str(record).lower()}, but "
                          f"config.json says tie_word_embeddings: {str(hf).lower()}: which model it holds is unclear")
    return record if record is not None else bool(hf)


def load_model_weights(path: Path, model) -> None:
    """The weights of checkpoint folder ``path`` (either format) into ``model``, an unsharded module: a sharded
    checkpoint's ``model`` entries are read from every shard file (no optimizer state is read)."""
    import torch

    path = Path(path)
    if is_sharded(path):
        import torch.distributed.checkpoint as dcp

        state = {"model": model.state_dict()}
        import warnings

        alone = not (torch.distributed.is_available() and torch.distributed.is_initialized())
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, checkpoint_id=path / SHARDED_DIR, no_dist=alone)
        model.load_state_dict(state["model"])
        return
    state = load_file(path / MODEL_FILE)
    model.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)


def load_sharded_model_weights(path: Path, model) -> None:
    """The weights of checkpoint folder ``path`` into ``model``, sharded with FSDP2 (every rank calls it): a
    ``sharded/`` checkpoint is read shard by shard (no optimizer state); a full ``lit_model.pth`` is read
    memory-mapped and broadcast from rank 0 into each rank's shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict

    path = Path(path)
    if is_sharded(path):
        import torch.distributed.checkpoint as dcp

        state = {"model": get_model_state_dict(model)}
        dcp.load(state, checkpoint_id=path / SHARDED_DIR)
        set_model_state_dict(model, state["model"])
        return
    state = load_file(path / MODEL_FILE)
    state = state.get("model", state) if isinstance(state, dict) else state
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True,
                                                                strict=True))


def clean_leftovers(out_dir: Path) -> list[str]:
    """Remove what a process killed mid-save leaves in ``out_dir``: hidden ``.NAME.partial`` folders and
    ``.latest.tmp-PID`` files (never valid checkpoints: discovery already ignores them). Returns their names.
    Call once at the start of a run, on one rank, before anything is saved."""
    out_dir = Path(out_dir)
    removed = []
    if not out_dir.is_dir():
        return removed
    for entry in out_dir.iterdir():
        if entry.name.startswith(f".{LATEST}.tmp-") and entry.is_file():
            entry.unlink(missing_ok=True)
        elif entry.name.startswith(".") and entry.name.endswith(".partial") and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            continue
        removed.append(entry.name)
    return sorted(removed)


def prune(out_dir: Path, keep_last_n: int) -> None:
    """Delete all but the newest ``keep_last_n`` step folders this run wrote (symlinks are left alone)."""
    steps = [(s, p) for s, p in list_checkpoints(out_dir) if p.name != FINAL and not p.is_symlink()]
    for _, path in steps[:-keep_last_n]:
        shutil.rmtree(path)
