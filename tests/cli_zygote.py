"""A zygote for the tests' `python -m midtrain ...` calls: one process per pytest worker imports torch,
lightning and litgpt once, then forks one child per call (run as a user's `python -m midtrain` would be:
its own process, argv, environment, working folder, stdout and stderr). A fresh interpreter spends
~6.5 s importing those libraries (README: *Two commands*); the suite makes a few hundred such calls.

The zygote never computes (no torch op runs in it), so its children start from a clean runtime. Each child is
forked by `midtrain.study.runner.fork_command`, the function the study executor forks its steps with.

Protocol (one call at a time): a JSON line {argv, env, cwd, out, err} in; the child's pid, then its exit
code, each on a line out. Set MIDTRAIN_TEST_NO_ZYGOTE=1 to run every call in a fresh interpreter instead.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    import lightning  # noqa: F401
    import litgpt  # noqa: F401
    import torch  # noqa: F401

    import midtrain.cli  # noqa: F401
    import midtrain.posttrain.sft  # noqa: F401
    import midtrain.study.runner  # noqa: F401
    import midtrain.train.pretrain  # noqa: F401

    from midtrain.study.runner import fork_command

    out = sys.stdout
    print("ready", file=out, flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        for path in (req["out"], req["err"]):  # a fresh file per call (fork_command appends, as a step log does)
            open(path, "w").close()
        path0, sys.path[0] = sys.path[0], req["cwd"]  # as `python -m` puts the working folder first
        try:
            pid = fork_command(req["argv"], req["out"], req["cwd"], err_path=req["err"], env=req["env"])
        finally:
            sys.path[0] = path0
        print(pid, file=out, flush=True)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), file=out, flush=True)


if __name__ == "__main__":
    main()
