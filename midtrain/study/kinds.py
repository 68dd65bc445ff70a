"""The kinds of study step, one entry each in ``KINDS``: the ``midtrain`` command a step of the kind runs, the file
that says it is done, the spec section that sizes its job (``slurm.<section>``), whether it is a trainer run, and
what the report reads from it. A new kind is one entry here and the plan's rule for where its steps go.

A leaf: it imports nothing of the study package (the plan, resources and the report read it). Steps are read by
their fields (``id``, ``kind``, ``labels``, ``config``), never built here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional


def run_label(arm: str, seed: Optional[int]) -> str:
    """A run's name in tables and figures: its arm, and its seed when seeds vary."""
    return arm if seed is None else f"{arm}/s{seed}"


@dataclass(frozen=True)
class Where:
    """The paths a step's command line names, resolved from the plan by ``study.steps.step_command``."""
    folder: Path                     # the step's folder (``--out``/<step.out>)
    out_dir: Path                    # the study folder
    spec_path: Path                  # the spec file (the report step runs `study report` on it)
    checkpoint: Optional[Path]       # eval, lm-eval, sft: the final checkpoint of the run the step reads
    resume_from: Optional[Path]      # pretrain, midtrain: the checkpoint the run starts from (None: from scratch)
    val: Optional[str]               # eval, sft: the size's validation data (sft measures forgetting on it)


@dataclass(frozen=True)
class StepKind:
    name: str
    section: str        # the spec's ``slurm.<section>`` that holds this kind's job options
    training: bool      # a trainer run: a run config (run.yaml), checkpoints, a run folder, requeued on preemption
    done_file: str      # relative to the step folder: written last, so its presence (with exit 0) means done
    command: Callable[[Any, Where], tuple[list[str], Optional[dict]]]  # (step, where) -> (argv, run config or None)
    collect: Optional[Callable[[Any, Path, str], dict[str, list]]] = None  # (step, folder, main set) -> report rows


def _train(step, where: Where) -> tuple[list[str], dict]:
    cfg = dict(step.config)
    cfg["out_dir"] = str(where.folder / "run")
    if where.resume_from is not None:
        cfg["resume_from"] = str(where.resume_from)
    return ["pretrain", "--config", str(where.folder / "run.yaml")], cfg


def _options(config: dict, keys: tuple[str, ...]) -> list[str]:
    return [x for k in keys if config.get(k) is not None for x in (f"--{k}", str(config[k]))]


def _eval(step, where: Where) -> tuple[list[str], None]:
    every = step.config.get("checkpoints", "final") == "all"  # every checkpoint of the run: its folder
    argv = ["evaluate", "loss", "--checkpoint", str(where.checkpoint.parent if every else where.checkpoint),
            "--data", str(where.val), "--json", str(where.folder / "loss.json")]
    return argv + (["--all_checkpoints", "true"] if every else []) + _options(
        step.config, ("max_batches", "batch_size", "precision")), None


def _lm_eval(step, where: Where) -> tuple[list[str], None]:
    argv = ["evaluate", "lm-eval", "--checkpoint", str(where.checkpoint), "--tasks", str(step.config["tasks"]),
            "--out_dir", str(where.folder / "lm_eval")]
    return argv + _options(step.config, ("include_path", "num_fewshot", "limit", "batch_size", "precision")), None


def _sft(step, where: Where) -> tuple[list[str], None]:
    task = step.config["task"]
    argv = ["sft", "--checkpoint", str(where.checkpoint), "--data", task["data"], "--lrs",
            json.dumps(step.config["lrs"]), "--seed", str(step.config["seed"]), "--task", task["name"],
            "--arm", step.labels["arm"], "--out", str(where.folder / "metrics.json"), "--pretrain_val_path",
            str(where.val), "--prompt_key", task["prompt_key"], "--response_key", task["response_key"]]
    argv += [x for k in ("val_data", "test_data") if task.get(k) for x in (f"--{k}", task[k])]
    for k, v in step.config["options"].items():
        argv += [f"--{k}", v if isinstance(v, str) else json.dumps(v)]
    return argv, None


def _report(step, where: Where) -> tuple[list[str], None]:
    return ["study", "report", str(where.spec_path), "--out", str(where.out_dir)], None


def _collect_sft(step, folder: Path, main_set: str) -> dict[str, list]:
    from midtrain.report import sft_results

    return {"sft": sft_results([str(folder / "metrics.json")], None, main_set)}


def _collect_eval(step, folder: Path, main_set: str) -> dict[str, list]:
    losses = json.loads((folder / "loss.json").read_text())
    arm, seed = step.labels["arm"], step.labels["seed"]
    out = {"eval": [{"arm": arm, "seed": seed, **{k: v["loss"] for k, v in losses.items()
                                                   if isinstance(v, dict) and "loss" in v}}]}
    if "by_step" in losses:
        out["eval_curves"] = [(run_label(arm, seed), losses["by_step"])]
    return out


def _collect_lm_eval(step, folder: Path, main_set: str) -> dict[str, list]:
    res = json.loads((folder / "lm_eval" / "results.json").read_text())["results"]
    return {"lm_eval": [{"arm": step.labels["arm"], "seed": step.labels["seed"],
                         **{f"{task}/{k.split(',')[0]}": v for task, m in res.items() for k, v in m.items()
                            if "_stderr" not in k and k != "sample_len"}}]}


KINDS: dict[str, StepKind] = {k.name: k for k in (
    StepKind("pretrain", "pretrain", True, "run/final/lit_model.pth", _train),
    StepKind("midtrain", "midtrain", True, "run/final/lit_model.pth", _train),
    StepKind("sft", "sft", False, "metrics.json", _sft, _collect_sft),
    StepKind("eval", "eval", False, "loss.json", _eval, _collect_eval),
    StepKind("lm-eval", "lm_eval", False, "lm_eval/results.json", _lm_eval, _collect_lm_eval),
    StepKind("report", "report", False, "table.md", _report),
)}
TRAINING = tuple(k for k, v in KINDS.items() if v.training)
SECTIONS = {k: v.section for k, v in KINDS.items()}
