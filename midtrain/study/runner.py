"""The step runner: ``midtrain study step FOLDER`` runs one materialised step and records its status
(``run_step``): the command in a forked child of an already-imported interpreter (``fork_command``) or, for a
multi-task SLURM step, under ``srun`` (``srun_command``); stop signals forwarded once, so a preempted step
checkpoints and is resumed by the next run. ``fork_step`` is how the local executor starts a runner.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from midtrain.errors import ConfigError
from midtrain.signals import EXIT_INTERRUPTED, EXIT_REQUEUE
from midtrain.study.folder import write_status


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
        pid, line = srun_command(desc["argv"], launch, log_path, desc.get("cwd"), ready)
    else:
        line = f"midtrain {' '.join(desc['argv'])}"
    with open(log_path, "a") as log:
        log.write(f"[{time.strftime('%F %T')}] {desc['id']}: {line}\n")
    if not srun:
        pid = fork_command(desc["argv"], log_path, desc.get("cwd"))
    write_status(folder, command_pid=pid)  # it outlives this runner when the runner is killed outright
    sent = 0
    while True:
        done_pid, wstatus = os.waitpid(pid, os.WNOHANG)
        if done_pid:
            rc = os.waitstatus_to_exitcode(wstatus)
            break
        while sent < len(pending) and (ready is None or ranks_ready(ready, launch)):
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
                 note=error_line(log_path) if rc else "exited 0 without its outputs")
    return rc or 1


def error_line(log_path: Path) -> str | None:
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


def ranks_ready(ready: Path, launch: dict) -> bool:
    """Whether every rank of an srun launch has its stop-signal handlers in place (``signals.install``)."""
    try:
        return len(os.listdir(ready)) >= int(launch["nodes"]) * int(launch["tasks_per_node"])
    except OSError:
        return False


def srun_command(argv: list[str], launch: dict, log_path: Path, cwd: str | None,
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


def fork_command(argv: list[str], log_path: Path, cwd: str | None, err_path: Path | None = None,
                 env: dict[str, str] | None = None) -> int:
    """Run ``midtrain ARGV`` in a forked child, as a fresh ``midtrain`` process would run it, and return its pid
    (this process has already imported what it needs, so a step starts in a fraction of a second instead of a
    new interpreter's import time). Output goes to ``log_path`` (stderr to ``err_path`` if given; appended to),
    stdin is /dev/null, ``env`` (if given) replaces the environment, and the child has its own process group.
    The tests' zygote (tests/cli_zygote.py) runs every ``midtrain`` call through this function too."""
    # Stop signals are blocked across the fork: one that reached the child before its ``try`` would raise (or run
    # a handler) in a copy of this process's code. The child unblocks them once its own handlers are set.
    stops = {signal.SIGINT, signal.SIGTERM, signal.SIGUSR1}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    pid = os.fork()
    if pid:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
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
        for fd, path in ((1, log_path), (2, err_path or log_path)):
            f = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.dup2(f, fd)
            os.close(f)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # KeyboardInterrupt, as in a fresh interpreter
        if argv and argv[0] in ("pretrain", "sft"):  # record stop requests from the first moment, as `midtrain` does
            from midtrain import signals

            signals.install()
        signal.pthread_sigmask(signal.SIG_SETMASK, mask - stops)  # a signal that came meanwhile is taken here
        if cwd:
            os.chdir(cwd)
        # torch read its thread count when the parent imported it: the child's own setting applies it
        threads = os.environ.get("MIDTRAIN_STEP_THREADS") or (os.environ.get("OMP_NUM_THREADS") if env else None)
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        import runpy

        sys.argv = ["midtrain", *argv]
        runpy.run_module("midtrain", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:  # a fresh interpreter dies of the SIGINT (-2): the runner records "interrupted"
        import traceback

        traceback.print_exc()
        code = -signal.SIGINT
    except BaseException:  # noqa: BLE001 - the child must report, never fall back into the parent's code
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            import atexit
            import threading

            threading._shutdown()  # wait for non-daemon threads, as interpreter exit does
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            if code == -signal.SIGINT:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGINT)
            os._exit(code if code >= 0 else 1)


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


def fork_step(folder: Path, env: dict[str, str] | None = None) -> int:
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
