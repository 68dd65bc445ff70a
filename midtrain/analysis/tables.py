"""The paper-style table: arms × SFT tasks, each cell a mean ± CI over seeds with Δ versus a baseline arm.

Pure: records in, cells and text out (no I/O, no torch). The numbers and verdict words come from
``stats`` only.

Protocol:
1. the SFT LR is chosen on *validation* loss (``stats.choose_lr``; an edge winner is flagged), either
   ``per_checkpoint`` (default, the paper's: one LR per fine-tuned checkpoint and task, the one with the
   lowest validation loss averaged over the seeds that fine-tuned it) or ``per_seed`` (one LR per
   (arm, task, seed));
2. the reported numbers are that LR's held-out **test** loss and its **main-corpus loss after SFT**
   (forgetting, the paper's definition; the increase over before-SFT is an extra column,
   ``main_increase``, never called forgetting);
3. per (arm, task): mean ± t-interval over seeds, and the paired difference versus the baseline arm
   on matched seeds with its verdict (lower loss = better for both metrics);
4. **validity gates verdicts**: every (arm, task, seed) carries ``stats.regime_problems`` (a non-finite
   loss, collapse: main-corpus loss after SFT at or above the unigram entropy of the tokens it scored,
   the chosen LR at a grid edge), and a cell whose seeds fall on both sides of collapse says so
   (``stats.regime_disagreement``); a verdict resting on a cell (or its baseline cell) with a problem is
   "not judged", names the problem, and is left out of the Holm family; the others get a raw verdict and
   a Holm-adjusted one over the table.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Iterable

from midtrain.analysis import stats

METRICS = ("sft_test", "main_after")  # the two reported metrics; both are losses (lower is better)
LABELS = {"sft_test": "SFT test loss", "main_after": "main-corpus loss after SFT (forgetting)",
          "sft_val": "SFT val loss (LR chosen on it)", "main_increase": "main-corpus loss increase during SFT"}


@dataclass(frozen=True)
class SFTResult:
    """One fine-tuning run: (arm, task, seed) at one LR."""
    arm: str
    task: str
    seed: int
    lr: float
    val_loss: float
    test_loss: float | None = None      # only the LR a run kept has one
    main_after: float | None = None
    main_before: float | None = None
    checkpoint: str | None = None       # the checkpoint it fine-tuned (LR choice per checkpoint groups by it)
    main_unigram: float | None = None   # unigram entropy of the main-corpus tokens scored (the collapse reference)
    test_items: tuple | None = None     # per test example (loss sum, tokens): the item level of the variance


LR_CHOICES = ("per_checkpoint", "per_seed", "per_arm")


@dataclass(frozen=True)
class Chosen:
    arm: str
    task: str
    seed: int
    choice: stats.LRChoice
    values: dict  # metric -> value at the chosen LR
    items: tuple | None = None  # the chosen LR's per-test-example (loss sum, tokens), when the SFT step recorded them


@dataclass
class Cell:
    arm: str
    task: str
    seeds: tuple
    summary: dict = field(default_factory=dict)   # metric -> stats.Interval
    delta: dict = field(default_factory=dict)     # metric -> stats.Paired (vs the baseline arm)
    verdict: dict = field(default_factory=dict)   # metric -> a word from stats.VERDICTS
    holm: dict = field(default_factory=dict)      # metric -> the verdict after Holm over the table's family
    p_holm: dict = field(default_factory=dict)    # metric -> Holm-adjusted p-value
    edge_seeds: tuple = ()                        # seeds whose chosen LR sits at the grid edge
    ceiling_seeds: tuple = ()                     # seeds whose chosen LR is the protocol's ceiling (sft.lr_ceiling)
    lrs: tuple = ()                               # chosen LR per seed (in seed order)
    regime: tuple = ()                            # "s<seed>: problem" for every seed outside a valid regime
    detect_d: dict = field(default_factory=dict)  # metric -> smallest Δ/sd detectable at 80% power, a priori from n


def _values(r: SFTResult) -> dict:
    values = {"sft_val": r.val_loss, "sft_test": r.test_loss}
    if r.main_after is not None:
        values["main_after"] = r.main_after
        if r.main_before is not None:
            values["main_increase"] = r.main_after - r.main_before
        if r.main_unigram is not None:
            values["main_unigram"] = r.main_unigram
    return values


def _by_lr(rs: list[SFTResult], where: str) -> dict[float, SFTResult]:
    by_lr: dict[float, SFTResult] = {}
    for r in rs:
        if r.lr in by_lr and by_lr[r.lr] != r:
            raise ValueError(f"{where}: two results for lr {r.lr:g}")
        by_lr[r.lr] = r
    return by_lr


def _no_test(where: str, lr: float) -> ValueError:
    return ValueError(f"{where}: lr {lr:g} wins on validation but its run has no test loss (SFT metrics written "
                      "before every LR of a sweep kept one: re-run that SFT step, or choose the LR per seed)")


def choose_per_seed(results: Iterable[SFTResult], ceiling: float | None = None) -> list[Chosen]:
    """Group by (arm, task, seed); choose the LR on validation (``ceiling``: ``stats.choose_lr``'s); keep that LR's
    numbers."""
    groups: dict[tuple, list[SFTResult]] = {}
    for r in results:
        groups.setdefault((r.arm, r.task, r.seed), []).append(r)
    out = []
    for (arm, task, seed), rs in groups.items():  # first-seen order
        by_lr = _by_lr(rs, f"{arm}/{task}/seed {seed}")
        choice = stats.choose_lr({lr: r.val_loss for lr, r in by_lr.items()}, ceiling)
        best = by_lr[choice.lr]
        if best.test_loss is None:
            raise _no_test(f"{arm}/{task}/seed {seed}", choice.lr)
        out.append(Chosen(arm, task, seed, choice, _values(best), best.test_items))
    return out


def choose_per_checkpoint(results: Iterable[SFTResult], per_arm: bool = False, ceiling: float | None = None
                          ) -> list[Chosen]:
    """Group by (arm, task, checkpoint); choose one LR on the validation loss averaged over the seeds that
    fine-tuned that checkpoint (each seed must have run every LR of the grid); keep each seed's numbers
    at that LR. Results without a checkpoint group by (arm, task, seed), i.e. per seed. ``per_arm``: one group
    per (arm, task) over all its seeds, whatever checkpoints they fine-tuned (when each seed of an arm has its
    own checkpoint, so that arms and the control are tuned alike)."""
    groups: dict[tuple, dict[int, list[SFTResult]]] = {}
    for r in results:
        key = (r.arm, r.task, None if per_arm else r.checkpoint if r.checkpoint is not None else ("seed", r.seed))
        groups.setdefault(key, {}).setdefault(r.seed, []).append(r)
    out = []
    for (arm, task, _), by_seed in groups.items():
        grids = {seed: _by_lr(rs, f"{arm}/{task}/seed {seed}") for seed, rs in by_seed.items()}
        lrs = set.union(*(set(g) for g in grids.values()))
        for seed, g in grids.items():
            if set(g) != lrs:
                missing = ", ".join(f"{lr:g}" for lr in sorted(lrs - set(g)))
                raise ValueError(f"{arm}/{task}: seed {seed} has no result for lr {missing}: the LR is chosen on the "
                                 "mean over seeds, so every seed needs the whole grid (or choose it per seed: "
                                 "--lr_choice per_seed / report.lr_choice: per_seed)")
        choice = stats.choose_lr({lr: sum(g[lr].val_loss for g in grids.values()) / len(grids) for lr in lrs}, ceiling)
        for seed, g in grids.items():
            best = g[choice.lr]
            if best.test_loss is None:
                raise _no_test(f"{arm}/{task}/seed {seed}", choice.lr)
            out.append(Chosen(arm, task, seed, choice, _values(best), best.test_items))
    return out


def choose(results: Iterable[SFTResult], lr_choice: str = "per_checkpoint", ceiling: float | None = None
           ) -> list[Chosen]:
    """The chosen LR's numbers per (arm, task, seed) under ``lr_choice`` (``LR_CHOICES``); ``ceiling``: the spec's
    ``sft.lr_ceiling`` (``stats.choose_lr``)."""
    if lr_choice == "per_seed":
        return choose_per_seed(results, ceiling)
    return choose_per_checkpoint(results, per_arm=lr_choice == "per_arm", ceiling=ceiling)


def aggregate(results: Iterable[SFTResult], baseline: str | None, confidence: float = 0.95,
              lr_choice: str = "per_checkpoint", ln_vocab: float | None = None,
              seeds: Iterable | None = None, ceiling: float | None = None) -> list[Cell]:
    """One cell per (arm, task), in first-seen arm and task order; ``lr_choice``: ``LR_CHOICES``; ``ceiling``:
    the spec's ``sft.lr_ceiling`` (``stats.choose_lr``);
    ``ln_vocab``: ln of the model's vocabulary size (None: that regime check is not made); ``seeds``: the seeds
    the study ran (a study's spec.seeds), so that a seed no result holds is missing everywhere (None: the seeds
    the results hold, for files given by hand)."""
    if lr_choice not in LR_CHOICES:
        raise ValueError(f"lr_choice must be one of {LR_CHOICES}, got {lr_choice!r}")
    chosen = choose(results, lr_choice, ceiling)
    arms = list(dict.fromkeys(c.arm for c in chosen))
    tasks = list(dict.fromkeys(c.task for c in chosen))
    if baseline is not None and baseline not in arms:
        raise ValueError(f"baseline arm {baseline!r} has no results (arms: {', '.join(arms)})")
    by = {(c.arm, c.task, c.seed): c for c in chosen}
    all_seeds = sorted(set(seeds) if seeds is not None else {c.seed for c in chosen},
                       key=lambda s: (s is None, s if s is not None else 0))
    cells = []
    for arm in arms:
        for task in tasks:
            mine = {c.seed: c for c in chosen if c.arm == arm and c.task == task}
            if not mine:
                continue
            seeds = tuple(sorted(mine, key=lambda s: (s is None, s if s is not None else 0)))
            problems = {s: stats.regime_problems(mine[s].values, mine[s].choice, ln_vocab) for s in seeds}
            split = stats.regime_disagreement({s: (mine[s].choice.lr, stats.collapsed(mine[s].values, ln_vocab))
                                               for s in seeds if stats.collapse_known(mine[s].values, ln_vocab)})
            # a seed the study has but this cell lacks (its step failed or never ran) is a missing cell: the
            # comparison is not judged, never made silently over the seeds that remain
            missing = tuple(f"s{s}: {stats.MISSING}" for s in all_seeds
                            if s not in mine)
            cell = Cell(arm, task, seeds, edge_seeds=tuple(s for s in seeds if mine[s].choice.at_edge),
                        ceiling_seeds=tuple(s for s in seeds if mine[s].choice.at_ceiling),
                        lrs=tuple(mine[s].choice.lr for s in seeds),
                        regime=tuple(f"s{s}: {p}" for s in seeds for p in problems[s]) + ((split,) if split else ())
                        + missing)
            for metric in ("sft_test", "sft_val", "main_after", "main_increase"):
                vals = {s: mine[s].values[metric] for s in seeds if metric in mine[s].values
                        and mine[s].values[metric] is not None and math.isfinite(mine[s].values[metric])}
                if not vals:  # non-finite values are named in the cell's regime problems, never summarised
                    continue
                cell.summary[metric] = stats.summarize(list(vals.values()), confidence)
                if baseline is not None and arm != baseline and metric in METRICS:
                    base = {s: by[(baseline, task, s)].values[metric] for s in seeds
                            if (baseline, task, s) in by and metric in by[(baseline, task, s)].values
                            and math.isfinite(by[(baseline, task, s)].values[metric] or math.nan)}
                    if base and set(base) & set(vals):
                        cell.delta[metric] = stats.paired(vals, base, confidence)
                        cell.verdict[metric] = stats.verdict(cell.delta[metric].diff)
                        cell.detect_d[metric] = stats.detectable_d(cell.delta[metric].diff.n, 1 - confidence)
            cells.append(cell)
    at = {(c.arm, c.task): c for c in cells}
    for c in cells:  # validity gates verdicts: the cell and its baseline cell must both be in a valid regime
        base_cell = at.get((baseline, c.task))
        if c.delta and (c.regime or (base_cell is not None and base_cell.regime)):
            for m in c.delta:
                c.verdict[m] = c.holm[m] = stats.NOT_JUDGED
    for c in cells:  # equal differences over every seed: nothing varying was sampled, so no test either
        for m in c.delta:
            if c.verdict[m] == stats.NO_VARIANCE:
                c.holm[m] = stats.NO_VARIANCE
    family = [(c, m) for c in cells for m in METRICS if m in c.delta
              and c.verdict[m] not in (stats.NOT_JUDGED, stats.NO_VARIANCE)]
    words = stats.holm_verdicts([(c.delta[m].diff.mean, c.delta[m].p) for c, m in family], 1 - confidence)
    adjusted = stats.holm([c.delta[m].p for c, m in family], 1 - confidence)
    for (c, m), word, p in zip(family, words, adjusted):
        c.holm[m], c.p_holm[m] = word, p
    return cells


def comparisons(cells: list[Cell]) -> int:
    """How many judged paired comparisons (arm × task × metric vs the baseline) the table holds: Holm's family."""
    return sum(1 for c in cells for m in c.delta if c.verdict.get(m) not in (stats.NOT_JUDGED, stats.NO_VARIANCE))


def not_judged(cells: list[Cell]) -> int:
    """How many paired comparisons rest on a cell outside a valid regime (``stats.regime_problems``)."""
    return sum(1 for c in cells for m in c.delta if c.verdict.get(m) == stats.NOT_JUDGED)


def regime_of(cell: Cell, cells: list[Cell], baseline: str | None) -> list[str]:
    """The problems a cell's verdicts rest on: its own and its baseline cell's."""
    base = next((c for c in cells if c.arm == baseline and c.task == cell.task), None)
    return list(cell.regime) + ([f"{baseline} {p}" for p in base.regime] if base is not None and base is not cell else [])


def _signed(iv: stats.Interval, digits: int = 3) -> str:
    if math.isnan(iv.lo):
        return f"{iv.mean:+.{digits}f}"
    return f"{iv.mean:+.{digits}f} ± {iv.half_width:.{digits}f}"


def markdown(cells: list[Cell], baseline: str | None, confidence: float = 0.95, lr_choice: str = "per_checkpoint",
             variance: str | None = None) -> str:
    """Rows arms, columns tasks; a cell: test loss / main-corpus loss after SFT, Δ vs baseline, n.
    ``variance``: what the seeds sample (said in the header: every interval is conditional on the rest)."""
    arms = list(dict.fromkeys(c.arm for c in cells))
    tasks = list(dict.fromkeys(c.task for c in cells))
    at = {(c.arm, c.task): c for c in cells}
    pct = f"{confidence:.0%}"
    how = {"per_checkpoint": "once per fine-tuned checkpoint and task, on the validation loss averaged over its seeds",
           "per_arm": "once per arm and task, on the validation loss averaged over its seeds",
           "per_seed": "per seed on validation loss"}[lr_choice]
    head = f"Each cell: {LABELS['sft_test']} / {LABELS['main_after']}, mean ± {pct} t-interval over seeds; "
    if baseline:
        head += (f"Δ = paired difference vs `{baseline}` on matched seeds (negative = lower loss) with its verdict; "
                 f"n = seeds. The SFT LR is chosen {how}; † = a chosen LR is at the edge of the grid"
                 + ("; ‡ = a chosen LR is the protocol's ceiling (sft.lr_ceiling, the grid's top): the best LR "
                    "the protocol allows, judged; its optimum is not bracketed above, so such a comparison is "
                    "between constrained optima." if any(c.ceiling_seeds for c in cells) else "."))
    else:
        head += f"n = seeds. The SFT LR is chosen {how}."
    if variance:
        head += f" The seeds sample {variance}."
    k, nj = comparisons(cells), not_judged(cells)
    if k or nj:
        head += (f" This table holds {k} judged comparisons: each verdict is given raw (its own {pct} interval) and, "
                 f"after \"Holm:\", adjusted over all {k} (Holm, family-wise error {1 - confidence:.0%}).")
        if nj:
            head += (f" {nj} more are **not judged**: they rest on a cell outside a valid regime (a non-finite loss, "
                     "collapse: main-corpus loss after SFT at or above the unigram entropy of the tokens it scored, "
                     "or the chosen LR at a grid edge), named in the cell.")
    power = stats.a_priori_power_text([c.delta[m].diff.n for c in cells for m in c.delta], confidence)
    if power:
        head += " " + power
    lines = [head, "", "| arm | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for arm in arms:
        row = []
        for task in tasks:
            c = at.get((arm, task))
            if c is None:
                row.append("")
                continue
            parts = [" / ".join(c.summary[m].format() if m in c.summary else "–" for m in METRICS)]
            if c.delta:
                if any(c.verdict.get(m) == stats.NOT_JUDGED for m in c.delta):
                    problems = regime_of(c, cells, baseline)
                    shown = "; ".join(problems[:2]) + (f"; +{len(problems) - 2} more" if len(problems) > 2 else "")
                    parts.append("Δ " + " / ".join(f"{_signed(c.delta[m].diff)}" if m in c.delta else "–"
                                                    for m in METRICS) + f" (not judged: {shown})")
                else:
                    parts.append("Δ " + " / ".join(f"{_signed(c.delta[m].diff)} ({c.verdict[m]}; Holm: {c.holm[m]})"
                                                    if m in c.delta else "–" for m in METRICS))
            parts.append(f"n={len(c.seeds)}" + (" †" if c.edge_seeds else "") + (" ‡" if c.ceiling_seeds else ""))
            row.append("<br>".join(parts))
        lines.append(f"| {arm} | " + " | ".join(row) + " |")
    return "\n".join(lines)


CSV_COLUMNS = ["arm", "task", "n", "seeds", "chosen_lrs", "lr_edge_seeds", "regime"]
for _m in ("sft_test", "sft_val", "main_after", "main_increase"):
    CSV_COLUMNS += [f"{_m}_mean", f"{_m}_sd", f"{_m}_lo", f"{_m}_hi"]
for _m in METRICS:
    CSV_COLUMNS += [f"delta_{_m}_mean", f"delta_{_m}_lo", f"delta_{_m}_hi", f"delta_{_m}_n", f"verdict_{_m}",
                    f"p_{_m}", f"p_holm_{_m}", f"verdict_holm_{_m}", f"detectable_d80_{_m}", "comparisons", "not_judged"]
CSV_COLUMNS = list(dict.fromkeys(CSV_COLUMNS + ["lr_ceiling_seeds"]))  # (appended: columns keep their places)


def csv_text(cells: list[Cell]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS)
    w.writeheader()
    for c in cells:
        row = {"arm": c.arm, "task": c.task, "n": len(c.seeds), "seeds": " ".join(map(str, c.seeds)),
               "chosen_lrs": " ".join(f"{lr:g}" for lr in c.lrs), "lr_edge_seeds": " ".join(map(str, c.edge_seeds)),
               "lr_ceiling_seeds": " ".join(map(str, c.ceiling_seeds)),
               "regime": "; ".join(c.regime)}
        for m, iv in c.summary.items():
            row.update({f"{m}_mean": iv.mean, f"{m}_sd": iv.sd, f"{m}_lo": iv.lo, f"{m}_hi": iv.hi})
        for m, p in c.delta.items():
            row.update({f"delta_{m}_mean": p.diff.mean, f"delta_{m}_lo": p.diff.lo, f"delta_{m}_hi": p.diff.hi,
                        f"delta_{m}_n": p.diff.n, f"verdict_{m}": c.verdict[m], f"p_{m}": p.p,
                        f"p_holm_{m}": c.p_holm.get(m), f"verdict_holm_{m}": c.holm.get(m),
                        f"detectable_d80_{m}": c.detect_d.get(m), "comparisons": comparisons(cells),
                        "not_judged": not_judged(cells)})
        w.writerow(row)
    return buf.getvalue()
