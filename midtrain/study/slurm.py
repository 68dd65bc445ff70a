"""The SLURM executor: every step that is not done becomes a job (or an array task) with ``afterok``
dependencies on the jobs of its inputs.

- **Shapes from run configs.** Each job asks for its step's ``Allocation`` (``study.resources``):
  a training step gets ``num_nodes`` nodes × ``devices`` tasks (and GPUs), and its runner starts the
  trainer with ``srun``; single-process steps ask for one task.
- **Arrays.** Steps of one kind with the same inputs and the same allocation (every SFT (task, LR,
  seed) of one checkpoint) go out as one job array (``--array=0-K%throttle``); each task runs the
  step on line ``SLURM_ARRAY_TASK_ID`` of ``.slurm/array-<hash>.txt`` and keeps its own status
  (job id ``ARRAY_TASK``), so a cancelled task is resubmitted alone.
- **A cap on queued work.** ``max_jobs`` bounds the jobs and array tasks this study keeps submitted
  (queued or running); the rest wait for a later ``run`` (``run --wait`` submits as slots free).
- Status comes from ``squeue -r`` (one call); a job SLURM no longer lists is gone (cancelled, timed
  out, node failure): its step is resubmitted, never left ``running``.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import shlex
import subprocess
import sys
from pathlib import Path
from shutil import which

from midtrain.errors import ConfigError
from midtrain.signals import EXIT_REQUEUE
from midtrain.study.folder import check_changed, materialise, study_lock, write_status
from midtrain.study.states import ENDED, step_states
from midtrain.study.plan import Plan, Step, run_config_of
from midtrain.study.resources import Allocation, allocation, step_ranks

# The clone whose code submits: its jobs run it (first on PYTHONPATH), not whichever clone a shared venv knows.
CLONE = shlex.quote(str(Path(__file__).resolve().parents[2]))
MAX_ARRAY = 1000  # SLURM's default MaxArraySize is 1001 (indices 0-1000)

JOB_SCRIPT = """#!/bin/bash
# One study step as a SLURM job (or the task of an array): signals reach the step runner, which asks
# the trainer to checkpoint; an interrupted step (exit 75) requeues this job, which resumes from its
# checkpoint. The runner starts a training step with srun (one process per device).
got=0
last=""
trap 'got=$((got + 1)); last=USR1' USR1
trap 'got=$((got + 1)); last=TERM' TERM
cd {cwd}
{setup}{expect}
export PYTHONPATH={clone}${{PYTHONPATH:+:$PYTHONPATH}}  # the submitting clone's code, whatever shares the venv
{select}
# a stop is held until the runner's handlers are in place (it writes a file in $ready), however early it
# came: a process still importing dies of it. The runner then stops before it starts anything.
sent=0
ready=$(mktemp -d)
MIDTRAIN_SIGNALS_READY="$ready" {python} -m midtrain study step "$folder" &
pid=$!
# polled, never a blocking wait: a signal trapped between a check and a `wait` would wait for the step's end
while kill -0 $pid 2>/dev/null; do
  if [ "$got" -gt "$sent" ] && [ -n "$(ls -A "$ready" 2>/dev/null)" ]; then
    sent=$got
    kill -"$last" $pid 2>/dev/null
  fi
  sleep 0.1
done
status=0
wait $pid || status=$?
rm -rf "$ready"
if [ "$status" -eq {requeue} ] && [ -n "${{SLURM_JOB_ID:-}}" ]; then
  job="$SLURM_JOB_ID"  # an array task requeues itself only (its SLURM_JOB_ID may name the whole array)
  [ -n "${{SLURM_ARRAY_TASK_ID:-}}" ] && job="${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}"
  echo "[$(date '+%F %T')] interrupted: requeueing job $job"
  scontrol requeue "$job" && exit 0
fi
exit $status
"""

SINGLE = """folder={folder}
export MIDTRAIN_STEP_LOG="$folder/slurm-$SLURM_JOB_ID.log\""""

ARRAY = """folder=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {listing})
if [ -z "$folder" ]; then echo "error: {listing} has no line $((SLURM_ARRAY_TASK_ID + 1))" >&2; exit 2; fi
export MIDTRAIN_STEP_LOG="$folder/slurm-${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}.log\""""


def squeue_jobs(job_ids: list[str]) -> dict[str, str] | None:
    """Job id (``ID`` or ``ARRAY_TASK``) -> state, for the given jobs SLURM still lists as not ended (one
    ``squeue -r`` call over this user's jobs). None when SLURM cannot be asked: then no job is taken for
    gone (a controller outage must never resubmit running work)."""
    if not job_ids:
        return {}
    try:
        r = subprocess.run(["squeue", "-h", "-a", "-r", "-o", "%i %T", "-u", getpass.getuser()], capture_output=True,
                           text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0:
        return None
    wanted = set(job_ids)
    out = {}
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in wanted and parts[1] not in ENDED:  # ended jobs linger for MinJobAge
            out[parts[0]] = parts[1]
    return out


def _dependency(job_ids: list[str], arrays: dict[str, list[str]]) -> str | None:
    """``afterok:...``; the tasks of an array that are all needed are named by the array id alone."""
    if not job_ids:
        return None
    need = set(job_ids)
    out = []
    for array, tasks in arrays.items():
        if tasks and need.issuperset(tasks):
            out.append(array)
            need -= set(tasks)
    out += sorted(need)
    return "afterok:" + ":".join(out)


def _sbatch(args: list[str], what: str) -> str:
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        raise ConfigError("slurm", f"sbatch refused {what}: {' '.join((r.stderr or r.stdout).split())}")
    return r.stdout.strip().split(";")[0]


def schedule(plan: Plan, states: dict[str, dict], allocs: dict[str, Allocation], max_jobs: int | None = None,
             retry: bool = True, max_array: int = MAX_ARRAY) -> tuple[list[str], list[list[Step]]]:
    """What to cancel and what to submit now. Pure.

    ``states``: ``step_states`` (with ``slurm_state`` of queued jobs). Returns (step ids whose queued job
    can never start and is to be cancelled, groups to submit in order: each one sbatch, an array when it
    holds several steps). Guarantees:
    - a step goes out only when each input is done, queued, or goes out earlier in this list;
    - a queued job whose ``afterok`` names a job its input no longer has (cancelled, resubmitted) is
      cancelled and goes out again, and so do the queued jobs that wait on it;
    - with ``max_jobs``, queued + running + new jobs (array tasks counted one by one) <= ``max_jobs``;
    - ``retry=False`` sends only steps that were never submitted (what ``run --wait`` does between
      polls: a step that failed, was cancelled or vanished waits for a new ``run``);
    - a group holds steps of one kind with the same inputs and the same allocation, at most ``max_array``.
    """
    jobs = {sid for sid, st in states.items() if st["state"] in ("submitted", "running")}
    current = {sid: st.get("job_id") for sid, st in states.items()}
    replace: list[str] = []
    for step in plan.steps:
        st = states[step.id]
        after = st.get("after") or {}
        if step.id in jobs and st.get("slurm_state") == "PENDING" and any(current.get(d) != j
                                                                           for d, j in after.items()):
            replace.append(step.id)
            current[step.id] = None
            jobs.discard(step.id)
        elif st["state"] not in ("done", "submitted", "running"):
            current[step.id] = None
    budget = None if max_jobs is None else max(0, max_jobs - len(jobs))
    todo: list[Step] = []   # in plan order: dependencies first
    chosen: set[str] = set()
    for step in plan.steps:
        st = states[step.id]
        if st["state"] == "done" or step.id in jobs or step.external:  # another folder's step: never from here
            continue
        if not retry and st.get("job_id") and step.id not in replace:
            continue
        if not all(states[d]["state"] == "done" or d in jobs or d in chosen for d in step.deps):
            continue  # an input can't run (it failed) or is not submitted yet (max_jobs): a later run
        if budget is not None and len(todo) >= budget:
            continue
        todo.append(step)
        chosen.add(step.id)
    groups: dict[tuple, list[Step]] = {}
    for step in todo:
        groups.setdefault((step.kind, step.deps, allocs[step.id].key()), []).append(step)
    ordered: list[list[Step]] = []
    for members in groups.values():  # dict order = first member's plan order: inputs before their users
        ordered += [members[i:i + max_array] for i in range(0, len(members), max_array)]
    return replace, ordered


def step_allocations(plan: Plan, options: dict | None) -> dict[str, Allocation]:
    """Every step's allocation with the command-line options on top (a contradiction is refused here)."""
    if not options:
        return {s.id: s.alloc for s in plan.steps}
    return {s.id: allocation(s.kind, run_config_of(plan, s), plan.spec.slurm, options, where=s.id,
                             params=plan.params.get(s.labels.get("size")), ranks=step_ranks(s.kind, s.config))
            for s in plan.steps}


def submit_slurm(plan: Plan, out_dir: Path, spec_path: Path, options: dict | None = None, rerun_changed: bool = False,
                 max_jobs: int | None = None, array_throttle: int | None = None, echo=print,
                 retry: bool = True) -> dict[str, str]:
    """Submit what ``schedule`` says (every step that is not done and not queued, within ``max_jobs``).
    Returns step id -> job id of what this call submitted."""
    for tool in ("sbatch", "squeue", "scontrol", "scancel"):
        if which(tool) is None:
            raise ConfigError("--executor", f"slurm: `{tool}` is not on PATH")
    slurm = plan.spec.slurm
    max_jobs = max_jobs if max_jobs is not None else slurm.get("max_jobs")
    throttle = array_throttle if array_throttle is not None else slurm.get("array_throttle")
    for key, value in (("--max_jobs", max_jobs), ("--array_throttle", throttle)):
        if value is not None and value < 1:
            raise ConfigError(key, f"must be >= 1, got {value}")
    allocs = step_allocations(plan, options)
    with study_lock(out_dir):
        check_changed(plan, out_dir, rerun_changed)
        materialise(plan, out_dir, spec_path)
        states = step_states(plan, out_dir, squeue_jobs)
        replace, groups = schedule(plan, states, allocs, max_jobs, retry)
        jobs = {sid: st["job_id"] for sid, st in states.items() if st["state"] in ("submitted", "running")}
        for sid in replace:
            subprocess.run(["scancel", jobs.pop(sid)], capture_output=True)
        submitted: dict[str, str] = {}   # what this call submitted
        python = slurm.get("python") or sys.executable
        setup = slurm.get("setup") or ""
        arrays: dict[str, list[str]] = {}  # array job id -> its task ids (for compact dependencies)
        (out_dir / ".slurm").mkdir(exist_ok=True)
        for members in groups:
            step = members[0]
            alloc = allocs[step.id]
            deps = _dependency([jobs[d] for d in step.deps if d in jobs], arrays)
            args = ["sbatch", "--parsable", f"--job-name=mt-{step.kind}", "--open-mode=append", "--requeue",
                    "--signal=B:USR1@180", *alloc.sbatch_args()]
            if deps:
                args.append(f"--dependency={deps}")
            folders = [out_dir / m.out for m in members]
            if len(members) == 1:
                script = folders[0] / "job.sh"
                select = SINGLE.format(folder=shlex.quote(str(folders[0])))
                args.append(f"--output={folders[0]}/slurm-%j.log")
            else:
                digest = hashlib.sha256("\n".join(m.out for m in members).encode()).hexdigest()[:10]
                listing = out_dir / ".slurm" / f"array-{digest}.txt"
                listing.write_text("".join(f"{f}\n" for f in folders))
                script = out_dir / ".slurm" / f"array-{digest}.sh"
                select = ARRAY.format(listing=shlex.quote(str(listing)))
                args += [f"--array=0-{len(members) - 1}" + (f"%{throttle}" if throttle else ""),
                         f"--output={out_dir}/.slurm/array-%A_%a.log"]
            expect = "\nexport MIDTRAIN_EXPECT_CUDA=1" if alloc.gpus else ""
            script.write_text(JOB_SCRIPT.format(cwd=shlex.quote(os.getcwd()), setup=setup, expect=expect, select=select,
                                                python=shlex.quote(python), requeue=EXIT_REQUEUE, clone=CLONE))
            args.append(str(script))
            job = _sbatch(args, step.id if len(members) == 1 else f"{len(members)} {step.kind} steps ({step.id}, ...)")
            ids = [job] if len(members) == 1 else [f"{job}_{i}" for i in range(len(members))]
            if len(members) > 1:
                arrays[job] = ids
            for m, jid, folder in zip(members, ids, folders):
                jobs[m.id] = submitted[m.id] = jid
                log = f"{folder}/slurm-{jid}.log"
                write_status(folder, state="submitted", job_id=jid, started=None, ended=None, pid=None, log=log,
                             exit_code=None, sbatch=[a for a in args[1:] if not a.startswith("--dependency")],
                             array=job if len(members) > 1 else None,
                             after={d: jobs[d] for d in m.deps if d in jobs})
        waiting = sum(1 for s in plan.steps if states[s.id]["state"] != "done" and s.id not in jobs)
        n_arrays = len(arrays)
        echo(f"study {plan.spec.name}: submitted {len(submitted)} step(s) as {len(groups)} job(s)"
             + (f" ({n_arrays} array(s))" if n_arrays else "") + f"; {len(jobs) - len(submitted)} already queued; "
             f"{sum(st['state'] == 'done' for st in states.values())} done; {waiting} not submitted"
             + (f" (max_jobs {max_jobs})" if max_jobs is not None and waiting else ""))
        return submitted


def settled(plan: Plan, rows: list[dict]) -> bool:
    """Nothing more will happen without a new `run`: no step runs, and every queued step waits on a failure."""
    state = {r["step"]: r["state"] for r in rows}
    if any(v == "running" for v in state.values()):
        return False
    bad = {"failed", "interrupted", "pending", "blocked"}
    doomed: set[str] = set()
    for step in plan.steps:
        if state[step.id] == "submitted" and not any(state[d] in bad or d in doomed for d in step.deps):
            return False
        if state[step.id] in bad or (state[step.id] == "submitted" and any(state[d] in bad or d in doomed
                                                                             for d in step.deps)):
            doomed.add(step.id)
    return True


def run_slurm(plan: Plan, out_dir: Path, spec_path: Path, options: dict | None = None, rerun_changed: bool = False,
              wait: bool = False, max_jobs: int | None = None, array_throttle: int | None = None, poll: float = 5.0,
              echo=print) -> int:
    """Submit (resubmitting what failed, was cancelled or vanished); with ``wait``, poll and submit the
    never-submitted steps as ``max_jobs`` slots free and their inputs finish, until nothing more can run.
    A step that fails while waiting is not retried (a new ``run`` does that). Returns an exit status."""
    import time

    from midtrain.study.states import format_status, status_rows

    submit_slurm(plan, out_dir, spec_path, options, rerun_changed, max_jobs, array_throttle, echo)
    if not wait:
        return 0
    quiet = lambda *_: None  # noqa: E731
    while True:
        time.sleep(poll)
        rows = status_rows(plan, out_dir, squeue_jobs)
        if any(r["state"] == "pending" for r in rows):
            new = submit_slurm(plan, out_dir, spec_path, options, False, max_jobs, array_throttle, quiet, retry=False)
            if new:
                echo(f"  submitted {len(new)} more step(s)")
                continue
        if settled(plan, rows):
            break
    echo(format_status(rows, plan.spec.name))
    return 0 if {r["state"] for r in rows} == {"done"} else 1
