"""The local executor: every step that is not done runs on this machine, dependencies first.

- **Devices.** ``gpus`` lists the GPUs it may hand out (default: the visible ones, from
  ``CUDA_VISIBLE_DEVICES`` or ``nvidia-smi -L``; none on a CPU machine). A step gets exactly the
  GPUs its allocation names (a training step ``devices``, an SFT step its ``sft.options.devices``, eval one,
  the report none) through ``CUDA_VISIBLE_DEVICES``, recorded in its status; steps run side by side only on
  free GPUs, and at most ``parallel`` at a time (default: one per GPU, or 1 without GPUs).
- **Processes.** A multi-device training or SFT step is started once; Fabric starts one process per
  device (world size = ``devices``), never inside a SLURM allocation's task count (``SLURM_*``
  variables are not passed to steps). A config with ``num_nodes`` > 1 is refused: one machine.
- Signals: SIGTERM/SIGINT make every running step checkpoint; the run says what each step did and exits
  75.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from midtrain.errors import ConfigError
from midtrain.signals import EXIT_REQUEUE
from midtrain.study.folder import check_changed, materialise, read_status, study_lock
from midtrain.study.runner import fork_step, preload
from midtrain.study.states import pid_alive, step_states
from midtrain.study.plan import Plan


def visible_gpus() -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else ``nvidia-smi -L``; [] on CPU."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        r = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    import re

    return [m.group(1) for m in (re.match(r"GPU (\d+):", line) for line in r.stdout.splitlines()) if m]


def parse_gpus(value: str | None) -> list[str] | None:
    """``--gpus``: ``0,1,2,3``, ``none`` (CPU), or None (the visible GPUs)."""
    if value is None or value == "auto":
        return None
    if str(value).strip().lower() in ("none", ""):
        return []
    gpus = [g.strip() for g in str(value).split(",")]
    if any(not g for g in gpus) or len(set(gpus)) != len(gpus):
        raise ConfigError("--gpus", f"expected distinct device ids like 0,1,2,3 (or none), got {value!r}")
    return gpus


def gpu_need(plan: Plan, gpus: list[str], todo: set[str] | None = None) -> dict[str, int]:
    """Step id -> GPUs it gets (0 for every step when there are none); refuses what cannot run here
    (among ``todo``, the steps still to run; default all)."""
    need = {}
    for step in plan.steps:
        if todo is not None and step.id not in todo:
            need[step.id] = 0
            continue
        alloc = step.alloc
        if alloc is not None and alloc.nodes > 1:
            raise ConfigError(f"{step.id}: num_nodes", f"{alloc.nodes} nodes: the local executor runs on one machine "
                              "(use --executor slurm)")
        n = (alloc.gpus if alloc is not None else 0) if gpus else 0
        if n > len(gpus):
            raise ConfigError("--gpus", f"step {step.id} needs {n} GPUs (its config's devices), only {len(gpus)} "
                              f"given ({','.join(gpus)})")
        need[step.id] = n
    return need



def run_local(plan: Plan, out_dir: Path, spec_path: Path, parallel: int | None = None, rerun_changed: bool = False,
              echo=print, gpus: list[str] | None = None) -> int:
    """Run every step that is not done, dependencies first, on free GPUs, at most ``parallel`` at a time.
    ``gpus``: None = the visible ones. Returns an exit status."""
    visible = visible_gpus()
    if gpus is None:
        gpus = visible
    elif visible and not set(gpus) <= set(visible):
        raise ConfigError("--gpus", f"{','.join(g for g in gpus if g not in visible)} is not among the visible GPUs "
                          f"({','.join(visible)})")
    gpus = list(gpus)
    parallel = parallel if parallel is not None else max(1, len(gpus))
    if parallel < 1:
        raise ConfigError("--parallel", f"must be >= 1, got {parallel}")
    free = list(gpus)
    held: dict[str, list[str]] = {}
    with study_lock(out_dir):
        check_changed(plan, out_dir, rerun_changed)
        materialise(plan, out_dir, spec_path)
        states = step_states(plan, out_dir)
        # a step that failed in an earlier run runs again in this one (once: if it fails again, it stays failed)
        state = {sid: "pending" if st["state"] == "failed" else st["state"] for sid, st in states.items()}
        todo = [s for s in plan.steps if state[s.id] != "done"]
        need = gpu_need(plan, gpus, {s.id for s in todo})
        echo(f"study {plan.spec.name}: {len(plan.steps) - len(todo)} of {len(plan.steps)} steps done, "
             f"{len(todo)} to run ({parallel} at a time" + (f", GPUs {','.join(gpus)}" if gpus else "")
             + f") in {out_dir}")
        running: dict[str, int] = {}  # step id -> pid of its forked step runner
        preload()
        if parallel > 1 and "MIDTRAIN_STEP_THREADS" not in os.environ:
            os.environ["MIDTRAIN_STEP_THREADS"] = str(max(1, (os.cpu_count() or 1) // parallel))
        external = {sid for sid, st in states.items() if st["state"] == "running"}  # a live process from before
        for sid in external:  # its GPUs are taken until it ends
            taken = [g for g in (states[sid].get("devices") or "").split(",") if g in free]
            held[sid] = taken
            free = [g for g in free if g not in taken]
        stop: list[int] = []
        old = {sig: signal.signal(sig, lambda s, f: stop.append(s)) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            while True:
                for sid in list(external):  # an orphan of a killed run: wait for it, never start it twice
                    if not pid_alive(read_status(out_dir / plan.by_id[sid].out)):
                        external.discard(sid)
                        free += held.pop(sid, [])
                        state[sid] = step_states(plan, out_dir)[sid]["state"]
                for sid, pid in list(running.items()):
                    if os.waitpid(pid, os.WNOHANG)[0] == 0:
                        continue
                    del running[sid]
                    free += held.pop(sid, [])
                    st = read_status(out_dir / plan.by_id[sid].out)
                    state[sid] = st.get("state", "failed")
                    if state[sid] == "failed":
                        echo(f"  failed: {sid} (exit {st.get('exit_code')}; log {st.get('log')})")
                    elif state[sid] == "done":
                        echo(f"  done: {sid}")
                if stop:
                    # A Ctrl-C reaches the step runners from the terminal as well; a runner forwards one stop
                    # to its trainer (in its own process group) whichever reaches it first.
                    for pid in running.values():
                        os.kill(pid, signal.SIGTERM)
                    for pid in running.values():
                        os.waitpid(pid, 0)
                    echo(f"stopped by signal {signal.Signals(stop[0]).name}:")
                    for sid in running:  # what happened to each, from its status (not assumed)
                        st = read_status(out_dir / plan.by_id[sid].out)
                        what = {"interrupted": st.get("note") or "interrupted", "done": "it had finished",
                                "failed": f"failed (exit {st.get('exit_code')}; log {st.get('log')})"}
                        echo(f"  {sid}: {what.get(st.get('state'), st.get('state'))}")
                    echo("run again to continue")
                    return EXIT_REQUEUE
                for s in plan.steps:
                    if state[s.id] in ("done", "failed", "blocked") or s.id in running or s.id in external:
                        continue
                    if s.external:  # another study folder's step: never run from here
                        state[s.id] = "blocked"
                        echo(f"  blocked: {s.id} belongs to {s.external} and is not done there")
                        continue
                    if any(state[d] in ("failed", "blocked") for d in s.deps):
                        state[s.id] = "blocked"
                        continue
                    if len(running) >= parallel or not all(state[d] == "done" for d in s.deps):
                        continue
                    if need[s.id] > len(free):
                        continue  # waits for GPUs; a smaller step behind it may start
                    held[s.id], free = free[:need[s.id]], free[need[s.id]:]
                    env = {"CUDA_VISIBLE_DEVICES": ",".join(held[s.id])}  # "" = none: a CPU step sees no GPU
                    if held[s.id] and visible:
                        env["MIDTRAIN_EXPECT_CUDA"] = "1"
                    running[s.id] = fork_step(out_dir / s.out, env)
                    echo(f"  start: {s.id}" + (f" (GPUs {env['CUDA_VISIBLE_DEVICES']})" if held[s.id] else ""))
                if not running and not external:
                    break
                time.sleep(0.02)  # a freed slot is refilled within 20 ms
        finally:
            for sig, h in old.items():
                signal.signal(sig, h)
        failed = [sid for sid, v in state.items() if v == "failed"]
        blocked = [sid for sid, v in state.items() if v == "blocked"]
        done = sum(v == "done" for v in state.values())
        echo(f"study {plan.spec.name}: {done} done, {len(failed)} failed, {len(blocked)} blocked by a failure "
             f"(of {len(plan.steps)})")
        return 0 if not failed and not blocked else 1
