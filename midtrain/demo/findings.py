"""The demo's four findings (the paper's v2 abstract), each judged from an interval by
``midtrain.analysis.stats.verdict`` (pure: no I/O, no torch).

Protocol, fixed before any run under it (lower loss = better; per seed, the SFT LR is chosen on validation):
1. Midtraining beats pretrain-only after SFT on a domain distant from the main corpus: for each
   domain d (math, code), the paired difference of SFT test loss on task d between ``d20`` at the
   early start and pretrain-only.
2. Midtraining beats 100%-domain CPT, in-domain and on forgetting: paired differences ``d20`` - CPT
   of SFT test loss on task d, and of main-corpus loss after SFT (the paper's forgetting).
3. The plasticity window (the paper: introduced late, a high weight hurts; introduced early it does not): on
   the code grid, per seed, the simple effects L[late, high] - L[late, low] (claimed > 0) and
   L[early, high] - L[early, low] (reported, not tested: the claim is about late), and the interaction
   I = (L[late, high] - L[late, low]) - (L[early, high] - L[early, low]) (claimed > 0: a high weight costs
   more late than early), each on the code SFT test loss (in-domain) and on main-corpus loss after code
   SFT (forgetting).
4. The benefit tracks the proximity advantage, dose included: Pearson r between each (arm, task) cell's
   proximity advantage times its LR-weighted number of steps (``lr_steps``: sum over the arm's steps of
   LR / peak; the weight is in the mixture the advantage is of) and its relative improvement over
   pretrain-only, within each seed; the interval is a t-interval over the seeds of the Fisher z of those
   r's, since every cell's improvement is over the same control runs (a Fisher-z interval over the cells would
   take them as independent); reproduced when it lies above 0.
3p. The precision control (the paper trains in bf16-true, whose rounding drops most of the small updates a late
   arm consists of): the late corners re-run at another precision (same data, seed, schedule); the late simple
   effects again under it (claimed > 0, as in 3). Each corner's precision effect is the study report's
   (``report.precision_effects``, in the table above the findings).
5. The benefit is largest for domains distant from the main corpus: per seed, the relative improvement of each
   distant domain's midtraining arm on its task over pretrain-only, minus that of the near domain's arm on the
   near task (claimed > 0); the near arm's own difference from pretrain-only is reported, not tested.
Words (``stats.claim_verdict``, the same in the study report): "reproduced" / "not reproduced" /
"inconclusive (interval includes 0)", only from intervals on the claimed sign; "not judged (regime)" when a
cell a finding rests on is outside a valid regime (``stats.regime_problems``: collapse, i.e. main-corpus loss
after SFT at or above the unigram entropy of the tokens it scored; the chosen LR at a grid edge; a non-finite
loss; seeds on both sides of collapse) or missing (its step failed or never ran); "not judged (no
variance sampled)" when every seed gives the same difference. The headline is the family of tested claims
the protocol declares before any run (``declared_family``: its size never depends on an outcome): each verdict
is Holm-adjusted over all of them, a claim not judged staying in the family with p = 1, and the unadjusted verdict
is printed beside it; the smallest effect the design can detect is stated a priori, from n alone
(``stats.a_priori_power_text``), never from the observed spread.
"""

from __future__ import annotations

import math
from typing import Mapping

from midtrain.analysis import stats

# a verdict on the claimed side ("better") in the claims' words (stats.CLAIM_WORDS: one label everywhere)
WORDS = {"better": stats.CLAIM_WORDS["reproduced"], "worse": stats.CLAIM_WORDS["not reproduced"],
         "inconclusive": stats.CLAIM_WORDS["inconclusive"], stats.NO_VARIANCE: stats.CLAIM_WORDS[stats.NO_VARIANCE]}
DESCRIPTIVE = "descriptive (not tested)"


def _finding(key: str, claim: str, iv: stats.Interval | None, lower_is_better: bool | None, detail: str,
             samples: list[float] | None = None, problems: list[str] | None = None, p: float | None = None) -> dict:
    """One finding: its verdict on the claimed sign (``lower_is_better``: the claim is that the difference is
    < 0; False: > 0; None: reported, not tested), or "not judged" when a cell it rests on is outside a valid
    regime or missing; ``samples`` (per-seed values) give the t-test p."""
    out = {"finding": key, "claim": claim, "detail": detail, "regime": list(problems or []),
           "lower_is_better": lower_is_better}
    if iv is None:
        word = f"{stats.NOT_JUDGED} (regime)" if problems else f"{stats.NOT_JUDGED} (no data)"
        return {**out, "verdict": word, "detail": detail + " (no data)", "mean": None, "lo": None,
                "hi": None, "n": 0, "p": None}
    if p is None and samples is not None:
        p = stats.t_test_p(samples)
    if problems:
        word = f"{stats.NOT_JUDGED} (regime)"
    elif lower_is_better is None:
        word = DESCRIPTIVE
    else:
        word = stats.claim_verdict(iv, -1 if lower_is_better else +1)
    return {**out, "verdict": word, "mean": iv.mean, "lo": iv.lo, "hi": iv.hi, "n": iv.n, "p": p}


def _problems(values: Mapping, keys, ln_vocab: float | None) -> list[str]:
    """Regime problems of the (arm, task, seed) cells a finding rests on (stats.regime_problems), and the cells
    that are missing (a failed or diverged step leaves none)."""
    out = []
    for k in keys:
        if k not in values:
            out.append(f"{k[0]}/{k[1]}/s{k[2]}: {stats.MISSING}")
            continue
        v = values[k]
        choice = stats.LRChoice(v["lr"], v.get("sft_val", math.nan), (), v.get("lr_edge")) if "lr" in v else None
        out += [f"{k[0]}/{k[1]}/s{k[2]}: {p}" for p in
                stats.regime_problems({m: v[m] for m in ("sft_test", "main_after", "main_unigram") if m in v}, choice,
                                      ln_vocab)]
    by_cell: dict = {}
    for k in keys:  # a cell (arm, task) whose seeds fall on both sides of collapse
        if k in values and "lr" in values[k] and stats.collapse_known(values[k], ln_vocab):
            by_cell.setdefault(k[:2], {})[k[2]] = (values[k]["lr"], stats.collapsed(values[k], ln_vocab))
    for (arm, task), by_seed in by_cell.items():
        split = stats.regime_disagreement(by_seed)
        if split:
            out.append(f"{arm}/{task}: {split}")
    return out


def _finite(values: Mapping, key, metric: str) -> float | None:
    v = values.get(key, {}).get(metric)
    return float(v) if v is not None and math.isfinite(v) else None


def _paired(values: Mapping, a: str, b: str, task: str, metric: str, seeds):
    """Per-seed differences a - b over the seeds where both are finite (the others are named as problems):
    (interval, differences), or (None, None) when there are none."""
    diffs = []
    for s in seeds:
        x, y = _finite(values, (a, task, s), metric), _finite(values, (b, task, s), metric)
        if x is not None and y is not None:
            diffs.append(x - y)
    return (stats.summarize(diffs), diffs) if diffs else (None, None)


def _interaction(values: Mapping, grid: dict, metric: str, seeds):
    """Per-seed I = (late high - late low) - (early high - early low) where all four cells are finite."""
    t = grid["task"]
    out = []
    for s in seeds:
        lh, ll, eh, el = (_finite(values, (grid[k], t, s), metric)
                          for k in ("late_high", "late_low", "early_high", "early_low"))
        if None not in (lh, ll, eh, el):
            out.append((lh - ll) - (eh - el))
    return (stats.summarize(out), out) if out else (None, None)


def _benefit_gap(values: Mapping, far: Mapping, near: Mapping, seeds):
    """Per seed: relative improvement over pretrain-only of ``far["mid"]`` on ``far["task"]`` minus that of
    ``near["mid"]`` on ``near["task"]``, where all four cells are finite."""
    out = []
    for s in seeds:
        cells = [_finite(values, k, "sft_test") for k in ((far["mid"], far["task"], s), ("pretrain-only", far["task"], s),
                                                          (near["mid"], near["task"], s),
                                                          ("pretrain-only", near["task"], s))]
        if None not in cells:
            out.append(stats.relative_improvement(cells[1], cells[0]) - stats.relative_improvement(cells[3], cells[2]))
    return (stats.summarize(out), out) if out else (None, None)


def evaluate(values: Mapping[tuple, dict], seeds, domains: Mapping[str, dict], grid: dict,
             proximity: list[dict], ln_vocab: float | None = None, alpha: float = 0.05,
             near: Mapping | None = None, precision: Mapping | None = None) -> list[dict]:
    """``values``: (arm, task, seed) -> {"sft_test", "main_after", "main_unigram", "lr", "lr_edge"} at the LR
    chosen on val.
    ``domains``: d -> {"mid": arm, "cpt": arm, "task": task}; ``grid``: {"task", "early_low", "early_high",
    "late_low", "late_high"} (arm names); ``proximity``: [{"arm", "task", "advantage", "relative_improvement"}];
    ``ln_vocab``: ln V for the regime check; ``near``: {"mid": arm, "task": task}, the near domain (finding 5);
    ``precision``: {"precision": p, "late_low": arm, "late_high": arm}, the grid's late corners re-run at
    precision p (the precision control: finding 3's late effects again under p).
    Each tested finding also gets its verdict Holm-adjusted over the declared family (``holm``)."""
    out = []

    def keys(arms, task):
        return [(a, task, s) for a in arms for s in seeds]

    for d, a in domains.items():
        iv, xs = _paired(values, a["mid"], "pretrain-only", a["task"], "sft_test", seeds)
        out.append(_finding(f"1-{d}", f"midtraining ({a['mid']}) lowers {d} SFT test loss vs pretrain-only", iv,
                            True, f"Δ {a['mid']} - pretrain-only", xs,
                            _problems(values, keys([a["mid"], "pretrain-only"], a["task"]), ln_vocab)))
    for d, a in domains.items():
        problems = _problems(values, keys([a["mid"], a["cpt"]], a["task"]), ln_vocab)
        iv, xs = _paired(values, a["mid"], a["cpt"], a["task"], "sft_test", seeds)
        out.append(_finding(f"2-{d}-in-domain", f"midtraining ({a['mid']}) beats CPT ({a['cpt']}) on {d} SFT test loss",
                            iv, True, f"Δ {a['mid']} - {a['cpt']}", xs, problems))
        iv, xs = _paired(values, a["mid"], a["cpt"], a["task"], "main_after", seeds)
        out.append(_finding(f"2-{d}-forgetting", f"midtraining ({a['mid']}) forgets less than CPT ({a['cpt']}): "
                            f"main-corpus loss after {d} SFT", iv, True, f"Δ {a['mid']} - {a['cpt']}", xs, problems))
    t = grid["task"]
    corners = [grid[k] for k in ("late_high", "late_low", "early_high", "early_low")]
    late = _problems(values, keys(corners[:2], t), ln_vocab)  # each finding: the cells it rests on
    early = _problems(values, keys(corners[2:], t), ln_vocab)
    for metric, where in (("sft_test", "in-domain"), ("main_after", "forgetting")):
        what = f"{t} SFT test loss" if metric == "sft_test" else f"main-corpus loss after {t} SFT"
        iv, xs = _paired(values, grid["late_high"], grid["late_low"], t, metric, seeds)
        out.append(_finding(f"3-late-{where}", f"introduced late, a high weight hurts: {grid['late_high']} above "
                            f"{grid['late_low']} on {what}", iv, False,
                            f"Δ {grid['late_high']} - {grid['late_low']}", xs, late))
        iv, xs = _paired(values, grid["early_high"], grid["early_low"], t, metric, seeds)
        out.append(_finding(f"3-early-{where}", f"introduced early, the same weights: {grid['early_high']} vs "
                            f"{grid['early_low']} on {what}", iv, None,
                            f"Δ {grid['early_high']} - {grid['early_low']}", xs, early))
        iv, xs = _interaction(values, grid, metric, seeds)
        out.append(_finding(f"3-interaction-{where}", f"a high weight costs more when introduced late than early "
                            f"({grid['late_high']} - {grid['late_low']} vs {grid['early_high']} - "
                            f"{grid['early_low']}, {what})", iv, False, "interaction I", xs, late + early))
    if precision:  # the precision control: the same late corners (data, seed, schedule) at another precision
        p, pl, ph = precision["precision"], precision["late_low"], precision["late_high"]
        late_p = _problems(values, keys([ph, pl], t), ln_vocab)
        for metric, where in (("sft_test", "in-domain"), ("main_after", "forgetting")):
            what = f"{t} SFT test loss" if metric == "sft_test" else f"main-corpus loss after {t} SFT"
            iv, xs = _paired(values, ph, pl, t, metric, seeds)
            out.append(_finding(f"3-late-{p}-{where}", f"under {p}, introduced late, a high weight hurts: {ph} "
                                f"above {pl} on {what}", iv, False, f"Δ {ph} - {pl}", xs, late_p))
    # finding 4 over the cells in a valid regime only (an invalid cell's improvement means nothing)
    # x: the proximity advantage of the arm's mixture (its weight is in the mixture) times the LR-weighted
    # number of steps it trains (sum over its steps of LR / peak: start and duration), i.e. how much the arm
    # moves the model toward the task; y: the relative improvement over pretrain-only, per seed; r within each
    # seed, its interval over the seeds (every cell shares the control's runs: the seeds are the units)
    valid = [p for p in proximity if not _problems(values, keys([p["arm"], "pretrain-only"], p["task"]), ln_vocab)]
    dropped = len(proximity) - len(valid)
    test = {k: v for k, v in ((k, _finite(values, k, "sft_test")) for k in values) if v is not None}
    r, n_cells = stats.proximity_r(valid, test, "pretrain-only", seeds)
    if r is not None:
        iv = stats.Interval(r.r, math.nan, r.n, r.lo, r.hi)
    else:
        iv = None
    detail = ("Pearson r of dose-weighted proximity (advantage x LR-weighted steps) and relative improvement "
              f"within each seed, t-interval over the {len(seeds)} seeds of its Fisher z" +
              (f", over the {n_cells} cells in a valid regime ({dropped} not judged)" if dropped else ""))
    out.append(_finding("4-proximity", "the benefit (relative improvement in SFT test loss) rises with the "
                        "dose-weighted proximity advantage", iv, False, detail, p=r.p if r is not None else None))
    if near:
        iv, xs = _paired(values, near["mid"], "pretrain-only", near["task"], "sft_test", seeds)
        out.append(_finding("5-near", f"the near domain: midtraining ({near['mid']}) vs pretrain-only on "
                            f"{near['task']} SFT test loss", iv, None, f"Δ {near['mid']} - pretrain-only", xs,
                            _problems(values, keys([near["mid"], "pretrain-only"], near["task"]), ln_vocab)))
        for d, a in domains.items():
            iv, xs = _benefit_gap(values, a, near, seeds)
            problems = _problems(values, keys([a["mid"], "pretrain-only"], a["task"]) +
                                 keys([near["mid"], "pretrain-only"], near["task"]), ln_vocab)
            out.append(_finding(f"5-distance-{d}", f"the benefit is larger on the distant domain {d} than on the near "
                                f"one: relative improvement of {a['mid']} on {a['task']} above that of {near['mid']} "
                                f"on {near['task']}", iv, False, "Δ relative improvement (distant - near)", xs,
                                problems))
    # the headline family: every tested claim, declared by the protocol before any run (``declared_family``), so its
    # size never depends on an outcome; a claim that is not judged (regime, missing, no variance sampled) stays in it
    # with p = 1 (never rejected, and it still counts in every other claim's adjustment)
    family = [f for f in out if f["lower_is_better"] is not None]
    declared = declared_family(domains, grid, precision, near)
    if [f["finding"] for f in family] != declared:
        raise AssertionError(f"tested claims {[f['finding'] for f in family]} are not the declared family {declared}")
    judged = [f["mean"] is not None and not f["regime"] and f["p"] is not None and not math.isnan(f["p"])
              for f in family]
    words = stats.holm_verdicts([((f["mean"] if f["lower_is_better"] else -f["mean"]) if ok else 0.0,
                                  f["p"] if ok else 1.0) for f, ok in zip(family, judged)], alpha)
    for f, ok, w in zip(family, judged, words):
        f["holm"], f["judged"] = (WORDS[w] if ok else f["verdict"]), ok
    for f in out:
        f.setdefault("holm", f["verdict"])  # described effects: not tested, no adjustment
        f["family"] = len(family)
    return out


def declared_family(domains: Mapping, grid: Mapping, precision: Mapping | None = None,
                    near: Mapping | None = None) -> list[str]:
    """The tested claims, in order: the headline family, fixed by the protocol's design (``report.demo``) before
    any run and printed with it; Holm's adjustment runs over all of them whatever their outcome."""
    keys = [f"1-{d}" for d in domains] + [f"2-{d}-{w}" for d in domains for w in ("in-domain", "forgetting")]
    keys += [f"3-{k}-{w}" for w in ("in-domain", "forgetting") for k in ("late", "interaction")]
    if precision:
        keys += [f"3-late-{precision['precision']}-{w}" for w in ("in-domain", "forgetting")]
    keys.append("4-proximity")
    if near:
        keys += [f"5-distance-{d}" for d in domains]
    return keys


def format_findings(findings: list[dict]) -> str:
    k = findings[0]["family"] if findings else 0
    nj = sum(1 for f in findings if f["lower_is_better"] is not None and not f.get("judged"))  # in the family
    nd = sum(1 for f in findings if f["lower_is_better"] is None)  # described, not tested (whatever their regime)
    lines = [f"The headline: the {k} claims of the family the protocol declared before any run, each verdict "
             f"Holm-adjusted over all {k} (family-wise error 5%; a claim not judged stays in the family with p = 1), "
             f"the unadjusted verdict beside it; {nj} of them not judged (a cell outside a valid regime or missing, no "
             f"variance sampled, or no data: p = 1 in the adjustment); {nd} effects described, not tested. " + stats.a_priori_power_text(
                 [f["n"] for f in findings if f["n"] and not f["finding"].startswith("4-")]), ""]
    for f in findings:
        if f["mean"] is None:
            num = "no data"
        elif f["lo"] is None or math.isnan(f["lo"]):
            num = f"{f['detail']} = {f['mean']:+.4f} (n={f['n']}, no interval)"
        else:
            num = f"{f['detail']} = {f['mean']:+.4f}, 95% CI [{f['lo']:+.4f}, {f['hi']:+.4f}], n={f['n']}"
        if f["regime"]:
            shown = "; ".join(f["regime"][:2]) + (f"; +{len(f['regime']) - 2} more" if len(f["regime"]) > 2 else "")
            lines.append(f"- finding {f['finding']}: {f['claim']}: **{f['verdict']}**: {shown} ({num})")
        elif f["verdict"] == DESCRIPTIVE or f["verdict"] == WORDS[stats.NO_VARIANCE]:
            lines.append(f"- finding {f['finding']}: {f['claim']}: **{f['verdict']}** ({num})")
        else:
            lines.append(f"- finding {f['finding']}: {f['claim']}: **{f['holm']}** (unadjusted: {f['verdict']}) ({num})")
    return "\n".join(lines)
