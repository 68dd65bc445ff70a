"""Comparing runs: per-source validation curves (``midtrain plot``) and a final table (``midtrain report``).

Metrics come from a run's logs: ``out_dir/logs/csv/version_*/metrics.csv`` or, for the default
TensorBoard logger, ``out_dir/logs/tensorboard/version_*`` event files. A resumed run writes a new
version; later versions win for the same step.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from pathlib import Path

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
                for name, f in s.get("forgetting", {}).items():
                    row[f"forgetting/{name}"] = f["increase"]
        rows.append(row)
    cols = ["run", "step", "tokens"] + [f"val_loss/{s}" for s in sorted(sets)]
    extra = sorted({k for r in rows for k in r} - set(cols), key=lambda k: (not k.startswith("sft"), k))
    return cols + extra, rows


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
