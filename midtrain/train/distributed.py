"""How many processes a run trains with, and a process-group set-up that cannot hang.

The run config is the one source of a run's shape: ``devices`` per node × ``num_nodes``. A launcher
may start the processes (``srun`` under SLURM, ``torchrun``) or leave Fabric to start them itself;
either way the world size must equal the config's, or the run trains on another per-rank batch
and another speed than its YAML says. ``check_world`` refuses a mismatch in one line before
anything starts (Lightning itself takes ``SLURM_NTASKS`` over ``devices`` without a word).

``rendezvous`` replaces the blocking wait inside ``torch.distributed.init_process_group``: every rank
registers under its number in a ``TCPStore`` and polls, so that
- a rank that never arrives ends the set-up after ``timeout`` seconds with one line naming it
  (``RendezvousTimeout``), instead of waiting until the job's time limit;
- a stop signal (recorded by ``midtrain.signals``) during the wait ends it within ``poll`` seconds
  (``StopDuringRendezvous``: the trainer exits 75, nothing to save, the job requeues).
The store then becomes the process group's store, so no second port is opened. ``Rendezvous`` is the
mixin that puts this into Lightning's DDP and ModelParallel (FSDP2) strategies (their ``_setup_distributed`` finds the
group already initialised and goes on as usual).
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

from midtrain.errors import ConfigError

DEFAULT_TIMEOUT_S = 300.0


class RendezvousTimeout(RuntimeError):
    """Some ranks never arrived (or rank 0 never released the start) within the timeout."""


class StopDuringRendezvous(RuntimeError):
    """A stop signal arrived while the ranks were gathering: nothing to save, exit 75."""


def check_expected_cuda() -> None:
    """Refuse to fall back to CPU when the executor handed this step GPUs (``MIDTRAIN_EXPECT_CUDA``)."""
    if not os.environ.get("MIDTRAIN_EXPECT_CUDA"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("accelerator", f"this step was given GPUs (CUDA_VISIBLE_DEVICES="
                          f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}) but CUDA sees none: it would train "
                          "on CPU; check the node's driver, or set accelerator: cpu in the run config")


def any_rank(fabric, value: bool) -> bool:
    """Whether ``value`` holds on any rank (one all-reduce; none without Fabric or on one process)."""
    if fabric is None or fabric.world_size == 1:
        return value
    import torch

    return bool(fabric.all_reduce(torch.tensor(float(value), device=fabric.device), reduce_op="sum") > 0)


def leave_group() -> None:
    """Every rank leaves the process group before its interpreter ends (a barrier, then destroy). Left to interpreter
    shutdown, gloo's threads are torn down mid-use and a rank can abort after its outputs were written (``free():
    invalid pointer``: exit 134 under srun, -6 under Fabric's launcher). Call only on a path every rank takes
    together (a return of ``main``: its stops are agreed by all-reduce); nothing to do without a group.

    It collects garbage first. A ``fully_shard``-ed model its owner has dropped is cyclic garbage (FSDP2's hooks and
    state refer to each other) whose mesh info holds ProcessGroup objects, which ``destroy_process_group`` only
    unregisters (checked on 2 gloo ranks: such a model outlives ``del`` and goes at ``gc.collect()``). Left alone,
    it would go in the interpreter's final collection. The suspected link to the one abort CI saw at the exit of
    a 4-rank HSDP run ("terminate called without an active exception", after its final checkpoint) is that
    teardown, related to pytorch/pytorch PR 179291 (gloo work released while the interpreter is torn down); it is
    not reproduced, so this is a precaution, not a proven fix."""
    import gc

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def launched_world() -> tuple[int, str] | None:
    """(processes, who started them) when a launcher started them; None when Fabric starts its own.

    SLURM counts when Lightning would pick its SLURM environment (``SLURM_NTASKS`` set, job name
    not ``bash``/``interactive``); torchrun when ``TORCHELASTIC_RUN_ID`` and ``WORLD_SIZE`` are set.
    """
    if "SLURM_NTASKS" in os.environ and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        nodes = os.environ.get("SLURM_NNODES") or os.environ.get("SLURM_JOB_NUM_NODES") or "?"
        per_node = os.environ.get("SLURM_NTASKS_PER_NODE") or "?"
        return int(os.environ["SLURM_NTASKS"]), (f"SLURM started {os.environ['SLURM_NTASKS']} task(s) "
                                                  f"(SLURM_NTASKS; {nodes} node(s), SLURM_NTASKS_PER_NODE={per_node})")
    if "TORCHELASTIC_RUN_ID" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"]), f"torchrun started {os.environ['WORLD_SIZE']} process(es) (WORLD_SIZE)"
    return None


def check_world(devices: int, num_nodes: int, devices_key: str = "devices", nodes_key: str = "num_nodes",
                source: str = "the run config") -> None:
    """Refuse (one line) a launch whose process count differs from ``devices × num_nodes`` (named as ``source``
    names them: the run config's keys, or a command's options)."""
    want = devices * num_nodes
    launched = launched_world()
    if launched is None:
        if num_nodes > 1:
            raise ConfigError(nodes_key, f"{num_nodes} nodes need a launcher that starts one process per device on "
                              "every node (srun under SLURM: --nodes=N --ntasks-per-node=devices, or torchrun)")
        return
    n, who = launched
    if n != want:
        raise ConfigError(devices_key, f"{source} ask{'s' if source == 'the run config' else ''} for {devices} "
                          f"device(s) x {num_nodes} node(s) = {want} process(es), but {who}; submit with "
                          f"--nodes={num_nodes} --ntasks-per-node={devices} (and launch with srun), or change "
                          f"{devices_key}/{nodes_key}")
    per_node = os.environ.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]
    if "SLURM_NTASKS" in os.environ and per_node.isdigit() and int(per_node) != devices:
        raise ConfigError("devices", f"the run config asks for {devices} device(s) per node, but SLURM gives "
                          f"{per_node} task(s) per node (SLURM_NTASKS_PER_NODE); submit with --ntasks-per-node={devices}")


def _stop_requested() -> int | None:
    from midtrain import signals

    return signals.requested()


def rendezvous(address: str, port: int, rank: int, world: int, timeout: float = DEFAULT_TIMEOUT_S,
               poll: float = 0.1):
    """Gather ``world`` ranks through a TCPStore on ``address:port`` (rank 0 hosts it); returns the store.

    Raises ``RendezvousTimeout`` naming the missing ranks after ``timeout`` seconds, and
    ``StopDuringRendezvous`` within ``poll`` seconds of a recorded stop signal.
    """
    from torch.distributed import TCPStore

    deadline = time.monotonic() + timeout
    store = None

    def check_stop(where: str) -> None:
        sig = _stop_requested()
        if sig is not None:
            from midtrain import signals

            raise StopDuringRendezvous(f"rank {rank}: signal {signals.name(sig)} received {where}: nothing to save")

    if rank == 0:
        import sys

        print(f"rendezvous: waiting for {world} ranks at {address}:{port} (rendezvous_timeout {timeout:g} s)",
              file=sys.stderr, flush=True)
        store = TCPStore(address, port, world, is_master=True, wait_for_workers=False,
                         timeout=timedelta(seconds=max(timeout, 1)))
    else:
        while store is None:
            check_stop(f"while connecting to rank 0 at {address}:{port}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise RendezvousTimeout(f"rank {rank} of {world}: rank 0 never arrived at {address}:{port} within "
                                        f"{timeout:g} s (rendezvous_timeout)")
            try:
                store = TCPStore(address, port, world, is_master=False, timeout=timedelta(seconds=min(2.0, max(left, 0.1))))
            except (RuntimeError, TimeoutError):  # DistNetworkError/DistStoreError: not up yet
                time.sleep(min(poll, max(deadline - time.monotonic(), 0)))
    store.set(f"midtrain/arrived/{rank}", os.uname().nodename)
    keys = [f"midtrain/arrived/{r}" for r in range(world)]
    while True:
        check_stop("during the rendezvous")
        try:
            if rank == 0:
                missing = [r for r, k in enumerate(keys) if not store.check([k])]
                if not missing:
                    store.set("midtrain/go", "1")
                    return store
            elif store.check(["midtrain/go"]):
                return store
        except (RuntimeError, TimeoutError) as e:  # the host of the store (rank 0) went away
            check_stop("during the rendezvous")
            raise RendezvousTimeout(f"rank {rank} of {world}: rank 0 left the rendezvous ({' '.join(str(e).split())[:120]})") \
                from None
        if time.monotonic() > deadline:
            if rank == 0:
                ranks = ", ".join(map(str, missing))
                raise RendezvousTimeout(f"{world - len(missing)} of {world} ranks arrived within {timeout:g} s "
                                        f"(rendezvous_timeout); never arrived: rank{'s' if len(missing) > 1 else ''} "
                                        f"{ranks}")
            raise RendezvousTimeout(f"rank {rank} of {world}: rank 0 never released the start within {timeout:g} s "
                                    "(rendezvous_timeout)")
        time.sleep(poll)


class Rendezvous:
    """Mixin for Lightning's DDPStrategy/ModelParallelStrategy: ``rendezvous`` before the process group exists."""

    rendezvous_timeout: float = DEFAULT_TIMEOUT_S

    def _setup_distributed(self) -> None:  # noqa: D401 - Lightning's hook
        import torch.distributed as dist

        if os.environ.get("TORCHELASTIC_RUN_ID"):  # torchrun's agent hosts the store and has gathered the ranks
            return super()._setup_distributed()
        if not dist.is_initialized():
            self._set_world_ranks()
            env = self.cluster_environment
            rank, world = env.global_rank(), env.world_size()
            store = rendezvous(env.main_address, env.main_port, rank, world, self.rendezvous_timeout)
            store.set_timeout(self._timeout)  # the process group's own waits (not the connect retries')
            backend = self._get_process_group_backend()
            kwargs = {}
            if self.root_device.type != "cpu":
                kwargs["device_id"] = self.root_device
            dist.init_process_group(backend, store=store, rank=rank, world_size=world,
                                    timeout=self._timeout, **kwargs)
            if backend == "nccl":
                import atexit

                from lightning.fabric.utilities.distributed import _destroy_dist_connection

                atexit.register(_destroy_dist_connection)
        super()._setup_distributed()


def strategy(kind: str, timeout: float, **kwargs):
    """A Lightning ``DDPStrategy``/``ModelParallelStrategy`` (FSDP2) whose process-group set-up is ``rendezvous``."""
    from lightning.fabric.strategies import DDPStrategy, ModelParallelStrategy

    base = {"ddp": DDPStrategy, "model_parallel": ModelParallelStrategy}[kind]
    cls = type(f"Rendezvous{base.__name__}", (Rendezvous, base), {"rendezvous_timeout": float(timeout)})
    return cls(**kwargs)


class Agreement:
    """Flags OR-ed across ranks without stalling a GPU's host (the training step's one collective read).

    ``start`` builds the flags on the device from pinned memory (no blocking copy), begins the all-reduce
    asynchronously and queues a non-blocking copy of its result to pinned host memory behind a CUDA event.
    ``result`` waits for that event only: on a GPU the work queued after ``start`` (the step's last micro-batch)
    keeps running while the host reads. Every rank calls both at the same point of its program, so every rank reads
    the same flags at the same step, which is what keeps a stop exact: all ranks leave at one step boundary. On one
    process there is no collective and ``result`` returns the flags as given. On CPU (gloo) the wait is the
    collective itself."""

    def __init__(self, fabric) -> None:
        self.fabric = fabric
        self._pending: Any = None

    def start(self, *flags: bool) -> None:
        if self.fabric.world_size == 1:
            self._pending = [bool(f) for f in flags]
            return
        import torch

        device = self.fabric.device
        values = torch.tensor([float(f) for f in flags])
        cuda = device.type == "cuda"
        values = values.pin_memory().to(device, non_blocking=True) if cuda else values
        work = torch.distributed.all_reduce(values, async_op=True)
        if not cuda:
            self._pending = (values, work, None)
            return
        work.wait()  # on NCCL: the current stream waits for the collective; the host does not
        host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
        host.copy_(values, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._pending = (host, None, event)

    def result(self) -> list[bool]:
        """The flags of the last ``start``, each true if it was true on any rank."""
        if isinstance(self._pending, list):
            return self._pending
        values, work, event = self._pending
        if event is not None:
            event.synchronize()
        else:
            work.wait()
        return [x > 0 for x in values.tolist()]


def agree(fabric, *flags: bool) -> list[bool]:
    """Each flag, true if it is true on any rank (one all-reduce; nothing to agree on in one process)."""
    if fabric.world_size == 1:
        return list(flags)
    import torch

    total = fabric.all_reduce(torch.tensor([float(f) for f in flags], device=fabric.device), reduce_op="sum")
    return [bool(x > 0) for x in total.tolist()]
