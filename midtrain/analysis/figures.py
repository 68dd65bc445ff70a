"""The paper's figures as PNGs (matplotlib, Agg), each readable without the paper: titles say what is
plotted, axes carry units, intervals are the ``stats`` module's t-intervals.

- ``timing_weight_heatmap``: start step × mixture weight, colour = paired Δ versus pretrain-only
  (one panel per metric), each cell annotated "mean ± half-width" and n.
- ``proximity_scatter``: proximity advantage vs relative improvement after SFT, one panel per model
  size, least-squares line and Pearson r (scipy) in the title.
- ``arm_bars``: arms per SFT task, mean with the t-interval as error bars.
- ``delta_lines``: paired Δ versus pretrain-only over start step (one line per weight) or over weight
  (one line per start), one panel per metric, t-interval error bars.
- ``gain_vs_forgetting``: per (arm, task), Δ SFT test loss (in-domain) against Δ main-corpus loss after
  SFT (forgetting), both with t-interval error bars: the paper's trade-off scatter.
- ``curves``: one panel per validation set, one line per run: loss over optimizer steps (the study's
  eval of every saved checkpoint).
- Per-source validation curves: ``midtrain.report.plot_runs``.

Every function takes plain data, writes ``out`` (parent folders created) and returns its path. The
image is exactly ``size`` pixels (width, height).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

from midtrain.analysis import stats

DPI = 100


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: str | Path) -> str:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)  # no bbox_inches="tight": the PNG keeps the size asked for
    _plt().close(fig)
    return str(out)


def timing_weight_heatmap(panels: Mapping[str, Mapping[tuple[int, float], stats.Interval]], out: str | Path,
                          title: str = "", size: tuple[int, int] = (1100, 450)) -> str:
    """``panels``: metric label -> {(start step, weight): Δ interval}. Blue = lower loss than the baseline."""
    import numpy as np

    plt = _plt()
    if not panels:
        raise ValueError("no panels to draw")
    fig, axes = plt.subplots(1, len(panels), figsize=(size[0] / DPI, size[1] / DPI), squeeze=False)
    for ax, (label, cells) in zip(axes[0], panels.items()):
        starts = sorted({s for s, _ in cells})
        weights = sorted({w for _, w in cells})
        grid = np.full((len(starts), len(weights)), np.nan)
        for (s, w), iv in cells.items():
            grid[starts.index(s), weights.index(w)] = iv.mean
        lim = np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1.0
        im = ax.imshow(grid, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
        for (s, w), iv in cells.items():
            text = iv.format(3).replace(" ± ", "\n± ") + f"\nn={iv.n}"
            dark = np.isfinite(iv.mean) and abs(iv.mean) > 0.6 * lim  # readable on the saturated colours
            ax.text(weights.index(w), starts.index(s), text, ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")
        ax.set_xticks(range(len(weights)), [f"{w:g}" for w in weights])
        ax.set_yticks(range(len(starts)), [str(s) for s in starts])
        ax.set_xlabel("midtraining weight (share of the mix)")
        ax.set_ylabel("start step")
        ax.set_title(f"Δ {label}\nvs pretrain-only (blue = lower)", fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out)


def proximity_scatter(points: Mapping[str, Sequence[tuple[float, float, str]]], out: str | Path,
                      measure: str = "cosine", size: tuple[int, int] = (1000, 400),
                      notes: Mapping[str, str] | None = None,
                      xlabel: str | None = None) -> str:
    """``points``: model size -> [(x, relative improvement, label)], x the proximity advantage (or, with
    ``xlabel``, what it says); ``notes``: model size -> the correlation to print in its title (computed by the
    caller, ``stats.proximity_r``: the figure states no statistic of its own)."""
    import numpy as np

    plt = _plt()
    if not points:
        raise ValueError("no points to draw")
    fig, axes = plt.subplots(1, len(points), figsize=(size[0] / DPI, size[1] / DPI), squeeze=False)
    for ax, (group, pts) in zip(axes[0], points.items()):
        x = np.array([p[0] for p in pts], dtype=float)
        y = np.array([p[1] for p in pts], dtype=float)
        ax.scatter(x, y, s=18)
        for xi, yi, lab in pts:
            ax.annotate(lab, (xi, yi), fontsize=6, xytext=(2, 2), textcoords="offset points")
        title = f"{group}" + (f": {notes[group]}" if notes and notes.get(group) else "")
        if len(pts) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
            slope, icpt = np.polyfit(x, y, 1)
            xs = np.linspace(x.min(), x.max(), 20)
            ax.plot(xs, slope * xs + icpt, color="C1", lw=1)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel or f"proximity advantage ({measure}, vs main corpus)")
        ax.set_ylabel("relative improvement after SFT\n(L_base - L_mid) / L_base")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, out)


def arm_bars(values: Mapping[str, Mapping[str, stats.Interval]], out: str | Path, metric: str = "SFT test loss",
             size: tuple[int, int] = (1000, 400)) -> str:
    """``values``: task -> {arm: interval}; one panel per task, bars with t-interval error bars."""
    plt = _plt()
    if not values:
        raise ValueError("no tasks to draw")
    fig, axes = plt.subplots(1, len(values), figsize=(size[0] / DPI, size[1] / DPI), squeeze=False)
    for ax, (task, arms) in zip(axes[0], values.items()):
        names = list(arms)
        means = [arms[a].mean for a in names]
        errs = [0.0 if math.isnan(arms[a].lo) else arms[a].half_width for a in names]
        ax.bar(range(len(names)), means, yerr=errs, capsize=3, color=[f"C{i % 10}" for i in range(len(names))])
        lo = min(m - e for m, e in zip(means, errs))
        hi = max(m + e for m, e in zip(means, errs))
        pad = (hi - lo) * 0.3 or abs(hi) * 0.05 or 1.0
        ax.set_ylim(lo - pad, hi + pad)  # losses differ by 0.01-0.1: a zero-based axis would hide them
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
        ax.set_title(f"{task}: {metric}\n(mean ± 95% CI, n={min(arms[a].n for a in names)}+ seeds)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, out)


def delta_lines(panels: Mapping[str, Mapping[str, Sequence[tuple[float, stats.Interval]]]], out: str | Path,
                xlabel: str, title: str = "", size: tuple[int, int] = (1100, 420)) -> str:
    """``panels``: metric label -> {line label -> [(x, Δ interval)]}; Δ < 0 = lower loss than the baseline."""
    plt = _plt()
    if not panels:
        raise ValueError("no panels to draw")
    fig, axes = plt.subplots(1, len(panels), figsize=(size[0] / DPI, size[1] / DPI), squeeze=False)
    for ax, (label, lines) in zip(axes[0], panels.items()):
        for i, (name, pts) in enumerate(lines.items()):
            pts = sorted(pts, key=lambda p: p[0])
            xs = [p[0] for p in pts]
            ys = [p[1].mean for p in pts]
            errs = [0.0 if math.isnan(p[1].lo) else p[1].half_width for p in pts]
            ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=name, color=f"C{i % 10}")
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"Δ {label} vs pretrain-only")
        ax.set_title(f"Δ {label} (mean ± 95% CI; < 0 = lower loss)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out)


def gain_vs_forgetting(points: Sequence[tuple[stats.Interval, stats.Interval, str]], out: str | Path,
                       title: str = "", size: tuple[int, int] = (700, 560)) -> str:
    """``points``: (Δ main-corpus loss after SFT, Δ SFT test loss, label) per (arm, task), both vs pretrain-only."""
    plt = _plt()
    if not points:
        raise ValueError("no points to draw")
    fig, ax = plt.subplots(figsize=(size[0] / DPI, size[1] / DPI))
    for i, (fx, gy, lab) in enumerate(points):
        ax.errorbar([fx.mean], [gy.mean], xerr=[0.0 if math.isnan(fx.lo) else fx.half_width],
                    yerr=[0.0 if math.isnan(gy.lo) else gy.half_width], marker="o", capsize=3, color=f"C{i % 10}")
        ax.annotate(lab, (fx.mean, gy.mean), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.axhline(0, color="grey", lw=0.6)
    ax.axvline(0, color="grey", lw=0.6)
    ax.set_xlabel("Δ main-corpus loss after SFT (forgetting) vs pretrain-only\n< 0: forgets less")
    ax.set_ylabel("Δ SFT test loss (in-domain) vs pretrain-only\n< 0: gains in-domain")
    ax.set_title(title or "In-domain gain against forgetting (mean ± 95% CI over seeds)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, out)


def curves(panels: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]], out: str | Path, ylabel: str = "loss",
           title: str = "", size: tuple[int, int] = (1100, 420)) -> str:
    """``panels``: panel (a validation set) -> {line (a run) -> [(optimizer step, value)]}."""
    plt = _plt()
    if not panels:
        raise ValueError("no panels to draw")
    fig, axes = plt.subplots(1, len(panels), figsize=(size[0] / DPI, size[1] / DPI), squeeze=False)
    for ax, (label, lines) in zip(axes[0], panels.items()):
        for i, (name, pts) in enumerate(lines.items()):
            pts = sorted(pts)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=name,
                    color=f"C{i % 10}")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out)
