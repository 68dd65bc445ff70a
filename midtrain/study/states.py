"""A study's step states: each step's status file resolved against its outputs, its inputs, the processes on this
host and (given its answer) the scheduler: pending, submitted, running, done, failed or interrupted; and the
status table. ``step_states`` takes the scheduler as an argument (``study.slurm.squeue_jobs``, or None: no
scheduler asked), so nothing here imports an executor.

A step is *done* when its status says so, its outputs exist and no input finished after it started
(then it is stale and runs again).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Callable, Optional

from midtrain.errors import ConfigError
from midtrain.study.folder import changed_steps, read_status
from midtrain.study.plan import Plan
from midtrain.study.steps import checkpoint_of
from midtrain.train.checkpoint import is_checkpoint

STATES = ("pending", "submitted", "running", "done", "failed", "interrupted", "blocked")
ENDED = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL",
         "DEADLINE"}
Scheduler = Optional[Callable[[list], Optional[dict]]]  # job ids -> {job id: SLURM state} (None: it did not answer)


def pid_alive(status: dict) -> bool:
    """Whether a step runner on this host, or the command it started, still lives. The command counts too: it
    runs in its own process group, so a ``kill -9`` of the ``study run`` group (or the runner's death) leaves it
    running, and a re-run must wait for it, never start a second trainer in the same folder."""
    if status.get("host") != socket.gethostname():
        return False
    for key in ("pid", "command_pid"):
        if status.get(key):
            try:
                os.kill(int(status[key]), 0)
                return True
            except OSError:
                pass
    return False


def step_states(plan: Plan, out_dir: Path, scheduler: Scheduler = None) -> dict[str, dict]:
    """Step id -> status dict with a resolved ``state`` (pending/submitted/running/done/failed/interrupted).
    ``scheduler``: asked once for the jobs the status files name (``study.slurm.squeue_jobs``); None: none asked,
    a step submitted to SLURM keeps its recorded state."""
    raw = {s.id: read_status(out_dir / s.out) for s in plan.steps}
    live = {}
    query_slurm = scheduler is not None
    if query_slurm:
        live = scheduler(sorted({st["job_id"] for st in raw.values() if st.get("job_id") and
                                 st.get("state") in ("submitted", "running", "interrupted")}))
    out: dict[str, dict] = {}
    for step in plan.steps:  # topological order: deps resolved first
        st = dict(raw[step.id])
        state = st.get("state", "pending")
        if step.run_folder:  # a base run folder: done while the checkpoints this plan reads exist
            used = sorted({s.resume_at for s in plan.steps if s.resume_step == step.id and s.resume_at is not None})
            needed = [checkpoint_of(out_dir, step)] + [Path(step.out) / f"step-{k:08d}" for k in used]
            missing = [p for p in needed if not is_checkpoint(p)]
            state = "pending" if missing else "done"
            if missing:
                st["note"] = f"{missing[0]} is gone from the run folder"
        elif state == "done":
            outputs = st.get("outputs") or []
            deps_newer = any(out[d].get("state") != "done" or (out[d].get("ended") or 0) > (st.get("started") or 0)
                             for d in step.deps)
            if not all(Path(p).exists() for p in outputs) or deps_newer:
                state = "pending"
        elif state in ("submitted", "running"):
            job = st.get("job_id")
            if job and query_slurm and live is not None:
                if job not in live:
                    again = read_status(out_dir / step.out)  # it may have finished since it was read
                    if again.get("state") in ("done", "failed", "interrupted"):
                        st, state = dict(again), again["state"]
                    else:
                        state = "interrupted" if state == "running" else "pending"  # cancelled or lost
                        st["note"] = f"SLURM job {job} is gone"
                else:
                    st["slurm_state"] = live[job]
            elif not job and not pid_alive(st):
                state = "interrupted"
                st["note"] = "its process is gone"
        elif state == "interrupted" and st.get("job_id") and live and st["job_id"] in live:
            # checkpointed on a signal and requeued by its job script: the same job will resume it
            state = "submitted" if live[st["job_id"]] == "PENDING" else "running"
            st["slurm_state"] = live[st["job_id"]]
            st["note"] = f"requeued as SLURM job {st['job_id']}"
        st["state"] = state
        out[step.id] = st
    return out


def here_states(plan: Plan, out_dir: Path) -> dict[str, str]:
    """What ``study run`` would do with each step in ``out_dir``: done, done (kept: logging changed), changed
    (refused without --rerun_changed), running/submitted, or will run."""
    changed = changed_steps(plan, out_dir)
    states = step_states(plan, out_dir)
    out = {}
    for step in plan.steps:
        state = states[step.id]["state"]
        if step.id in changed:
            out[step.id] = f"changed (ran as {changed[step.id]})"
        elif state == "done" and step.logging_kept:
            out[step.id] = f"done (kept: {'; '.join(step.logging_kept)})"
        elif state in ("done", "running", "submitted"):
            out[step.id] = state
        else:
            out[step.id] = "will run"
    return out


def check_external(plan: Plan, out_dir: Path) -> None:
    """Every base step reused from another study folder (``sizes.X.base``) must be done there: this study
    never runs or writes another folder's steps. One line naming the first that is not."""
    states = step_states(plan, out_dir)
    for step in plan.steps:
        if step.external and states[step.id]["state"] != "done":
            if step.run_folder:
                raise ConfigError(f"sizes.{step.labels.get('size')}.base", f"{states[step.id]['note']}: this study "
                                  "reads it; restore it or plan from another base")
            raise ConfigError(f"sizes.{step.labels.get('size')}.base", f"{step.id} in {step.external} is not done "
                              f"there (state: {states[step.id]['state']}): run that study to it first")


def status_rows(plan: Plan, out_dir: Path, scheduler: Scheduler = None) -> list[dict]:
    states = step_states(plan, out_dir, scheduler)
    rows = []
    for step in plan.steps:
        st = states[step.id]
        rows.append({"step": step.id, "kind": step.kind, "state": st["state"], "job_id": st.get("job_id"),
                     "log": st.get("log") if st["state"] in ("failed", "interrupted") else None,
                     "exit_code": st.get("exit_code"), "out": step.out, "note": st.get("note")})
    return rows


def format_status(rows: list[dict], name: str) -> str:
    lines = ["| step | state | job | log / note |", "|---|---|---|---|"]
    for r in rows:
        extra = r["log"] or r["note"] or ""
        if r["state"] == "failed" and r["exit_code"] is not None:
            extra = f"exit {r['exit_code']}: {extra}"
        lines.append(f"| {r['step']} | {r['state']} | {r['job_id'] or ''} | {extra} |")
    counts = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    lines.append("")
    lines.append(f"study {name}: {len(rows)} steps: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    return "\n".join(lines)
