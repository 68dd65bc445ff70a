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


# `midtrain sft`'s parameters (run_sft's; a test holds the two equal, so that reading a spec imports no torch): what
# a study sets itself, and the options a spec's sft.options may give. A misspelt option is refused when the spec is
# read, not when the SFT step runs after its arm has trained
SFT_OWNED = {"checkpoint", "data", "val_data", "test_data", "lrs", "seed", "out", "save", "task", "arm",
             "pretrain_val_path", "prompt_key", "response_key", "score_every_lr"}
SFT_OPTIONS = {"tokenizer_dir", "val_fraction", "test_fraction", "epochs", "micro_batch_size", "global_batch_size",
               "warmup_fraction", "min_lr_ratio", "weight_decay", "max_seq_length", "forgetting_batches", "forgetting_sets",
               "precision", "devices", "num_nodes", "strategy", "activation_checkpointing"}


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


def command_argv(params, **values) -> list[str]:
    """``--name value`` for each value that is not None, every name checked against ``params``: the parameters of
    the function the command is (``midtrain.posttrain.commands``), or for ``sft`` the spec's own lists of
    ``run_sft``'s parameters, which a test holds equal to its signature. A command line is built from the
    command's definition, so an option renamed there fails here, when the study is planned, not in a job."""
    if callable(params):
        import inspect

        params = inspect.signature(params).parameters
    unknown = sorted(set(values) - set(params))
    if unknown:
        raise TypeError(f"no option {', '.join('--' + k for k in unknown)} in the command a study step runs")
    return [x for k, v in values.items() if v is not None for x in (f"--{k}", _text(v))]


def _text(value) -> str:
    """A value as jsonargparse reads it back: booleans as true/false, lists and mappings as JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _chosen(config: dict, keys: tuple[str, ...]) -> dict:
    return {k: config.get(k) for k in keys}


def _eval(step, where: Where) -> tuple[list[str], None]:
    from midtrain.posttrain.commands import loss

    every = step.config.get("checkpoints", "final") == "all"  # every checkpoint of the run: its folder
    return ["evaluate", "loss"] + command_argv(
        loss, checkpoint=str(where.checkpoint.parent if every else where.checkpoint), data=str(where.val),
        json=str(where.folder / "loss.json"), all_checkpoints=True if every else None,
        **_chosen(step.config, ("max_batches", "batch_size", "precision"))), None


def _lm_eval(step, where: Where) -> tuple[list[str], None]:
    from midtrain.posttrain.commands import lm_eval

    return ["evaluate", "lm-eval"] + command_argv(
        lm_eval, checkpoint=str(where.checkpoint), tasks=str(step.config["tasks"]),
        out_dir=str(where.folder / "lm_eval"),
        **_chosen(step.config, ("include_path", "num_fewshot", "limit", "batch_size", "precision"))), None


def _sft(step, where: Where) -> tuple[list[str], None]:
    task = step.config["task"]
    return ["sft"] + command_argv(
        SFT_OWNED | SFT_OPTIONS, checkpoint=str(where.checkpoint), data=task["data"], lrs=list(step.config["lrs"]),
        seed=step.config["seed"], task=task["name"], arm=step.labels["arm"], out=str(where.folder / "metrics.json"),
        pretrain_val_path=str(where.val), prompt_key=task["prompt_key"], response_key=task["response_key"],
        val_data=task.get("val_data") or None, test_data=task.get("test_data") or None,
        # an option the spec sets to null is passed as null (run_sft's default may not be None)
        **{k: "null" if v is None else v for k, v in step.config["options"].items()}), None


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
