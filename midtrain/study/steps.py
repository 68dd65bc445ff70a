"""What a study step runs: its ``midtrain`` command line, the outputs it must leave, and the run config it writes
(``step_command``: the paths resolved from the plan, the command by the kind's entry in ``study.kinds``); where a
training step's run and checkpoint live (``run_dir_of``, ``checkpoint_of``). Pure: reads the plan only."""

from __future__ import annotations

from pathlib import Path

from midtrain.study.kinds import KINDS, Where
from midtrain.study.plan import Plan, Step
from midtrain.study.spec import data_args


def run_dir_of(out_dir: Path, step: Step) -> Path:
    """The out_dir of a training step's run (a base run folder named as a size's base is its own)."""
    return Path(step.out) if step.run_folder else out_dir / step.out / "run"


def checkpoint_of(out_dir: Path, step: Step) -> Path:
    return run_dir_of(out_dir, step) / "final"


def step_command(plan: Plan, step: Step, out_dir: Path, spec_path: Path) -> tuple[list[str], list[str], dict | None]:
    """(midtrain argv, outputs that must exist when done, run config to write as run.yaml): the paths resolved here,
    the command line by the step's kind (``study.kinds.KINDS``)."""
    kind = KINDS[step.kind]
    by, spec = plan.by_id, plan.spec
    size = next((s for s in spec.sizes if s.name == step.labels.get("size")), None)
    run = by[step.deps[0]] if step.deps and not kind.training else None
    resume = None
    if kind.training and step.resume_step:
        source = by[step.resume_step]
        resume = (checkpoint_of(out_dir, source) if step.resume_at is None else
                  run_dir_of(out_dir, source) / f"step-{step.resume_at:08d}")
    where = Where(folder=out_dir / step.out, out_dir=out_dir, spec_path=spec_path,
                  checkpoint=checkpoint_of(out_dir, run) if run is not None else None, resume_from=resume,
                  val=spec.pretrain_val_path or data_args(size.config).get("val_data_path") if size else None)
    argv, config = kind.command(step, where)
    return argv, [str(where.folder / kind.done_file)], config
