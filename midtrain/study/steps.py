"""What a study step runs: its ``midtrain`` command line, the outputs it must leave, and the run config it writes
(``step_command``); where a training step's run and checkpoint live (``run_dir_of``, ``checkpoint_of``). Pure: reads
the plan only."""

from __future__ import annotations

import json
from pathlib import Path

from midtrain.study.plan import Plan, Step
from midtrain.study.spec import data_args


def run_dir_of(out_dir: Path, step: Step) -> Path:
    """The out_dir of a training step's run (a base run folder named as a size's base is its own)."""
    return Path(step.out) if step.labels.get("run_folder") else out_dir / step.out / "run"


def checkpoint_of(out_dir: Path, step: Step) -> Path:
    return run_dir_of(out_dir, step) / step.labels.get("final", "final")


def step_command(plan: Plan, step: Step, out_dir: Path, spec_path: Path) -> tuple[list[str], list[str], dict | None]:
    """(midtrain argv, outputs that must exist when done, run config to write as run.yaml)."""
    by = plan.by_id
    folder = out_dir / step.out
    spec = plan.spec
    size = next((s for s in spec.sizes if s.name == step.labels.get("size")), None)
    if step.kind in ("pretrain", "midtrain"):
        cfg = dict(step.config)
        cfg["out_dir"] = str(folder / "run")
        if step.resume_step:
            source = by[step.resume_step]
            cfg["resume_from"] = str(checkpoint_of(out_dir, source) if step.resume_at is None else
                                     run_dir_of(out_dir, source) / f"step-{step.resume_at:08d}")
        return ["pretrain", "--config", str(folder / "run.yaml")], [str(folder / "run" / "final" / "lit_model.pth")], cfg
    run = by[step.deps[0]] if step.deps else None
    val = spec.pretrain_val_path or data_args(size.config).get("val_data_path") if size else None
    if step.kind == "eval":
        every = step.config.get("checkpoints", "final") == "all"
        argv = ["evaluate", "loss", "--checkpoint", str(checkpoint_of(out_dir, run).parent if every else
                                                        checkpoint_of(out_dir, run)),
                "--data", str(val), "--json", str(folder / "loss.json")] + (["--all_checkpoints", "true"] if every else [])
        for k in ("max_batches", "batch_size", "precision"):
            if step.config.get(k) is not None:
                argv += [f"--{k}", str(step.config[k])]
        return argv, [str(folder / "loss.json")], None
    if step.kind == "lm-eval":
        argv = ["evaluate", "lm-eval", "--checkpoint", str(checkpoint_of(out_dir, run)), "--tasks",
                str(step.config["tasks"]), "--out_dir", str(folder / "lm_eval")]
        for k in ("include_path", "num_fewshot", "limit", "batch_size", "precision"):
            if step.config.get(k) is not None:
                argv += [f"--{k}", str(step.config[k])]
        return argv, [str(folder / "lm_eval" / "results.json")], None
    if step.kind == "sft":
        task = step.config["task"]
        argv = ["sft", "--checkpoint", str(checkpoint_of(out_dir, run)), "--data", task["data"],
                "--lrs", json.dumps(step.config["lrs"]), "--seed", str(step.config["seed"]), "--task", task["name"],
                "--arm", step.labels["arm"], "--out", str(folder / "metrics.json"), "--pretrain_val_path", str(val),
                "--prompt_key", task["prompt_key"], "--response_key", task["response_key"]]
        for k in ("val_data", "test_data"):
            if task.get(k):
                argv += [f"--{k}", task[k]]
        for k, v in step.config["options"].items():
            argv += [f"--{k}", v if isinstance(v, str) else json.dumps(v)]
        return argv, [str(folder / "metrics.json")], None
    if step.kind == "report":
        return ["study", "report", str(spec_path), "--out", str(out_dir)], [str(folder / "table.md")], None
    raise ValueError(step.kind)
