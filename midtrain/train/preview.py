"""What a run would do, without training: ``midtrain mix`` (the mixture plan a run config draws, what it refuses,
its devices and memory) and ``midtrain status`` (where a run stands). The CLI parses the run config; these read
it."""

from __future__ import annotations

import json

from midtrain.atomic import write_text_atomic
from midtrain.errors import ConfigError


def show_mix(args, init) -> int:
    """Print the mixture plan of a parsed run config (``midtrain mix``); the exit code."""
    from midtrain.data.plan import format_plan
    from midtrain.data.sharded_mixed import ShardedMixedDataset

    if args.check_complete:
        complete, line = run_progress(args, init)[:2]
        if complete:
            print(line)
            return 0
    data = init.data if init.data is not None else ShardedMixedDataset()
    if not isinstance(data, ShardedMixedDataset):
        raise ConfigError("data.class_path", f"{type(data).__name__}: `midtrain mix` plans ShardedMixedDataset only")
    from pathlib import Path

    from midtrain.train import checkpoint as ckpt
    from midtrain.train.startup import (check_run_inputs, check_run_length, check_tied, resolve_model_config,
                                        run_end_step)

    train = init.train
    given = args.model_name is not None or init.model_config is not None
    model_config = resolve_model_config(args.model_name, init.model_config) if given or not train.max_seq_length else None
    if given:  # a run config: what `pretrain` would refuse, `mix` refuses too (without a model: a data plan only)
        check_run_inputs(model_config, Path(args.out_dir), args.precision, train, args.optimizer, args.keep_last_n,
                         args.logger_name)
    seq = train.max_seq_length or model_config.block_size
    data.connect(batch_size=train.micro_batch_size, max_seq_length=seq, global_batch_size=train.global_batch_size)
    notes = []
    if args.resume_from:  # a plan before the base run has trained: its step from the name, said; else one line
        if Path(args.resume_from).exists():
            args.resume_from = ckpt.check_checkpoint(Path(args.resume_from), "resume_from")
            check_tied(args.resume_from, train.tie_embeddings, "resume_from")
        elif ckpt.checkpoint_step(Path(args.resume_from)) is None:
            raise ConfigError("resume_from", f"{args.resume_from} is not a checkpoint, and its name gives no step "
                              "(step-NNNNNNNN) to plan from")
        else:
            notes.append(f"note: resume_from {args.resume_from} does not exist (yet): planned from step "
                         f"{ckpt.checkpoint_step(Path(args.resume_from))}, read from its name; pretrain refuses it "
                         "until it exists")
    start = (ckpt.checkpoint_step(Path(args.resume_from)) or 0) if args.resume_from else 0
    end = None
    if args.tokens is not None:
        if args.tokens < 0:
            raise ConfigError("--tokens", f"must be >= 0, got {args.tokens}")
        total_samples = args.tokens // seq
    else:  # exactly the steps the trainer will run with this mixture: from the start step to the end step
        world = (args.devices if isinstance(args.devices, int) else 1) * (args.num_nodes or 1)
        total = train.total_steps(world, 1, seq)
        try:
            end = run_end_step(train, total, start, None, start)
        except ConfigError:
            if total is not None or train.max_additional_steps is not None:
                raise
            end = None  # no run length in the config: the plan shows weights only
        if args.resume_from and end is not None:  # what `pretrain` refuses: a run that would move or train nothing
            saved = ckpt.read_training_state(Path(args.resume_from)) if Path(args.resume_from).exists() else {}
            tokens = saved.get("tokens") or start * train.global_batch_size * seq  # as restore assumes when unrecorded
            check_run_length(train, start, tokens, seq, end, "resume_from", Path(args.resume_from))
        total_samples = None if end is None else (end - start) * train.global_batch_size
    plan = data.plan(total_samples)
    if args.check_files:
        data.verify_files()
    if data.val_data_path is not None:
        data.check_val_sets()
    notes += data.check_tokenizer(args.tokenizer_dir)
    print(format_plan(plan))
    for line in notes:
        print(line)
    if model_config is not None and given:
        print(run_footprint(args, init, model_config, seq, start, end if args.tokens is None else None))
    if args.json:
        text = json.dumps(plan.to_dict(), indent=2)
        if args.json == "-":
            print(text)
        else:
            write_text_atomic(args.json, text)
    return 3 if args.check_complete else 0


def run_footprint(args, init, model_config, seq: int, start: int, end) -> str:
    """What `mix` says of the devices: strategy and memory per rank, and bf16-true's cost at the run's LRs."""
    import torch

    from midtrain.train.footprint import bf16_true_cost, footprint, schedule_lr
    from midtrain.train.pretrain import optimizer_name
    from midtrain.train.startup import optimizer_lr

    train = init.train
    devices = args.devices if isinstance(args.devices, int) else (torch.cuda.device_count() or 1)
    accelerator = args.accelerator if args.accelerator != "auto" else ("cuda" if torch.cuda.is_available() else "gpu")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    gib = torch.cuda.get_device_properties(0).total_memory / 2**30 if gpu else None
    fp = footprint(model_config, train.micro_batch_size, seq, args.precision, args.strategy, devices,
                   args.num_nodes or 1, accelerator, args.activation_checkpointing, optimizer_name(args.optimizer), gpu,
                   gib, bool(train.tie_embeddings))
    from midtrain.train.footprint import ASSUMED

    lines = [f"devices: {fp.describe()}" + (f" {ASSUMED}" if fp.assumed_gpu else "")]
    peak = train.max_lr if train.max_lr is not None else optimizer_lr(args.optimizer)
    horizon = train.total_steps(devices * (args.num_nodes or 1), 1, seq) or end
    lrs = [(f"{'starts' if s == start else 'ends'} at step {s:,}", schedule_lr(train, peak, horizon, s))
           for s in sorted({start, max(start, (end or horizon or 1) - 1)})]
    lines += bf16_true_cost(fp.precision, [(w, lr) for w, lr in lrs if lr], model_config.n_embd)
    return "\n".join(lines)


def run_progress(args, init) -> tuple[bool, str, list]:
    """(whether the run is complete, one line on where it stands, its checkpoints)."""
    from pathlib import Path

    from midtrain.train import checkpoint as ckpt

    out_dir = Path(args.out_dir)
    found = ckpt.list_checkpoints(out_dir)
    final = out_dir / ckpt.FINAL
    state = ckpt.read_training_state(final) if (final / ckpt.MODEL_FILE).is_file() else {}
    wanted = init.train.max_steps
    complete = bool(state) and state.get("step", 0) >= max(state.get("end_step") or 0, wanted or 0)
    if not found:
        line = f"{out_dir}: not started"
    else:
        step, path = found[-1]
        line = f"{out_dir}: latest {path.name} at step {step}" + (" (complete)" if complete else "")
    return complete, line, found


