"""The paper-style table: arms × SFT tasks, each cell a mean ± CI over seeds with Δ versus a baseline arm.

Pure: records in, cells and text out (no I/O, no torch). The numbers and verdict words come from
``stats`` only.

Protocol, per (arm, task, seed):
1. the SFT LR is chosen on the *validation* loss over every LR run for that seed
   (``stats.choose_lr``; an edge winner is flagged);
2. the reported numbers are that LR's held-out **test** loss and its **main-corpus loss after SFT**
   (forgetting, the paper's definition; the increase over before-SFT is an extra, labelled column);
3. per (arm, task): mean ± t-interval over seeds, and the paired difference versus the baseline arm
   on matched seeds with its verdict (lower loss = better for both metrics).
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


@dataclass(frozen=True)
class Chosen:
    arm: str
    task: str
    seed: int
    choice: stats.LRChoice
    values: dict  # metric -> value at the chosen LR


@dataclass
class Cell:
    arm: str
    task: str
    seeds: tuple
    summary: dict = field(default_factory=dict)   # metric -> stats.Interval
    delta: dict = field(default_factory=dict)     # metric -> stats.Paired (vs the baseline arm)
    verdict: dict = field(default_factory=dict)   # metric -> a word from stats.VERDICTS
    edge_seeds: tuple = ()                        # seeds whose chosen LR sits at the grid edge
    lrs: tuple = ()                               # chosen LR per seed (in seed order)


def choose_per_seed(results: Iterable[SFTResult]) -> list[Chosen]:
    """Group by (arm, task, seed); choose the LR on validation; keep that LR's numbers."""
    groups: dict[tuple, list[SFTResult]] = {}
    for r in results:
        groups.setdefault((r.arm, r.task, r.seed), []).append(r)
    out = []
    for (arm, task, seed), rs in groups.items():  # first-seen order
        by_lr: dict[float, SFTResult] = {}
        for r in rs:
            if r.lr in by_lr and by_lr[r.lr] != r:
                raise ValueError(f"{arm}/{task}/seed {seed}: two results for lr {r.lr:g}")
            by_lr[r.lr] = r
        choice = stats.choose_lr({lr: r.val_loss for lr, r in by_lr.items()})
        best = by_lr[choice.lr]
        if best.test_loss is None:
            raise ValueError(f"{arm}/{task}/seed {seed}: lr {choice.lr:g} wins on validation but has no test loss")
        values = {"sft_val": best.val_loss, "sft_test": best.test_loss}
        if best.main_after is not None:
            values["main_after"] = best.main_after
            if best.main_before is not None:
                values["main_increase"] = best.main_after - best.main_before
        out.append(Chosen(arm, task, seed, choice, values))
    return out


def aggregate(results: Iterable[SFTResult], baseline: str | None, confidence: float = 0.95) -> list[Cell]:
    """One cell per (arm, task), in first-seen arm and task order."""
    chosen = choose_per_seed(results)
    arms = list(dict.fromkeys(c.arm for c in chosen))
    tasks = list(dict.fromkeys(c.task for c in chosen))
    if baseline is not None and baseline not in arms:
        raise ValueError(f"baseline arm {baseline!r} has no results (arms: {', '.join(arms)})")
    by = {(c.arm, c.task, c.seed): c for c in chosen}
    cells = []
    for arm in arms:
        for task in tasks:
            mine = {c.seed: c for c in chosen if c.arm == arm and c.task == task}
            if not mine:
                continue
            seeds = tuple(sorted(mine))
            cell = Cell(arm, task, seeds, edge_seeds=tuple(s for s in seeds if mine[s].choice.at_edge),
                        lrs=tuple(mine[s].choice.lr for s in seeds))
            for metric in ("sft_test", "sft_val", "main_after", "main_increase"):
                vals = {s: mine[s].values[metric] for s in seeds if metric in mine[s].values}
                if not vals:
                    continue
                cell.summary[metric] = stats.summarize(list(vals.values()), confidence)
                if baseline is not None and arm != baseline and metric in METRICS:
                    base = {s: by[(baseline, task, s)].values[metric] for s in seeds
                            if (baseline, task, s) in by and metric in by[(baseline, task, s)].values}
                    if base and set(base) & set(vals):
                        cell.delta[metric] = stats.paired(vals, base, confidence)
                        cell.verdict[metric] = stats.verdict(cell.delta[metric].diff)
            cells.append(cell)
    return cells


def _signed(iv: stats.Interval, digits: int = 3) -> str:
    if math.isnan(iv.lo):
        return f"{iv.mean:+.{digits}f}"
    return f"{iv.mean:+.{digits}f} ± {iv.half_width:.{digits}f}"


def markdown(cells: list[Cell], baseline: str | None, confidence: float = 0.95) -> str:
    """Rows arms, columns tasks; a cell: test loss / main-corpus loss after SFT, Δ vs baseline, n."""
    arms = list(dict.fromkeys(c.arm for c in cells))
    tasks = list(dict.fromkeys(c.task for c in cells))
    at = {(c.arm, c.task): c for c in cells}
    pct = f"{confidence:.0%}"
    lines = [f"Each cell: {LABELS['sft_test']} / {LABELS['main_after']}, mean ± {pct} t-interval over seeds; "
             f"Δ = paired difference vs `{baseline}` on matched seeds (negative = lower loss) with its verdict; "
             "n = seeds. The SFT LR is chosen per seed on validation loss; † = a seed's chosen LR is at the "
             "edge of the grid." if baseline else
             f"Each cell: {LABELS['sft_test']} / {LABELS['main_after']}, mean ± {pct} t-interval over seeds; n = seeds.",
             "", "| arm | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for arm in arms:
        row = []
        for task in tasks:
            c = at.get((arm, task))
            if c is None:
                row.append("")
                continue
            parts = [" / ".join(c.summary[m].format() if m in c.summary else "–" for m in METRICS)]
            if c.delta:
                parts.append("Δ " + " / ".join(f"{_signed(c.delta[m].diff)} ({c.verdict[m]})" if m in c.delta else "–"
                                                for m in METRICS))
            parts.append(f"n={len(c.seeds)}" + (" †" if c.edge_seeds else ""))
            row.append("<br>".join(parts))
        lines.append(f"| {arm} | " + " | ".join(row) + " |")
    return "\n".join(lines)


CSV_COLUMNS = ["arm", "task", "n", "seeds", "chosen_lrs", "lr_edge_seeds"]
for _m in ("sft_test", "sft_val", "main_after", "main_increase"):
    CSV_COLUMNS += [f"{_m}_mean", f"{_m}_sd", f"{_m}_lo", f"{_m}_hi"]
for _m in METRICS:
    CSV_COLUMNS += [f"delta_{_m}_mean", f"delta_{_m}_lo", f"delta_{_m}_hi", f"delta_{_m}_n", f"verdict_{_m}"]


def csv_text(cells: list[Cell]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS)
    w.writeheader()
    for c in cells:
        row = {"arm": c.arm, "task": c.task, "n": len(c.seeds), "seeds": " ".join(map(str, c.seeds)),
               "chosen_lrs": " ".join(f"{lr:g}" for lr in c.lrs), "lr_edge_seeds": " ".join(map(str, c.edge_seeds))}
        for m, iv in c.summary.items():
            row.update({f"{m}_mean": iv.mean, f"{m}_sd": iv.sd, f"{m}_lo": iv.lo, f"{m}_hi": iv.hi})
        for m, p in c.delta.items():
            row.update({f"delta_{m}_mean": p.diff.mean, f"delta_{m}_lo": p.diff.lo, f"delta_{m}_hi": p.diff.hi,
                        f"delta_{m}_n": p.diff.n, f"verdict_{m}": c.verdict[m]})
        w.writerow(row)
    return buf.getvalue()
