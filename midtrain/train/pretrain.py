"""``midtrain pretrain``: pretraining, midtraining and preemption resume in one loop.

Read top to bottom: ``setup`` resolves the config and starts Fabric; ``main`` builds the model,
optimizer and data, restores a checkpoint if there is one, and runs ``fit``; ``fit`` is the loop,
one optimizer step at a time from the loader to the optimizer. Start-up checks live in
``startup``, checkpoint loading in ``restore``, writing in ``saver``.

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
At the next step boundary the run checkpoints and exits ``EXIT_REQUEUE`` (75, a Ctrl-C too);
before its first step it exits the same way saying there is nothing to save; once the last step
is done it writes the final checkpoint and exits 0 (complete). Every early exit goes through
``stop``: keep the last complete step, close the logs, return the exit code.

Size (~620 lines, over the house's ~450): setup -> main -> fit stay in one file, as litgpt's pretrain.py (532
lines) keeps them, so that a step can be read from the loader to the optimizer without leaving it; what made it
longer moved out (start-up checks, restore, saving, validation, distributed agreement).
"""

from __future__ import annotations

import os
import sys
import time
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

import lightning as L
import torch
from litgpt import Config
from litgpt.data import DataModule
from litgpt.utils import choose_logger, get_default_supported_precision, instantiate_torch_optimizer, num_parameters

from midtrain import signals
from midtrain.errors import ConfigError, config_error_line
from midtrain.forked import run_forked
from midtrain.signals import EXIT_REQUEUE
from midtrain.tokenizer import load_tokenizer, tokenizer_vocab_size
from midtrain.train import checkpoint as ckpt
from midtrain.train import memory, parallel, startup
from midtrain.train.args import EvalArgs, TrainArgs
from midtrain.train.divergence import Divergence
from midtrain.train import flops
from midtrain.train.metrics import Progress, SourceMeter, gpu_peak, per_token_loss, token_loss
from midtrain.train.restore import hf_import_step, load_weights, log_checkpoint_notes, restore
from midtrain.train.saver import Saver
from midtrain.train.schedules import Schedule, rewarm_factor, warmup_steps
from midtrain.train import distributed
from midtrain.train.validation import log_validation


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
    strategy: Literal["auto", "ddp", "fsdp", "hsdp"] = "auto",
    activation_checkpointing: bool = False,
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
        precision: Fabric precision (default: bf16-mixed on GPUs that support bf16, 16-mixed on older ones, 32-true
            on CPU).
        initial_checkpoint_dir: load model weights only from here, start at step 0.
        resume: ``auto`` (newest checkpoint in out_dir, if any), ``true`` (must exist), a checkpoint path, or false.
        resume_from: midtrain: continue the base run's checkpoint into this new ``out_dir``.
        overwrite_source: allow ``out_dir`` to be the base run's folder (otherwise refused).
        data: the DataModule (default: ShardedMixedDataset).
        train: run length, batch, optimisation and LR schedule.
        eval: validation interval and size.
        optimizer: ``AdamW`` or ``{class_path, init_args}``.
        devices: devices per node. num_nodes: nodes (default: SLURM_NNODES or 1).
        strategy: ``ddp`` (a full replica per rank), ``fsdp`` (FSDP2: shard over every rank), ``hsdp`` (replicate
            across nodes, shard within one), or ``auto``: ddp where the memory estimate of a replica fits the GPU
            (always on CPU), else fsdp. See midtrain.train.parallel.
        activation_checkpointing: recompute each transformer Block's activations in the backward pass instead of
            keeping them (less memory, ~1/3 more compute).
        accelerator: ``auto`` (CUDA when available, else CPU), ``cuda`` (refused without GPUs) or ``cpu``;
            study executors ask SLURM for GPUs unless it is ``cpu``.
        rendezvous_timeout: seconds the processes of a multi-process run wait for each other at start-up
            before ending with one line naming the ranks that never arrived.
        tokenizer_dir: a litgpt tokenizer folder (copied into checkpoints; checks the vocabulary).
        logger_name: tensorboard, csv or wandb.
        seed: model init seed.
        compile: torch.compile each transformer Block and the loss (default: on for CUDA without sharding, off on CPU
            and under fsdp/hsdp). See midtrain.train.parallel.compile_blocks.
        keep_last_n: keep only the newest N step checkpoints of this run.
    """
    from midtrain.data.sharded_mixed import ShardedMixedDataset

    model_config = startup.resolve_model_config(model_name, model_config)
    startup.check_run_inputs(model_config, out_dir, precision, train, optimizer, keep_last_n, logger_name)
    data = ShardedMixedDataset() if data is None else data
    if isinstance(data, ShardedMixedDataset):
        data.check()
        data.check_tokenizer(tokenizer_dir)  # shards of one tokenizer, tokenizer_dir's (its notes: in main)
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
    from midtrain.train import distributed

    if accelerator != "cpu":  # the configured one: "auto" would otherwise fall back to CPU on a GPU job, silently
        distributed.check_expected_cuda()
    accelerator = "cuda" if accelerator == "auto" and torch.cuda.is_available() else accelerator
    accelerator = "cpu" if accelerator == "auto" else accelerator
    n_devices = startup.device_count(devices, accelerator)
    if not rendezvous_timeout > 0:
        raise ConfigError("rendezvous_timeout", f"must be > 0 seconds, got {rendezvous_timeout}")
    distributed.check_world(n_devices, num_nodes)
    world = n_devices * num_nodes
    if train.global_batch_size % (train.micro_batch_size * world):
        raise ConfigError("train.global_batch_size", f"{train.global_batch_size} is not divisible by "
                          f"micro_batch_size {train.micro_batch_size} x {world} processes")
    precision = precision or (get_default_supported_precision(training=True) if accelerator == "cuda" else "32-true")
    seq = train.max_seq_length or model_config.block_size
    # the strategy (auto: a replica per GPU where it fits, else shard) and the per-rank memory estimate, computed
    # in a forked child: its FakeTensorMode trace would leave extra autograd threads in this process
    # (a forked child never touches CUDA: the device's memory is read here and handed to it)
    device_bytes = (torch.cuda.get_device_properties(0).total_memory
                    if world > 1 and strategy == "auto" and accelerator == "cuda" else None)
    kind, estimate = run_forked(plan_memory, model_config, train.micro_batch_size, seq, precision, strategy, world,
                                num_nodes, accelerator, activation_checkpointing, optimizer_name(optimizer),
                                bool(train.tie_embeddings), device_bytes)
    estimate = memory.MemoryEstimate(**{k: v for k, v in estimate.items() if k not in ("states", "total")})
    if kind in parallel.SHARDED and getattr(data, "mixer", "exact") == "litdata":
        raise ConfigError("strategy", f"{kind} keeps the data position in training_state.json, where mixer litdata's "
                          "state does not survive (its per-worker counts are keyed by integers): use data mixer: "
                          "exact, or strategy: ddp")
    fabric_strategy = parallel.fabric_strategy(kind, rendezvous_timeout, accelerator, world, num_nodes, precision)
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
        return EXIT_REQUEUE
    except distributed.RendezvousTimeout as e:
        print(f"midtrain pretrain: error: {e}", file=sys.stderr, flush=True)
        return 1
    launched = distributed.launched_world()
    fabric.print(f"processes: {fabric.world_size} (devices {n_devices} x num_nodes {num_nodes}; "
                 f"{'started by ' + launched[1].split(' started')[0] if launched else 'started by Fabric'})")
    run = Run(model_config, out_dir, precision, initial_checkpoint_dir, resume, resume_from, train, eval, optimizer,
              tokenizer_dir, seed,
              # torch.compile over FSDP2 has not met a GPU here yet (bench/gpu.sh): off under sharding unless asked
              (accelerator == "cuda" and kind not in parallel.SHARDED) if compile is None else compile,
              keep_last_n, hparams or {},
              kind, activation_checkpointing, num_nodes, estimate)
    code = main(fabric, run, data)
    distributed.leave_group()  # (CI saw a 2-rank FSDP2 run, and once a 4-rank HSDP run, abort at exit: see there)
    return code


@dataclass
class Run:
    """The resolved run config that ``main`` and ``fit`` read (what ``setup`` received, checked)."""

    model_config: Config
    out_dir: Path
    precision: str
    initial_checkpoint_dir: Optional[Path]
    resume: Union[bool, str, Path]
    resume_from: Optional[Path]
    train: TrainArgs
    eval: EvalArgs
    optimizer: Union[str, dict]
    tokenizer_dir: Optional[Path]
    seed: int
    compile: bool
    keep_last_n: Optional[int]
    hparams: dict
    strategy: str = "single"
    """single, ddp, fsdp or hsdp (``parallel.resolve``)."""
    activation_checkpointing: bool = False
    num_nodes: int = 1
    estimate: Optional[memory.MemoryEstimate] = None
    """Per-rank memory, estimated before launch (``plan_memory``)."""

    @property
    def sharded(self) -> bool:
        return self.strategy in parallel.SHARDED


def main(fabric, run: Run, data: DataModule) -> int:
    from midtrain.data.sharded_mixed import ShardedMixedDataset

    train, out_dir, model_config = run.train, run.out_dir, run.model_config
    # ---- where this job starts ----
    resume_path = startup.resume_path(run.resume, out_dir)
    start_kind = "resume" if resume_path else ("midtrain" if run.resume_from else "fresh")
    load_path = resume_path or run.resume_from
    # what every checkpoint carries beside the weights (tokenizer files; the HF config.json of an imported model,
    # from the checkpoint this run continues), read now: a later prune may delete that checkpoint
    side_files = ckpt.read_side_files(run.tokenizer_dir, load_path)
    if load_path is not None:  # (initial_checkpoint_dir's weights are read only when nothing is resumed)
        startup.check_tied(load_path, train.tie_embeddings, "resume" if resume_path else "resume_from")
    elif run.initial_checkpoint_dir is not None:
        startup.check_tied(ckpt.check_checkpoint(run.initial_checkpoint_dir, "initial_checkpoint_dir"),
                           train.tie_embeddings, "initial_checkpoint_dir")
    if fabric.global_rank == 0:
        removed = ckpt.clean_leftovers(out_dir)
        if removed:
            fabric.print(f"removed what a save cut short left in {out_dir}: {', '.join(removed)}")
    fabric.barrier()
    if start_kind != "resume":
        startup.check_fresh_out_dir(out_dir, run.resume, start_kind)
    if run.sharded and fabric.world_size > 1:
        startup.check_shared_out_dir(fabric, out_dir)

    # ---- model, tokenizer, optimizer ----
    fabric.seed_everything(run.seed, verbose=False)
    seq_len = train.max_seq_length or model_config.block_size
    tokenizer = load_tokenizer(run.tokenizer_dir) if run.tokenizer_dir is not None else None
    if tokenizer is not None:
        vocab = tokenizer_vocab_size(tokenizer)
        if vocab > model_config.padded_vocab_size:
            raise ConfigError("tokenizer_dir", f"tokenizer vocabulary {vocab} is larger than the model's "
                              f"padded_vocab_size {model_config.padded_vocab_size}")
        if vocab < 0.9 * model_config.padded_vocab_size:  # e.g. pythia-14m's 50,304 rows for a 2,048-token BPE
            fabric.print(startup.unused_rows_warning(vocab, model_config))
    estimate = run.estimate
    model, n_params = setup_model(fabric, run, seq_len, will_load=load_path is not None)
    fabric.print(f"model: {n_params / 1e6:.1f}M parameters, seq {seq_len}, {start_kind} run -> {out_dir}")
    fabric.print(f"strategy: {run.strategy} over {fabric.world_size} process(es), precision {run.precision}"
                 f"{', activation checkpointing' if run.activation_checkpointing else ''}; memory estimate "
                 f"{estimate.describe() if estimate else 'not computed'}")
    if fabric.device.type == "cuda" and estimate is not None:
        gpu = torch.cuda.get_device_properties(fabric.device).total_memory
        if not estimate.fits(gpu):
            fabric.print(f"warning: the estimate exceeds this GPU's {gpu / 2**30:.0f} GiB less headroom: expect "
                         "out-of-memory (strategy: fsdp, activation_checkpointing: true or a smaller micro_batch_size "
                         "lower it)")
    try:
        optimizer = instantiate_torch_optimizer(run.optimizer, model.parameters())
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
            startup.check_no_newer_checkpoints(out_dir, load_path)
        t0 = time.perf_counter()
        restore(fabric, load_path, state, start_kind, train, seq_len)
        restore_s = time.perf_counter() - t0
        if start_kind == "resume":
            for line in startup.changed_at_resume(load_path, run.hparams):
                fabric.print(line)
    log_checkpoint_notes(fabric, train_loader)
    if isinstance(data, ShardedMixedDataset):
        for line in data.check_tokenizer(run.tokenizer_dir):
            fabric.print(line)
    saver = Saver(fabric, out_dir, run.hparams, model_config, side_files, run.keep_last_n, sharded=run.sharded)

    # ---- where this run stops ----
    start_step = state["step_count"]
    total_steps = train.total_steps(fabric.world_size, 1, seq_len)
    if total_steps == 0:
        raise ConfigError("train.max_tokens" if train.max_steps is None and train.max_iters is None else "train.max_iters",
                          f"is less than one optimizer step ({train.global_batch_size} x {seq_len} tokens)")
    # A symlinked base checkpoint (the original's midtrain layout) begins a new segment like resume_from.
    own_checkpoint = start_kind == "resume" and not load_path.is_symlink()
    if not own_checkpoint:
        state["segment_start"] = start_step
    saved_end = state["end_step"] if own_checkpoint else None
    end_step = startup.run_end_step(train, total_steps, state["segment_start"], state["end_step"], start_step)
    state["end_step"] = end_step
    if end_step < (total_steps or end_step):
        fabric.print(f"this run stops at step {end_step:,} (max_additional_steps {train.max_additional_steps:,} from "
                     f"step {state['segment_start']}) of a {total_steps:,}-step LR horizon")
    startup.check_extends_in_place(out_dir, start_step, end_step)
    startup.check_run_length(train, start_step, state["tokens"], seq_len, end_step, start_kind, load_path,
                             saved_end)
    if start_step >= end_step:  # a requeued job of a run that has reached its end (start_kind resume)
        fabric.print(f"run already complete: step {start_step} >= {end_step}")
        if (out_dir / ckpt.FINAL).exists():
            return 0
        return finish(fabric, saver, state, val_loaders, run.eval, first_step=start_step)

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
    if load_path is not None:  # logged once every check has passed (a refused run writes nothing); bench/gpu.sh reads it
        fabric.log_dict({"restore_s": restore_s}, step=start_step)
    return fit(fabric, run, state, saver, schedule, val_loaders, seq_len, n_params, estimate)


def plan_memory(model_config, micro: int, seq: int, precision: str, strategy: str, world: int, num_nodes: int,
                accelerator: str, activation_checkpointing: bool, optimizer: str, tied: bool = False,
                device_bytes: Optional[int] = None) -> tuple[str, dict]:
    """(strategy kind, per-rank estimate as a dict): ``auto`` shards where a DDP replica does not fit the GPU
    (``device_bytes``: its memory, read by the caller). Run in a forked child (``run_forked``): the caller's process
    keeps autograd untouched, and the child never calls CUDA (a child of a process that has, cannot)."""
    fits = None
    if world > 1 and strategy == "auto" and accelerator == "cuda" and device_bytes:
        fits = memory.estimate(model_config, micro, seq, precision, "ddp", 1, activation_checkpointing,
                               optimizer, tied).fits(device_bytes)
    kind = parallel.resolve(strategy, world, num_nodes, accelerator, fits)
    est = memory.estimate(model_config, micro, seq, precision, kind, parallel.shard_size(kind, world, num_nodes),
                          activation_checkpointing, optimizer, tied)
    return kind, est.to_dict()


def setup_model(fabric, run: Run, seq_len: int, will_load: bool):
    """The model at step 0, set up on its devices: one init whatever the strategy (``parallel.build_model``; a sharded
    model that a checkpoint will fill is built on meta), ``initial_checkpoint_dir``'s weights, activation
    checkpointing, compile, then Fabric's setup (DDP wrap, or fully_shard over the run's mesh). Returns
    (model, parameter count)."""
    model = parallel.build_model(run.model_config, run.seed, on_meta=run.sharded and will_load,
                                 tie=bool(run.train.tie_embeddings))
    model.max_seq_length = seq_len
    if run.initial_checkpoint_dir is not None and not will_load:
        load_weights(model, ckpt.check_checkpoint(run.initial_checkpoint_dir, "initial_checkpoint_dir"))
    n_params = num_parameters(model)
    if run.activation_checkpointing:
        parallel.checkpoint_blocks(model)
    if run.compile:
        parallel.compile_blocks(model)
    model = fabric.setup(model)
    if run.sharded and will_load and run.precision in ("bf16-true", "16-true"):
        from midtrain.train.saver import unwrap

        parallel.cast_rope_cache(unwrap(model), run.precision)
    return model, n_params


def fit(fabric, run: Run, state: dict, saver: Saver, schedule: Schedule, val_loaders: dict, seq_len: int,
        n_params: int, estimate: Optional[memory.MemoryEstimate] = None) -> int:
    train, eval = run.train, run.eval
    model, optimizer, loader = state["model"], state["optimizer"], state["train_dataloader"]
    end_step, first_step = state["end_step"], state["step_count"]
    source_ids = list(getattr(loader, "source_ids", ["all"]))
    accum = train.global_batch_size // (train.micro_batch_size * fabric.world_size)
    meter = SourceMeter(len(source_ids), fabric.device)
    progress = Progress(first_step, end_step)
    peak, no_mfu = gpu_peak(fabric, run.precision)
    if no_mfu:
        fabric.print(no_mfu)
    mc = run.model_config  # FLOPs per token without the input embedding, a lookup (midtrain.train.flops)
    fpt = flops.flops_per_token(flops.non_embedding_params(n_params, mc.padded_vocab_size, mc.n_embd,
                                                           bool(train.tie_embeddings)), mc.n_layer, mc.n_embd, seq_len)
    signals.install()  # already done by the CLI entry point; here for callers of the library
    trace = _sample_trace(fabric)
    tokens_at_start = state["tokens"]
    divergence = saver.divergence = Divergence(fabric.device, saver.out_dir)

    # compiled runs compute the loss in a compiled graph too (one fused upcast cross-entropy: metrics.token_loss),
    # in training and validation alike
    loss_of = torch.compile(token_loss) if run.compile else per_token_loss
    # a validation cut short by a signal (agreed across ranks, batch by batch) stops the run at this step boundary
    signalled = bool(eval.initial_validation and first_step == 0 and
                     not log_validation(fabric, model, val_loaders, eval, first_step, loss_of))
    rewarm_from = hf_import_step(loader)
    if train.rewarm_steps and rewarm_from is None:
        raise ConfigError("train.rewarm_steps", f"{train.rewarm_steps}, but this run does not continue a checkpoint "
                          "imported from Hugging Face (`midtrain import`): its optimizer state is not fresh")
    data_iter = iter(loader)
    model.train()
    # The step path reads nothing back from the device: one Agreement per step carries the stop flags (a signal,
    # a failed loader) across ranks, started before the step's last micro-batch and read before its optimizer step
    # (distributed.Agreement). A rank whose loader failed keeps the step's collectives going on a filler batch, so
    # no rank waits for one that left; the step is then discarded on every rank alike.
    agreement = distributed.Agreement(fabric)
    stream = torch.cuda.current_stream(fabric.device) if fabric.device.type == "cuda" else None
    filler = torch.zeros((train.micro_batch_size, seq_len + 1), dtype=torch.long, device=fabric.device)
    while state["step_count"] < end_step:
        if signalled or (fabric.world_size == 1 and signals.requested() is not None):
            return stop(fabric, saver, state, first_step, f"signal {signals.name(signals.requested())} received"
                        if signals.requested() is not None else "a stop signal reached another rank")
        lr = schedule.lr_at(state["step_count"]) * rewarm_factor(state["step_count"], rewarm_from, train.rewarm_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        samples_at_step, iter_at_step = getattr(loader, "samples", None), state["iter_num"]
        trace_lines: list[str] = []
        failure = None
        for micro in range(accum):
            if failure is None:
                t_wait = time.perf_counter()
                try:
                    batch = next(data_iter)
                except Exception as e:  # a worker ended by the stop signal, or a shard changed/vanished under the run
                    failure = e
                # (a stream query reads no result back and does not wait: no host sync)
                progress.waited(time.perf_counter() - t_wait, stream is None or stream.query())
            if micro == accum - 1 or (failure is not None and fabric.world_size == 1):
                line = config_error_line(failure) if failure is not None else None
                agreement.start(failure is not None, signals.requested() is not None,
                                failure is not None and line is None and signals.requested() is None)
            if failure is not None:
                if fabric.world_size == 1:
                    break
                tokens, sources = filler, None  # (its gradients are discarded with the step's)
            else:
                tokens, sources = batch if isinstance(batch, (tuple, list)) else (batch, None)
                if trace is not None:  # written once the step is complete (a step cut short is redone on resume)
                    trace_lines += [f"{state['step_count']} {micro} {zlib.crc32(row.numpy().tobytes())}\n" for row in tokens]
                # pinned contiguous int32 rows go to the device without blocking and are widened there (a strided
                # or pageable source would wait for the GPU's queue to drain: exact.split_batch)
                tokens = tokens.to(fabric.device, non_blocking=True).long()
                sources = (sources.to(fabric.device, non_blocking=True).long() if sources is not None else
                           torch.zeros(len(tokens), dtype=torch.long, device=fabric.device))
            # contiguous: inputs and targets are strided slices of the [micro, L + 1] rows, which slow the model
            inputs, targets = tokens[:, :seq_len].contiguous(), tokens[:, 1:seq_len + 1].contiguous()
            # DDP all-reduces once per step; sharded gradients are reduce-scattered every micro-batch (kept sharded)
            with fabric.no_backward_sync(model, enabled=micro < accum - 1 and not run.sharded):
                logits = model(inputs)
                per_sample = loss_of(logits, targets).mean(dim=1)
                fabric.backward(per_sample.mean() / accum)
            if sources is not None:
                meter.add(sources, per_sample.detach())
                divergence.watch(per_sample, state["step_count"] + 1)
            state["iter_num"] += 1
        failed, signalled, unexpected = agreement.result()
        if failed:
            # the model and optimizer are still at the last step boundary: rewind the data position to it
            optimizer.zero_grad(set_to_none=True)
            state["iter_num"] = iter_at_step
            if samples_at_step is not None:
                loader.samples = samples_at_step
            line = config_error_line(failure) if failure is not None else None
            if unexpected:  # not a stop and not bad input: a bug, raised as it is (other ranks stop quietly)
                if failure is not None and line is None:
                    raise failure
                raise ConfigError("another rank's data loader failed (its traceback is in the log)", speaker="quiet")
            if not signalled:
                if state["step_count"] != first_step and samples_at_step is not None:
                    saver.save_missing(state)
                if line is not None:
                    raise ConfigError(line, speaker="self") from None
                raise ConfigError("another rank stopped (its line is in the log)", speaker="quiet")
            who = (f"signal {signals.name(signals.requested())} received" if signals.requested() is not None
                   else "a stop signal reached another rank")
            return stop(fabric, saver, state, first_step, f"{who} mid-step", can_save=samples_at_step is not None)
        if train.max_norm:  # a non-finite norm is the divergence watch's to report (not a traceback from clipping)
            norm = fabric.clip_gradients(model, optimizer, max_norm=train.max_norm, error_if_nonfinite=False)
            if run.precision not in ("16-mixed", "16"):  # fp16's grad scaler expects an inf now and then (it skips)
                divergence.watch(norm, state["step_count"] + 1)
        optimizer.step()
        if state["step_count"] == first_step and estimate is not None:
            _write_memory(fabric, run, estimate, model, optimizer)
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
            rate, eta, data_share, data_stall = progress.tick(step, state["tokens"] - tokens_at_start)
            loss = float(loss_sum.sum() / count.sum().clamp(min=1))
            metrics = {"loss": loss, "lr": lr, "tokens": state["tokens"], "tokens_per_sec": rate, "step": step,
                       "data_wait_share": data_share, "data_stall_share": data_stall}
            if peak:
                metrics["mfu"] = flops.mfu(rate, fpt, peak, fabric.world_size)
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
            idle = f" (GPU idle {data_stall:.1%})" if stream is not None else ""
            fabric.print(f"step {step}/{end_step} | loss {loss:.4f} | lr {lr:.3e} | {rate:,.0f} tok/s{mfu}{mem} | "
                         f"data wait {data_share:.1%}{idle} | ETA {eta}")
            divergence.check(fabric)
        if val_loaders and eval.interval and step % eval.interval == 0 and step != end_step:
            signalled = not log_validation(fabric, model, val_loaders, eval, step, loss_of) or signalled
        if train.save_interval and step % train.save_interval == 0 and step != end_step:
            saver.save(state)
    return finish(fabric, saver, state, val_loaders, eval, first_step, loss_of)


def finish(fabric, saver: Saver, state: dict, val_loaders: dict, eval: EvalArgs, first_step: int,
           loss_of: Callable = per_token_loss) -> int:
    """The last step is done: the final validation, then ``final/`` and exit 0 (or ``stop`` if a signal cut the
    validation short: the requeued job validates and finishes)."""
    if saver.divergence is not None:
        saver.divergence.check(fabric)
    if val_loaders and eval.final_validation and not log_validation(fabric, state["model"], val_loaders, eval,
                                                                    state["step_count"], loss_of):
        return stop(fabric, saver, state, first_step, "stopped before the final validation", always_save=True)
    saver.save(state, final=True)
    finalize_loggers(fabric, "success")
    fabric.print(f"done: {state['step_count']} steps, {state['tokens']:,} tokens -> {saver.out_dir / ckpt.FINAL}")
    return 0


def stop(fabric, saver: Saver, state: dict, first_step: int, why: str, can_save: bool = True,
         always_save: bool = False) -> int:
    """The one way out before the end: keep the last complete step (model, optimizer and data position are at
    a step boundary), close the logs, and return ``EXIT_REQUEUE`` (75, whichever the signal)."""
    code = EXIT_REQUEUE
    if not can_save:
        fabric.print(f"{why}: this step's data position cannot be rewound (mixer: litdata), nothing saved; "
                     f"exiting {code}")
    elif state["step_count"] == first_step and not always_save:
        fabric.print(f"{why} before the first step: nothing to save (the run restarts from where it started); "
                     f"exiting {code}")
    else:
        fabric.print(f"{why}: checkpointing step {state['step_count']} and exiting {code}")
        saver.save_missing(state)
    finalize_loggers(fabric, "aborted")
    return code


def finalize_loggers(fabric, status: str) -> None:
    for logger in fabric.loggers:  # flush buffered rows (the CSV logger writes in batches)
        logger.finalize(status)
        if type(logger).__name__ == "WandbLogger" and fabric.global_rank == 0:
            logger.experiment.finish(exit_code=0 if status == "success" else 1)  # not left to interpreter exit


def _write_memory(fabric, run: Run, estimate, model, optimizer) -> None:
    """``out_dir/memory.json``: the estimate beside rank 0's measured state bytes (and CUDA's peak) after its first
    optimizer step, so every run checks the numbers its plan was made with."""
    from midtrain.atomic import write_text_atomic
    from midtrain.train.saver import unwrap

    measured = memory.measured_state_bytes(unwrap(model), unwrap(optimizer))
    if fabric.device.type == "cuda":
        measured["peak_allocated"] = torch.cuda.max_memory_allocated(fabric.device)
    if fabric.global_rank == 0:
        import json

        run.out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run.out_dir / "memory.json", json.dumps(
            {"strategy": run.strategy, "world": fabric.world_size, "precision": run.precision,
             "activation_checkpointing": run.activation_checkpointing, "estimate": estimate.to_dict(),
             "measured_rank0": measured}, indent=1) + "\n")


def optimizer_name(optimizer) -> str:
    """The optimizer class's name (AdamW, SGD, ...) from a run config's ``optimizer``."""
    path = optimizer if isinstance(optimizer, str) else (optimizer or {}).get("class_path", "AdamW")
    return str(path).rsplit(".", 1)[-1]


def _sample_trace(fabric):
    """Debug aid: MIDTRAIN_SAMPLE_TRACE=prefix writes one line per consumed sample (step, micro-batch, crc32 of its
    tokens) to ``prefix.rankR``: a step's samples are the same set whatever the world size."""
    prefix = os.environ.get("MIDTRAIN_SAMPLE_TRACE")
    if not prefix:
        return None
    return open(f"{prefix}.rank{fabric.global_rank}", "a", buffering=1)
