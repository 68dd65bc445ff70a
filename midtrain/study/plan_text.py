"""What ``midtrain study plan`` prints of a plan: the DAG as a table with counts, totals and GPU-hours
(``format_plan``), and what several specs planned into one folder share (``format_sharing``). Text only; the plan
itself is ``study.plan``'s."""

from __future__ import annotations

from typing import Mapping

from midtrain.study.plan import KINDS, Plan, Step


def format_plan(plan: Plan, mfu: float = 0.4, peak_tflops: float = 989.0, max_rows: int | None = None,
                here: Mapping[str, str] | None = None) -> str:
    """The DAG as a table (step, kind, depends on, output, tokens; ``here``: what a run in the study folder
    would do with each step), counts per kind, totals, GPU-hours."""
    lines = ["| step | kind | depends on | output | tokens |" + (" here |" if here else ""),
             "|---|---|---|---|---|" + ("---|" if here else "")]
    shown = plan.steps if max_rows is None else plan.steps[:max_rows]
    for s in shown:
        deps = ", ".join(s.deps) if len(s.deps) <= 2 else f"{s.deps[0]}, ... ({len(s.deps)} steps)"
        tok = f"{s.tokens:,}" if s.tokens else "-"
        if s.reused:
            tok = f"reused ({s.reused})"
        lines.append(f"| {s.id} | {s.kind} | {deps or '-'} | {s.out} | {tok} |" + (f" {here[s.id]} |" if here else ""))
    if max_rows is not None and len(plan.steps) > max_rows:
        lines.append(f"| ... {len(plan.steps) - max_rows} more steps (--rows all) | | | | |" + (" |" if here else ""))
    counts = plan.counts()
    if here:
        tally: dict[str, int] = {}
        for v in here.values():
            key = v.split(" (")[0] + (" (logging changed, kept)" if v.startswith("done (kept") else "")
            tally[key] = tally.get(key, 0) + 1
        lines += ["", "here: " + ", ".join(f"{k} {n}" for k, n in tally.items())
                  + ("; `study run` refuses changed steps without --rerun_changed" if "changed" in tally else "")]
    lines += ["", f"steps: {len(plan.steps)} (" + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")",
              f"tokens: {plan.total_tokens():,} in total (SFT: {sum(s.tokens or 0 for s in plan.steps if s.kind == 'sft'):,})"]
    flops = plan.total_flops()
    if flops:
        hours = flops / (mfu * peak_tflops * 1e12) / 3600
        lines.append(f"compute: {flops:.3g} FLOPs (per token: 6 x the parameters without the input embedding, plus "
                     f"attention; midtrain.train.flops) = {hours:,.1f} GPU-hours at {mfu:.0%} MFU of "
                     f"{peak_tflops:g} TFLOP/s (--mfu, --peak_tflops; eval steps not counted)")
    from midtrain.study.spec import variance

    lines.append(f"seeds: {len(plan.spec.seeds)} ({', '.join(map(str, plan.spec.seeds))}), vary: {plan.spec.vary}: "
                 f"they sample {variance(plan.spec)}")
    for vary, (tok, fl) in plan.cost_by_vary.items():
        hours = f", {fl / (mfu * peak_tflops * 1e12) / 3600:,.1f} GPU-hours" if fl else ""
        mark = " (this plan)" if vary == plan.spec.vary else ""
        lines.append(f"  seeds.vary: {vary:<8} {tok:,} tokens{hours}{mark}")
    lines += ["", "| kind | steps | allocation per step | GPU-hours (compute estimate) |", "|---|---|---|---|"]
    for kind in KINDS:
        of_kind = [s for s in plan.steps if s.kind == kind]
        if not of_kind:
            continue
        allocs = sorted({s.alloc.describe() for s in of_kind if s.alloc})
        kflops = sum(s.flops or 0.0 for s in of_kind if not s.reused)  # reused segments: trained by another spec
        gpu = any(s.alloc and s.alloc.gpus for s in of_kind)
        if not gpu:
            hours = "no GPU"
        elif kflops:
            hours = f"{kflops / (mfu * peak_tflops * 1e12) / 3600:,.1f}"
            if any(s.flops is None for s in of_kind):
                hours += f" ({sum(s.flops is None for s in of_kind)} steps without an estimate)"
        else:
            hours = "no estimate"
        lines.append(f"| {kind} | {len(of_kind)} | {'; '.join(allocs)} | {hours} |")
    reused = [s for s in plan.steps if s.reused]
    if reused:
        by_spec: dict[str, list] = {}
        for s in reused:
            by_spec.setdefault((s.reused, s.external), []).append(s)
        for (name, _), segs in by_spec.items():
            if segs[0].run_folder:
                s = segs[0]
                lines.append(f"reused: base run folder {s.external} (steps {s.labels['start']}->{s.labels['end']}, "
                             f"checkpoints at {', '.join(map(str, s.labels['kept']))}; "
                             f"{s.tokens or 0:,} tokens not trained again)")
                continue
            where = f"study folder {segs[0].external}" if segs[0].external else "this folder"
            lines.append(f"reused: {len(segs)} base segment(s) planned in {where} by spec {name!r} "
                         f"({sum(s.tokens or 0 for s in segs):,} tokens not trained again): "
                         + ", ".join(f"{s.id} ({s.labels['start']}->{s.labels['end']})" for s in segs))
    at = [s for s in plan.steps if s.resume_at is not None]
    if at:
        lines.append(f"{len(at)} run(s) start from a periodic checkpoint of a base segment (no cut needed): "
                     + ", ".join(f"{s.id} <- {s.resume_step} step {s.resume_at}" for s in at[:4])
                     + (" ..." if len(at) > 4 else ""))
    missing = [s.id for s in plan.steps if s.kind == "sft" and s.tokens is None]
    if missing:
        lines.append(f"note: {len(missing)} SFT steps have no token estimate")
    for size in plan.spec.sizes:
        if size.checkpoint:
            optimizer = size.origin.get("optimizer") or "optimizer state: as the checkpoint holds it"
            lines.append(f"size {size.name}: starts from the checkpoint {size.checkpoint} at step {size.start_step:,} "
                         f"of {size.max_steps:,}: no base steps (nothing is pretrained); {optimizer}")
    return "\n".join(lines)


def format_sharing(plans: list[Plan]) -> str:
    """What several specs planned into one folder train together: each base segment once."""
    seen: dict[str, Step] = {}
    for plan in plans:
        for s in plan.steps:
            if s.kind == "pretrain":
                seen.setdefault(s.out, s)
    sizes: dict[str, list[Step]] = {}
    for s in seen.values():
        sizes.setdefault(s.labels["size"], []).append(s)
    lines = [f"## {len(plans)} specs into one folder: base runs are trained once and shared", ""]
    for name, segs in sizes.items():
        keys = sorted({s.labels.get("base_key") for s in segs})
        lines.append(f"size {name}: {len(keys)} base run(s), {len(segs)} segment(s), "
                     f"{sum(s.tokens or 0 for s in segs):,} base tokens in all")
    total = sum(p.total_tokens() for p in plans)
    lines.append(f"tokens: {total:,} in total over the {len(plans)} specs (each base segment counted once)")
    return "\n".join(lines)
