"""A zygote for the tests' `python -m midtrain ...` calls: one process per pytest worker imports torch,
lightning and litgpt once, then forks one child per call (run as a user's `python -m midtrain` would be:
its own process, argv, environment, working folder, stdout and stderr). A fresh interpreter spends
~6.5 s importing those libraries (README: *Two commands*); the suite makes a few hundred such calls.

The zygote never computes (no torch op runs in it), so its children start from a clean runtime, as the
study executor's forked steps do (`midtrain.study.runner.fork_command`, the same code path).

Protocol (one call at a time): a JSON line {argv, env, cwd, out, err} in; the child's pid, then its exit
code, each on a line out. Set MIDTRAIN_TEST_NO_ZYGOTE=1 to run every call in a fresh interpreter instead.
"""

from __future__ import annotations

import json
import os
import signal
import sys


def _child(req: dict) -> int:
    code = 1
    try:
        os.setsid()  # its own process group: a timeout kills everything it started (ranks, forked steps)
        for fd, path in ((1, req["out"]), (2, req["err"])):
            f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(f, fd)
            os.close(f)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.environ.clear()
        os.environ.update(req["env"])
        os.chdir(req["cwd"])
        sys.path[0] = req["cwd"]  # as `python -m` puts the working folder first
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # KeyboardInterrupt, as in a fresh interpreter
        if os.environ.get("OMP_NUM_THREADS"):  # read at torch's start-up, which happened in the zygote
            import torch

            torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        if req["argv"] and req["argv"][0] == "pretrain":  # as `midtrain pretrain` records stops from its start
            from midtrain import signals

            signals.install()
        import runpy

        sys.argv = ["midtrain", *req["argv"]]
        runpy.run_module("midtrain", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - report like an interpreter would, never return into the zygote
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
            os._exit(code)


def main() -> None:
    import lightning  # noqa: F401
    import litgpt  # noqa: F401
    import torch  # noqa: F401

    import midtrain.cli  # noqa: F401
    import midtrain.posttrain.sft  # noqa: F401
    import midtrain.study.runner  # noqa: F401
    import midtrain.train.pretrain  # noqa: F401

    out = sys.stdout
    print("ready", file=out, flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(req)
        print(pid, file=out, flush=True)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), file=out, flush=True)


if __name__ == "__main__":
    main()
