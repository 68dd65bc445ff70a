"""The mixture plan: what a run will read from each shard, computed before training. Pure."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from midtrain.data.mixture import Mixture
from midtrain.data.shards import Discovery


@dataclass(frozen=True)
class PlanRow:
    id: str
    type: str
    tokens: int
    samples: int  # blocks of max_seq_length + 1 tokens
    weight: float
    draw_samples: float | None  # expected samples this run draws (None when the run length is unknown)
    draw_tokens: float | None
    epochs: float | None  # draw_samples / samples

    @property
    def repeats(self) -> bool:
        return self.epochs is not None and self.epochs > 1.0


@dataclass
class MixPlan:
    mode: str
    weights_from: str
    block_size: int
    total_samples: int | None
    rows: list[PlanRow]
    excluded: list[str]
    unused_types: list[str]
    ignored: list[tuple[str, str]]
    mixer: str = "litdata"
    # positive weights the exact mixer rounds to no draw at all: (shard id, weight, draw units per block·period)
    too_small: list[tuple[str, float]] = field(default_factory=list)
    units: int | None = None  # the exact mixer's draws per schedule period (block x 2^16)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rows"] = [asdict(r) for r in self.rows]
        return d


def mixture_plan(mixture: Mixture, discovery: Discovery, block_size: int, total_samples: int | None,
                 mixer: str = "litdata", draws: dict[str, int] | None = None,
                 quantized: list[int] | None = None) -> MixPlan:
    """``total_samples`` = optimizer steps x global batch (None if unknown). ``draws``: exact samples
    per shard (the exact mixer's schedule); otherwise the expectation weight x total_samples.
    ``quantized``: the exact mixer's integer draws per period for each source (in ``mixture.sources``
    order); a positive weight quantised to 0 is listed as excluded, with the reason, not as a row."""
    rows, too_small = [], []
    for k, src in enumerate(mixture.sources):
        if quantized is not None and quantized[k] == 0:
            too_small.append((src.shard.id, src.weight))
            continue
        samples = src.shard.samples(block_size)
        draw = None if total_samples is None else src.weight * total_samples
        if draws is not None:
            draw = draws.get(src.shard.id, 0)
        rows.append(PlanRow(
            id=src.shard.id, type=src.shard.type, tokens=src.shard.tokens, samples=samples, weight=src.weight,
            draw_samples=draw,
            draw_tokens=None if draw is None else draw * (block_size - 1),
            epochs=None if draw is None else (draw / samples if samples else float("inf")),
        ))
    return MixPlan(
        mode=mixture.spec.mode + (" (proportional)" if mixture.spec.proportional else ""),
        weights_from=mixture.spec.field if mixture.spec.mode != "default" else "default (main only)",
        block_size=block_size, total_samples=total_samples, rows=rows,
        excluded=[s.id for s in mixture.excluded], unused_types=list(mixture.unused_types),
        ignored=[(i.name, i.reason) for i in discovery.ignored], mixer=mixer, too_small=too_small,
        units=sum(quantized) if quantized is not None else None,
    )


def _human(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def _weight(w: float) -> str:
    """0.2000; a small positive weight in scientific notation (never a misleading 0.0000)."""
    return f"{w:.4f}" if w >= 1e-4 or w == 0 else f"{w:.1e}"


def format_plan(plan: MixPlan) -> str:
    lines = [f"mixture: {plan.mode}, weights from {plan.weights_from}; mixer {plan.mixer}; "
             f"sample = {plan.block_size} tokens ({plan.block_size - 1} trained)"]
    if plan.total_samples is not None:
        lines.append(f"run length: {plan.total_samples:,} samples = {_human(plan.total_samples * (plan.block_size - 1))} tokens")
    else:
        lines.append("run length: unknown (set train.max_steps or train.max_tokens, or pass --tokens)")
    header = f"{'shard':<12} {'type':<9} {'tokens':>9} {'samples':>9} {'weight':>8} {'draw tokens':>12} {'epochs':>7}"
    lines += [header, "-" * len(header)]
    for r in plan.rows:
        epochs = "-" if r.epochs is None else f"{r.epochs:.3f}"
        warn = "  <- repeats data" if r.repeats else ""
        lines.append(f"{r.id:<12} {r.type:<9} {_human(r.tokens):>9} {r.samples:>9,} {_weight(r.weight):>8} "
                     f"{_human(r.draw_tokens):>12} {epochs:>7}{warn}")
    by_type: dict[str, float] = {}
    for r in plan.rows:
        by_type[r.type] = by_type.get(r.type, 0.0) + r.weight
    lines.append("type totals: " + ", ".join(f"{t} {_weight(w)}" for t, w in by_type.items()))
    repeating = [r.id for r in plan.rows if r.repeats]
    if repeating:
        lines.append(f"WARNING: {len(repeating)} shard(s) will be read more than once: {', '.join(repeating[:10])}"
                     + (" ..." if len(repeating) > 10 else ""))
    if plan.excluded:
        lines.append(f"excluded (weight 0): {', '.join(plan.excluded)}")
    if plan.too_small:
        lines.append(f"excluded (weight too small for the exact mixer: it rounds to 0 of the {plan.units:,} draws per "
                     f"schedule period, so no sample is ever drawn): "
                     + ", ".join(f"{i} ({w:.2e})" for i, w in plan.too_small))
    if plan.unused_types:
        lines.append(f"unused types (discovered, no weight): {', '.join(plan.unused_types)}")
    for name, reason in plan.ignored:
        lines.append(f"ignored: {name} ({reason})")
    return "\n".join(lines)
