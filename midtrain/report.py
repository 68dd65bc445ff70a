"""Comparing runs: per-source validation curves (``midtrain plot``) and a final table (``midtrain report``); both
commands are the functions ``plot`` and ``report`` below, their parsers built from the signatures (``midtrain.cli``).

Metrics come from a run's logs: ``out_dir/logs/csv/version_*/metrics.csv`` or, for the default
TensorBoard logger, ``out_dir/logs/tensorboard/version_*`` event files. A resumed run writes a new
version; later versions win for the same step.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
from pathlib import Path
from typing import Optional

from midtrain.errors import ConfigError


def read_metrics(run_dir: str | os.PathLike) -> dict[str, dict[int, float]]:
    """metric name -> {step: value} for one run."""
    run_dir = Path(run_dir)
    out: dict[str, dict[int, float]] = {}
    versions = sorted(glob.glob(str(run_dir / "logs" / "csv" / "version_*" / "metrics.csv")), key=_version)
    for path in versions:
        with open(path) as f:
            for row in csv.DictReader(f):
                step = int(float(row.get("step") or 0))
                for k, v in row.items():
                    if k != "step" and v not in ("", None):
                        out.setdefault(k, {})[step] = float(v)
    tb = sorted(glob.glob(str(run_dir / "logs" / "tensorboard" / "version_*")), key=_version)
    if tb:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        for path in tb:
            acc = EventAccumulator(path, size_guidance={"scalars": 0})
            acc.Reload()
            for tag in acc.Tags().get("scalars", []):
                for ev in acc.Scalars(tag):
                    out.setdefault(tag, {})[int(ev.step)] = float(ev.value)
    if not out:
        raise ConfigError("--runs", f"{run_dir} has no logs (logs/csv or logs/tensorboard)")
    return out


def branch_point(run_dir: str | os.PathLike) -> tuple[Path, int] | None:
    """(base run dir, step) for a midtrain run started with resume_from, from its newest checkpoint's config."""
    import yaml

    from midtrain.train.checkpoint import checkpoint_step, latest_checkpoint

    ckpt = latest_checkpoint(Path(run_dir))
    if ckpt is None or not (ckpt / "hyperparameters.yaml").is_file():
        return None
    resume_from = (yaml.safe_load((ckpt / "hyperparameters.yaml").read_text()) or {}).get("resume_from")
    if not resume_from:
        return None
    step = checkpoint_step(Path(resume_from))
    return (Path(resume_from).parent, step) if step is not None else None


def _version(path: str) -> int:
    part = [p for p in Path(path).parts if p.startswith("version_")][0]
    return int(part.split("_")[1])


def label(run_dir: str) -> str:
    return Path(run_dir).name


def plot_runs(runs: list[str], out: str, prefix: str = "val_loss/") -> str:
    """One panel per validation set, one line per run; writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = {r: read_metrics(r) for r in runs}
    for run, m in metrics.items():  # a midtrain run's curve starts at its base run's branch point
        branch = branch_point(run)
        if branch is not None and (branch[0] / "logs").is_dir():
            base = read_metrics(branch[0])
            for key, series in base.items():
                if key.startswith(prefix):
                    m.setdefault(key, {}).update({s: v for s, v in series.items() if s <= branch[1]} | m.get(key, {}))
    sets = sorted({k[len(prefix):] for m in metrics.values() for k in m if k.startswith(prefix)})
    if not sets:
        raise ConfigError("--metric", f"no {prefix}* metrics in these runs")
    fig, axes = plt.subplots(1, len(sets), figsize=(4.5 * len(sets), 3.6), squeeze=False)
    for ax, name in zip(axes[0], sets):
        for run, m in metrics.items():
            series = m.get(prefix + name)
            if series:
                steps = sorted(series)
                ax.plot(steps, [series[s] for s in steps], marker="o", markersize=3, label=label(run))
        ax.set_title(f"{prefix.rstrip('/')}: {name}")
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def report_rows(runs: list[str], sft_files: list[str] | None = None) -> tuple[list[str], list[dict]]:
    """One row per run: final step, tokens, last val loss per set; SFT results matched by checkpoint path."""
    sft = []
    for f in sft_files or []:
        try:
            sft.append(json.loads(Path(f).read_text()))
        except (OSError, ValueError) as e:
            raise ConfigError("--sft", f"{f} is not an SFT metrics JSON ({e})") from None
    rows, sets = [], set()
    for run in runs:
        m = read_metrics(run)
        row = {"run": label(run)}
        steps = m.get("tokens", {})
        if steps:
            last = max(steps)
            row["step"], row["tokens"] = last, int(steps[last])
        for k, series in m.items():
            if k.startswith("val_loss/"):
                sets.add(k[9:])
                row[k] = series[max(series)]
        for s in sft:
            if Path(s["checkpoint"]).resolve().is_relative_to(Path(run).resolve()):
                row["sft_best_lr"], row["sft_val_loss"], row["sft_test_loss"] = s["best_lr"], s["val_loss"], s["test_loss"]
                for name, f in s.get("forgetting", {}).items():  # forgetting = the loss after SFT (one definition)
                    row[f"forgetting/{name}"] = f["after"]
                    row[f"forgetting_increase/{name}"] = f["increase"]
        rows.append(row)
    cols = ["run", "step", "tokens"] + [f"val_loss/{s}" for s in sorted(sets)]
    extra = sorted({k for r in rows for k in r} - set(cols), key=lambda k: (not k.startswith("sft"), k))
    return cols + extra, rows


def sft_results(sft_files: list[str], runs: list[str] | None = None, main_set: str = "main"):
    """``midtrain sft`` metrics JSONs -> one ``SFTResult`` per (file, LR) for seed aggregation.

    The arm is the file's ``arm`` label (``midtrain sft --arm``), else the name of the run in ``runs``
    whose folder holds the checkpoint, else the checkpoint's run folder name. Every LR of a file's
    sweep contributes its validation loss; the kept LR also its test loss and ``main_set``'s loss
    after SFT (forgetting)."""
    from midtrain.analysis.tables import SFTResult

    out = []
    for f in sft_files:
        try:
            m = json.loads(Path(f).read_text())
            sweep, best = m["lr_sweep"], float(m["best_lr"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError("--sft", f"{f} is not an SFT metrics JSON ({type(e).__name__}: {e})") from None
        arm = m.get("arm")
        if not arm:
            ckpt = Path(m["checkpoint"]).resolve()
            owners = [r for r in runs or [] if ckpt.is_relative_to(Path(r).resolve())]
            arm = label(owners[0]) if owners else (ckpt.parent.name if ckpt.name.startswith(("step-", "final")) else ckpt.name)
        forgetting = (m.get("forgetting") or {}).get(main_set)
        if m.get("forgetting") and forgetting is None:
            raise ConfigError("--main_set", f"{f} has no forgetting on {main_set!r} (it has: "
                              f"{', '.join(m['forgetting'])})")
        task = m.get("task") or Path(m.get("data", f)).stem
        checkpoint = str(Path(m["checkpoint"]).resolve()) if m.get("checkpoint") else None
        for lr_text, row in sweep.items():
            lr = float(lr_text)
            kept = abs(lr - best) <= 1e-12 * max(1.0, abs(best))
            test, forgot = (m.get("test_loss"), forgetting) if kept else (row.get("test_loss"),
                                                                          (row.get("forgetting") or {}).get(main_set))
            items = m.get("test_items") if kept else row.get("test_items")
            out.append(SFTResult(arm, task, m.get("seed"), lr, float(row["val_loss"]),
                                 test_loss=float(test) if test is not None else None,
                                 main_after=forgot["after"] if forgot else None,
                                 main_before=forgot["before"] if forgot else None, checkpoint=checkpoint,
                                 main_unigram=forgot.get("unigram_entropy") if forgot else None,
                                 test_items=tuple((float(x), int(n)) for x, n in items) if items else None))
    return out


def seed_table(sft_files: list[str], runs: list[str] | None, baseline: str | None, fmt: str = "markdown",
               main_set: str = "main", confidence: float = 0.95, lr_choice: str = "per_checkpoint",
               lr_ceiling: float | None = None) -> str:
    """The paper-style table (arms x tasks, mean ± CI over seeds, Δ vs ``baseline``) from SFT JSONs."""
    from midtrain.analysis import tables

    if lr_choice not in tables.LR_CHOICES:
        raise ConfigError("--lr_choice", f"expected one of {', '.join(tables.LR_CHOICES)}, got {lr_choice!r}")
    results = sft_results(sft_files, runs, main_set)
    top = max((r.lr for r in results), default=None)
    if lr_ceiling is not None and (top is None or not math.isclose(top, lr_ceiling, rel_tol=1e-9)):
        raise ConfigError("--lr_ceiling", f"{lr_ceiling:g} is not the top of the --sft files' LR grids "
                          f"({'none' if top is None else f'{top:g}'}): the ceiling is the grid's highest LR")
    try:
        cells = tables.aggregate(results, baseline, confidence, lr_choice, ceiling=lr_ceiling)
    except ValueError as e:
        raise ConfigError("--baseline" if "baseline" in str(e) else "--sft", str(e)) from None
    return tables.csv_text(cells) if fmt == "csv" else tables.markdown(cells, baseline, confidence, lr_choice)


def format_table(cols: list[str], rows: list[dict], fmt: str = "markdown") -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e-2 and v != 0 else f"{v:.4f}"
        return "" if v is None else str(v)

    if fmt == "csv":
        import io

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue()
    if fmt != "markdown":
        raise ConfigError("--format", f"{fmt!r} is not markdown or csv")
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def plot(runs: list[str], out: str, metric: str = "val_loss") -> int:
    """Plot per-source validation loss (or another metric family) against step for runs.

    Args:
        runs: run out_dirs
        out: PNG path
        metric: metric family: val_loss, val_ppl, train_loss
    """
    print(f"wrote {plot_runs(runs, out, metric.rstrip('/') + '/')}")
    return 0


def report(runs: list[str] = [], sft: list[str] = [], format: str = "markdown", out: Optional[str] = None,
           by_seed: bool = False, baseline: Optional[str] = "pretrain-only", main_set: str = "main",
           confidence: float = 0.95, lr_choice: str = "per_checkpoint", lr_ceiling: Optional[float] = None) -> int:
    """A table of final per-source validation losses and SFT results across runs.

    Args:
        runs: run folders
        sft: SFT metrics JSON files (midtrain sft --out)
        format: markdown or csv
        out: also write the table to this file
        by_seed: aggregate the --sft files over seeds: arms x tasks, mean ± CI, Δ vs --baseline
        baseline: the arm every Δ is measured against (null: no Δ)
        main_set: the val set whose loss after SFT is forgetting
        confidence: the intervals' confidence level, in (0, 1)
        lr_choice: --by_seed: per_checkpoint (one LR per fine-tuned checkpoint and task, on the val loss averaged
            over its seeds), per_arm (one per arm and task) or per_seed
        lr_ceiling: --by_seed: the grid's top as the protocol's bound (a study's sft.lr_ceiling): a cell choosing it
            is marked ‡ and judged (its optimum is not bracketed above); null: a top winner is an edge winner
    """
    from midtrain.atomic import check_writable_dir, write_text_atomic

    if format not in ("markdown", "csv"):
        raise ConfigError("--format", f"{format!r} is not markdown or csv")
    if out:
        check_writable_dir(Path(out).parent, "--out")
    if lr_ceiling is not None and not by_seed:
        raise ConfigError("--lr_ceiling", "applies to --by_seed tables only (the LR choice over seeds): add --by_seed "
                          "true, or drop it")
    if by_seed:
        if not sft:
            raise ConfigError("--sft", "--by_seed aggregates SFT metrics files: give them")
        if not 0 < confidence < 1:
            raise ConfigError("--confidence", f"must be in (0, 1), got {confidence}")
        text = seed_table(sft, runs, baseline, format, main_set, confidence, lr_choice, lr_ceiling).rstrip("\n")
    else:
        if not runs:
            raise ConfigError("--runs", "give the run folders to report")
        cols, rows = report_rows(runs, sft)
        text = format_table(cols, rows, format)
    if out:
        write_text_atomic(out, text + "\n")
    print(text)
    return 0
