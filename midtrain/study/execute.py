"""Running a study's plan: step folders, status files and the step runner (executors: ``study.local``, ``study.slurm``).

Layout under the study folder ``DIR`` (``--out``):
- ``DIR/study.json``: the plan last run here (step id -> output folder, kind, deps); ``DIR/studies/NAME.json``
  the same per spec name (several specs can run into one folder);
- ``DIR/bases.json``: every base segment planned here, by any spec: what the next spec reuses
  (``read_bases``; a base checkpoint is found by its base run and step, not by a spec's cuts);
- ``DIR/<step out>/step.json``: what the step runs (a ``midtrain`` command line) and what it must
  leave behind; ``run.yaml`` for training steps; ``log.txt`` (or ``slurm-<job>.log``);
- ``DIR/<step out>/status.json``: the step's state, written atomically: ``submitted`` (a SLURM job
  id), ``running`` (pid, host, job id), ``done``, ``failed`` (exit code, log) or ``interrupted``
  (stopped by a signal after checkpointing: the next run resumes it).

A step is *done* when its status says so, its outputs exist and no input finished after it started
(then it is stale and runs again). ``run`` never starts a done step, resumes interrupted training
(``resume: auto``), and refuses a spec whose already-run steps now resolve to other configs unless
``rerun_changed``. One ``run`` per DIR at a time: a lock file, held while it runs or submits.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from midtrain.errors import ConfigError
from midtrain.signals import EXIT_INTERRUPTED, EXIT_REQUEUE
from midtrain.train.checkpoint import is_checkpoint
from midtrain.study.files import write_json_atomic
from midtrain.study.plan import Plan, Step
from midtrain.study.resources import TRAINING
from midtrain.study.spec import data_args

STATES = ("pending", "submitted", "running", "done", "failed", "interrupted", "blocked")
ENDED = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL",
         "DEADLINE"}


# ---- what a step runs ----

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


# ---- status ----

def read_status(folder: Path) -> dict:
    try:
        return json.loads((folder / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def write_status(folder: Path, **fields) -> dict:
    status = {**read_status(folder), **fields, "updated": time.time()}
    write_json_atomic(folder / "status.json", status)
    return status


def _pid_alive(status: dict) -> bool:
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


def step_states(plan: Plan, out_dir: Path, query_slurm: bool = True) -> dict[str, dict]:
    """Step id -> status dict with a resolved ``state`` (pending/submitted/running/done/failed/interrupted)."""
    raw = {s.id: read_status(out_dir / s.out) for s in plan.steps}
    live = {}
    if query_slurm:
        from midtrain.study.slurm import squeue_jobs

        live = squeue_jobs(sorted({st["job_id"] for st in raw.values() if st.get("job_id") and
                                   st.get("state") in ("submitted", "running", "interrupted")}))
    out: dict[str, dict] = {}
    for step in plan.steps:  # topological order: deps resolved first
        st = dict(raw[step.id])
        state = st.get("state", "pending")
        if step.labels.get("run_folder"):  # a base run folder: done while the checkpoints this plan reads exist
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
            elif not job and not _pid_alive(st):
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


# ---- the step runner: `midtrain study step FOLDER` ----

def run_step(folder: Path) -> int:
    """Run one materialised step, recording its status; forwards SIGTERM/SIGUSR1/SIGINT to the command."""
    folder = Path(folder)
    try:
        desc = json.loads((folder / "step.json").read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(str(folder), f"is not a study step folder (step.json: {e})") from None
    from midtrain import signals as stop_signals

    # what arrived before this point was recorded from the process's first line (__main__); its job script
    # holds a stop until then (signals.READY_ENV)
    pending: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGHUP):  # (a closed terminal: SIGHUP)
        signal.signal(sig, lambda s, f: pending.append(s))
    pending += [s for s in (stop_signals.requested(),) if s is not None]  # (read after: none falls in between)
    log_path = Path(os.environ.get("MIDTRAIN_STEP_LOG") or folder / "log.txt")
    started = time.time()
    launch = desc.get("launch")
    srun = bool(launch and os.environ.get("SLURM_JOB_ID"))
    write_status(folder, state="running", pid=os.getpid(), command_pid=None, host=socket.gethostname(),
                 started=started, ended=None, job_id=slurm_job_id(), log=str(log_path), exit_code=None, outputs=desc["outputs"],
                 hash=desc["hash"], devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
                 processes=(launch["nodes"] * launch["tasks_per_node"]) if srun else None)
    if pending:
        write_status(folder, state="interrupted", ended=time.time(), exit_code=EXIT_REQUEUE)
        return EXIT_REQUEUE
    ready = None  # srun's ranks say when they can take a stop request (signals.READY_ENV); until then it waits
    if srun:
        ready = folder / f".signals-ready-{os.getpid()}"
        shutil.rmtree(ready, ignore_errors=True)
        ready.mkdir()
        pid, line = _srun_command(desc["argv"], launch, log_path, desc.get("cwd"), ready)
    else:
        line = f"midtrain {' '.join(desc['argv'])}"
    with open(log_path, "a") as log:
        log.write(f"[{time.strftime('%F %T')}] {desc['id']}: {line}\n")
    if not srun:
        pid = _fork_command(desc["argv"], log_path, desc.get("cwd"))
    write_status(folder, command_pid=pid)  # it outlives this runner when the runner is killed outright
    sent = 0
    while True:
        done_pid, wstatus = os.waitpid(pid, os.WNOHANG)
        if done_pid:
            rc = os.waitstatus_to_exitcode(wstatus)
            break
        while sent < len(pending) and (ready is None or _ranks_ready(ready, launch)):
            s = pending[sent]
            try:  # the trainer checkpoints on USR1 (SIGTERM, SLURM's stop, becomes that request)
                os.kill(pid, signal.SIGUSR1 if s in (signal.SIGTERM, signal.SIGHUP) else s)
            except ProcessLookupError:
                pass
            sent += 1
        time.sleep(0.02)
    if ready is not None:
        shutil.rmtree(ready, ignore_errors=True)
    ok = rc == 0 and all(Path(p).exists() for p in desc["outputs"])
    if ok:
        write_status(folder, state="done", ended=time.time(), exit_code=0)
        return 0
    if rc in (EXIT_REQUEUE, EXIT_INTERRUPTED) or (pending and rc < 0):  # (rc < 0: ended by the signal itself)
        note = ("stopped by a signal: SFT keeps no checkpoint and starts over when run again"
                if rc == EXIT_REQUEUE and desc["argv"][:1] == ["sft"] else
                "checkpointed; run again to continue" if rc == EXIT_REQUEUE else
                "stopped without a checkpoint (a second interrupt): it continues from its last checkpoint"
                if rc == EXIT_INTERRUPTED else f"ended by signal {-rc} before it could checkpoint")
        write_status(folder, state="interrupted", ended=time.time(), exit_code=rc, note=note)
        return EXIT_REQUEUE
    write_status(folder, state="failed", ended=time.time(), exit_code=rc if rc else 1,
                 note=_error_line(log_path) if rc else "exited 0 without its outputs")
    return rc or 1


def _error_line(log_path: Path) -> str | None:
    """The last ``midtrain ...: error...`` line of a step's log: why it failed, for ``study status``."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 65536))
            tail = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    found = [line.strip() for line in tail if re.match(r"midtrain [\w-]+: error", line)]
    return found[-1][:500] if found else None


def slurm_job_id() -> str | None:
    """This job's id as squeue lists it: ``ARRAYID_TASK`` for an array task, else ``SLURM_JOB_ID``."""
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def srun_argv(argv: list[str], launch: dict, python: str | None = None, cpus_per_task: str | None = None) -> list[str]:
    """``srun`` starting one ``midtrain`` process per device on every node of the allocation (with the job's
    ``--cpus-per-task``, which srun no longer inherits from sbatch since SLURM 22.05)."""
    n, t = int(launch["nodes"]), int(launch["tasks_per_node"])
    cpus = [f"--cpus-per-task={cpus_per_task}"] if cpus_per_task else []
    return ["srun", "--kill-on-bad-exit=1", f"--nodes={n}", f"--ntasks={n * t}", f"--ntasks-per-node={t}", *cpus,
            python or sys.executable, "-m", "midtrain", *argv]


def _ranks_ready(ready: Path, launch: dict) -> bool:
    """Whether every rank of an srun launch has its stop-signal handlers in place (``signals.install``)."""
    try:
        return len(os.listdir(ready)) >= int(launch["nodes"]) * int(launch["tasks_per_node"])
    except OSError:
        return False


def _srun_command(argv: list[str], launch: dict, log_path: Path, cwd: str | None,
                  ready: Path) -> tuple[int, str]:
    """Start the step's command under srun (its ranks write to the log, and each says in ``ready`` when it
    can take a stop request); returns (pid, the command line)."""
    from midtrain.signals import READY_ENV

    cmd = srun_argv(argv, launch, cpus_per_task=os.environ.get("SLURM_CPUS_PER_TASK"))
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        proc = subprocess.Popen(cmd, stdout=fd, stderr=fd, stdin=subprocess.DEVNULL, cwd=cwd or None,
                                env={**os.environ, READY_ENV: str(ready)})
    finally:
        os.close(fd)
    return proc.pid, " ".join(cmd)


def _fork_command(argv: list[str], log_path: Path, cwd: str | None) -> int:
    """Run ``midtrain ARGV`` in a forked child (this process has already imported what it needs, so a
    step starts in a fraction of a second instead of a new interpreter's import time); output to the log."""
    pid = os.fork()
    if pid:
        try:  # (both sides set it: no window where a terminal's signal reaches the child directly)
            os.setpgid(pid, pid)
        except OSError:
            pass
        return pid
    code = 1
    try:
        # Its own process group: a terminal's Ctrl-C reaches this step runner, which forwards it once. In the
        # runner's group the trainer got it twice (terminal + forward) and took it for an impatient second
        # Ctrl-C: stopped without a checkpoint (issue 27, class 12).
        os.setpgid(0, 0)
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        if argv and argv[0] in ("pretrain", "sft"):  # record stop requests from the first moment, as `midtrain` does
            from midtrain import signals

            signals.install()
        if cwd:
            os.chdir(cwd)
        threads = os.environ.get("MIDTRAIN_STEP_THREADS")
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        import runpy

        sys.argv = ["midtrain", *argv]
        runpy.run_module("midtrain", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - the child must report, never fall back into the parent's code
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            import atexit

            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def preload() -> None:
    """Import the heavy libraries once, before forking steps (their import dominates a short step)."""
    try:
        import lightning  # noqa: F401
        import litgpt  # noqa: F401
        import torch  # noqa: F401

        import midtrain.train.pretrain  # noqa: F401
        import midtrain.posttrain.sft  # noqa: F401
    except ImportError:
        pass


def _fork_step(folder: Path, env: dict[str, str] | None = None) -> int:
    """Run one step in a forked child (the local executor). The child sees no ``SLURM_*`` variables:
    a multi-device step starts its own processes here, whatever allocation this executor runs in."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        fd = os.open(os.devnull, os.O_RDWR)
        for k in (0, 1, 2):
            os.dup2(fd, k)
        launcher = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK",
                    "LOCAL_WORLD_SIZE", "MIDTRAIN_EXPECT_CUDA")
        for k in [k for k in os.environ if k.startswith(("SLURM_", "TORCHELASTIC_")) or k in launcher]:
            del os.environ[k]
        os.environ.update(env or {})
        code = run_step(folder)
    except BaseException:  # noqa: BLE001
        code = 1
    finally:
        os._exit(code)


# ---- shared by the executors ----

_LOCK_FDS: set[int] = set()  # this process's study locks: a forked child closes its copies (below)


def _drop_locks_in_child() -> None:
    """A flock belongs to the open file, which a fork shares: a step runner or trainer forked by a locked
    ``run`` held the lock for as long as it lived. When that run was killed outright (a node's OOM killer, a
    ``kill -9`` of its process group), its orphaned trainers kept the folder locked, and the re-run meant to
    wait for them was refused ("in use by another `midtrain study run`"). The child closes its copy; the
    lock stays with the run that took it."""
    for fd in list(_LOCK_FDS):  # (/dev/null over it, not a close: the number stays taken, so a file the child
        try:                     # opens later never gets it, and the parent's file object never points elsewhere)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, fd)
            os.close(null)
        except OSError:
            pass
    _LOCK_FDS.clear()


os.register_at_fork(after_in_child=_drop_locks_in_child)


@contextmanager
def study_lock(out_dir: Path):
    """Hold ``OUT/.study.lock`` (one ``run`` per folder) for the ``with`` block; forked children never hold it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    f = open(out_dir / ".study.lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise ConfigError("--out", f"{out_dir} is in use by another `midtrain study run` (lock "
                          f"{out_dir / '.study.lock'}); wait for it or stop it") from None
    _LOCK_FDS.add(f.fileno())
    try:
        f.seek(0)
        f.truncate()
        f.write(f"{socket.gethostname()} {os.getpid()}\n")
        f.flush()
        yield
    finally:
        _LOCK_FDS.discard(f.fileno())
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def _index(out_dir: Path, name: str) -> dict | None:
    """The steps (id -> out, kind, deps) a spec named ``name`` last materialised in ``out_dir``, or None."""
    for path in (out_dir / "studies" / f"{name}.json", out_dir / "study.json"):
        try:
            index = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if index.get("name") == name and "steps" in index:
            return index["steps"]
    return None


def read_ran(out_dir: Path, name: str) -> dict:
    """The training steps of spec ``name`` (and the base segments of any spec) done in ``out_dir``: id -> ``Ran`` (hash from step.json, config from
    run.yaml without its out_dir), for ``make_plan``. Unreadable records are skipped: such a step
    then plans as it would anyway."""
    import yaml

    from midtrain.study.plan import Ran

    out = {}
    index = dict(_index(out_dir, name) or {})
    for seg in read_bases(out_dir):  # base segments other specs planned here: reused by any spec of their run
        if not seg.folder:
            index.setdefault(seg.id, {"out": seg.out, "kind": "pretrain"})
    for sid, info in index.items():
        folder = out_dir / info.get("out", "")
        if info.get("kind") not in TRAINING or read_status(folder).get("state") != "done":
            continue
        try:
            h = json.loads((folder / "step.json").read_text())["hash"]
            cfg = yaml.safe_load((folder / "run.yaml").read_text())
        except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
            continue
        if isinstance(cfg, dict) and isinstance(h, str):
            out[sid] = Ran(h, info["out"], {k: v for k, v in cfg.items() if k != "out_dir"})  # (resume_from: an
            # imported size's checkpoint lives there; the hash ignores it, and the runner sets a segment's own)
    return out


def changed_steps(plan: Plan, out_dir: Path) -> dict[str, str]:
    """Steps that ran (or run) here under another resolved config: id -> the folder they ran in."""
    before = _index(out_dir, plan.spec.name)
    changed = {}
    for step in plan.steps:
        old = (before or {}).get(step.id)
        if step.kind == "report" or not old or old["out"] == step.out:
            continue
        if read_status(out_dir / old["out"]).get("state") in ("done", "running", "submitted", "interrupted"):
            changed[step.id] = old["out"]
    return changed


def check_changed(plan: Plan, out_dir: Path, rerun_changed: bool) -> list[str]:
    """Steps that already ran here under another resolved config; refused unless ``rerun_changed``."""
    changed = changed_steps(plan, out_dir)
    if changed and not rerun_changed:
        first = next(iter(changed))
        raise ConfigError("SPEC", f"{len(changed)} step(s) that already ran in {out_dir} now resolve to other configs "
                          f"(first: {first}: {changed[first]} -> {plan.by_id[first].out}; `study plan --out` lists "
                          "them); pass --rerun_changed to run them anew (old outputs are kept)")
    for step in plan.steps:
        if step.logging_kept:
            print(f"kept {step.id} (done; only what it logs changed: {'; '.join(step.logging_kept)})", flush=True)
    return list(changed)


def here_states(plan: Plan, out_dir: Path) -> dict[str, str]:
    """What ``study run`` would do with each step in ``out_dir``: done, done (kept: logging changed), changed
    (refused without --rerun_changed), running/submitted, or will run."""
    changed = changed_steps(plan, out_dir)
    states = step_states(plan, out_dir, query_slurm=False)
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


def materialise(plan: Plan, out_dir: Path, spec_path: Path) -> None:
    """Write study.json and every step's step.json / run.yaml (unchanged files are not rewritten)."""
    import yaml

    out_dir.mkdir(parents=True, exist_ok=True)
    for step in plan.steps:
        if step.external:  # another study folder's step: read, never written or run from here
            continue
        folder = out_dir / step.out
        argv, outputs, run_cfg = step_command(plan, step, out_dir, spec_path)
        desc = {"id": step.id, "kind": step.kind, "hash": step.hash, "argv": argv, "outputs": outputs,
                "deps": [plan.by_id[d].out for d in step.deps], "labels": step.labels, "cwd": os.getcwd()}
        if step.alloc is not None and step.alloc.srun:  # under SLURM the runner starts it with srun
            desc["launch"] = {"nodes": step.alloc.nodes, "tasks_per_node": step.alloc.tasks_per_node}
        text = json.dumps(desc, indent=1, default=str) + "\n"
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "step.json").is_file() or (folder / "step.json").read_text() != text:
            from midtrain.atomic import write_text_atomic

            write_text_atomic(folder / "step.json", text)
            if run_cfg is not None:
                write_text_atomic(folder / "run.yaml", yaml.safe_dump(run_cfg, sort_keys=False))
    index = {"spec": str(spec_path), "name": plan.spec.name,
             "steps": {s.id: {"out": s.out, "kind": s.kind, "deps": list(s.deps)} for s in plan.steps}}
    (out_dir / "studies").mkdir(exist_ok=True)
    write_json_atomic(out_dir / "studies" / f"{plan.spec.name}.json", index)
    write_json_atomic(out_dir / "study.json", index)
    record_bases(plan, out_dir)


def check_external(plan: Plan, out_dir: Path) -> None:
    """Every base step reused from another study folder (``sizes.X.base``) must be done there: this study
    never runs or writes another folder's steps. One line naming the first that is not."""
    states = step_states(plan, out_dir, query_slurm=False)
    for step in plan.steps:
        if step.external and states[step.id]["state"] != "done":
            if step.labels.get("run_folder"):
                raise ConfigError(f"sizes.{step.labels.get('size')}.base", f"{states[step.id]['note']}: this study "
                                  "reads it; restore it or plan from another base")
            raise ConfigError(f"sizes.{step.labels.get('size')}.base", f"{step.id} in {step.external} is not done "
                              f"there (state: {states[step.id]['state']}): run that study to it first")


def read_bases(out_dir: Path | None) -> list:
    """The base segments planned in the study folder ``out_dir`` so far (``bases.json``), for ``make_plan``."""
    from midtrain.study.plan import BaseSegment

    if out_dir is None:
        return []
    try:
        raw = json.loads((Path(out_dir) / "bases.json").read_text())["segments"]
        return [BaseSegment(**{**seg, "deps": tuple(seg["deps"]), "kept": tuple(seg.get("kept", ()))})
                for seg in raw.values()]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError("--out", f"{out_dir}/bases.json is not a base-segment index ({type(e).__name__}: {e})") from None


def record_bases(plan: Plan, out_dir: Path) -> None:
    """Add this plan's base segments to ``bases.json`` (kept: segments of other specs)."""
    import dataclasses

    known = {seg.out: seg for seg in read_bases(out_dir)}
    for seg in plan.base_segments():
        known.setdefault(seg.out, seg)
    write_json_atomic(out_dir / "bases.json", {"segments": {out: dataclasses.asdict(seg) for out, seg in known.items()}})


# ---- status ----

def status_rows(plan: Plan, out_dir: Path) -> list[dict]:
    states = step_states(plan, out_dir, query_slurm=True)
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
