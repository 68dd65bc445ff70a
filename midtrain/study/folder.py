"""A study folder on disk: its index files, every step's status file, its lock, and what ``run`` writes before
it starts anything.

Layout under the study folder ``DIR`` (``--out``):
- ``DIR/study.json``: the plan last run here (step id -> output folder, kind, deps); ``DIR/studies/NAME.json``
  the same per spec name (several specs can run into one folder);
- ``DIR/bases.json``: every base segment planned here, by any spec: what the next spec reuses
  (``read_bases``; a base checkpoint is found by its base run and step, not by a spec's cuts);
- ``DIR/<step out>/step.json``: what the step runs (a ``midtrain`` command line: ``study.steps``) and what it must
  leave behind; ``run.yaml`` for training steps; ``log.txt`` (or ``slurm-<job>.log``);
- ``DIR/<step out>/status.json``: the step's state, written atomically: ``submitted`` (a SLURM job
  id), ``running`` (pid, host, job id), ``done``, ``failed`` (exit code, log) or ``interrupted``
  (stopped by a signal after checkpointing: the next run resumes it). ``study.states`` resolves them.

``run`` refuses a spec whose already-run steps now resolve to other configs unless ``rerun_changed``
(``check_changed``). One ``run`` per DIR at a time: a lock file, held while it runs or submits (``study_lock``).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from midtrain.errors import ConfigError
from midtrain.study.plan import Plan
from midtrain.study.resources import TRAINING
from midtrain.study.steps import step_command


def write_json_atomic(path: Path, obj) -> None:
    from midtrain.atomic import write_text_atomic

    write_text_atomic(path, json.dumps(obj, indent=1, default=str) + "\n")


def read_status(folder: Path) -> dict:
    try:
        return json.loads((folder / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def write_status(folder: Path, **fields) -> dict:
    status = {**read_status(folder), **fields, "updated": time.time()}
    write_json_atomic(folder / "status.json", status)
    return status


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


def read_bases(out_dir: Path | None) -> list:
    """The base segments planned in the study folder ``out_dir`` so far (``bases.json``), for ``make_plan``."""
    from midtrain.study.plan import BaseSegment

    if out_dir is None:
        return []
    try:
        raw = json.loads((Path(out_dir) / "bases.json").read_text())["segments"]
        # (a run folder recorded before run_folder was a field said so in its labels)
        return [BaseSegment(**{**seg, "deps": tuple(seg["deps"]), "kept": tuple(seg.get("kept", ())),
                               "run_folder": bool(seg.get("run_folder", seg["labels"].pop("run_folder", False)))})
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
