"""The demo's protocol: fixed before any run under it, derived from the paper's ratios, checked, and hashed. Pure.

The paper (arXiv 2510.14865) midtrains Pythia-style models pretrained on C4 for ~61k steps; a mixture
is introduced at a start step S and runs to the end, and SFT afterwards is a tiny fraction of the domain
tokens midtraining added. Its early starts sit near the peak LR, and its late window (~50k) where the
cosine schedule is down to about 10% of peak. A miniature keeps those ratios, not the absolute sizes:

- **early** arms start where the LR is at least ``early_lr_min`` (0.8) of its peak;
- **late** arms start where it is at most ``late_lr_max`` (0.15) of its peak;
- each SFT training set holds at most ``sft_to_domain_max`` (0.1) of the domain tokens that each arm of its
  domain adds: SFT tokens / ((max_steps - S) x tokens per step x w), checked for every arm; late arms, which
  train few steps, are held to ``late_sft_to_domain_max`` instead where the spec states one (and say so);
- the CPT arm sees as many domain tokens as that midtraining arm (within one step's worth);
- every SFT LR is at most the pretraining peak LR, and the grid's top, the spec's ``sft.lr_ceiling``, is that
  peak, so a cell choosing it is at the protocol's bound (protocol v5, chosen after v4's first run, where a tiny
  model fine-tuned at 3x its peak collapsed on the main corpus; the paper's SFT LRs lie below its models' peak
  pretraining LRs);
- the headline is the family of tested claims ``findings.declared_family`` lists from ``report.demo``, printed
  here before any run and Holm-adjusted over all of them whatever their outcome.

``check`` computes every arm's LR fraction at its start, its domain dose and its SFT ratio from the spec
and the tokenized SFT sets, and lists each violation in words; ``midtrain demo`` refuses to start on any.
``protocol_hash`` is a digest of what defines the protocol (the spec and base config as written, ${VARS}
unexpanded, comments excluded; the data scale; the seed; the code that builds the data and judges the
results, ``PROTOCOL_CODE``): printed with every result, so a reader sees
that it did not move between runs. A change goes into the dated changelog in the spec's header.
"""

from __future__ import annotations

import hashlib
import json
from typing import Mapping

from midtrain.demo.findings import declared_family
from midtrain.train.schedules import lr_fraction

DEFAULT_LIMITS = {"early_lr_min": 0.8, "late_lr_max": 0.15, "sft_to_domain_max": 0.1}


def check(spec, sft_tokens: Mapping[str, int], epochs: int) -> dict:
    """``spec``: the demo's parsed study spec; ``sft_tokens``: task -> tokens of its SFT training set (one
    epoch, prompt + response + EOS as the SFT loader encodes them); ``epochs``: the epochs one SFT run
    trains. Returns {"limits", "arms", "violations"}: one row per arm (start, LR fraction, role, domain
    tokens, SFT tokens per domain token) and the violations in words, including every name in
    ``report.demo`` that is not an arm or task of the spec (a check that would otherwise be skipped)."""
    demo = spec.report.get("demo") or {}
    limits = {**DEFAULT_LIMITS, **(demo.get("protocol") or {})}
    size = spec.sizes[0]
    grid = demo.get("grid") or {}
    domains = demo.get("domains") or {}
    by_name = {a.name: a for a in spec.arms}
    violations = [f"report.demo names {n!r}, which is not an arm of the spec" for n in
                  [*(d.get(k) for d in domains.values() for k in ("mid", "cpt")),
                   *(grid.get(k) for k in ("early_low", "early_high", "late_low", "late_high"))] if n not in by_name]
    prec = demo.get("precision") or {}
    violations += [f"report.demo.precision names {prec.get(k)!r}, which is not an arm of the spec run at "
                   f"{prec.get('precision')!r}" for k in ("late_low", "late_high")
                   if prec and (prec.get(k) not in by_name or by_name[prec[k]].precision != prec.get("precision"))]
    near = demo.get("near") or {}
    entries = [*domains.values(), *([near] if near else [])]
    violations += [f"report.demo names {near.get('mid')!r}, which is not an arm of the spec"] \
        if near and near.get("mid") not in by_name else []
    violations += [f"report.demo names task {d.get('task')!r}, which has no SFT training set" for d in entries
                   if d.get("task") not in sft_tokens]
    early = {grid.get("early_low"), grid.get("early_high")} | {d.get("mid") for d in entries}
    late = {grid.get("late_low"), grid.get("late_high"), prec.get("late_low"), prec.get("late_high")} - {None}
    cpts = {d.get("cpt"): d.get("mid") for d in domains.values()}
    # each arm's SFT task: the task of the report.demo entry whose midtraining arm trains on the same domain
    task_of = {by_name[d["mid"]].domain: d.get("task") for d in entries if d.get("mid") in by_name}
    rows = []
    for arm in spec.arms:
        frac = lr_fraction(size.config, arm.start, size.max_steps)
        dose = (size.max_steps - arm.start) * size.tokens_per_step * (arm.weight or 0.0)
        role = "early" if arm.name in early else "late" if arm.name in late else "cpt" if arm.name in cpts else "-"
        row = {"arm": arm.name, "start": arm.start, "lr_fraction": frac, "role": role, "domain_tokens": dose}
        task = task_of.get(arm.domain) if arm.domain else None
        if task in sft_tokens and dose:
            row["sft_ratio"] = sft_tokens[task] * epochs / dose
        rows.append(row)
        if role == "early" and frac < limits["early_lr_min"]:
            violations.append(f"{arm.name} starts at step {arm.start}, where the LR is {frac:.0%} of peak "
                              f"(early starts need >= {limits['early_lr_min']:.0%})")
        if role == "late" and frac > limits["late_lr_max"]:
            violations.append(f"{arm.name} starts at step {arm.start}, where the LR is {frac:.0%} of peak "
                              f"(late starts need <= {limits['late_lr_max']:.0%})")
        # the late limit holds for an arm that trains only in the late window (a grid corner, or any arm starting
        # where the LR is <= late_lr_max, CPT aside: its dose equals its midtraining arm's)
        in_late = role == "late" or (role == "-" and frac <= limits["late_lr_max"])
        key = "late_sft_to_domain_max" if in_late and "late_sft_to_domain_max" in limits else "sft_to_domain_max"
        if row.get("sft_ratio", 0) > limits[key]:
            violations.append(f"one {task} SFT run trains on {row['sft_ratio']:.2f} x the domain tokens {arm.name} "
                              f"adds (at most {limits[key]} allowed{' for a late arm' if key.startswith('late') else ''})")
        if arm.name in cpts and cpts[arm.name] in by_name:
            mid = by_name[cpts[arm.name]]
            mid_dose = (size.max_steps - mid.start) * size.tokens_per_step * (mid.weight or 0.0)
            if abs(dose - mid_dose) > size.tokens_per_step:
                violations.append(f"{arm.name} adds {dose:,.0f} domain tokens and {mid.name} {mid_dose:,.0f}: CPT "
                                  "must see as many as midtraining (within one step)")
    peak = _peak_lr(size.config)
    if peak is None and spec.lrs:
        violations.append("the base config states no optimizer lr (init_args.lr): the SFT grid's bound, the "
                          "pretraining peak LR, is unknown")
    elif spec.lrs and max(spec.lrs) > peak:
        violations.append(f"sft.lrs reaches {max(spec.lrs):g}, above the pretraining peak LR {peak:g} (SFT LRs stay at "
                          "or below it)")
    if spec.lrs and spec.lr_ceiling is None:
        violations.append("sft.lr_ceiling is not set: the grid's top is the protocol's bound, so state it")
    elif spec.lrs and peak is not None and spec.lr_ceiling != peak:
        violations.append(f"sft.lr_ceiling is {spec.lr_ceiling:g}, not the pretraining peak LR {peak:g}: the bound is "
                          "the peak (a lower top would mark cells at a bound the protocol does not set)")
    family = declared_family(domains, grid, prec or None, near or None)  # the headline, before any run
    return {"limits": limits, "arms": rows, "violations": violations, "sft_tokens": dict(sft_tokens),
            "epochs": epochs, "family": family, "peak_lr": peak, "lr_ceiling": spec.lr_ceiling}


def _peak_lr(config: Mapping) -> float | None:
    """The base run's peak LR (its optimizer's ``lr``), or None when the config does not say it."""
    opt = config.get("optimizer")
    lr = (opt.get("init_args") or {}).get("lr") if isinstance(opt, Mapping) else None
    return float(lr) if lr is not None else None


# the code that builds the demo's data and judges its results: a change to any of it is a change of protocol
PROTOCOL_CODE = ("midtrain/demo/data.py", "midtrain/demo/protocol.py", "midtrain/demo/findings.py",
                 "midtrain/demo/__init__.py", "midtrain/analysis/stats.py", "midtrain/analysis/tables.py",
                 "midtrain/analysis/proximity.py", "midtrain/analysis/overlap.py", "midtrain/study/report.py",
                 "midtrain/report.py", "midtrain/train/schedules.py", "midtrain/train/metrics.py")


def protocol_hash(spec_raw: Mapping, base_raw: Mapping, scale: Mapping, seed: int,
                  code: Mapping[str, str] | None = None) -> str:
    """12 hex digits over the spec and base config as written (parsed YAML, ${VARS} unexpanded, so the
    output folder does not enter), the data scale, the data seed, and ``code``: PROTOCOL_CODE file -> sha256
    of its bytes (the data builder and the analysis that judges the results)."""
    payload = {"spec": spec_raw, "base": base_raw, "scale": scale, "seed": seed, "code": dict(code or {})}
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def format_protocol(p: dict, digest: str, steps: int, tokens_per_step: int) -> str:
    lim = p["limits"]
    lines = [f"Protocol {digest} (fixed before any run under it; changes are logged in the spec's header): early starts "
             f"at >= {lim['early_lr_min']:.0%} of peak LR, late starts at <= {lim['late_lr_max']:.0%}, each "
             f"SFT set <= {lim['sft_to_domain_max']} x the domain tokens each arm of its domain adds (paper: << 1)"
             + (f", late arms <= {lim['late_sft_to_domain_max']}" if "late_sft_to_domain_max" in lim else "")
             + f"; {steps} steps x {tokens_per_step:,} tokens of pretraining; SFT "
             + ", ".join(f"{t} {n:,} tokens" for t, n in p["sft_tokens"].items()) + f" x {p['epochs']} epoch(s)"
             + (f"; SFT LRs up to the ceiling {p['lr_ceiling']:g} (the pretraining peak LR is {p['peak_lr']:g})"
                if p.get("lr_ceiling") and p.get("peak_lr") else "") + ".",
             "", f"Headline family, declared here before any run: the {len(p['family'])} tested claims "
             + ", ".join(p["family"]) + f", Holm-adjusted over all {len(p['family'])} whatever their outcome.",
             "", "| arm | start | LR at start / peak | role | domain tokens added | SFT tokens / domain tokens |",
             "|---|---|---|---|---|---|"]
    for r in p["arms"]:
        ratio = f"{r['sft_ratio']:.3f}" if "sft_ratio" in r else "-"
        lines.append(f"| {r['arm']} | {r['start']} | {r['lr_fraction']:.2f} | {r['role']} | "
                     f"{r['domain_tokens']:,.0f} | {ratio} |")
    return "\n".join(lines)
