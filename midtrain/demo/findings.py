"""The demo's four findings (the paper's v2 abstract), each judged from an interval by
``midtrain.analysis.stats.verdict`` (pure: no I/O, no torch).

Protocol, fixed before any run (lower loss = better; per seed, the SFT LR is chosen on validation):
1. Midtraining beats pretrain-only after SFT on a domain distant from the main corpus: for each
   domain d (math, code), the paired difference of SFT test loss on task d between ``d20`` at the
   early start and pretrain-only.
2. Midtraining beats 100%-domain CPT, in-domain and on forgetting: paired differences ``d20`` - CPT
   of SFT test loss on task d, and of main-corpus loss after SFT (the paper's forgetting).
3. Start time and weight interact (early introduction tolerates high weights, late needs low ones):
   on the code grid, per seed, I = (L[late, high] - L[late, low]) - (L[early, high] - L[early, low])
   of SFT test loss on the code task; reproduced when I > 0 (a high weight costs more when late).
4. The benefit tracks the proximity advantage: Pearson r between each (arm, task) cell's
   proximity advantage and its relative improvement over pretrain-only; reproduced when the r
   interval lies above 0.
Words: "reproduced" / "not reproduced" / "inconclusive (interval includes 0)", only from intervals; "not
judged (regime)" when a cell a finding rests on is outside a valid regime (``stats.regime_problems``:
main-corpus loss after SFT >= ln V, the chosen LR at a grid edge, a non-finite loss). Every judged
finding also gets a Holm-adjusted verdict over the judged findings, and the smallest effect detectable
at 80% power with its observed spread and n.
"""

from __future__ import annotations

import math
from typing import Mapping

from midtrain.analysis import stats

WORDS = {"better": "reproduced", "worse": "not reproduced", "inconclusive": "inconclusive (interval includes 0)"}


def _finding(key: str, claim: str, iv: stats.Interval | None, lower_is_better: bool, detail: str,
             samples: list[float] | None = None, problems: list[str] | None = None, p: float | None = None) -> dict:
    """One finding: its raw verdict from the interval, or "not judged" when a cell it rests on is outside a
    valid regime; ``samples`` (per-seed values) give the t-test p and the effect detectable at 80% power."""
    out = {"finding": key, "claim": claim, "detail": detail, "regime": list(problems or [])}
    if iv is None:
        return {**out, "verdict": WORDS["inconclusive"], "detail": detail + " (no data)", "mean": None, "lo": None,
                "hi": None, "n": 0, "p": None, "mde80": None}
    mde = stats.detectable_effect(iv.sd, iv.n) if samples is not None else None
    if p is None and samples is not None:
        p = stats.t_test_p(samples)
    word = f"{stats.NOT_JUDGED} (regime)" if problems else WORDS[stats.verdict(iv, lower_is_better)]
    return {**out, "verdict": word, "mean": iv.mean, "lo": iv.lo, "hi": iv.hi, "n": iv.n, "p": p, "mde80": mde,
            "lower_is_better": lower_is_better}


def _problems(values: Mapping, keys, ln_vocab: float | None) -> list[str]:
    """Regime problems of the (arm, task, seed) cells a finding rests on (stats.regime_problems)."""
    out = []
    for k in keys:
        if k not in values:
            continue
        v = values[k]
        choice = stats.LRChoice(v["lr"], v.get("sft_val", math.nan), (), v.get("lr_edge")) if "lr" in v else None
        out += [f"{k[0]}/{k[1]}/s{k[2]}: {p}" for p in
                stats.regime_problems({m: v[m] for m in ("sft_test", "main_after") if m in v}, choice, ln_vocab)]
    return out


def _paired(values: Mapping, a: str, b: str, task: str, metric: str, seeds):
    x = {s: values[(a, task, s)][metric] for s in seeds if (a, task, s) in values}
    y = {s: values[(b, task, s)][metric] for s in seeds if (b, task, s) in values}
    if not set(x) & set(y):
        return None, None
    common = sorted(set(x) & set(y))
    return stats.paired(x, y).diff, [x[s] - y[s] for s in common]


def evaluate(values: Mapping[tuple, dict], seeds, domains: Mapping[str, dict], grid: dict,
             proximity: list[dict], ln_vocab: float | None = None, alpha: float = 0.05) -> list[dict]:
    """``values``: (arm, task, seed) -> {"sft_test", "main_after", "lr", "lr_edge"} at the LR chosen on val.
    ``domains``: d -> {"mid": arm, "cpt": arm, "task": task}; ``grid``: {"task", "early_low", "early_high",
    "late_low", "late_high"} (arm names); ``proximity``: [{"arm", "task", "advantage", "relative_improvement"}];
    ``ln_vocab``: ln V for the regime check. Each finding also gets its Holm-adjusted verdict over the judged
    findings (``holm``) and the smallest effect detectable at 80% power (``mde80``)."""
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
    inter = []
    corners = [grid[k] for k in ("late_high", "late_low", "early_high", "early_low")]
    for s in seeds:
        ks = [(arm, t, s) for arm in corners]
        if all(k in values for k in ks):
            lh, ll, eh, el = (values[k]["sft_test"] for k in ks)
            inter.append((lh - ll) - (eh - el))
    iv = stats.summarize(inter) if inter else None
    out.append(_finding("3-timing-x-weight", "a high weight costs more when introduced late than early "
                        f"({grid['late_high']} - {grid['late_low']} vs {grid['early_high']} - {grid['early_low']}, "
                        f"{t} SFT test loss)", iv, False, "interaction I", inter if inter else None,
                        _problems(values, keys(corners, t), ln_vocab)))
    # finding 4 over the cells in a valid regime only (an invalid cell's improvement means nothing)
    valid = [p for p in proximity if not _problems(values, keys([p["arm"], "pretrain-only"], p["task"]), ln_vocab)]
    dropped = len(proximity) - len(valid)
    pts = [(p["advantage"], p["relative_improvement"]) for p in valid]
    r = None
    if len(pts) > 3:
        r = stats.pearson([p[0] for p in pts], [p[1] for p in pts])
        iv = stats.Interval(r.r, math.nan, r.n, r.lo, r.hi)
    else:
        iv = None
    detail = "Pearson r" + (f" over the {len(valid)} cells in a valid regime ({dropped} not judged)" if dropped else "")
    out.append(_finding("4-proximity", "the benefit (relative improvement in SFT test loss) rises with the "
                        "proximity advantage", iv, False, detail, p=r.p if r is not None else None))
    family = [f for f in out if f["mean"] is not None and not f["regime"] and f["p"] is not None
              and not math.isnan(f["p"])]
    words = stats.holm_verdicts([((f["mean"] if f["lower_is_better"] else -f["mean"]), f["p"]) for f in family], alpha)
    for f, w in zip(family, words):
        f["holm"] = WORDS[w]
    for f in out:
        f.setdefault("holm", f["verdict"] if f["regime"] else WORDS["inconclusive"])
        f["family"] = len(family)
    return out


def format_findings(findings: list[dict]) -> str:
    k = findings[0]["family"] if findings else 0
    nj = sum(1 for f in findings if f["regime"])
    lines = [f"{len(findings)} tests; {k} judged, Holm-adjusted over those {k} (family-wise error 5%) beside each raw "
             f"verdict; {nj} not judged (a cell outside a valid regime). \"detectable\" = the smallest true effect "
             "a test with this spread and n would find at 80% power (statsmodels): an inconclusive verdict cannot "
             "see effects smaller than that.", ""]
    for f in findings:
        if f["mean"] is None:
            num = "no data"
        elif f["lo"] is None or math.isnan(f["lo"]):
            num = f"{f['detail']} = {f['mean']:+.4f} (n={f['n']}, no interval)"
        else:
            num = f"{f['detail']} = {f['mean']:+.4f}, 95% CI [{f['lo']:+.4f}, {f['hi']:+.4f}], n={f['n']}"
        if f.get("mde80") is not None and not math.isnan(f["mde80"]):
            num += f", detectable ±{f['mde80']:.4f}"
        if f["regime"]:
            shown = "; ".join(f["regime"][:2]) + (f"; +{len(f['regime']) - 2} more" if len(f["regime"]) > 2 else "")
            lines.append(f"- finding {f['finding']}: {f['claim']}: **{f['verdict']}**: {shown} ({num})")
        else:
            lines.append(f"- finding {f['finding']}: {f['claim']}: **{f['verdict']}** (Holm: {f['holm']}) ({num})")
    return "\n".join(lines)
