"""Run ``python -m midtrain ...`` while counting the reads from tensors back to the host (device syncs on a GPU).

    python tests/count_syncs.py OUT_PREFIX pretrain --config run.yaml

A read is ``aten._local_scalar_dense`` (``.item()``, ``float()``, ``bool()``, ``int()`` of a tensor, seen by a
``TorchDispatchMode``) or ``Tensor.tolist`` (which bypasses the dispatcher, so it is wrapped). On CPU every tensor
is a host tensor, so each read is counted where it *would* stall a GPU, except those made by ``torch.optim`` on its
per-parameter step counters: a non-capturable optimizer keeps them on the host on a GPU too (no device sync), nor
those made in ``midtrain/data/`` (loaders hand out host tensors; the trainer moves them to the device).

Each training process (rank 0 and any rank Fabric's launcher re-executes this script as) writes
``OUT_PREFIX.rank<N>.json``: ``{"reads": total, "sites": {...}, "steps": [{...}, ...]}``, a site being
``file:line`` of the innermost frame in midtrain or Lightning, and ``steps[k]`` the sites read between optimizer step
k and step k + 1 (a global ``torch.optim`` post-step hook): the step path, with whatever logging, validation or
saving the run config schedules after step k + 1. Forked children (loader workers) write nothing.
"""

import atexit
import json
import os
import sys
import traceback
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

HOST_SIDE = [os.path.join(os.path.dirname(torch.__file__), "optim") + os.sep]  # + midtrain/data/ (set in main)
ROOTS: tuple[str, ...] = ()  # midtrain's and Lightning's package folders (set in main, before the run imports)


def _site() -> str | None:
    """The innermost midtrain/Lightning frame of the current stack (None: a read made on the host by torch.optim)."""
    stack = traceback.extract_stack()[:-2]
    if any(f.filename.startswith(h) for f in stack for h in HOST_SIDE):
        return None
    for f in reversed(stack):
        for root in ROOTS:
            if f.filename.startswith(root):
                return f"{os.path.relpath(f.filename, os.path.dirname(root))}:{f.lineno}"
    return "elsewhere"


class Counting(TorchDispatchMode):
    def __init__(self, sites: Counter):
        super().__init__()
        self.sites = sites

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            site = _site()
            if site is not None:
                self.sites[site] += 1
        return func(*args, **(kwargs or {}))


def main() -> int:
    global ROOTS
    import lightning

    import midtrain

    ROOTS = tuple(os.path.dirname(m.__file__) + os.sep for m in (midtrain, lightning))
    HOST_SIDE.append(os.path.join(os.path.dirname(midtrain.__file__), "data") + os.sep)  # loaders: host tensors only
    prefix = sys.argv[1]
    sites: Counter = Counter()
    tolist = torch.Tensor.tolist

    def counted_tolist(self):
        site = _site()
        if site is not None:
            sites[site] += 1
        return tolist(self)

    torch.Tensor.tolist = counted_tolist
    steps: list[dict] = []
    previous: list[Counter] = []  # the counts at the last optimizer step (none before the first)

    def after_step(optimizer, args, kwargs):
        if previous:
            steps.append(dict(sites - previous[0]))
        previous[:] = [sites.copy()]

    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(after_step)
    pid = os.getpid()

    def write():
        if os.getpid() != pid:
            return
        rank = os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0"))
        with open(f"{prefix}.rank{rank}.json", "w") as f:
            json.dump({"reads": sum(sites.values()), "sites": dict(sites), "steps": steps}, f)

    atexit.register(write)
    from midtrain.cli import main as midtrain_main

    # (sys.argv stays as given: Fabric's launcher re-executes it for the other ranks)
    try:
        with Counting(sites):
            midtrain_main(sys.argv[2:])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    write()
    atexit.unregister(write)
    return code


if __name__ == "__main__":
    sys.exit(main())
