"""Study plan: a ``Spec`` becomes a DAG of steps with config-derived output folders. Pure (no I/O, no torch).

Guarantees:
- **Output paths come from resolved configs.** A step's folder is ``{id}-{hash8}`` where the hash
  covers its kind, its resolved config (paths it derives, ``out_dir``/``resume_from``, excluded) and
  the hashes of the steps it depends on. The same spec gives the same paths; any change of a
  resolved field (or of anything upstream) gives another path, so stale output is never reused.
- **Arms start as soon as the base run reaches their step.** Each size's base run is a chain of
  segments cut at every arm start S1 < S2 < ... < max_steps; segment k resumes segment k-1's final
  checkpoint (``resume_from``) with the same mixture, which the trainer continues sample-exactly, so
  the chain ends where one uninterrupted run would. An arm at S depends only on the segment that ends
  at S. The last segment (to max_steps) is the pretrain-only control, except under ``seeds.control:
  per_seed`` (below): then the chain stops at the last arm start.
- **Edges**: segment k <- segment k-1; arm(S, seed) <- segment ending at S; SFT(run, task, lr, seed)
  (or one SFT step per (run, task, seed) sweeping the grid: ``sft.one_step_per_lr: false``) <- that run; eval(run) <- that run; report <- every SFT and eval step. Steps are listed in an
  order where every step comes after its dependencies.
- **A finished run outlives a logging change.** A training step done in the study folder (``ran``) whose
  config differs from the new one only in ``LOGGING_ONLY`` fields, with the same kind and dependencies,
  keeps its folder, hash and recorded config: what it logs decides nothing it trained. Any other
  difference gives a new folder (``study plan --out`` shows it as changed; ``run`` refuses it).
- **Seeds** (``seeds.vary``; every (arm, task, seed) pairs with (control, task, seed)):
  ``sft`` (default, the paper's protocol): one midtrained run per arm and one control, each fine-tuned
  with every seed; ``midtrain``: an arm is also re-run per seed (``data.seed`` = the seed: the data
  order of the new stage) and fine-tuned with that seed; the control is one run fine-tuned with every
  seed (``seeds.control: shared``, the default) or, with ``per_seed``, re-run per seed from the earliest arm
  start with ``data.seed`` = the seed and fine-tuned with that seed; ``base``: the whole grid per seed, from a base run of its own (``seed`` = ``data.seed`` = the
  seed: init and data order), each run fine-tuned with that seed only.
  ``Plan.cost_by_vary`` gives the tokens and FLOPs each choice would cost, so the choice is made seeing it.
- **Cost**: tokens per step (training steps × global batch × sequence length; SFT from an estimate
  given per task) and FLOPs: tokens × ``midtrain.train.flops.flops_per_token`` of the size (the input
  embedding left out, attention in: the count the trainer's MFU uses).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Mapping

from midtrain.errors import ConfigError
from midtrain.study.kinds import KINDS as STEP_KINDS, run_label
from midtrain.study.resources import TRAINING, Allocation, allocation, step_ranks
from midtrain.study.spec import CONTROL, Spec, set_dotted

KINDS = tuple(STEP_KINDS)  # study.kinds: one entry per kind


@dataclass(frozen=True)
class Step:
    id: str
    kind: str
    deps: tuple[str, ...]
    hash: str
    out: str                  # folder, relative to the study's --out
    labels: dict              # size, arm, seed, task, lr, start, end, ...
    config: dict              # pretrain/midtrain: the run config (out_dir/resume_from filled in by the runner)
    resume_step: str | None = None   # pretrain/midtrain: the step whose checkpoint this run starts from ...
    resume_at: int | None = None     # ... its periodic checkpoint at this step (None: its final checkpoint)
    tokens: int | None = None
    flops: float | None = None
    alloc: Allocation | None = None  # what a scheduler is asked for (not part of the hash: it changes no result)
    reused: str | None = None        # a base segment another spec planned in this study folder (its spec's name)
    external: str | None = None      # ... in another study folder (``sizes.X.base``): read only, never run here
    logging_kept: tuple[str, ...] = ()  # done before with other LOGGING_ONLY values ("key: ran -> planned"): kept
    run_folder: bool = False         # a plain `midtrain pretrain` out_dir named as a size's base (``sizes.X.base``):
    #                                  its run and checkpoints sit in ``out`` itself, read in place, never run here


@dataclass(frozen=True)
class Ran:
    """A training step that finished in the study folder: its hash, folder and recorded run config."""
    hash: str
    out: str
    config: dict


# Run-config fields that change what a run logs (how often, where, its validation curve) and nothing that it
# trains or keeps: a finished run that differs from the plan only here is not run again.
LOGGING_ONLY = ("train.log_interval", "logger_name", "eval.")


def _flat(d: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, Mapping) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def in_fields(key: str, fields: tuple[str, ...]) -> bool:
    """Whether dotted ``key`` is one of ``fields`` (a field ending in "." names a whole section)."""
    return any(key == f or (f.endswith(".") and key.startswith(f)) for f in fields)


def logging_changes(old: Mapping, new: Mapping, ignore: tuple[str, ...] = ()) -> list[str] | None:
    """``"key: old -> new"`` for each LOGGING_ONLY field that differs, or None when another field differs
    (``out_dir``, ``resume_from`` and ``ignore`` aside)."""
    a, b = _flat(old), _flat(new)
    diff = sorted(k for k in a.keys() | b.keys() if a.get(k, "(unset)") != b.get(k, "(unset)")
                  and k not in ("out_dir", "resume_from", *ignore))
    if any(not in_fields(k, LOGGING_ONLY) for k in diff):
        return None
    return [f"{k}: {a.get(k, '(unset)')} -> {b.get(k, '(unset)')}" for k in diff]


@dataclass(frozen=True)
class BaseSegment:
    """A base-run segment already planned in a study folder (``bases.json``): what another spec can reuse.

    ``key`` identifies the base run (its resolved config without the segment length); the segment trains
    steps ``start`` -> ``end`` and keeps a checkpoint at every multiple of ``save_every`` in between
    (None: none kept). ``deps``: ids of the segments it resumes from."""
    id: str
    out: str
    hash: str
    key: str
    size: str
    start: int
    end: int
    save_every: int | None
    config: dict
    labels: dict
    deps: tuple[str, ...] = ()
    resume_at: int | None = None
    spec: str = ""
    folder: str = ""     # the study folder it lives in, when not this one (``sizes.X.base``)
    kept: tuple[int, ...] = ()  # steps whose checkpoints are already on disk (a plain run folder as a base)
    run_folder: bool = False    # a plain `midtrain pretrain` out_dir as a size's base (``Step.run_folder``)


@dataclass
class Plan:
    spec: Spec
    steps: list[Step] = field(default_factory=list)
    cost_by_vary: dict = field(default_factory=dict)  # seeds.vary choice -> (tokens, FLOPs or 0) of that plan
    params: dict = field(default_factory=dict)  # size -> parameter count (FLOPs, a GPU task's memory share)

    def base_segments(self) -> list[BaseSegment]:
        """This plan's base segments, as a study folder records them for the next spec (``bases.json``)."""
        out = []
        for st in self.steps:
            # another study folder's segments stay recorded there; a run folder's is recorded here too, so that
            # a study naming this folder as its base finds what the segments trained here resume from
            if st.kind == "pretrain" and (not st.external or st.run_folder):
                out.append(BaseSegment(
                    id=st.id, out=st.out, hash=st.hash, key=st.labels["base_key"], size=st.labels["size"],
                    start=st.labels["start"], end=st.labels["end"], save_every=st.labels.get("save_every"),
                    config=st.config, labels=st.labels, deps=st.deps, resume_at=st.resume_at,
                    spec=st.reused or self.spec.name, folder=st.external if st.run_folder else "",
                    kept=tuple(st.labels["kept"][:-1]) if st.run_folder else (), run_folder=st.run_folder))
        return out

    @property
    def by_id(self) -> dict[str, Step]:
        return {s.id: s for s in self.steps}

    def counts(self) -> dict[str, int]:
        out = {k: 0 for k in KINDS}
        for s in self.steps:
            out[s.kind] += 1
        return out

    def total_tokens(self) -> int:
        """Tokens this spec trains (base segments another spec planned in its folder are theirs, not counted)."""
        return sum(s.tokens or 0 for s in self.steps if not s.reused)

    def total_flops(self) -> float:
        return sum(s.flops or 0.0 for s in self.steps if not s.reused)


def config_hash(kind: str, config: Mapping, deps: list[str]) -> str:
    payload = {"kind": kind, "config": {k: v for k, v in config.items() if k not in ("out_dir", "resume_from")},
               "deps": deps}
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _run_config(spec: Spec, kind: str, config: Mapping, labels: Mapping) -> Mapping:
    """The run config that decides a step's shape: its own for training, its size's base run's otherwise."""
    if kind in TRAINING:
        return config
    name = labels.get("size") or spec.sizes[0].name
    return next(s.config for s in spec.sizes if s.name == name)


def run_config_of(plan: Plan, step: Step) -> Mapping:
    return _run_config(plan.spec, step.kind, step.config, step.labels)


def base_key(cfg: Mapping) -> str:
    """The identity of a base run: its resolved config without what a segment sets (length, resume)."""
    return config_hash("base", set_dotted(dict(cfg), "train.max_additional_steps", None), [])[:16]


def _save_every(cfg: Mapping) -> int | None:
    """The step multiple at which a run keeps every checkpoint (None: not every one is kept)."""
    train = cfg.get("train") or {}
    every = train.get("save_interval", 1000)
    return int(every) if every and cfg.get("keep_last_n") is None else None


def make_plan(spec: Spec, params: Mapping[str, int] | None = None,
              sft_tokens: Mapping[str, int] | None = None, _costs: bool = True,
              known: "list[BaseSegment] | tuple" = (), ran: "Mapping[str, Ran] | None" = None) -> Plan:
    """``params``: size -> parameter count (memory; a size without one gets no FLOPs either); ``sft_tokens``: task -> tokens one SFT run trains on;
    ``known``: base segments already planned in the study folder (``bases.json``), reused where they hold
    the checkpoint an arm starts from; ``ran``: step id -> the training steps done in that folder (kept
    through a logging-only change)."""
    plan = Plan(spec, params=dict(params or {}))
    from midtrain.study.params import flops_per_token_of

    # FLOPs per token of each size (midtrain.train.flops: what the trainer's MFU divides by), for sizes whose
    # parameter count is known
    fpt = {s.name: flops_per_token_of(s.config) for s in spec.sizes if (params or {}).get(s.name)}
    if _costs:
        import dataclasses

        from midtrain.study.spec import VARY

        for vary in VARY:
            if vary == "base" and any(sz.checkpoint for sz in spec.sizes):
                continue
            control = spec.control if vary == "midtrain" and spec.vary == "midtrain" else "shared"
            other = make_plan(dataclasses.replace(spec, vary=vary, control=control), params, sft_tokens, _costs=False,
                              known=known)
            plan.cost_by_vary[vary] = (other.total_tokens(), other.total_flops())
    steps: dict[str, Step] = {}
    kept_logging: dict[str, tuple[str, ...]] = {}  # base segments done here, other only in what they log

    def add(kind, id_, deps, config, labels, resume_step=None, tokens=None, size=None, origin=None, resume_at=None,
            hash_deps=None):
        hashes = [steps[d].hash for d in deps] + ([origin] if origin else []) + \
            ([f"at:{resume_at}"] if resume_at is not None else [])
        h = config_hash(kind, config, hash_deps if hash_deps is not None else hashes)
        kept = ()
        before = (ran or {}).get(id_) if kind in TRAINING else None
        if before is not None and before.hash != h:
            changes = logging_changes(before.config, config)
            if changes and config_hash(kind, before.config, hash_deps if hash_deps is not None else hashes) \
                    == before.hash:  # the same run but for what it logs: it stays done
                h, config, kept = before.hash, dict(before.config), tuple(changes)
        per_token = fpt.get(size) if size else None
        flops = per_token * tokens if per_token and tokens else None
        alloc = allocation(kind, _run_config(spec, kind, config, labels), spec.slurm, where=id_,
                           params=(params or {}).get(labels.get("size")), ranks=step_ranks(kind, config))
        out = f"report/{spec.name}" if kind == "report" else \
            before.out if before is not None and before.hash == h else f"{id_}-{h[:8]}"
        step = Step(id=id_, kind=kind, deps=tuple(deps), hash=h, out=out, labels=labels, config=config,
                    resume_step=resume_step, resume_at=resume_at, tokens=tokens, flops=flops, alloc=alloc,
                    logging_kept=kept)
        steps[id_] = step
        plan.steps.append(step)
        return step

    def reuse(seg: BaseSegment):
        """Put a segment another spec planned here (and those it resumes from) into this plan, unchanged."""
        if seg.id in steps:
            if steps[seg.id].out not in (seg.out, f"{seg.folder.rstrip('/')}/{seg.out}", seg.folder):
                raise ConfigError("--out", f"two base segments are named {seg.id} ({steps[seg.id].out}, {seg.out}): "
                                  "one of this folder and one of a study folder named as a base; plan this size "
                                  "under another name")
            return
        for d in seg.deps:  # the segment it resumes from: in its own folder first, else in a folder named as a base
            found = sorted((k for k in known if k.id == d and k.key == seg.key), key=lambda k: k.folder != seg.folder)
            if not found:
                raise ConfigError("--out", f"base segment {seg.id} resumes from {d}, which no study folder this spec "
                                  "reads holds (name its folder with sizes.<size>.base)")
            reuse(found[0])
        alloc = allocation("pretrain", seg.config, spec.slurm, where=seg.id, params=(params or {}).get(seg.size))
        size = next((sz for sz in spec.sizes if sz.name == seg.size), None)
        tokens = (seg.end - seg.start) * size.tokens_per_step if size else None
        per_token = fpt.get(seg.size)
        out = f"{seg.folder.rstrip('/')}/{seg.out}" if seg.folder else seg.out  # absolute: another study folder
        if seg.run_folder:  # a plain `midtrain pretrain` out_dir: its checkpoints sit in it
            out = seg.folder
        step = Step(id=seg.id, kind="pretrain", deps=tuple(seg.deps), hash=seg.hash, out=out, labels=dict(seg.labels),
                    config=seg.config, resume_step=seg.deps[0] if seg.deps else None, resume_at=seg.resume_at,
                    tokens=tokens, flops=per_token * tokens if per_token and tokens else None, alloc=alloc,
                    reused=seg.spec if (seg.spec != spec.name or seg.folder) else None, external=seg.folder or None,
                    logging_kept=kept_logging.get(seg.id, ()), run_folder=seg.run_folder)
        steps[seg.id] = step
        plan.steps.append(step)

    def branch(size, seg_at, origin, name: str, seed, start: int, labels: dict, cfg: dict) -> str:
        """A midtrain step from the base run at ``start`` (an imported size: from its checkpoint) to the size's
        end with ``cfg``: an arm, or the control re-run per seed. Returns its id."""
        cfg = dict(cfg, resume="auto")
        sid = f"midtrain/{size.name}/{run_label(name, seed)}"
        tokens = (size.max_steps - start) * size.tokens_per_step
        if size.checkpoint:
            cfg = set_dotted(cfg, "train.max_additional_steps", size.max_steps - size.start_step)
            cfg["resume_from"] = size.checkpoint
            add("midtrain", sid, [], cfg, {**labels, "imported": size.checkpoint}, tokens=tokens, size=size.name,
                origin=origin)
        else:
            seg, at = seg_at[start]
            add("midtrain", sid, [seg], cfg, labels, resume_step=seg, resume_at=at, tokens=tokens, size=size.name)
        return sid

    runs: list[tuple[str, str, int | None, str]] = []   # (size, arm, seed, step id) of every trained run
    base_seeds = spec.seeds if spec.vary == "base" else (None,)
    for size in spec.sizes:
        size_arms = [a for a in spec.arms if a.sizes is None or size.name in a.sizes]
        origin = None
        if size.checkpoint:
            origin = f"import:{size.checkpoint}@{size.start_step}:" + json.dumps(size.origin, sort_keys=True)
        for base_seed in base_seeds:
            base_cfg, tag = size.config, ""
            if base_seed is not None:  # vary: base: this seed's own init and data order
                base_cfg = set_dotted(dict(set_dotted(base_cfg, "data.seed", base_seed)), "seed", base_seed)
                tag = f"/s{base_seed}"
            # under vary: midtrain with seeds.control: per_seed, the control is re-run per seed like the arms (from the
            # earliest arm start, data.seed = seed), and the base run needs to reach only the last arm start
            per_seed_control = spec.vary == "midtrain" and spec.control == "per_seed" and bool(size_arms)
            seg_at = _base_chain(size, size_arms, base_cfg, tag, base_seed, origin, add, known, reuse, steps, spec.name,
                                 ran, kept_logging, shared_control=not per_seed_control)
            if per_seed_control:
                start = size.start_step if size.checkpoint else min(a.start for a in size_arms)
                for seed in spec.seeds:
                    labels = {"size": size.name, "arm": CONTROL, "family": CONTROL, "seed": seed, "start": start,
                              "end": size.max_steps, "weight": None, "domain": None, "mixture": None, "precision": None}
                    runs.append((size.name, CONTROL, seed, branch(size, seg_at, origin, CONTROL, seed, start, labels,
                                                                 set_dotted(base_cfg, "data.seed", seed))))
            else:
                runs.append((size.name, CONTROL, base_seed, seg_at[size.max_steps][0]))
            arm_seeds = [base_seed] if base_seed is not None else (spec.seeds if spec.vary == "midtrain" else [None])
            for arm in size_arms:
                for seed in arm_seeds:
                    if arm.mix_config:
                        cfg = set_dotted(base_cfg, "data.mix_config_path", arm.mix_config)
                    else:
                        cfg = set_dotted(base_cfg, "data.mix_weights_str", arm.mixture)
                    if spec.vary == "midtrain":
                        cfg = set_dotted(cfg, "data.seed", seed)
                    if arm.precision:  # a precision control: only the numerics differ from its sibling arms
                        cfg = set_dotted(cfg, "precision", arm.precision)
                    labels = {"size": size.name, "arm": arm.name, "family": arm.family, "seed": seed,
                              "start": arm.start, "end": size.max_steps, "weight": arm.weight, "domain": arm.domain,
                              "mixture": arm.mixture, "precision": arm.precision}
                    runs.append((size.name, arm.name, seed, branch(size, seg_at, origin, arm.name, seed, arm.start,
                                                                  labels, cfg)))

    leaves = []
    grids = [(lr,) for lr in spec.lrs] if spec.one_step_per_lr else [tuple(spec.lrs)]
    arm_tasks = {a.name: a.tasks for a in spec.arms}  # None (and the control): every task
    for size_name, arm, seed, run_id in runs:
        if spec.eval.get("enabled", True):
            eid = f"eval/{size_name}/{run_label(arm, seed)}"
            ev = {k: v for k, v in spec.eval.items() if k not in ("enabled", "lm_eval")}
            leaves.append(add("eval", eid, [run_id], ev, {"size": size_name, "arm": arm, "seed": seed}).id)
        if spec.eval.get("lm_eval"):
            lid = f"lm-eval/{size_name}/{run_label(arm, seed)}"
            leaves.append(add("lm-eval", lid, [run_id], dict(spec.eval["lm_eval"]),
                              {"size": size_name, "arm": arm, "seed": seed}).id)
        for task in spec.tasks:
            if arm_tasks.get(arm) is not None and task.name not in arm_tasks[arm]:
                continue
            for lrs in grids:
                for s in ([seed] if seed is not None else spec.seeds):
                    options = dict(spec.sft_options)
                    # said in the step's config (and hash), never left to the device the step lands on:
                    # 32-true unless the spec's sft.options.precision says otherwise (the paper specs: bf16-mixed)
                    options.setdefault("precision", "32-true")
                    if len(lrs) > 1 and spec.report.get("lr_choice", "per_checkpoint") != "per_seed":
                        options["score_every_lr"] = True  # the LR is chosen later, on the mean over seeds
                    cfg = {"task": task.__dict__, "lrs": list(lrs), "seed": s, "options": options,
                           "pretrain_val_path": spec.pretrain_val_path}
                    lr_part = f"/lr{lrs[0]:g}" if spec.one_step_per_lr else ""
                    tid = f"sft/{size_name}/{arm}/{task.name}{lr_part}/s{s}"
                    tokens = (sft_tokens or {}).get(task.name)
                    tokens = tokens * len(lrs) if tokens else None
                    leaves.append(add("sft", tid, [run_id], cfg, {"size": size_name, "arm": arm, "seed": s,
                                                                   "task": task.name, "lrs": list(lrs)},
                                      tokens=tokens, size=size_name).id)
    add("report", "report", leaves, dict(spec.report), {})
    return plan


def _base_chain(size, size_arms, base_cfg: dict, tag: str, seed: int | None, origin: str | None, add, known,
                reuse, steps, spec_name: str = "", ran: "Mapping[str, Ran] | None" = None,
                kept_logging: dict | None = None, shared_control: bool = True) -> dict:
    """The steps that bring ``size``'s base run to every arm start and to max_steps:
    end step -> (step id, periodic checkpoint step or None for its final checkpoint).

    A checkpoint at step E of a base run is the same whatever chain of segments reached it (exact
    resume), so it is looked up by (base run, E): a segment of this or another spec of the study folder
    (``known``) that ends at E, else one that passes E keeping its periodic checkpoint there; only
    what no segment provides is trained, from the latest checkpoint before it. A segment's hash covers
    the base run's config, its start and its end (not the cuts of the spec that planned it), so specs
    with other arm starts share it. An imported size has one midtrain step instead (the checkpoint
    continued with the base mixture: the pretrain-only control). ``shared_control`` False (the control is re-run
    per seed elsewhere): the base run goes only as far as the last arm start, and an imported size gets no step."""
    seg_at: dict[int, tuple[str, int | None]] = {}
    if size.checkpoint and not shared_control:
        return seg_at
    if size.checkpoint:
        cfg = dict(set_dotted(base_cfg, "train.max_additional_steps", size.max_steps - size.start_step))
        cfg.update(resume="auto", resume_from=size.checkpoint)
        sid = f"midtrain/{size.name}/{CONTROL}"
        add("midtrain", sid, [], cfg, {"size": size.name, "arm": CONTROL, "start": size.start_step,
                                      "end": size.max_steps, "imported": size.checkpoint},
            tokens=(size.max_steps - size.start_step) * size.tokens_per_step, size=size.name, origin=origin)
        seg_at[size.max_steps] = (sid, None)
        return seg_at
    key = base_key(base_cfg)
    every = _save_every(base_cfg)

    def same_run(k: BaseSegment) -> bool:
        """Segment ``k`` is of this base run: the same key, or done here and other only in what it logs."""
        if k.key == key:
            return True
        done = (ran or {}).get(k.id)
        if k.folder or done is None or done.hash != k.hash:
            return False
        changes = logging_changes(k.config, base_cfg, ignore=("train.max_additional_steps", "resume"))
        if changes and kept_logging is not None:
            kept_logging[k.id] = tuple(changes)
        return bool(changes)

    # segments of this base run: this spec's own first (a re-plan finds what it planned), then other specs',
    # then those added here
    pool = sorted((k for k in known if same_run(k)), key=lambda k: k.spec != spec_name)

    def provider(e: int):
        for k in pool:
            if k.end == e:
                return k, None
        for k in pool:
            if k.start < e < k.end and ((k.save_every and e % k.save_every == 0) or e in k.kept):
                return k, e
        return None

    for end in sorted({a.start for a in size_arms} | ({size.max_steps} if shared_control else set())):
        found = provider(end)
        if found is None:  # train from the latest checkpoint before `end` that some segment holds
            points = [(k.end, k, None) for k in pool if k.end < end] + \
                     [(p, k, p) for k in pool if k.save_every for p in range(k.start + 1, min(k.end, end))
                      if p % k.save_every == 0] + \
                     [(p, k, p) for k in pool for p in k.kept if k.start < p < min(k.end, end)]
            start, prev, at = max(points, key=lambda x: x[0], default=(0, None, None))
            cfg = set_dotted(base_cfg, "train.max_additional_steps", end - start)
            cfg["resume"] = "auto"
            sid, n = f"base/{size.name}{tag}/to{end}", 1
            while sid in steps or any(k.id == sid for k in known):  # ids stay unique in the folder
                sid, n = f"base/{size.name}{tag}/to{end}-from{start}" + (f"-{n}" if n > 1 else ""), n + 1
            if prev is not None and prev.id not in steps:
                reuse(prev)
            st = add("pretrain", sid, [prev.id] if prev else [], cfg,
                     {"size": size.name, "start": start, "end": end, "seed": seed, "base_key": key,
                      "save_every": every, "arm": CONTROL if end == size.max_steps else None},
                     resume_step=prev.id if prev else None, resume_at=at,
                     tokens=(end - start) * size.tokens_per_step, size=size.name,
                     hash_deps=[f"base:{key}", f"from:{start}"])
            seg = BaseSegment(id=st.id, out=st.out, hash=st.hash, key=key, size=size.name, start=start, end=end,
                              save_every=every, config=cfg, labels=st.labels, deps=st.deps, resume_at=at)
            pool.append(seg)
            found = (seg, None)
        seg, at = found
        if seg.id not in steps:
            reuse(seg)
        seg_at[end] = (seg.id, at)
    return seg_at
