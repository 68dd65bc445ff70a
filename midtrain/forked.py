"""Run a function in a forked child process and take back its result.

For work that must not leave state in the calling process: the memory estimate traces a model on
``FakeTensorMode``, after which the process's next backward pass starts extra autograd device threads
(measured: 8), and a process that later forks step runners must keep a clean torch runtime. The child
computes, sends its JSON-able result (or its ``ConfigError``) through a pipe, and leaves with
``os._exit``; the caller raises what the child raised. Call it before CUDA is initialised.
"""

from __future__ import annotations

import json
import os

from midtrain.errors import ConfigError


def run_forked(fn, *args):
    """``fn(*args)`` in a forked child: its return value (JSON-able), or its ConfigError raised here."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            out = {"ok": fn(*args)}
        except ConfigError as e:
            out = {"refused": str(e)}
        except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises it
            out = {"error": f"{type(e).__name__}: {e}"}
        try:
            with os.fdopen(write, "w") as f:
                json.dump(out, f)
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        text = f.read()
    os.waitpid(pid, 0)
    result = json.loads(text) if text else {"error": "the forked child ended without a result"}
    if "refused" in result:
        raise ConfigError(result["refused"])
    if "error" in result:
        raise RuntimeError(result["error"])
    return result["ok"]
