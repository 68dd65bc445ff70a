"""What every training step of a plan asks of its devices: strategy and memory per rank on the GPUs its allocation
names (SFT steps too), and what bf16-true costs at the LR where each run starts. ``check`` refuses a plan in one
line when a step does not fit, before anything runs or is submitted (``study plan`` and ``study run``).

The I/O shell around ``midtrain.train.footprint``; ``plan.py`` stays pure. The CLI calls ``checked_text`` and
``check`` through ``isolated``: torch is imported and run in a forked child, so ``study plan``'s own process
stays torch-free, and ``study run``'s keeps no OpenMP threads (a step forked from a process whose OpenMP pool
has run aborts).
"""

from __future__ import annotations

from typing import Mapping

from midtrain.study.plan import Plan, Step
from midtrain.study.resources import TRAINING


def _resolved(config: Mapping):
    """(litgpt Config, TrainArgs, seq length) of a step's run config."""
    from litgpt import Config

    from midtrain.train.args import TrainArgs

    if config.get("model_config"):
        model = Config(**config["model_config"])
    else:
        model = Config.from_name(config.get("model_name"))
    train = TrainArgs(**(config.get("train") or {}))
    return model, train, train.max_seq_length or model.block_size


def _optimizer(config: Mapping) -> str:
    opt = config.get("optimizer", "AdamW")
    return str(opt if isinstance(opt, str) else (opt or {}).get("class_path", "AdamW")).rsplit(".", 1)[-1]


def step_footprint(step: Step):
    from midtrain.train.footprint import footprint

    cfg = step.config
    model, train, seq = _resolved(cfg)
    return footprint(model, train.micro_batch_size, seq, cfg.get("precision"), cfg.get("strategy", "auto"),
                     int(cfg.get("devices", 1)), int(cfg.get("num_nodes") or 1), cfg.get("accelerator", "auto"),
                     bool(cfg.get("activation_checkpointing", False)), _optimizer(cfg),
                     step.alloc.gpu_type if step.alloc else None, tied=bool(train.tie_embeddings))


def training_steps(plan: Plan) -> list[Step]:
    return [s for s in plan.steps if s.kind in TRAINING and not s.reused]


def check(plan: Plan) -> None:
    """Refuse (one line) a plan with a training or SFT step whose per-rank memory exceeds its GPU on the strategy
    it would use."""
    from midtrain.train.footprint import refuse_if_too_big

    seen = set()
    for step in training_steps(plan):
        key = _shape_key(step)
        if key in seen:
            continue
        seen.add(key)
        refuse_if_too_big(step_footprint(step), f"{step.id} ({step.labels.get('size')})")
    for step in sft_steps(plan):
        fp = sft_footprint(step, plan.by_id[step.deps[0]])
        key = fp.describe()
        if key in seen:
            continue
        seen.add(key)
        refuse_if_too_big(fp, f"{step.id} ({step.labels.get('size')})", keys="sft.options.")


def sft_steps(plan: Plan) -> list[Step]:
    return [s for s in plan.steps if s.kind == "sft" and not s.reused]


def sft_footprint(step: Step, parent: Step):
    """The memory per rank of an SFT step: its run's model (``parent``: the training step whose checkpoint it
    tunes) at ``sft.options``' micro-batch, length, precision, devices, strategy and activation checkpointing, with
    AdamW. ``midtrain sft`` holds one copy of the weights at a time (each LR of a sweep loads the checkpoint
    afresh), as training does."""
    from midtrain.train.footprint import footprint

    model, train, _ = _resolved(parent.config)
    opts = step.config.get("options") or {}
    seq = opts.get("max_seq_length") or model.block_size
    return footprint(model, int(opts.get("micro_batch_size", 8)), int(seq), opts.get("precision"),
                     opts.get("strategy", "auto"), int(opts.get("devices", 1)), int(opts.get("num_nodes", 1)),
                     parent.config.get("accelerator", "auto"), bool(opts.get("activation_checkpointing", False)),
                     "AdamW", step.alloc.gpu_type if step.alloc else None, tied=bool(train.tie_embeddings))


def _shape_key(step: Step) -> str:
    import json

    keys = ("model_name", "model_config", "precision", "strategy", "devices", "num_nodes", "accelerator",
            "activation_checkpointing", "optimizer")
    shape = {k: step.config.get(k) for k in keys}
    train = step.config.get("train") or {}
    shape["train"] = {k: train.get(k) for k in ("micro_batch_size", "max_seq_length", "tie_embeddings")}
    shape["gpu"] = step.alloc.gpu_type if step.alloc else None
    return json.dumps(shape, sort_keys=True, default=str)


def format_footprints(plan: Plan) -> str:
    """One row per distinct training shape (size, strategy, precision, memory per rank), then bf16-true's cost at
    each distinct start LR."""
    from midtrain.train.footprint import bf16_true_cost, schedule_lr
    from midtrain.train.startup import optimizer_lr

    from midtrain.train.footprint import ASSUMED

    rows: dict[str, tuple[list[str], str]] = {}
    assumed = False
    lrs: dict[tuple, list[str]] = {}
    starts: dict[tuple, str] = {}  # (size, step) of an imported checkpoint -> the LR its runs start at
    for step in training_steps(plan):
        if step.kind == "midtrain" and step.labels.get("imported") and step.labels.get("start") is not None:
            key = (step.labels.get("size"), int(step.labels["start"]))
            if key not in starts:
                starts[key] = _start_lr(step.config, key[1])
        key = _shape_key(step)
        if key not in rows:
            fp = step_footprint(step)
            assumed = assumed or fp.assumed_gpu
            rows[key] = ([], fp.describe())
        rows[key][0].append(step.id)
        if step.kind == "midtrain" and step.config.get("precision") == "bf16-true" and step.labels.get("start") is not None:
            model, train, seq = _resolved(step.config)
            peak = train.max_lr if train.max_lr is not None else optimizer_lr(step.config.get("optimizer", "AdamW"))
            world = int(step.config.get("devices", 1)) * int(step.config.get("num_nodes") or 1)
            lr = schedule_lr(train, peak, train.total_steps(world, 1, seq) or 0, int(step.labels["start"]))
            if lr:
                lrs.setdefault((step.labels.get("size"), model.n_embd, round(lr, 12)), []).append(step.id)
    for step in sft_steps(plan):
        fp = sft_footprint(step, plan.by_id[step.deps[0]])
        assumed = assumed or fp.assumed_gpu
        rows.setdefault(f"sft {fp.describe()}", ([], fp.describe()))[0].append(step.id)
    lines = ["| training and SFT steps | devices (strategy, precision, memory per rank) |", "|---|---|"]
    for ids, text in rows.values():
        shown = ", ".join(ids[:3]) + (f" ... ({len(ids)} steps)" if len(ids) > 3 else "")
        lines.append(f"| {shown} | {text} |")
    if assumed:
        lines.append(ASSUMED)
    for (size, n_embd, lr), ids in sorted(lrs.items(), key=lambda kv: (str(kv[0][0]), -kv[0][2])):
        what = f"{ids[0]}" + (f" (+{len(ids) - 1} more)" if len(ids) > 1 else "") + f" ({size}) starts"
        lines += bf16_true_cost("bf16-true", [(what, lr)], n_embd)
    if lrs:
        lines.append("(the paper's configs keep bf16-true, as the paper ran; precision: bf16-mixed keeps every update)")
    for (size, at), text in sorted(starts.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        lines.append(f"size {size} starts from its imported checkpoint at step {at:,}: {text}")
    return "\n".join(lines)


def _start_lr(config: dict, step: int) -> str:
    """The LR the run config's schedule gives at ``step`` and where it sits, as ``midtrain import`` says it."""
    from midtrain.importer import start_lr

    _, train, seq = _resolved(config)
    world = int(config.get("devices", 1)) * int(config.get("num_nodes") or 1)
    lr, phase = start_lr(train, config, train.total_steps(world, 1, seq) or 0, step)
    if lr is None:
        return "LR not from a schedule (lr_scheduler: decay continues the checkpoint's)"
    rewarm = f", re-warmed over {train.rewarm_steps} steps" if train.rewarm_steps else ""
    return f"LR {lr:.3g} ({phase}{rewarm})"


def checked_text(plan: Plan) -> str:
    check(plan)
    return format_footprints(plan)


def isolated(fn, *args):
    """``fn(*args)`` in a forked child process (``midtrain.forked``)."""
    from midtrain.forked import run_forked

    return run_forked(fn, *args)
