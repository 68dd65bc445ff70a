"""Start-up checks of a training run: everything that would otherwise crash mid-run or silently train
something other than the YAML says, refused in one line before any work. Pure but for the file checks.

Also where a run starts (``resume_path``) and where it stops (``run_end_step``): both are decided
once, here, from the config and the checkpoint, the same on every (re)start of a job.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import torch
from litgpt import Config

from midtrain.atomic import check_writable_dir
from midtrain.errors import ConfigError
from midtrain.train import checkpoint as ckpt
from midtrain.train.args import TrainArgs


def resolve_model_config(model_name: Optional[str], model_config: Optional[Config]) -> Config:
    """``model_config`` if given, else litgpt's config for ``model_name``. Both given: they must name the
    same model (a ``--model_name`` on the command line is otherwise ignored for the YAML's model_config)."""
    if model_config is not None:
        if model_name is not None and model_name != model_config.name:
            raise ConfigError("model_name", f"{model_name!r} and model_config (name {model_config.name!r}) are both "
                              "given and disagree: model_config would be trained; give one of them")
        return model_config
    if model_name is None:
        raise ConfigError("model_name", "give model_name or model_config")
    try:
        return Config.from_name(model_name)
    except ValueError:
        raise ConfigError("model_name", f"{model_name!r} is not a litgpt model name") from None


def check_run_inputs(model_config: Optional[Config], out_dir: Path, precision: Optional[str], train: TrainArgs,
                     optimizer: Union[str, dict], keep_last_n: Optional[int], logger_name: str) -> None:
    """Refuse, before any work, what would otherwise crash mid-run or silently train something else."""
    from typing import get_args

    from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS

    if keep_last_n is not None and keep_last_n < 1:
        raise ConfigError("keep_last_n", f"must be >= 1 (or null to keep every checkpoint), got {keep_last_n}: "
                          "fewer would delete the checkpoint a requeued job resumes from")
    valid = get_args(_PRECISION_INPUT_STR) + get_args(_PRECISION_INPUT_STR_ALIAS)
    if precision is not None and str(precision) not in valid:
        raise ConfigError("precision", f"{precision!r} is not one of {', '.join(valid)}")
    if model_config is not None and train.max_seq_length is not None and train.max_seq_length > model_config.block_size:
        raise ConfigError("train.max_seq_length", f"{train.max_seq_length} is longer than the model's block_size "
                          f"{model_config.block_size}")
    lr = optimizer_lr(optimizer)
    if train.max_lr is None and lr is None:
        raise ConfigError("optimizer", "no learning rate: set optimizer.init_args.lr or train.max_lr (the paper and "
                          "the original used 3e-4; torch's default 1e-3 would otherwise apply unannounced), or run "
                          "`midtrain migrate --config FILE --out NEW.yaml`")
    peak = train.max_lr if train.max_lr is not None else lr
    if not peak > 0:
        raise ConfigError("optimizer.init_args.lr", f"must be > 0, got {peak}")
    if train.min_lr > peak:
        raise ConfigError("train.min_lr", f"{train.min_lr} is above the peak LR {peak}")
    if logger_name == "wandb":
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            raise ConfigError("logger_name", "wandb is not installed: `pip install -e .[wandb]` (offline runs: "
                              "WANDB_MODE=offline), or use logger_name: tensorboard / csv")
    trace = os.environ.get("MIDTRAIN_SAMPLE_TRACE")
    if trace and not Path(trace).parent.is_dir():
        raise ConfigError("MIDTRAIN_SAMPLE_TRACE", f"{trace}: folder {Path(trace).parent} does not exist")
    check_writable_dir(Path(out_dir), "out_dir")


def optimizer_class(path: str) -> type:
    """The class at ``path``: an importable torch.optim.Optimizer subclass, or one line."""
    import importlib

    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError("optimizer", f"{path!r} is not an optimizer class") from None
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ConfigError("optimizer", f"{path!r} is not a torch.optim.Optimizer")
    return cls


def optimizer_lr(optimizer: Union[str, dict]) -> Optional[float]:
    """The lr an optimizer spec sets (None: the class default), after checking that the class exists."""
    if isinstance(optimizer, str):
        path, init = (optimizer if "." in optimizer else f"torch.optim.{optimizer}"), {}
    elif isinstance(optimizer, dict) and isinstance(optimizer.get("class_path"), str):
        path, init = optimizer["class_path"], dict(optimizer.get("init_args") or {})
    else:
        raise ConfigError("optimizer", f"expected a class name or {{class_path, init_args}}, got {optimizer!r}")
    optimizer_class(path)
    lr = init.get("lr")
    if lr is not None and not isinstance(lr, (int, float)):
        raise ConfigError("optimizer.init_args.lr", f"expected a number, got {lr!r}")
    return None if lr is None else float(lr)


def run_end_step(train: TrainArgs, total_steps: Optional[int], segment_start: Optional[int],
                 saved_end_step: Optional[int], start_step: int) -> int:
    """The step this run stops at, the same on every (re)start of the job. Pure.

    ``max_additional_steps`` counts from ``segment_start`` (where this run first started in its
    out_dir), not from the step a requeued job resumes at. ``segment_start`` is None only for a
    checkpoint written before it was recorded: then its saved end step stands.
    """
    if train.max_additional_steps is not None:
        if segment_start is None:
            if saved_end_step is None:
                raise ConfigError("resume", "the checkpoint records neither its segment start nor its end step")
            end = saved_end_step
        else:
            end = segment_start + train.max_additional_steps
        if train.max_steps is None and train.max_iters is not None and end < total_steps:
            raise ConfigError("train.max_iters", f"{train.max_iters:,} micro-batches = {total_steps:,} optimizer steps "
                              f"here is the LR horizon, but max_additional_steps stops this run at step {end:,}: the "
                              "original's 'infinity' placeholder leaves the LR schedule unfinished. Set train.max_steps "
                              "to the whole run (the paper: 61035) and drop max_iters, or run `midtrain migrate "
                              "--config FILE --out NEW.yaml`")
        if total_steps is not None and end > total_steps:
            raise ConfigError("train.max_additional_steps", f"{train.max_additional_steps:,} steps from step "
                              f"{segment_start if segment_start is not None else start_step:,} end at {end:,}, past "
                              f"the run's {total_steps:,} steps (train.max_steps/max_iters/max_tokens, the LR "
                              "horizon); remove max_additional_steps or make the two agree")
        return end
    if total_steps is not None:
        return total_steps
    raise ConfigError("train.max_steps", "set max_steps, max_additional_steps, max_iters or max_tokens")


def check_run_length(train: TrainArgs, start_step: int, tokens: int, seq_len: int, end_step: int, start_kind: str,
                     load_path: Optional[Path], saved_end: Optional[int] = None) -> None:
    """A run's length is its configured steps or tokens, the same at every (re)start, else one line:

    - a length in tokens (or the original's micro-batch ``max_iters``) becomes steps through the batch:
      resuming a checkpoint trained at another tokens-per-step would move the end step (a run of
      20,480 tokens at 256 per step, resumed at step 42 with 512 per step, "completed" at step 40);
    - ``max_iters`` counts micro-batches per rank: a requeue on another number of ranks would move the end
      step the checkpoint recorded;
    - a start at or past the end: nothing to train is not a success (a ``resume_from`` step-30 checkpoint
      with ``max_steps: 20``). Only a requeued job of this run (``resume`` from its own folder) may start
      at its end step, where it writes ``final/`` if missing."""
    if load_path is not None and start_step > 0 and train.max_steps is None and (
            train.max_tokens is not None or train.max_iters is not None):
        before, now = tokens / start_step, train.global_batch_size * seq_len
        if before != now:
            key = "train.max_tokens" if train.max_iters is None else "train.max_iters"
            raise ConfigError("train.global_batch_size", f"{train.global_batch_size} x {seq_len} tokens = {now:,} per "
                              f"step, but {load_path.name} was trained at {before:,.0f} per step and this run's length "
                              f"is {key}: its end step would move. Resume with the checkpoint's batch and sequence "
                              "length, or give train.max_steps")
    if (train.max_iters is not None and train.max_steps is None and train.max_additional_steps is None
            and start_kind == "resume" and saved_end is not None and saved_end != end_step):
        raise ConfigError("train.max_iters", f"{train.max_iters:,} micro-batches end this run at step {end_step:,} on "
                          f"this allocation, and {load_path.name} recorded its end at step {saved_end:,} (another "
                          "number of ranks or batch): give train.max_steps")
    if start_step > end_step or (start_step == end_step and start_kind != "resume"):
        raise ConfigError("train.max_steps" if train.max_steps is not None else "train",
                          f"this run starts at step {start_step:,} ({load_path}) and ends at step {end_step:,}: "
                          "nothing to train; give a longer run (max_steps, max_tokens, max_additional_steps)")


def device_count(devices: Union[int, str], accelerator: str) -> int:
    if devices == "auto":
        return torch.cuda.device_count() if accelerator == "cuda" else 1
    try:
        n = int(devices)
    except ValueError:
        raise ConfigError("devices", f"expected an integer or 'auto', got {devices!r}") from None
    if n < 1:
        raise ConfigError("devices", f"must be >= 1, got {n}")
    return n


def resume_path(resume, out_dir: Path) -> Optional[Path]:
    if resume is False or resume is None:
        return None
    if resume == "auto":
        return ckpt.latest_checkpoint(out_dir)
    if resume is True:
        path = ckpt.latest_checkpoint(out_dir)
        if path is None:
            raise ConfigError("resume", f"true, but {out_dir} holds no checkpoint (use resume: auto to start fresh)")
        return path
    return ckpt.check_checkpoint(Path(resume), "resume")


def check_no_newer_checkpoints(out_dir: Path, load_path: Path) -> None:
    step = ckpt.checkpoint_step(load_path)
    newer = [p.name for s, p in ckpt.list_checkpoints(out_dir) if step is not None and s > step]
    if newer:
        raise ConfigError("resume", f"{out_dir} holds {newer[0]} beyond the resume point {load_path.name}; "
                          "a checkpoint is never overwritten: resume from the newest or use a new out_dir")


def check_fresh_out_dir(out_dir: Path, resume, start_kind: str) -> None:
    """A fresh or midtrain start would collide with existing checkpoints at its first save: refuse before any work."""
    existing = ckpt.list_checkpoints(out_dir)
    if existing:
        raise ConfigError("resume", f"{resume!r}, but {out_dir} already holds checkpoints (newest "
                          f"{existing[-1][1].name}): a {start_kind} run there would collide with them. Resume "
                          "them (resume: auto), or give another out_dir")


def check_extends_in_place(out_dir: Path, start_step: int, end_step: int) -> None:
    """The end of this run could never be written (final/ is never overwritten): refuse before the first step."""
    if start_step < end_step and (Path(out_dir) / ckpt.FINAL).exists():
        raise ConfigError("out_dir", f"{Path(out_dir) / ckpt.FINAL} holds a finished run, and this config trains from "
                          f"step {start_step:,} to {end_step:,}: a finished run is not extended in place. Extend it "
                          f"into a new folder: --out_dir NEW --resume_from {Path(out_dir) / ckpt.FINAL}")


def check_shared_out_dir(fabric, out_dir: Path) -> None:
    """Every rank writes its shard into the folder rank 0 creates: refuse (one line) an out_dir some rank cannot see
    (node-local storage on several nodes), before any work, instead of checkpoints that lack other nodes' shards."""
    import secrets

    from midtrain.train.distributed import agree

    token = Path(out_dir) / f".shared-check-{fabric.broadcast(secrets.token_hex(8) if fabric.global_rank == 0 else None)}"
    if fabric.global_rank == 0:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        token.write_text("")
    fabric.barrier()
    (blind,) = agree(fabric, not token.exists())
    fabric.barrier()
    if fabric.global_rank == 0:
        token.unlink(missing_ok=True)
    if blind:
        raise ConfigError("out_dir", f"{out_dir} is not the same folder on every rank (a file rank 0 wrote there is "
                          "missing on another): sharded checkpoints need a filesystem all nodes share")


def check_tied(checkpoint: Path, tie: Optional[bool], field: str) -> None:
    """A run continues a checkpoint's model as it is: tied input/output embeddings (one matrix) stay tied and
    untied ones untied. A difference between ``train.tie_embeddings`` and the checkpoint's is refused, never
    resolved either way: tying would drop a trained matrix, untying would train twice the embedding parameters."""
    theirs = ckpt.tied_embeddings(checkpoint)
    if theirs != bool(tie):
        raise ConfigError("train.tie_embeddings", f"{'unset' if tie is None else str(tie).lower()}, but the model of "
                          f"{field} {checkpoint} has {'tied' if theirs else 'untied'} input/output embeddings (as its "
                          f"hyperparameters.yaml or config.json records): set train.tie_embeddings: "
                          f"{str(theirs).lower()}")


def changed_at_resume(checkpoint: Path, hparams: dict) -> list[str]:
    """Lines saying which run-shape fields (precision, strategy, devices, num_nodes) differ from what the resumed
    checkpoint was trained with: the YAML's apply from here on, and the log says so."""
    import yaml

    try:
        saved = yaml.safe_load((Path(checkpoint) / "hyperparameters.yaml").read_text()) or {}
    except (OSError, ValueError):
        return []
    out = []
    for key in ("precision", "strategy", "devices", "num_nodes", "activation_checkpointing"):
        if key in saved and key in hparams and saved[key] != hparams[key]:
            out.append(f"note: {checkpoint.name} was trained with {key}: {saved[key]}; this run continues with "
                       f"{key}: {hparams[key]} (the config's)")
    return out


def unused_rows_warning(vocab: int, model_config) -> str:
    """The line a run prints when its tokenizer uses far fewer ids than the model has embedding rows."""
    rows = model_config.padded_vocab_size
    return (f"warning: the tokenizer has {vocab:,} ids and the model {rows:,} embedding and output rows "
            f"({model_config.name or 'model_config'}): {rows - vocab:,} rows are never an input nor a target, yet "
            f"they are trained (weight decay, the softmax), counted in parameters, memory and FLOPs; give a "
            f"model_config with vocab_size and padded_vocab_size {vocab} (docs/your-own-data.md)")
