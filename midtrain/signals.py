"""Stop requests (SIGTERM / SIGUSR1 / SIGINT) recorded from the first line of a job to its last.

A signal's default action kills a Python process at once: during start-up (imports, data set-up,
checkpoint load) or after the final checkpoint that loses the requeue, and a SIGINT raises
KeyboardInterrupt wherever the interpreter happens to be. ``install()`` runs first thing in the
``midtrain`` entry point and replaces those actions with a flag the trainer reads at step
boundaries (``requested()``): a run then checkpoints and exits ``EXIT_REQUEUE``, or says that
there is nothing to save yet, whichever signal it was (a Ctrl-C too: 75 always means "stopped at a
consistent checkpoint, run again to continue"). A second SIGINT (an impatient Ctrl-C) exits at once
with 130, without a checkpoint: 130 means only that.

A process started by the launcher, a study job script or a step runner (through ``srun``) says when its
handlers are in place (a file in ``$MIDTRAIN_SIGNALS_READY``, one per rank): what started it holds a stop
request back until every rank has said so, since a signal that reaches an interpreter still starting up
kills it (exit 138: no requeue).

DataLoader workers get their own handlers (``worker_init``): a signal sent to the whole process
group (Ctrl-C, ``srun``) never crashes the loop with a worker traceback.
"""

from __future__ import annotations

import os
import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
EXIT_REQUEUE = 75  # EX_TEMPFAIL: checkpointed after a signal (or nothing to save yet); launchers requeue on it
EXIT_INTERRUPTED = 130  # a second SIGINT: stopped at once, without a checkpoint
READY_ENV = "MIDTRAIN_SIGNALS_READY"  # a folder: install() writes rank-<SLURM_PROCID> there
_received: list[int] = []
_main_pid: int | None = None


def _handler(signum, frame) -> None:
    if signum == signal.SIGINT and signal.SIGINT in _received and os.getpid() == _main_pid:
        os.write(2, b"midtrain: second interrupt: stopping now without a checkpoint\n")
        os._exit(EXIT_INTERRUPTED)
    _received.append(signum)


def install() -> None:
    """Record stop signals instead of dying (idempotent; main thread only)."""
    global _main_pid
    _main_pid = os.getpid()
    for sig in STOP_SIGNALS:
        signal.signal(sig, _handler)
    ready = os.environ.pop(READY_ENV, None)  # (popped: said once, by this process, not by what it starts)
    if ready:
        try:
            open(os.path.join(ready, f"rank-{os.environ.get('SLURM_PROCID', os.getpid())}"), "w").close()
        except OSError as e:  # the launcher then holds a stop request until this process ends: say so
            os.write(2, f"midtrain: warning: cannot say that stop signals are handled ({ready}: {e}); a stop "
                        "request is held until this process ends\n".encode())


def ignore_until_exit() -> None:
    """Ignore stop signals from here to the end of the process: the job's outcome is decided and
    saved, and while the interpreter shuts down it puts back the default (fatal) action of any
    signal with a Python handler, but leaves SIG_IGN alone."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def requested() -> int | None:
    """The first stop signal received since ``install()``, or None."""
    return _received[0] if _received else None


def name(signum: int | None) -> str:
    return signal.Signals(signum).name if signum else "none"


def _exit_quietly(signum, frame) -> None:
    os._exit(0)


def worker_init(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``. SIGINT/SIGUSR1 sent to the whole process group (Ctrl-C, srun) are
    the main process's to act on: ignored here. SIGTERM (the parent shutting its workers down, or a
    group broadcast) ends the worker with status 0, which torch does not treat as a crash; a main
    process still reading then stops at its last step boundary (see the trainer)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_quietly)
