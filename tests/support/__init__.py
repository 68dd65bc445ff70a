"""Helpers the tests share (imported as ``from support import ...``; fixtures live in conftest.py).

- ``run_cli``: ``python -m midtrain ...`` as a user runs it, forked from a per-worker zygote (tests/cli_zygote.py);
- ``ctrl_c_until_it_ends``: a terminal's Ctrl-C, repeated, to a process group;
- ``support.runs``: a tiny model, run configs and readers of a run's outputs.
"""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


_ZYGOTE = None


def _zygote():
    """This worker's zygote (tests/cli_zygote.py): libraries imported once, a forked child per call."""
    global _ZYGOTE
    if _ZYGOTE is None or _ZYGOTE.poll() is not None:
        import atexit

        _ZYGOTE = subprocess.Popen([sys.executable, os.path.join(REPO, "tests", "cli_zygote.py")], cwd=REPO,
                                   env=dict(os.environ, PYTHONPATH=REPO), stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, bufsize=0)
        if _readline(_ZYGOTE.stdout.fileno(), 300) != "ready":
            raise RuntimeError("the CLI zygote did not start")
        atexit.register(_ZYGOTE.kill)
    return _ZYGOTE


def _readline(fd: int, timeout: float) -> str | None:
    """One line from an unbuffered pipe, or None after ``timeout`` seconds (select sees every byte)."""
    import select
    import time

    deadline, data = time.time() + timeout, b""
    while not data.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.time()))
        if not ready:
            return None
        chunk = os.read(fd, 1)
        if not chunk:
            raise RuntimeError("the CLI zygote exited")
        data += chunk
    return data.decode().strip()


def run_cli(*args, cwd=None, env=None, timeout=300):
    """Run ``python -m midtrain ...`` as a user would, in its own process; returns CompletedProcess.

    The process is forked from a zygote that imported the libraries once (tests/cli_zygote.py), so a
    call starts in milliseconds instead of a new interpreter's ~6.5 s; MIDTRAIN_TEST_NO_ZYGOTE=1 starts
    a fresh interpreter per call instead."""
    import json
    import signal
    import tempfile

    argv = [str(a) for a in args]
    e = dict(os.environ, PYTHONPATH=REPO)
    e.update(env or {})
    if os.environ.get("MIDTRAIN_TEST_NO_ZYGOTE"):
        return subprocess.run([sys.executable, "-m", "midtrain", *argv], capture_output=True, text=True,
                              cwd=cwd or REPO, env=e, timeout=timeout)
    global _ZYGOTE
    z = _zygote()
    pid = None
    with tempfile.TemporaryDirectory() as tmp:
        out, err = os.path.join(tmp, "out"), os.path.join(tmp, "err")
        try:
            z.stdin.write((json.dumps({"argv": argv, "env": e, "cwd": str(cwd or REPO), "out": out, "err": err})
                           + "\n").encode())
            z.stdin.flush()
            fd = z.stdout.fileno()
            pid = int(_readline(fd, 60))
            line = _readline(fd, timeout)
            if line is None:
                raise subprocess.TimeoutExpired([sys.executable, "-m", "midtrain", *argv], timeout)
            code = int(line)
        except BaseException:  # a timeout, an interrupt, a broken pipe: the protocol is out of step, start afresh
            if pid:
                for kill in (os.killpg, os.kill):  # the child leads its own process group (what it started, too)
                    try:
                        kill(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
            z.kill()
            _ZYGOTE = None
            raise
        with open(out) as f_out, open(err) as f_err:
            return subprocess.CompletedProcess([sys.executable, "-m", "midtrain", *argv], code, f_out.read(),
                                               f_err.read())


def ctrl_c_until_it_ends(proc, ready, timeout=60) -> str:
    """Wait until ``proc`` (its own process group) says its stop handlers are in place (a file in ``ready``,
    signals.READY_ENV), then send SIGINT to its group every 0.25 s until it ends; returns its output. Repeated: two
    SIGINTs that land while the interpreter is inside one C call run its handler once."""
    import signal
    import time

    deadline = time.time() + timeout
    while not os.listdir(ready):
        assert time.time() < deadline and proc.poll() is None, proc.communicate()[0][-2000:]
        time.sleep(0.02)
    while proc.poll() is None and time.time() < deadline:
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.25)
    return proc.communicate(timeout=timeout)[0]
