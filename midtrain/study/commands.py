"""The study commands as library functions: ``midtrain study plan|run|status|report`` are these functions, with
their parsers built from the signatures and the ``Args:`` below (``midtrain.cli``), so each option's default and
help live here only. The executors (``study.local``, ``study.slurm``) are imported by this layer alone.
"""

from __future__ import annotations

import json as jsonlib
from pathlib import Path
from typing import Optional

from midtrain.errors import ConfigError


def plan(spec: list[str], out: Optional[str] = None, mfu: float = 0.4, peak_tflops: float = 989.0, rows: str = "all",
         devices: bool = True, check_files: bool = True) -> int:
    """Every run of the specs with its allocation, memory and cost; nothing runs.

    Args:
        spec: study specs (YAML), planned in this order into one folder: later ones reuse the base segments of
            earlier ones
        out: a study folder: reuse the base segments already planned there (bases.json)
        mfu: assumed model FLOPs utilisation for GPU-hours
        peak_tflops: peak dense bf16 TFLOP/s per GPU (H100 SXM: 989)
        rows: how many steps to list: all or a number
        devices: each training shape's strategy and memory per rank on its GPUs (refusing what fits nowhere), and
            bf16-true's cost per arm; computed with torch in a child process (false: skip it)
        check_files: check the shards and SFT files the spec names (false: plan before the data exists)
    """
    from midtrain.study import footprints
    from midtrain.study.files import load_plan
    from midtrain.study.folder import read_bases
    from midtrain.study.plan_text import format_plan, format_sharing

    if not (0 < mfu <= 1):
        raise ConfigError("--mfu", f"must be in (0, 1], got {mfu}")
    n_rows = None if rows == "all" else int(rows) if rows.isdigit() else None
    if n_rows is None and rows != "all":
        raise ConfigError("--rows", f"expected all or a number, got {rows!r}")
    known = read_bases(Path(out) if out else None)
    plans = []
    for path in spec:
        p = load_plan(path, check_files=check_files, estimate=True, known=known, out=out)
        known = known + [seg for seg in p.base_segments() if seg.out not in {k.out for k in known}]
        plans.append(p)
        if len(spec) > 1:
            print(f"## {path}\n")
        here = None
        if out and Path(out).is_dir():
            from midtrain.study.states import here_states

            here = here_states(p, Path(out).resolve())
        print(format_plan(p, mfu, peak_tflops, n_rows, here))
        if devices:
            print("\n" + footprints.isolated(footprints.checked_text, p))
        if len(spec) > 1:
            print()
    if len(plans) > 1:
        print(format_sharing(plans))
    return 0


def _load(spec: str, out: str, for_run: bool):
    from midtrain.study.files import load_plan
    from midtrain.study.folder import read_bases

    folder = Path(out).resolve()
    return load_plan(spec, check_files=for_run, estimate=False, known=read_bases(folder), out=folder), folder


def run(spec: str, out: str, executor: str = "local", parallel: Optional[int] = None, gpus: Optional[str] = None,
        max_jobs: Optional[int] = None, array_throttle: Optional[int] = None, rerun_changed: bool = False,
        slurm: Optional[dict] = None, wait: bool = False) -> int:
    """Run the plan's steps (locally, or submitted to SLURM).

    Args:
        spec: the study spec (YAML, e.g. midtrain_configs/studies/paper-main.yaml)
        out: the study folder (every step's output lives here)
        executor: local or slurm
        parallel: local: steps run at once (default: one per GPU, 1 without GPUs)
        gpus: local: GPUs to hand out, e.g. 0,1,2,3, or none (default: the visible GPUs)
        max_jobs: slurm: jobs + array tasks kept submitted at once (default: slurm.max_jobs, no cap)
        array_throttle: slurm: at most N tasks of an array run at once (sbatch --array's throttle; default:
            slurm.array_throttle)
        rerun_changed: run anew the steps whose resolved config changed since they ran here
        slurm: slurm: sbatch options over the spec's, e.g. '{"partition": "gpu"}'
        wait: slurm: wait until every step has finished
    """
    from midtrain.atomic import check_writable_dir
    from midtrain.study import footprints
    from midtrain.study.states import check_external

    p, folder = _load(spec, out, for_run=True)
    check_writable_dir(folder, "--out")
    if executor == "local":
        from midtrain.study.local import parse_gpus, visible_gpus

        chosen = parse_gpus(gpus)  # the GPUs local steps get: --gpus, else the visible ones (the executor's answer)
        on_gpus = bool(visible_gpus() if chosen is None else chosen)
    else:
        on_gpus = True
    if on_gpus:  # a run that fits on no strategy: refused before anything runs
        footprints.isolated(footprints.check, p)  # (local steps without GPUs run on CPU: nothing to fit)
    check_external(p, folder)
    spec_path = Path(spec).resolve()
    if executor == "local":
        from midtrain.study.local import run_local

        for key, value in (("max_jobs", max_jobs), ("array_throttle", array_throttle), ("slurm", slurm)):
            if value is not None:
                raise ConfigError(f"--{key}", "is an option of --executor slurm")
        return run_local(p, folder, spec_path, parallel, rerun_changed, gpus=chosen)
    if executor != "slurm":
        raise ConfigError("--executor", f"{executor!r} is not local or slurm")
    for key, value in (("parallel", parallel), ("gpus", gpus)):
        if value is not None:
            raise ConfigError(f"--{key}", "is an option of --executor local (SLURM allocates the GPUs)")
    from midtrain.study.resources import check_options
    from midtrain.study.slurm import run_slurm

    code = run_slurm(p, folder, spec_path, check_options(slurm or {}, "--slurm"), rerun_changed, wait, max_jobs,
                     array_throttle)
    if not wait:
        print(f"follow with: midtrain study status {spec} --out {out}")
    return code


def _existing(spec: str, out: str):
    p, folder = _load(spec, out, for_run=False)
    if not folder.is_dir():
        raise ConfigError("--out", f"{folder} is not a study folder (nothing has run there)")
    return p, folder


def status(spec: str, out: str, json: Optional[str] = None) -> int:
    """Each step's state, job and log.

    Args:
        spec: the study spec (YAML, e.g. midtrain_configs/studies/paper-main.yaml)
        out: the study folder (every step's output lives here)
        json: also write the rows as JSON to this path
    """
    from midtrain.atomic import check_writable_dir, write_text_atomic
    from midtrain.study.slurm import squeue_jobs
    from midtrain.study.states import format_status, status_rows

    p, folder = _existing(spec, out)
    rows = status_rows(p, folder, squeue_jobs)
    print(format_status(rows, p.spec.name))
    if json:
        check_writable_dir(Path(json).parent, "--json")
        write_text_atomic(json, jsonlib.dumps(rows, indent=1) + "\n")
    return 0


def report(spec: str, out: str) -> int:
    """Tables, figures and findings.

    Args:
        spec: the study spec (YAML, e.g. midtrain_configs/studies/paper-main.yaml)
        out: the study folder (every step's output lives here)
    """
    from midtrain.study.report import write_report

    rep = write_report(*_existing(spec, out))
    print((rep / "table.md").read_text())
    print(f"wrote {rep}/table.md, table.csv, results.json and figures")
    return 0


COMMANDS = {"plan": plan, "run": run, "status": status, "report": report}
