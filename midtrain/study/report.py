"""``midtrain study report``: the study's tables and figures from its finished steps.

Writes into ``DIR/report/NAME/`` (the spec's name: several specs can share a study folder): ``table.md`` / ``table.csv`` (per size: arms × SFT tasks, mean ± CI over
seeds, paired Δ vs the baseline with verdicts; ``midtrain.analysis.tables``), ``eval.md`` (each
run's val losses, mean over seeds), ``results.json`` (every per-seed value), PNGs (arms per task,
start × weight heatmaps of a grid arm, proximity advantage vs relative improvement when
``report.proximity`` is set), all built on ``midtrain.analysis``.

Size (~650 lines, over the house's ~450): the study report's text and figures for every kind of study (arms,
grids, precision and interaction families); the statistics are ``midtrain.analysis``'s. The figure writers
(``_lines_and_scatter``, ``_curves``, ``_heatmaps``, ``_proximity``) could move to ``analysis.figures`` (not yet
done).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from midtrain.analysis import stats, tables
from midtrain.errors import ConfigError
from midtrain.study.kinds import KINDS
from midtrain.study.states import step_states
from midtrain.study.steps import checkpoint_of, run_dir_of
from midtrain.study.plan import Plan
from midtrain.study.spec import CONTROL, data_args, variance


def collect(plan: Plan, out_dir: Path) -> dict:
    """Per size: what each done step's kind gives the report (``study.kinds``: SFT results, eval losses and
    curves, lm-eval scores), in plan order."""
    states = step_states(plan, out_dir)
    main_set = plan.spec.report.get("main_set", "main")
    out: dict[str, dict] = {}
    for step in plan.steps:
        kind = KINDS[step.kind]
        if kind.collect is None or states[step.id]["state"] != "done":
            continue
        bucket = out.setdefault(step.labels.get("size"), {"sft": [], "eval": [], "lm_eval": []})
        for key, rows in kind.collect(step, out_dir / step.out, main_set).items():
            bucket.setdefault(key, []).extend(rows)
    return out


def write_report(plan: Plan, out_dir: Path) -> Path:
    from midtrain.analysis import figures
    from midtrain.atomic import write_text_atomic

    spec = plan.spec
    rep = out_dir / plan.by_id["report"].out
    rep.mkdir(parents=True, exist_ok=True)
    baseline = spec.report.get("baseline", CONTROL)
    confidence = float(spec.report.get("confidence", 0.95))
    lr_choice = spec.report.get("lr_choice", "per_checkpoint")
    if lr_choice == "per_checkpoint" and spec.vary != "sft":
        # each seed of an arm is its own checkpoint while the control is one: choose once per arm and task,
        # so that the arms and the control are tuned alike (per checkpoint would tune arms per seed)
        lr_choice = "per_arm"
    data = collect(plan, out_dir)
    md = [f"# Study {spec.name}", "",
          f"Seeds {', '.join(map(str, spec.seeds))} (seeds.vary: {spec.vary}) sample {variance(spec)}. "
          f"SFT LR choice: {lr_choice}.", ""]
    csv_parts = []
    results = {"sizes": {}, "seeds": list(spec.seeds), "vary": spec.vary, "variance": variance(spec),
               "lr_choice": lr_choice}
    for size in spec.sizes:
        got = data.get(size.name, {"sft": [], "eval": [], "lm_eval": []})
        md += [f"## {size.name}", ""]
        size_res = results["sizes"][size.name] = {"sft": [r.__dict__ for r in got["sft"]], "eval": got["eval"],
                                                  "lm_eval": got["lm_eval"]}
        if size.checkpoint:
            size_res["imported"] = imported = _import_note(size)
            md += [f"Every run of this size starts from the imported checkpoint `{size.checkpoint}` at step "
                   f"{size.start_step:,} (of {size.max_steps:,}); {imported.get('optimizer', 'optimizer state: fresh')}; "
                   f"its pretraining data: {imported.get('pretraining_data', 'not declared')}. Nothing was pretrained "
                   "here, so these numbers are conditional on that checkpoint, not on a base run of this study.", ""]
        if got["sft"]:
            base = baseline if any(r.arm == baseline for r in got["sft"]) else None
            try:
                cells = tables.aggregate(got["sft"], base, confidence, lr_choice, ln_vocab(size), seeds=spec.seeds,
                                         ceiling=spec.lr_ceiling)
            except ValueError as e:
                raise ConfigError(f"report ({size.name})", str(e)) from None
            md += [tables.markdown(cells, base, confidence, lr_choice, variance(spec)), ""]
            csv = tables.csv_text(cells).splitlines()
            csv_parts += ([("size," + csv[0])] if not csv_parts else []) + [f"{size.name},{line}" for line in csv[1:]]
            size_res["cells"] = [{"arm": c.arm, "task": c.task, "seeds": list(c.seeds), "lrs": list(c.lrs),
                                  "edge_seeds": list(c.edge_seeds), "ceiling_seeds": list(c.ceiling_seeds),
                                  "verdict": c.verdict, "holm": c.holm,
                                  "p_holm": c.p_holm, "comparisons": tables.comparisons(cells),
                                  "regime": list(c.regime), "detectable_d80": c.detect_d, "not_judged": tables.not_judged(cells),
                                  "summary": {m: iv.__dict__ for m, iv in c.summary.items()},
                                  "delta": {m: p.diff.__dict__ for m, p in c.delta.items()}} for c in cells]
            by_task: dict[str, dict] = {}
            for c in cells:
                if "sft_test" in c.summary:
                    by_task.setdefault(c.task, {})[c.arm] = c.summary["sft_test"]
            figures.arm_bars(by_task, rep / f"{size.name}-sft-test.png")
            md.append(f"![SFT test loss per arm]({size.name}-sft-test.png)")
            md += _heatmaps(spec, size.name, cells, rep) + [""]
            md += _lines_and_scatter(spec, size.name, cells, rep) + [""]
            chosen = tables.choose(got["sft"], lr_choice, spec.lr_ceiling)
            inter = interactions(spec, chosen, confidence, ln_vocab(size))
            if inter:
                size_res["interactions"] = inter
                md += _format_interactions(inter, confidence, spec.vary) + [""]
            effects = precision_effects(spec, chosen, confidence, ln_vocab(size))
            if effects:
                window = window_under_precision(inter, spec)
                size_res["precision_control"] = {"effects": effects, "window": window}
                md += _format_precision(effects, window, confidence, spec.vary) + [""]
            levels = variance_by_level(chosen, base, {t.name for t in spec.tasks if t.test_data})
            if levels:
                size_res["variance_levels"] = levels
                md += _format_levels(levels, base, variance(spec)) + [""]
            if spec.report.get("proximity") and base:
                md += _proximity(plan, size, cells, rep, size_res, chosen) + [""]
        else:
            md += ["(no finished SFT steps yet)", ""]
        if got["eval"]:
            md += _eval_table(got["eval"], "Validation loss of each run (mean ± CI over seeds):") + [""]
        md += _curves(plan, out_dir, size.name, got.get("eval_curves") or [], rep) + [""]
        if got["lm_eval"]:
            md += _eval_table(got["lm_eval"], "lm-eval metrics of each run before SFT (mean ± CI over seeds):") + [""]
    if spec.report.get("overlap"):
        md += _overlap(spec, results) + [""]
    write_text_atomic(rep / "table.md", "\n".join(md) + "\n")
    write_text_atomic(rep / "table.csv", "\n".join(csv_parts) + ("\n" if csv_parts else ""))
    write_text_atomic(rep / "results.json", json.dumps(results, indent=1, default=str) + "\n")
    return rep


def _overlap(spec, results: dict) -> list[str]:
    """Near-duplicates of each task's SFT val/test items in the named corpora and in every task's training
    set (``midtrain overlap``): the counts go in the table and ``results.json``."""
    from midtrain.analysis.overlap import format_summary, run_overlap

    cfg = spec.report["overlap"]
    n = int(cfg.get("n", 13))
    evals = [f"{t.name}/{split}={getattr(t, key)}" for t in spec.tasks
             for split, key in (("val", "val_data"), ("test", "test_data")) if getattr(t, key)]
    if not evals:
        return ["(report.overlap: no task names val_data or test_data files to check)"]
    against = [f"{name}={path}" for name, path in cfg["against"].items()] + \
        [f"{t.name}/train={t.data}" for t in spec.tasks]
    keys = {f"{t.name}/{split}": (t.prompt_key, t.response_key) for t in spec.tasks for split in ("val", "test", "train")}
    res = run_overlap(evals, against, n, keys=keys)
    results["overlap"] = res
    total = sum(s["ngram_any"] + s["same_response_any"] for s in res["eval"].values())
    return [f"Near-duplicates of the SFT val/test items (`midtrain overlap`, normalised {n}-grams; responses equal "
            f"after blanking names and numbers): {total} item-flags in all.", "", format_summary(res["eval"], n)]


def ln_vocab(size) -> float | None:
    """ln of the size's vocabulary (the model config's vocab_size): the loss of a uniform guess, above which a
    main-corpus loss marks a broken regime. None when the config names no resolvable model."""
    import math

    from midtrain.study.params import litgpt_config

    try:
        return math.log(litgpt_config(size.config.get("model_name"), size.config.get("model_config")).vocab_size)
    except Exception:  # noqa: BLE001 - no litgpt or an unresolvable config: that check is not made (and said)
        return None


def _import_note(size) -> dict:
    """The `midtrain import` note of an imported size's checkpoint (source, step, optimizer state, corpus)."""
    try:
        state = json.loads((Path(size.checkpoint) / "training_state.json").read_text())
        notes = (state.get("data") or {}).get("notes") or []
        return next((n for n in notes if "optimizer" in n), {})
    except (OSError, ValueError):
        return {}


def _eval_table(rows: list[dict], title: str) -> list[str]:
    sets = sorted({k for r in rows for k in r if k not in ("arm", "seed")})
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    out = [title, "", "| run | " + " | ".join(sets) + " |",
           "|---|" + "---|" * len(sets)]
    for arm in arms:
        mine = [r for r in rows if r["arm"] == arm]
        cells = [stats.summarize([r[s] for r in mine if s in r]).format(3) if any(s in r for r in mine) else ""
                 for s in sets]
        out.append(f"| {arm} | " + " | ".join(cells) + " |")
    return out


def grid_family(arm) -> str | None:
    """The start × weight grid an arm belongs to: its family, per precision (a precision control's arms are
    sibling grids, never one cell overwriting another); None for a dose-matched arm (its weight follows from
    its start: it is no cell of a start × weight grid)."""
    if arm.dose is not None:
        return None
    return arm.family + (f"-{arm.precision}" if arm.precision else "")


METRIC_WORDS = {"sft_test": "SFT test loss", "main_after": "main-corpus loss after SFT"}


def interactions(spec, chosen, confidence: float = 0.95, ln_v: float | None = None) -> list[dict]:
    """Timing × weight, for every arm family crossing >= 2 starts with >= 2 weights, per SFT task and metric (the
    SFT test loss, in-domain, and the main-corpus loss after SFT, forgetting), per seed at the corners (earliest/
    latest start, lowest/highest weight): the late simple effect L[late, high] − L[late, low], the early one
    L[early, high] − L[early, low], and the interaction I = late − early, each with its t-interval over seeds.
    The paper's window is the late claim, "introduced late, a high weight hurts" (late effect > 0): the entry's
    ``verdict`` is on it (``stats.claim_verdict``, the findings' words); I > 0 ("a high weight costs more late than
    early") has its own verdict, ``interaction_verdict``; the early effect is described, not tested. "not judged"
    when a cell an entry rests on is outside a valid regime (``stats.regime_problems``) or missing. A precision
    sibling (``grid_family``) that ran only the late corners of its family's starts gives the late claim alone
    (``early`` and ``interaction`` None, ``interaction_verdict`` ``NOT_RUN``). Pure."""
    from midtrain.analysis import stats

    values = {(c.arm, c.task, c.seed): c.values for c in chosen}
    problems_of = {(c.arm, c.task, c.seed): stats.regime_problems(
        c.values, c.choice, ln_v) for c in chosen}  # (the table's reading: every metric value, the reference)
    out = []
    families: dict[str, list] = {}
    for a in spec.arms:
        if a.weight is not None and grid_family(a) is not None:
            families.setdefault(grid_family(a), []).append(a)
    # a family's own starts; a precision sibling that ran one start only (the late corners: ``paper-window.yaml``,
    # the demo) adds the starts of its family as configured (no precision), so it still tests the late claim
    # (early and I "not run")
    configured: dict[str, set] = {}
    for a in spec.arms:
        if a.weight is not None and grid_family(a) is not None and not a.precision:
            configured.setdefault(a.family, set()).add(a.start)
    for family, members in families.items():
        starts, weights = sorted({a.start for a in members}), sorted({a.weight for a in members})
        if len(starts) < 2 and any(a.precision for a in members):
            starts = sorted(set(starts) | configured.get(members[0].family, set()))
        if len(starts) < 2 or len(weights) < 2:
            continue
        cell = {(a.start, a.weight): a.name for a in members}
        split = {}  # a corner whose seeds fall on both sides of collapse (stats.regime_disagreement)
        for a in members:
            for task in dict.fromkeys(c.task for c in chosen):
                mine = {c.seed: c for c in chosen if c.arm == a.name and c.task == task
                        and stats.collapse_known(c.values, ln_v)}
                why = stats.regime_disagreement({sd: (c.choice.lr, stats.collapsed(c.values, ln_v)) for sd, c in mine.items()})
                if why:
                    split[(a.name, task)] = f"{a.name}: {why}"
        corners = {"early_low": (starts[0], weights[0]), "early_high": (starts[0], weights[-1]),
                   "late_low": (starts[-1], weights[0]), "late_high": (starts[-1], weights[-1])}
        if not all(corners[k] in cell for k in ("late_low", "late_high")):
            continue
        late_only = not all(k in cell for k in corners.values())
        if late_only:
            corners = {k: v for k, v in corners.items() if k.startswith("late")}
        names = {k: cell[v] for k, v in corners.items()}
        for task in dict.fromkeys(c.task for c in chosen):
            for metric in METRIC_WORDS:
                per_seed, problems = {}, []
                problems += [split[(n, task)] for n in names.values() if (n, task) in split]
                for seed in spec.seeds:  # every seed the study ran: one without a result is a missing cell
                    keys = {k: (n, task, seed) for k, n in names.items()}
                    problems += [f"{key[0]}/s{seed}: {p}" for key in keys.values() for p in problems_of.get(key, [])]
                    problems += [f"{key[0]}/s{seed}: {stats.MISSING}" for key in keys.values()
                                 if metric not in values.get(key, {})]
                    if all(k in values and metric in values[k] for k in keys.values()):
                        v = {k: values[key][metric] for k, key in keys.items()}
                        late = v["late_high"] - v["late_low"]
                        per_seed[seed] = {"late": late} if late_only else \
                            {"late": late, "early": v["early_high"] - v["early_low"],
                             "interaction": late - (v["early_high"] - v["early_low"])}
                finite = {sd: e for sd, e in per_seed.items() if all(map(math.isfinite, e.values()))}
                if not finite:
                    continue
                ivs = {k: stats.summarize([e[k] for e in finite.values()], confidence)
                       for k in (("late",) if late_only else ("late", "early", "interaction"))}
                regime = f"{stats.NOT_JUDGED} (regime)" if problems or len(finite) < len(per_seed) else None
                out.append({"family": family, "task": task, "metric": metric, "cells": names, "per_seed": per_seed,
                            "early": None, "interaction": None, **{k: iv.__dict__ for k, iv in ivs.items()},
                            "verdict": regime or stats.claim_verdict(ivs["late"], +1),
                            "interaction_verdict": NOT_RUN if late_only else
                            regime or stats.claim_verdict(ivs["interaction"], +1),
                            "regime": problems + ([] if len(finite) == len(per_seed) else ["a non-finite loss"]),
                            "p": stats.t_test_p([e["late"] for e in finite.values()]),
                            "p_interaction": None if late_only else
                            stats.t_test_p([e["interaction"] for e in finite.values()])})
    return out


NOT_RUN = "not run (the early corners were not run at this precision)"  # a late-only sibling's I


CONFIGURED = "the config's precision"  # an arm without precision: (the reference of a precision control)


def precision_effects(spec, chosen, confidence: float = 0.95, ln_v: float | None = None) -> list[dict]:
    """A precision control (arms with ``precision:``): for every arm run at >= 2 precisions, per SFT task and
    metric, the paired difference (other precision − the arm as configured, else the first listed) over matched
    seeds, its interval and
    verdict (``stats.verdict``: lower loss = better), or "not judged" when a cell is outside a valid regime or a
    seed's result is missing (never a difference over the seeds that remain). Pure."""
    from midtrain.analysis import stats
    from midtrain.analysis.tables import METRICS

    values = {(c.arm, c.task, c.seed): c for c in chosen}
    groups: dict[tuple, list] = {}
    for a in spec.arms:  # the arm as configured (no precision:) is the reference where the spec has it
        groups.setdefault((a.family, a.start, a.weight, a.dose, a.mixture, a.mix_config), []).append(a)
    out = []
    for members in groups.values():
        members = sorted(members, key=lambda a: a.precision is not None)  # (stable: the spec's order otherwise)
        if len(members) < 2 or not any(a.precision for a in members):
            continue
        ref = members[0]
        for other in members[1:]:
            for task in dict.fromkeys(c.task for c in chosen):
                for metric in METRICS:
                    mine, base, problems = {}, {}, []
                    for (arm, t, seed), c in values.items():
                        if t != task or arm not in (ref.name, other.name):
                            continue
                        problems += [f"{arm}/s{seed}: {p}" for p in stats.regime_problems(c.values, c.choice, ln_v)]
                        v = c.values.get(metric)
                        if v is not None and math.isfinite(v):
                            (mine if arm == other.name else base)[seed] = v
                    if not set(mine) & set(base):
                        continue
                    problems += [f"{arm}/s{seed}: {stats.MISSING}"
                                 for arm in (other.name, ref.name) for seed in spec.seeds
                                 if (arm, task, seed) not in values]
                    d = stats.paired(mine, base, confidence)
                    out.append({"arm": other.name, "reference": ref.name, "precision": other.precision,
                                "reference_precision": ref.precision or CONFIGURED, "task": task, "metric": metric,
                                "interval": d.diff.__dict__, "regime": problems,
                                "verdict": stats.NOT_JUDGED if problems else stats.verdict(d.diff)})
    return out


def window_under_precision(inter: list[dict], spec) -> list[str]:
    """Whether the timing × weight window (``interactions``: the late claim) reads the same under each precision of
    a precision control: one line per family, task and metric with >= 2 precisions."""
    by: dict[tuple, dict] = {}
    precisions = {grid_family(a): a.precision or CONFIGURED for a in spec.arms}
    family_of = {grid_family(a): a.family for a in spec.arms}
    for x in inter:
        by.setdefault((family_of[x["family"]], x["task"], x["metric"]), {})[precisions[x["family"]]] = x["verdict"]
    lines = []
    for (family, task, metric), verdicts in by.items():
        if len(verdicts) < 2:
            continue
        words = set(verdicts.values())
        said = "; ".join(f"{p}: {v}" for p, v in verdicts.items())
        where = f"- {family} on {task}, {METRIC_WORDS[metric]}"
        if any(v.startswith(stats.NOT_JUDGED) for v in words):
            lines.append(f"{where}: the window is not compared across precisions, a claim it rests on being not "
                         f"judged ({said})")
        elif words == {"reproduced"}:
            lines.append(f"{where}: the window survives the precision change ({said})")
        elif len(words) == 1:
            lines.append(f"{where}: the window reads the same under each precision ({said})")
        else:  # each verdict from its own interval: a difference in significance, not a tested difference
            lines.append(f"{where}: the verdicts differ across precisions ({said}; each from its own interval, "
                         "unadjusted: the difference itself is not tested, which would need the precision x weight "
                         "interaction)")
    return lines


def variance_by_level(chosen, baseline: str | None, shared_tasks=None) -> list[dict]:
    """Per (arm, task) whose SFT steps recorded their test items: the SFT test loss's mean (its paired difference
    from ``baseline``, for the other arms) with its standard error at the seed level and at the test-item level
    (``stats.variance_levels``). ``shared_tasks``: the tasks whose test set every seed and arm score (a test_data
    file; a split drawn from the training file differs per seed, and its items do not pair); None: every task.
    Pure."""
    from midtrain.analysis import stats

    items = {(c.arm, c.task, c.seed): c.items for c in chosen if c.items}
    rows = []
    for arm, task in dict.fromkeys((c.arm, c.task) for c in chosen):
        if shared_tasks is not None and task not in shared_tasks:
            continue
        mine = {s: v for (a, t, s), v in items.items() if (a, t) == (arm, task)}
        base = None if arm == baseline or baseline is None else \
            {s: v for (a, t, s), v in items.items() if (a, t) == (baseline, task)}
        if not mine or base == {}:
            continue
        lv = stats.variance_levels(mine, base)
        if lv is not None:
            rows.append({"arm": arm, "task": task, "paired_with": None if base is None else baseline,
                         "mean": lv.mean, "n": lv.n, "se_seed": lv.se_seed, "se_item": lv.se_item, "items": lv.items,
                         "draws": lv.draws, "item_share": lv.item_share})
    return rows


def _format_levels(rows: list[dict], baseline: str | None, variance: str) -> list[str]:
    def num(x):
        return "-" if x != x else f"{x:.4f}"

    lines = [f"Variance by level, SFT test loss (Δ = paired difference from `{baseline}`; its own mean for the "
             "baseline): the seed level is the sd of the per-seed values over √n, what the intervals above use; it "
             f"holds together everything one seed re-runs ({variance}), which this design cannot separate. The "
             f"test-item level is the sd of the same mean over {rows[0]['draws']:,} bootstrap resamples of the test "
             "items, which every seed and arm score (a task's test_data file), each resample applied to every seed "
             "and to both arms (paired): the intervals above hold the items fixed, so a claim about the task beyond "
             "these items carries this much more uncertainty.", "",
             "| arm | task | mean over seeds | n | seed-level SE | test-item SE (items) | item share of the variance |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        what = f"Δ {r['mean']:+.4f}" if r["paired_with"] else f"{r['mean']:.4f}"
        share = "-" if r["item_share"] != r["item_share"] else f"{r['item_share']:.0%}"
        lines.append(f"| {r['arm']} | {r['task']} | {what} | {r['n']} | {num(r['se_seed'])} | "
                     f"{num(r['se_item'])} ({r['items']}) | {share} |")
    return lines


ONE_CHECKPOINT = ("Under seeds.vary: sft each arm is one midtrained checkpoint, fine-tuned per seed: these intervals "
                  "cover the SFT data order only, and checkpoint-level variance is NOT sampled, so each comparison "
                  "is between {what} (seeds.vary: midtrain samples it).")


def _format_precision(effects: list[dict], window: list[str], confidence: float, vary: str = "sft") -> list[str]:
    lines = [f"Precision control: each arm at another precision minus the same arm (data, seed, schedule) at its "
             f"reference (the arm as configured, else the first precision listed), paired over seeds, mean ± "
             f"{confidence:.0%} t-interval (negative = lower loss):" +
             (" " + ONE_CHECKPOINT.format(what="two single midtraining runs") if vary == "sft" else ""), ""]
    for x in effects:
        iv = x["interval"]
        num = f"{iv['mean']:+.4f}" + ("" if iv["lo"] != iv["lo"] else f", CI [{iv['lo']:+.4f}, {iv['hi']:+.4f}]")
        why = (": " + "; ".join(x["regime"][:2]) + (f"; +{len(x['regime']) - 2} more" if len(x["regime"]) > 2 else "")
               if x["regime"] else "")
        lines.append(f"- {x['arm']} − {x['reference']} on {x['task']}, {x['metric']}: {num}, n={iv['n']}: "
                     f"**{x['verdict']}**{why}")
    if window:
        lines += ["", "The plasticity window (the late effect above) under each precision:"] + window
    return lines


def _format_interactions(inter: list[dict], confidence: float, vary: str = "sft") -> list[str]:
    lines = [f"The plasticity window, per grid family, task and metric, at its corners: the paper claims that "
             f"introduced late, a high weight hurts (late effect = L[late, high] − L[late, low] > 0; the verdict); "
             f"beside it the early effect (described, not tested) and the interaction I = late − early (> 0: a high "
             f"weight costs more late than early). Per-seed differences, mean ± {confidence:.0%} t-interval; "
             "\"reproduced\" = the interval lies above 0, \"not reproduced\" = below." +
             (" " + ONE_CHECKPOINT.format(what="four single midtraining runs, the grid's corners") if vary == "sft"
              else ""), ""]

    def num(iv):
        return f"{iv['mean']:+.4f}" + ("" if iv["lo"] != iv["lo"] else f" [{iv['lo']:+.4f}, {iv['hi']:+.4f}]")

    for x in inter:
        c = x["cells"]
        why = ""
        if x.get("regime"):
            why = ": " + "; ".join(x["regime"][:2]) + (f"; +{len(x['regime']) - 2} more" if len(x["regime"]) > 2 else "")
        if x["early"] is None:  # a precision sibling that ran the late corners only
            lines.append(f"- {x['family']} on {x['task']}, {METRIC_WORDS[x['metric']]} ({c['late_high']} − "
                         f"{c['late_low']} late), n={x['late']['n']}: late {num(x['late'])}: **{x['verdict']}**{why}; "
                         f"early and I: {NOT_RUN}")
            continue
        lines.append(f"- {x['family']} on {x['task']}, {METRIC_WORDS[x['metric']]} ({c['late_high']} − "
                     f"{c['late_low']} late, {c['early_high']} − {c['early_low']} early), n={x['late']['n']}: "
                     f"late {num(x['late'])}: **{x['verdict']}**{why}; early {num(x['early'])}; "
                     f"I {num(x['interaction'])}: {x['interaction_verdict']}")
    return lines


def _lines_and_scatter(spec, size: str, cells, rep: Path) -> list[str]:
    """Δ vs the baseline over start step (a line per weight) and over weight (a line per start), per grid
    family and task; over start step with a line per dose, per dose-matched family and task; and the in-domain
    gain against forgetting scatter of every (arm, task)."""
    from midtrain.analysis import figures

    lines = []
    arms = {a.name: a for a in spec.arms}
    labels = {"sft_test": "SFT test loss", "main_after": "main-corpus loss after SFT"}
    families: dict[str, list] = {}
    for a in spec.arms:
        if a.weight is not None and grid_family(a) is not None:
            families.setdefault(grid_family(a), []).append(a)
    for family, members in families.items():
        for task in dict.fromkeys(c.task for c in cells):
            mine = [c for c in cells if c.task == task and c.arm in arms and grid_family(arms[c.arm]) == family]
            for x_key, line_key, xlabel in (("start", "weight", "start step"), ("weight", "start", "midtraining weight")):
                if len({getattr(arms[c.arm], x_key) for c in mine}) < 2:
                    continue
                panels = {}
                for metric, label in labels.items():
                    by_line: dict[str, list] = {}
                    for c in mine:
                        if metric in c.delta:
                            a = arms[c.arm]
                            name = f"{line_key} {getattr(a, line_key):g}"
                            by_line.setdefault(name, []).append((getattr(a, x_key), c.delta[metric].diff))
                    if by_line:
                        panels[label] = by_line
                if panels:
                    name = f"{size}-{family}-{task}-over-{x_key}.png"
                    figures.delta_lines(panels, rep / name, xlabel, title=f"{size}: {family} on {task}, over {xlabel}")
                    lines.append(f"![{family} over {xlabel} on {task}]({name})")
    # dose-matched arms (``dose: [D]``, weight D / (T - S)): a line per dose over the start, each holding the domain
    # tokens added fixed, so its slope is the effect of where in the schedule (the LR at the start) the same
    # dose goes, apart from the dose
    dosed: dict[str, list] = {}
    for a in spec.arms:
        if a.dose is not None:
            dosed.setdefault(a.family + (f"-{a.precision}" if a.precision else ""), []).append(a)
    for family, members in dosed.items():
        names = {a.name: a for a in members}
        for task in dict.fromkeys(c.task for c in cells):
            panels = {}
            for metric, label in labels.items():
                by_line: dict[str, list] = {}
                for c in cells:
                    if c.task == task and c.arm in names and metric in c.delta:
                        a = names[c.arm]
                        by_line.setdefault(f"dose {a.dose:g} steps", []).append((a.start, c.delta[metric].diff))
                if any(len(v) >= 2 for v in by_line.values()):
                    panels[label] = by_line
            if panels:
                name = f"{size}-{family}-{task}-dose-matched.png"
                figures.delta_lines(panels, rep / name, "start step (the dose w·(T − S) held fixed per line)",
                                    title=f"{size}: {family} on {task}, dose-matched over the start")
                lines.append(f"![{family} dose-matched over the start on {task}]({name})")
    points = [(c.delta["main_after"].diff, c.delta["sft_test"].diff, f"{c.arm}/{c.task}") for c in cells
              if "main_after" in c.delta and "sft_test" in c.delta]
    if points:
        name = f"{size}-gain-vs-forgetting.png"
        figures.gain_vs_forgetting(points, rep / name, title=f"{size}: in-domain gain against forgetting "
                                   f"(Δ vs {spec.report.get('baseline', CONTROL)}, mean ± CI over seeds)")
        lines.append(f"![in-domain gain against forgetting]({name})")
    return lines


def _curves(plan: Plan, out_dir: Path, size: str, eval_curves: list, rep: Path) -> list[str]:
    """Validation curves of every finished run of ``size``: logged during training (every run), and the
    study's eval of every saved checkpoint (``eval.checkpoints: all``)."""
    from midtrain.analysis import figures
    from midtrain.report import plot_runs

    lines = []
    runs = [run_dir_of(out_dir, s) for s in plan.steps if KINDS[s.kind].training
            and s.labels.get("size") == size and checkpoint_of(out_dir, s).is_dir()]
    if runs:
        try:
            name = f"{size}-val-curves.png"
            plot_runs([str(r) for r in runs], str(rep / name))
            lines.append(f"![validation loss logged during training, every run]({name})")
        except ConfigError:
            lines.append("(no validation loss was logged during training: eval.interval / final_validation)")
    if eval_curves:
        panels: dict[str, dict] = {}
        for label, by_step in eval_curves:
            for step, sets in by_step.items():
                for set_name, m in sets.items():
                    if not (isinstance(m, dict) and "loss" in m):
                        continue
                    panels.setdefault(set_name, {}).setdefault(label, []).append((int(step), m["loss"]))
        name = f"{size}-eval-checkpoints.png"
        figures.curves(panels, rep / name, "loss", title=f"{size}: loss of every saved checkpoint of every run")
        lines.append(f"![loss of every saved checkpoint]({name})")
    return lines


def _heatmaps(spec, size: str, cells, rep: Path) -> list[str]:
    from midtrain.analysis import figures

    lines = []
    arms = {a.name: a for a in spec.arms}
    families = {}
    for a in spec.arms:
        if a.weight is not None and grid_family(a) is not None:
            families.setdefault(grid_family(a), []).append(a)
    for family, members in families.items():
        if len({a.start for a in members}) < 2 and len({a.weight for a in members}) < 2:
            continue
        for task in dict.fromkeys(c.task for c in cells):
            panels = {}
            for metric, label in (("sft_test", "SFT test loss"), ("main_after", "main-corpus loss after SFT")):
                grid = {(arms[c.arm].start, arms[c.arm].weight): c.delta[metric].diff
                        for c in cells if c.task == task and c.arm in arms and grid_family(arms[c.arm]) == family
                        and metric in c.delta}
                if grid:
                    panels[label] = grid
            if panels:
                name = f"{size}-{family}-{task}-heatmap.png"
                figures.timing_weight_heatmap(panels, rep / name, title=f"{size}: {family} start × weight, task {task}")
                lines.append(f"![{family} start × weight on {task}]({name})")
    return lines


def _proximity(plan: Plan, size, cells, rep: Path, size_res: dict, chosen=None) -> list[str]:
    """Unigram proximity advantage of each arm's mixture (over main) toward each task's SFT text, with the arm's
    LR-weighted steps, against its relative improvement (L_control - L_arm) / L_control in SFT test loss; with
    ``chosen`` (the per-seed values), their correlation by ``stats.proximity_r``."""

    from midtrain.analysis import counting, figures
    from midtrain.analysis import proximity as px
    from midtrain.data.mixture import parse_weights
    from midtrain.data.shards import discover
    from midtrain.tokenizer import load_tokenizer
    from midtrain.train.schedules import lr_steps

    spec = plan.spec
    cfg = size.config
    args = data_args(cfg)
    measure = spec.report.get("measure", "cosine")
    max_tokens = spec.report.get("proximity", {}).get("max_tokens", 10_000_000) \
        if isinstance(spec.report.get("proximity"), dict) else 10_000_000
    tok_dir = cfg.get("tokenizer_dir")
    if not tok_dir:
        raise ConfigError("report.proximity", f"base {size.name!r} has no tokenizer_dir to tokenise the SFT text")
    tok = load_tokenizer(tok_dir)
    disc = discover(args["data_path"], args.get("shard_types")).by_type()
    counts = {}
    for t, shards in disc.items():
        parts = [counting.count_dataset(sh.id, sh.path, max_tokens, 0).counts for sh in shards]
        width = max(len(c) for c in parts)
        counts[t] = sum(counting.pad_to(c, width) for c in parts)
    by_id = {sh.id: sh for shards in disc.values() for sh in shards}
    named = {k for a in spec.arms if a.mixture for k, _ in parse_weights(a.mixture, "mixture") if k not in counts}
    for sid in sorted(named):  # a mixture that names shards (a mix_config or literal arm): that shard's own counts
        if sid not in by_id:
            raise ConfigError("report.proximity", f"an arm's mixture names {sid!r}, neither a shard type nor a shard "
                              f"under {args['data_path']}")
        counts[sid] = counting.count_dataset(sid, by_id[sid].path, max_tokens, 0).counts
    for task in spec.tasks:
        counts[f"task:{task.name}"] = counting.sft_counts(task.data, tok, task.prompt_key, task.response_key)
    vocab = max(len(c) for c in counts.values())
    dists = {k: px.distribution(counting.pad_to(c, vocab)) for k, c in counts.items()}
    arms = {a.name: a for a in spec.arms}
    rows = []
    from functools import lru_cache

    dose = lru_cache(maxsize=None)(lambda start: lr_steps(size.config, start, size.max_steps))  # O(T): once a start
    base_arm = spec.report.get("baseline", CONTROL)
    base = {c.task: c for c in cells if c.arm == base_arm}
    for c in cells:
        if c.arm not in arms or not arms[c.arm].mixture or c.task not in base or "sft_test" not in c.summary \
                or arms[c.arm].precision:  # (a precision control's arm repeats its sibling's x: numerics, not dose)
            continue
        weights = dict(parse_weights(arms[c.arm].mixture, "mixture"))
        adv = px.advantage(measure, px.mixture(dists, weights), dists["main"], dists[f"task:{c.task}"])
        rel = stats.relative_improvement(base[c.task].summary["sft_test"].mean, c.summary["sft_test"].mean)
        rows.append({"arm": c.arm, "task": c.task, "advantage": adv, "relative_improvement": rel,
                     "lr_steps": dose(arms[c.arm].start),
                     "judged": not c.regime and not base[c.task].regime})
    size_res["proximity"] = {"measure": measure, "rows": rows}
    src = ["Unigram proximity of each corpus to each SFT task's text (cosine / JSD, base 2):", "",
           "| corpus | " + " | ".join(t.name for t in spec.tasks) + " |", "|---|" + "---|" * len(spec.tasks)]
    for t_name in disc:
        src.append(f"| {t_name} | " + " | ".join(
            f"{px.cosine(dists[t_name], dists[f'task:{t.name}']):.3f} / {px.jsd(dists[t_name], dists[f'task:{t.name}']):.3f}"
            for t in spec.tasks) + " |")
    size_res["proximity"]["sources"] = {t_name: {t.name: {"cosine": px.cosine(dists[t_name], dists[f"task:{t.name}"]),
                                                        "jsd": px.jsd(dists[t_name], dists[f"task:{t.name}"])}
                                                 for t in spec.tasks} for t_name in disc}
    lines = src + ["", f"Proximity advantage ({measure}, mixture vs main toward the task's SFT text), the arm's "
             "LR-weighted steps (the sum of LR / peak over the steps it trains: its start and duration), and the "
             "relative improvement (L_pretrain-only - L_arm) / L_pretrain-only in SFT test loss (mean over seeds):", "",
             "| arm | task | advantage | LR-weighted steps | relative improvement |", "|---|---|---|---|---|"]
    lines += [f"| {r['arm']} | {r['task']} | {r['advantage']:+.4f} | {r['lr_steps']:.1f} | "
              f"{r['relative_improvement']:+.4f}" + ("" if r["judged"] else " (not judged: regime)") + " |" for r in rows]
    if chosen is not None:  # stats.proximity_r: the same r as the demo's finding 4, over the cells in a valid regime
        test = {(c.arm, c.task, c.seed): c.values["sft_test"] for c in chosen
                if c.values.get("sft_test") is not None and math.isfinite(c.values["sft_test"])}
        r, n = stats.proximity_r([x for x in rows if x["judged"]], test, base_arm, plan.spec.seeds)
        if r is not None:
            size_res["proximity"]["r"] = {**r.__dict__, "cells": n, "seeds": len(plan.spec.seeds)}
            ci = "" if r.lo != r.lo else f", 95% CI {r.lo:.2f} to {r.hi:.2f}"
            lines.append(f"\nDose-weighted proximity (advantage × LR-weighted steps) against relative improvement: "
                         f"Pearson r = {r.r:.2f} within each seed, over {n} cells in a valid regime{ci} (a t-interval "
                         f"over the {len(plan.spec.seeds)} seeds of its Fisher z: every cell's improvement is over the "
                         "same control runs, so the seeds, not the cells, are the independent units)")
    if rows:
        name = f"{size.name}-proximity.png"
        r = size_res["proximity"].get("r")
        points = {size.name: [(x["advantage"] * x["lr_steps"], x["relative_improvement"],
                               f"{x['arm']}/{x['task']}" + ("" if x["judged"] else " (not judged)")) for x in rows]}
        figures.proximity_scatter(points, rep / name, measure, notes={size.name: f"r = {r['r']:.2f} within seeds over "
                                  f"{r['cells']} valid cells" if r else ""},
                                  xlabel=f"proximity advantage ({measure}) × LR-weighted steps")
        lines.append(f"\n![dose-weighted proximity advantage vs relative improvement]({name})")
    return lines
