"""``midtrain pretrain``: pretraining, midtraining and preemption resume in one loop.

Read top to bottom: ``setup`` resolves the config and starts Fabric; ``main`` builds the model,
optimizer and data, restores a checkpoint if there is one, and runs ``fit``; ``fit`` is the loop.

Where a run starts from:
- ``resume: auto`` / ``true`` / a path: a checkpoint of *this* run (preemption). Everything
  resumes sample-exactly, the data included.
- ``resume_from: <base out_dir>/step-00040000`` with a new ``out_dir``: midtraining. Model,
  optimizer, counters and data positions come from the base run; a changed mixture is appended as
  a new stage (each source continues where it stopped), the LR schedule continues.
- ``initial_checkpoint_dir``: weights only, step 0.
How long it runs: ``train.max_steps`` (or ``max_iters``/``max_tokens``) is the whole run and the LR
horizon; ``max_additional_steps`` counts from where this run's *segment* began (the step of its
first start in this out_dir, kept in the checkpoint), so a preempted and requeued job never runs
longer than its YAML says.

Signals: ``midtrain.signals`` records SIGTERM/SIGUSR1/SIGINT from the first line of the process.
At the next step boundary the run checkpoints and exits ``EXIT_REQUEUE`` (75; 130 for SIGINT);
before its first step it exits the same way saying there is nothing to save; once the last step
is done it writes the final checkpoint and exits 0 (complete).
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal, Optional, Union

import lightning as L
import torch
import torch.nn.functional as F
from litgpt import Config
from litgpt.data import DataModule
from litgpt.model import GPT, Block
from litgpt.utils import choose_logger, get_default_supported_precision, instantiate_torch_optimizer, num_parameters

from midtrain import signals
from midtrain.atomic import check_writable_dir
from midtrain.errors import ConfigError, config_error_line
from midtrain.tokenizer import load_tokenizer, tokenizer_vocab_size
from midtrain.train import checkpoint as ckpt
from midtrain.train.args import EvalArgs, TrainArgs
from midtrain.train.metrics import Progress, SourceMeter, available_flops, flops_per_token, perplexity
from midtrain.train.schedules import Schedule, warmup_steps

EXIT_REQUEUE = 75  # EX_TEMPFAIL: checkpointed after a signal; the SLURM launcher requeues on it


def setup(
    model_name: Optional[str] = None,
    model_config: Optional[Config] = None,
    out_dir: Path = Path("out/pretrain"),
    precision: Optional[str] = None,
    initial_checkpoint_dir: Optional[Path] = None,
    resume: Union[bool, Literal["auto"], Path] = False,
    resume_from: Optional[Path] = None,
    overwrite_source: bool = False,
    data: Optional[DataModule] = None,
    train: TrainArgs = TrainArgs(),
    eval: EvalArgs = EvalArgs(),
    optimizer: Union[str, dict] = "AdamW",
    devices: Union[int, str] = "auto",
    num_nodes: Optional[int] = None,
    strategy: Literal["auto", "ddp", "fsdp"] = "auto",
    accelerator: Literal["auto", "cuda", "cpu"] = "auto",
    rendezvous_timeout: float = 300.0,
    tokenizer_dir: Optional[Path] = None,
    logger_name: Literal["tensorboard", "csv", "wandb"] = "tensorboard",
    seed: int = 42,
    compile: Optional[bool] = None,
    keep_last_n: Optional[int] = None,
    hparams: Optional[dict] = None,
) -> int:
    """Pretrain or midtrain a litgpt model on ShardedMixedDataset.

    Args:
        model_name: a litgpt model name (e.g. ``pythia-160m``); or give ``model_config``.
        model_config: a litgpt Config (overrides ``model_name``).
        out_dir: where checkpoints and logs go.
        precision: Fabric precision (default: bf16-true where supported, 32-true on CPU).
        initial_checkpoint_dir: load model weights only from here, start at step 0.
        resume: ``auto`` (newest checkpoint in out_dir, if any), ``true`` (must exist), a checkpoint path, or false.
        resume_from: midtrain: continue the base run's checkpoint into this new ``out_dir``.
        overwrite_source: allow ``out_dir`` to be the base run's folder (otherwise refused).
        data: the DataModule (default: ShardedMixedDataset).
        train: run length, batch, optimisation and LR schedule.
        eval: validation interval and size.
        optimizer: ``AdamW`` or ``{class_path, init_args}``.
        devices: devices per node. num_nodes: nodes (default: SLURM_NNODES or 1).
        strategy: ``auto`` = FSDP on several GPUs, DDP (gloo) on several CPU processes.
        accelerator: ``auto`` (CUDA when available, else CPU), ``cuda`` (refused without GPUs) or ``cpu``;
            study executors ask SLURM for GPUs unless it is ``cpu``.
        rendezvous_timeout: seconds the processes of a multi-process run wait for each other at start-up
            before ending with one line naming the ranks that never arrived.
        tokenizer_dir: a litgpt tokenizer folder (copied into checkpoints; checks the vocabulary).
        logger_name: tensorboard, csv or wandb.
        seed: model init seed.
        compile: torch.compile the model (default: on for CUDA, off on CPU).
        keep_last_n: keep only the newest N step checkpoints of this run.
    """
    from midtrain.data.sharded_mixed import ShardedMixedDataset

    model_config = resolve_model_config(model_name, model_config)
    check_run_inputs(model_config, out_dir, precision, train, optimizer, keep_last_n, logger_name)
    if train.tie_embeddings is not None:
        model_config.tie_embeddings = train.tie_embeddings
    data = ShardedMixedDataset() if data is None else data
    if isinstance(data, ShardedMixedDataset):
        data.check()
    out_dir = Path(out_dir)
    if resume_from is not None:
        resume_from = ckpt.check_checkpoint(resume_from, "resume_from")
        if out_dir.resolve() == resume_from.resolve().parent and not overwrite_source:
            raise ConfigError("out_dir", f"{out_dir} is the base run's folder of resume_from; midtrain into a new "
                              "out_dir (or set overwrite_source: true)")
    num_nodes = num_nodes or int(os.environ.get("SLURM_NNODES", 1))
    if accelerator == "cuda" and not torch.cuda.is_available():
        raise ConfigError("accelerator", "cuda: no CUDA device is visible to this process")
    if accelerator not in ("auto", "cuda", "cpu"):
        raise ConfigError("accelerator", f"expected auto, cuda or cpu, got {accelerator!r}")
    accelerator = "cuda" if accelerator == "auto" and torch.cuda.is_available() else accelerator
    accelerator = "cpu" if accelerator == "auto" else accelerator
    n_devices = _device_count(devices, accelerator)
    if not rendezvous_timeout > 0:
        raise ConfigError("rendezvous_timeout", f"must be > 0 seconds, got {rendezvous_timeout}")
    from midtrain.train import distributed

    distributed.check_world(n_devices, num_nodes)
    if accelerator != "cpu":
        distributed.check_expected_cuda()
    world = n_devices * num_nodes
    if train.global_batch_size % (train.micro_batch_size * world):
        raise ConfigError("train.global_batch_size", f"{train.global_batch_size} is not divisible by "
                          f"micro_batch_size {train.micro_batch_size} x {world} processes")
    precision = precision or (get_default_supported_precision(training=True) if accelerator == "cuda" else "32-true")
    if strategy == "fsdp" and accelerator != "cuda":
        raise ConfigError("strategy", "fsdp needs GPUs: Lightning and torch's FSDP refuse CPU devices; use ddp (gloo) "
                          "for several CPU processes")
    if world > 1 and strategy in ("auto", "fsdp") and accelerator == "cuda":
        fabric_strategy = distributed.strategy("fsdp", rendezvous_timeout, auto_wrap_policy={Block},
                                               state_dict_type="full", sharding_strategy="HYBRID_SHARD")
    elif world > 1:
        fabric_strategy = distributed.strategy("ddp", rendezvous_timeout,
                                               process_group_backend="nccl" if accelerator == "cuda" else "gloo")
    else:
        fabric_strategy = "auto"
    # Lightning hints at srun whenever it exists; our launcher uses srun under SLURM, and a run
    # started by hand on a login/dev node is deliberate.
    warnings.filterwarnings("ignore", message="The `srun` command is available on your system but is not used")
    # wandb writes into the run folder like the other loggers (Lightning's default is the current directory)
    where = {"save_dir": str(out_dir / "logs")} if logger_name == "wandb" else {}
    logger = choose_logger(logger_name, out_dir, name=f"midtrain-{out_dir.name}", log_interval=train.log_interval,
                           log_args={}, resume=bool(resume), **where)
    fabric = L.Fabric(accelerator=accelerator, devices=n_devices, num_nodes=num_nodes, strategy=fabric_strategy,
                      precision=precision, loggers=[logger])
    try:
        fabric.launch()
    except distributed.StopDuringRendezvous as e:
        print(f"midtrain pretrain: {e}; exiting {EXIT_REQUEUE} (requeue)", flush=True)
        return signals.exit_code_for(signals.requested(), EXIT_REQUEUE)
    except distributed.RendezvousTimeout as e:
        print(f"midtrain pretrain: error: {e}", file=sys.stderr, flush=True)
        return 1
    launched = distributed.launched_world()
    fabric.print(f"processes: {fabric.world_size} (devices {n_devices} x num_nodes {num_nodes}; "
                 f"{'started by ' + launched[1].split(' started')[0] if launched else 'started by Fabric'})")
    return main(fabric, model_config, out_dir, precision, initial_checkpoint_dir, resume, resume_from, data, train,
                eval, optimizer, tokenizer_dir, seed, accelerator == "cuda" if compile is None else compile,
                keep_last_n, hparams or {})


def resolve_model_config(model_name: Optional[str], model_config: Optional[Config]) -> Config:
    """``model_config`` if given, else litgpt's config for ``model_name``."""
    if model_config is not None:
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


def optimizer_lr(optimizer: Union[str, dict]) -> Optional[float]:
    """The lr an optimizer spec sets (None: the class default), after checking that the class exists."""
    import importlib

    if isinstance(optimizer, str):
        path, init = (optimizer if "." in optimizer else f"torch.optim.{optimizer}"), {}
    elif isinstance(optimizer, dict) and isinstance(optimizer.get("class_path"), str):
        path, init = optimizer["class_path"], dict(optimizer.get("init_args") or {})
    else:
        raise ConfigError("optimizer", f"expected a class name or {{class_path, init_args}}, got {optimizer!r}")
    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError("optimizer", f"{path!r} is not an optimizer class") from None
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ConfigError("optimizer", f"{path!r} is not a torch.optim.Optimizer")
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


def _device_count(devices: Union[int, str], accelerator: str) -> int:
    if devices == "auto":
        return torch.cuda.device_count() if accelerator == "cuda" else 1
    try:
        n = int(devices)
    except ValueError:
        raise ConfigError("devices", f"expected an integer or 'auto', got {devices!r}") from None
    if n < 1:
        raise ConfigError("devices", f"must be >= 1, got {n}")
    return n


def main(fabric, model_config: Config, out_dir: Path, precision: str, initial_checkpoint_dir, resume, resume_from,
         data: DataModule, train: TrainArgs, eval: EvalArgs, optimizer_spec, tokenizer_dir, seed: int,
         compile: bool, keep_last_n, hparams: dict) -> int:
    from midtrain.data.sharded_mixed import ShardedMixedDataset

    # ---- where this job starts ----
    resume_path = _resume_path(resume, out_dir)
    start_kind = "resume" if resume_path else ("midtrain" if resume_from else "fresh")
    load_path = resume_path or resume_from
    # what every checkpoint carries beside the weights (tokenizer files; the HF config.json of an imported model,
    # from the checkpoint this run continues), read now: a later prune may delete that checkpoint
    side_files = ckpt.read_side_files(tokenizer_dir, load_path)
    if fabric.global_rank == 0:
        removed = ckpt.clean_leftovers(out_dir)
        if removed:
            fabric.print(f"removed what a save cut short left in {out_dir}: {', '.join(removed)}")
    fabric.barrier()
    if start_kind != "resume":
        existing = ckpt.list_checkpoints(out_dir)
        if existing:  # a fresh or midtrain start would collide with them at its first save: refuse before any work
            raise ConfigError("resume", f"{resume!r}, but {out_dir} already holds checkpoints (newest "
                              f"{existing[-1][1].name}): a {start_kind} run there would collide with them. Resume "
                              "them (resume: auto), or give another out_dir")

    # ---- model, tokenizer, optimizer ----
    fabric.seed_everything(seed, verbose=False)
    seq_len = train.max_seq_length or model_config.block_size
    tokenizer = load_tokenizer(tokenizer_dir) if tokenizer_dir is not None else None
    if tokenizer is not None:
        vocab = tokenizer_vocab_size(tokenizer)
        if vocab > model_config.padded_vocab_size:
            raise ConfigError("tokenizer_dir", f"tokenizer vocabulary {vocab} is larger than the model's "
                              f"padded_vocab_size {model_config.padded_vocab_size}")
    with fabric.init_module(empty_init=False):
        model = GPT(model_config)
    from litgpt.pretrain import initialize_weights

    initialize_weights(fabric, model, n_layer=model_config.n_layer, n_embd=model_config.n_embd)
    model.max_seq_length = seq_len
    if initial_checkpoint_dir is not None and load_path is None:
        path = ckpt.check_checkpoint(initial_checkpoint_dir, "initial_checkpoint_dir") / ckpt.MODEL_FILE
        _load_weights(model, path)
    n_params = num_parameters(model)
    fabric.print(f"model: {n_params / 1e6:.1f}M parameters, seq {seq_len}, {start_kind} run -> {out_dir}")
    if compile:
        model = torch.compile(model)
    model = fabric.setup(model)
    try:
        optimizer = instantiate_torch_optimizer(optimizer_spec, model.parameters())
    except (TypeError, ValueError) as e:
        raise ConfigError("optimizer.init_args", f"{' '.join(str(e).split())[:200]}") from None
    optimizer = fabric.setup_optimizers(optimizer)
    max_lr = train.max_lr if train.max_lr is not None else optimizer.param_groups[0]["lr"]

    # ---- data ----
    data.connect(tokenizer=tokenizer, batch_size=train.micro_batch_size, max_seq_length=seq_len,
                 global_batch_size=train.global_batch_size)
    if isinstance(data, ShardedMixedDataset) and data.vocab_size is None:
        data.vocab_size = model_config.padded_vocab_size
    with fabric.rank_zero_first():
        data.prepare_data()
    data.setup()
    exact = isinstance(data, ShardedMixedDataset) and data.mixer == "exact"
    train_loader = data.train_dataloader(with_source_ids=True) if exact else data.train_dataloader()
    val_loaders = data.val_dataloaders() if hasattr(data, "val_dataloaders") else {"val": data.val_dataloader()}
    val_loaders = {k: v for k, v in val_loaders.items() if v is not None}

    # ---- restore ----
    state: dict[str, Any] = {"model": model, "optimizer": optimizer, "train_dataloader": train_loader,
                             "iter_num": 0, "step_count": 0, "tokens": 0, "source_tokens": {}, "end_step": None,
                             "decay_from": None, "segment_start": None}
    if load_path is not None:
        if start_kind == "resume":
            _check_no_newer_checkpoints(out_dir, load_path)
        fabric.print(f"loading {load_path}")
        if start_kind == "midtrain" and hasattr(train_loader, "accept_foreign"):
            train_loader.accept_foreign = True
        _load(fabric, load_path / ckpt.MODEL_FILE, state, "resume_from" if start_kind == "midtrain" else "resume")
        if getattr(train_loader, "imported", False):
            train_loader.notes[-1]["at_step"] = state["step_count"]
            state["tokens"] = state["tokens"] or state["step_count"] * train.global_batch_size * seq_len
            if "optimizer" in train_loader.notes[-1]:  # `midtrain import` of a Hugging Face checkpoint
                fabric.print(f"resume_from: {load_path} was imported from Hugging Face: model and step "
                             f"{state['step_count']:,} continue (and the LR schedule with them); "
                             f"{train_loader.notes[-1]['optimizer']}: AdamW's moments start at zero"
                             + (f", the LR ramps back up over {train.rewarm_steps} step(s) (train.rewarm_steps)"
                                if train.rewarm_steps else "; train.rewarm_steps N would ramp the LR back up")
                             + "; every source starts a fresh seeded order (recorded in the stage history)")
            else:
                fabric.print(f"resume_from: {load_path} was written by the original litgpt fork: model, optimizer and "
                             f"step {state['step_count']:,} continue (and the LR schedule with them); its litdata data "
                             "position cannot be mapped, so every source starts a fresh seeded order (recorded in the "
                             "stage history)")
    notes = [n for n in getattr(train_loader, "notes", None) or [] if "optimizer" in n or "imported" in n]
    if notes:  # an import's history (e.g. a fresh optimizer state) goes with this run's metrics, not only its checkpoints
        for logger in fabric.loggers:
            try:  # TensorBoard and W&B keep it with the run's hyperparameters
                logger.log_hyperparams({"checkpoint_notes": json.dumps(notes, default=str)})
            except NotImplementedError:  # Fabric's CSV logger keeps none
                pass
            log_dir = getattr(logger, "log_dir", None)
            if log_dir and fabric.global_rank == 0:  # beside metrics.csv / the event files, whatever the logger
                Path(log_dir).mkdir(parents=True, exist_ok=True)
                (Path(log_dir) / "checkpoint_notes.json").write_text(json.dumps(notes, indent=1, default=str) + "\n")
    start_step = state["step_count"]
    total_steps = train.total_steps(fabric.world_size, 1, seq_len)
    if total_steps == 0:
        raise ConfigError("train.max_tokens" if train.max_steps is None and train.max_iters is None else "train.max_iters",
                          f"is less than one optimizer step ({train.global_batch_size} x {seq_len} tokens)")
    # A symlinked base checkpoint (the original's midtrain layout) begins a new segment like resume_from.
    own_checkpoint = start_kind == "resume" and not load_path.is_symlink()
    if not own_checkpoint:
        state["segment_start"] = start_step
    end_step = run_end_step(train, total_steps, state["segment_start"], state["end_step"], start_step)
    state["end_step"] = end_step
    if end_step < (total_steps or end_step):
        fabric.print(f"this run stops at step {end_step:,} (max_additional_steps {train.max_additional_steps:,} from "
                     f"step {state['segment_start']}) of a {total_steps:,}-step LR horizon")
    if start_step < end_step and (out_dir / ckpt.FINAL).exists():
        # the end of this run could never be written (final/ is never overwritten): refuse before the first step
        raise ConfigError("out_dir", f"{out_dir / ckpt.FINAL} holds a finished run, and this config trains from step "
                          f"{start_step:,} to {end_step:,}: a finished run is not extended in place. Extend it into a "
                          f"new folder: --out_dir NEW --resume_from {out_dir / ckpt.FINAL}")
    if start_step >= end_step:
        fabric.print(f"run already complete: step {start_step} >= {end_step}")
        if not (out_dir / ckpt.FINAL).exists() and start_kind == "resume":
            if val_loaders and eval.final_validation and not _log_validation(fabric, state["model"], val_loaders, eval,
                                                                              start_step):
                return signals.exit_code_for(signals.requested(), EXIT_REQUEUE)
            _save(fabric, out_dir, ckpt.FINAL, state, train_loader, hparams, model_config, side_files, None)
            _finalize_loggers(fabric, "success")
        return 0

    horizon = total_steps if total_steps is not None else end_step
    if train.lr_scheduler == "decay" and state["decay_from"] is None:
        if hf_import_step(train_loader) is not None:  # decay starts from the LR the optimizer held: an import holds none
            raise ConfigError("train.lr_scheduler", "decay continues from the LR in the checkpoint's optimizer state, "
                              "and a checkpoint imported from Hugging Face has none: give the original schedule "
                              "(cosine or wsd with its max_steps) instead")
        state["decay_from"] = [start_step, optimizer.param_groups[0]["lr"] if start_step else max_lr]
    decay_step, decay_lr = state["decay_from"] or (0, None)
    schedule = Schedule(train.lr_scheduler, max_lr, train.min_lr, horizon,
                        warmup_steps(horizon, train.lr_warmup_steps, train.lr_warmup_fraction), train.stable_steps,
                        train.decay_fraction, train.decay_shape, decay_step, decay_lr)
    return fit(fabric, state, schedule, end_step, train, eval, val_loaders, out_dir, seq_len, model_config,
               side_files, keep_last_n, hparams, n_params, precision)


def fit(fabric, state, schedule: Schedule, end_step: int, train: TrainArgs, eval: EvalArgs, val_loaders, out_dir,
        seq_len, model_config, tokenizer_dir, keep_last_n, hparams, n_params, precision) -> int:
    model, optimizer, loader = state["model"], state["optimizer"], state["train_dataloader"]
    source_ids = list(getattr(loader, "source_ids", ["all"]))
    accum = train.global_batch_size // (train.micro_batch_size * fabric.world_size)
    meter = SourceMeter(len(source_ids), fabric.device)
    progress = Progress(state["step_count"], end_step)
    peak = available_flops(fabric, precision)
    fpt = flops_per_token(n_params, model_config.n_layer, model_config.n_embd, seq_len)
    signals.install()  # already done by the CLI entry point; here for callers of the library
    trace = _sample_trace(fabric)
    tokens_at_start = state["tokens"]
    first_step = state["step_count"]

    if eval.initial_validation and state["step_count"] == 0:
        _log_validation(fabric, model, val_loaders, eval, state["step_count"])
    rewarm_from = hf_import_step(loader)
    if train.rewarm_steps and rewarm_from is None:
        raise ConfigError("train.rewarm_steps", f"{train.rewarm_steps}, but this run does not continue a checkpoint "
                          "imported from Hugging Face (`midtrain import`): its optimizer state is not fresh")
    data_iter = iter(loader)
    model.train()
    while state["step_count"] < end_step:
        if _any_rank(fabric, signals.requested() is not None):
            code = signals.exit_code_for(signals.requested(), EXIT_REQUEUE)
            name = ckpt.step_name(state["step_count"])
            if state["step_count"] == first_step:
                fabric.print(f"signal {signals.name(signals.requested())} received before the first step: nothing to "
                             f"save (the run restarts from where it started); exiting {code}")
            else:
                fabric.print(f"signal {signals.name(signals.requested())} received: checkpointing step "
                             f"{state['step_count']} and exiting {code}")
                if not (out_dir / name).exists():
                    _save(fabric, out_dir, name, state, loader, hparams, model_config, tokenizer_dir, keep_last_n)
            _finalize_loggers(fabric, "aborted")
            return code
        lr = schedule.lr_at(state["step_count"]) * rewarm_factor(state["step_count"], rewarm_from, train.rewarm_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        samples_at_step = getattr(loader, "samples", None)
        trace_lines: list[str] = []
        for micro in range(accum):
            t_wait = time.perf_counter()
            try:
                batch = next(data_iter)
                progress.data_wait += time.perf_counter() - t_wait
            except Exception as e:
                stop = signals.requested()
                line = config_error_line(e)
                if stop is None and line is None:
                    raise
                # a worker ended by the stop signal, or a shard changed/vanished under the run:
                # keep the last complete step, then stop
                _save_at_boundary(fabric, state, first_step, samples_at_step, out_dir, hparams, model_config,
                                  tokenizer_dir, keep_last_n)
                if stop is None:
                    raise ConfigError(line) from None
                kept = ("nothing to save before the first step" if state["step_count"] == first_step
                        else f"checkpointing step {state['step_count']}")
                fabric.print(f"signal {signals.name(stop)} received mid-step: {kept}; "
                             f"exiting {signals.exit_code_for(stop, EXIT_REQUEUE)}")
                _finalize_loggers(fabric, "aborted")
                return signals.exit_code_for(stop, EXIT_REQUEUE)
            tokens, sources = batch if isinstance(batch, (tuple, list)) else (batch, torch.zeros(len(batch), dtype=torch.long))
            if trace is not None:  # written once the step is complete (a step cut short is redone on resume)
                trace_lines.append(f"{state['step_count']} {micro} {zlib.crc32(tokens.numpy().tobytes())}\n")
            tokens = fabric.to_device(tokens.long())
            sources = fabric.to_device(sources.long())
            # contiguous: the loader's rows carry a source column, and strided inputs slow the model
            inputs, targets = tokens[:, :seq_len].contiguous(), tokens[:, 1:seq_len + 1].contiguous()
            with fabric.no_backward_sync(model, enabled=micro < accum - 1):
                logits = model(inputs)
                per_sample = per_token_loss(logits, targets).mean(dim=1)
                fabric.backward(per_sample.mean() / accum)
            meter.add(sources, per_sample.detach())
            state["iter_num"] += 1
        if train.max_norm:
            fabric.clip_gradients(model, optimizer, max_norm=train.max_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if trace is not None:
            trace.writelines(trace_lines)
        state["step_count"] += 1
        state["tokens"] += train.global_batch_size * seq_len
        step = state["step_count"]

        if step % train.log_interval == 0 or step == end_step:
            loss_sum, count = meter.reduce(fabric)
            for sid, n in zip(source_ids, count.tolist()):
                state["source_tokens"][sid] = state["source_tokens"].get(sid, 0) + int(n) * seq_len
            rate, eta, data_share = progress.tick(step, state["tokens"] - tokens_at_start)
            loss = float(loss_sum.sum() / count.sum().clamp(min=1))
            metrics = {"loss": loss, "lr": lr, "tokens": state["tokens"], "tokens_per_sec": rate, "step": step,
                       "data_wait_share": data_share}
            if peak:
                metrics["mfu"] = rate * fpt / (peak * fabric.world_size)
            if fabric.device.type == "cuda":
                metrics["peak_mem_gb"] = torch.cuda.max_memory_allocated(fabric.device) / 1e9
            total = max(1, sum(state["source_tokens"].values()))
            for i, sid in enumerate(source_ids):
                if count[i] > 0:
                    metrics[f"train_loss/{sid}"] = float(loss_sum[i] / count[i])
                metrics[f"source_tokens/{sid}"] = state["source_tokens"].get(sid, 0)
                metrics[f"source_share/{sid}"] = state["source_tokens"].get(sid, 0) / total
            fabric.log_dict(metrics, step=step)
            mfu = f" | MFU {metrics['mfu']:.1%}" if peak else ""
            mem = f" | peak mem {metrics['peak_mem_gb']:.1f} GB" if "peak_mem_gb" in metrics else ""
            fabric.print(f"step {step}/{end_step} | loss {loss:.4f} | lr {lr:.3e} | {rate:,.0f} tok/s{mfu}{mem} | "
                         f"data wait {data_share:.1%} | ETA {eta}")
        if val_loaders and eval.interval and step % eval.interval == 0 and step != end_step:
            _log_validation(fabric, model, val_loaders, eval, step)
        if train.save_interval and step % train.save_interval == 0 and step != end_step:
            _save(fabric, out_dir, ckpt.step_name(step), state, loader, hparams, model_config, tokenizer_dir, keep_last_n)

    if val_loaders and eval.final_validation and not _log_validation(fabric, model, val_loaders, eval,
                                                                      state["step_count"]):
        # stopped during the final validation: keep the last step; the requeued job validates and finishes
        code = signals.exit_code_for(signals.requested(), EXIT_REQUEUE)
        name = ckpt.step_name(state["step_count"])
        if not (out_dir / name).exists():
            _save(fabric, out_dir, name, state, loader, hparams, model_config, tokenizer_dir, keep_last_n)
        fabric.print(f"checkpointed step {state['step_count']} before the final validation; exiting {code}")
        _finalize_loggers(fabric, "aborted")
        return code
    _save(fabric, out_dir, ckpt.FINAL, state, loader, hparams, model_config, tokenizer_dir, None)
    _finalize_loggers(fabric, "success")
    fabric.print(f"done: {state['step_count']} steps, {state['tokens']:,} tokens -> {out_dir / ckpt.FINAL}")
    return 0


def per_token_loss(logits: torch.Tensor, targets: torch.Tensor, chunk_rows: int = 128) -> torch.Tensor:
    """Cross-entropy per token, ``[batch, seq]``, in row chunks as litgpt's chunked_cross_entropy does (on CPU the
    full ``[batch*seq, vocab]`` softmax was ~9% of a step slower: bench/step_overhead.py); unreduced, so the
    loss can be split per sample and per source."""
    flat, flat_targets = logits.reshape(-1, logits.size(-1)), targets.reshape(-1)
    parts = [F.cross_entropy(lc.float(), tc, reduction="none")
             for lc, tc in zip(flat.split(chunk_rows), flat_targets.split(chunk_rows))]
    return torch.cat(parts).view(targets.shape)


def _save_at_boundary(fabric, state, first_step, samples_at_step, out_dir, hparams, model_config,
                      tokenizer_dir, keep_last_n) -> None:
    """The model and optimizer are still at the last step boundary: checkpoint it (data position rewound
    to that boundary) so that fixing the shard and resuming loses no work."""
    loader = state["train_dataloader"]
    name = ckpt.step_name(state["step_count"])
    if state["step_count"] == first_step or samples_at_step is None or (Path(out_dir) / name).exists():
        return
    state["optimizer"].zero_grad(set_to_none=True)
    loader.samples = samples_at_step
    _save(fabric, out_dir, name, state, loader, hparams, model_config, tokenizer_dir, keep_last_n)


def _finalize_loggers(fabric, status: str) -> None:
    for logger in fabric.loggers:  # flush buffered rows (the CSV logger writes in batches)
        logger.finalize(status)
        if type(logger).__name__ == "WandbLogger" and fabric.global_rank == 0:
            logger.experiment.finish(exit_code=0 if status == "success" else 1)  # not left to interpreter exit


def hf_import_step(loader) -> Optional[int]:
    """The step of the `midtrain import` this run descends from (its fresh-optimizer note), else None."""
    for note in getattr(loader, "notes", None) or []:
        if "optimizer" in note and note.get("at_step") is not None:
            return int(note["at_step"])
    return None


def rewarm_factor(step: int, import_step: Optional[int], rewarm_steps: int) -> float:
    """LR multiplier at ``step``: (step - S + 1) / N for S <= step < S + N after an import at S, else 1. Pure."""
    if not rewarm_steps or import_step is None or not import_step <= step < import_step + rewarm_steps:
        return 1.0
    return (step - import_step + 1) / rewarm_steps


@torch.no_grad()
def validate(fabric, model, loader, max_iters: int) -> Optional[float]:
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=fabric.device)
    seq = model.max_seq_length
    for k, batch in enumerate(loader):
        if k >= max_iters:
            break
        tokens = fabric.to_device((batch[0] if isinstance(batch, (tuple, list)) else batch).long())
        logits = model(tokens[:, :seq])
        targets = tokens[:, 1:seq + 1]
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), reduction="sum")
        total += torch.stack([loss.double(), torch.tensor(targets.numel(), dtype=torch.float64, device=fabric.device)])
    total = fabric.all_reduce(total, reduce_op="sum")
    model.train()
    return None if total[1] == 0 else float(total[0] / total[1])  # None: no data, never a loss of 0


def _log_validation(fabric, model, val_loaders, eval: EvalArgs, step: int) -> bool:
    """Validate on every set and log; False when a stop signal cut it short (its loader workers were ended)."""
    metrics = {}
    for name, loader in val_loaders.items():
        try:
            loss = validate(fabric, model, loader, eval.max_iters)
        except Exception:
            if signals.requested() is None:
                raise
            model.train()
            fabric.print(f"validation at step {step} cut short by {signals.name(signals.requested())}: not logged")
            return False
        if loss is None:  # refused at start-up (check_val_sets); a loader of another DataModule may still be empty
            continue
        metrics[f"val_loss/{name}"] = loss
        metrics[f"val_ppl/{name}"] = perplexity(loss)
    fabric.log_dict(metrics, step=step)
    fabric.print("validation " + " | ".join(f"{n} loss {metrics[f'val_loss/{n}']:.4f} ppl {metrics[f'val_ppl/{n}']:.2f}"
                                             if f"val_loss/{n}" in metrics else f"{n} no data (0 tokens)"
                                             for n in val_loaders))
    return True


def _save(fabric, out_dir, name, state, loader, hparams, model_config, tokenizer_dir, keep_last_n) -> None:
    data_state = loader.state_dict() if hasattr(loader, "state_dict") else {}
    training_state = {
        "step": state["step_count"], "iter_num": state["iter_num"], "tokens": state["tokens"],
        "end_step": state["end_step"], "segment_start": state["segment_start"],
        "source_tokens": state["source_tokens"], "data": data_state,
    }
    ckpt.save_checkpoint(fabric, out_dir, name, state, training_state, hparams, model_config, tokenizer_dir, keep_last_n)
    fabric.print(f"saved {Path(out_dir) / name}")


def _load_weights(model, path: Path) -> None:
    """Weights only, from our checkpoints ({"model": ...}) or plain litgpt/converted state dicts."""
    def load():
        state = torch.load(path, map_location="cpu", weights_only=False)
        model.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)

    _translate_load_errors(load, path, "initial_checkpoint_dir")


def _load(fabric, path: Path, state: dict, field: str) -> None:
    def load():
        remainder = fabric.load(path, state, strict=False)
        state.update({k: v for k, v in remainder.items() if k in state})

    _translate_load_errors(load, path, field)


def _translate_load_errors(load, path: Path, field: str) -> None:
    try:
        load()
    except ConfigError:
        raise
    except RuntimeError as e:
        msg = " ".join(str(e).split())
        if "size mismatch" in msg or "Missing key" in msg or "Unexpected key" in msg:
            raise ConfigError(field, f"{path} does not match the model config ({msg[:200]})") from None
        raise ConfigError(field, f"{path} could not be loaded ({msg[:200]})") from None
    except (OSError, EOFError, ValueError, KeyError, __import__("pickle").UnpicklingError) as e:
        raise ConfigError(field, f"{path} is missing or corrupt ({type(e).__name__}: {str(e)[:200]})") from None


def _resume_path(resume, out_dir: Path) -> Optional[Path]:
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


def _check_no_newer_checkpoints(out_dir: Path, load_path: Path) -> None:
    step = ckpt.checkpoint_step(load_path)
    newer = [p.name for s, p in ckpt.list_checkpoints(out_dir) if step is not None and s > step]
    if newer:
        raise ConfigError("resume", f"{out_dir} holds {newer[0]} beyond the resume point {load_path.name}; "
                          "a checkpoint is never overwritten: resume from the newest or use a new out_dir")


def _any_rank(fabric, value: bool) -> bool:
    if fabric.world_size == 1:
        return value
    return bool(fabric.all_reduce(torch.tensor(float(value), device=fabric.device), reduce_op="sum") > 0)


def _sample_trace(fabric):
    """Debug aid: MIDTRAIN_SAMPLE_TRACE=prefix writes one line per consumed micro-batch (step, micro, crc32)."""
    prefix = os.environ.get("MIDTRAIN_SAMPLE_TRACE")
    if not prefix:
        return None
    return open(f"{prefix}.rank{fabric.global_rank}", "a", buffering=1)


def run_config_dict(cfg) -> dict:
    """The resolved config as plain data, for hyperparameters.yaml."""
    def plain(v):
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if hasattr(v, "__dataclass_fields__"):
            return plain(asdict(v))
        return v
    return plain(cfg)
