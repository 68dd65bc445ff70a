"""``midtrain proximity``: parse named sets and mixtures, count each set once, tabulate every measure. The command
is ``proximity`` below (its parser built from the signature by ``midtrain.cli``).

Every input is checked before any counting (names, paths, mixtures, measure, output folder).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

from midtrain.analysis import proximity as px
from midtrain.errors import ConfigError


def parse_named(items: list[str], field: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise ConfigError(field, f"{item!r} is not NAME=VALUE")
        if name in out:
            raise ConfigError(field, f"name {name!r} given twice")
        out[name] = value
    return out


def run_proximity(data: list[str], targets: list[str], mixtures: list[str], reference: str = "main",
                  measure: str = "cosine", max_tokens: int | None = 10_000_000, seed: int = 0,
                  tokenizer_dir: str | None = None, field: str = "text", json_out: str | None = None) -> dict:
    from midtrain.analysis.counting import count_dataset, pad_to
    from midtrain.data.mixture import parse_weights

    sources = parse_named(data, "--data")
    goals = parse_named(targets, "--targets")
    if not sources:
        raise ConfigError("--data", "give at least one NAME=PATH")
    if not goals:
        raise ConfigError("--targets", "give at least one NAME=PATH")
    both = set(sources) & set(goals)
    if both:
        raise ConfigError("--targets", f"{sorted(both)[0]!r} is also a --data name (names must differ)")
    mixes: dict[str, dict[str, float]] = {name: {name: 1.0} for name in sources}
    for name, text in parse_named(mixtures, "--mixtures").items():
        if name in mixes:
            raise ConfigError("--mixtures", f"{name!r} is already a --data set's name")
        weights = dict(parse_weights(text, f"--mixtures {name}"))
        for k in weights:
            if k not in sources:
                raise ConfigError(f"--mixtures {name}", f"{k!r} is not a --data name (known: {', '.join(sources)})")
        if not sum(weights.values()) > 0:
            raise ConfigError(f"--mixtures {name}", "weights are all 0")
        mixes[name] = weights
    if reference not in mixes:
        raise ConfigError("--reference", f"{reference!r} is not a --data or --mixtures name (known: {', '.join(mixes)})")
    if measure not in px.MEASURES:
        raise ConfigError("--measure", f"{measure!r} is not one of {', '.join(px.MEASURES)}")
    if max_tokens is not None and max_tokens < 1:
        raise ConfigError("--max_tokens", f"must be >= 1 (or null for all), got {max_tokens}")
    for name, path in {**sources, **goals}.items():
        if not Path(path).exists():
            raise ConfigError(name, f"{path} does not exist")
    if json_out is not None:
        from midtrain.atomic import check_writable_dir

        if Path(json_out).is_dir():
            raise ConfigError("--json", f"{json_out} is a folder; give a file path")
        check_writable_dir(Path(json_out).parent, "--json")
    vocab = None
    if tokenizer_dir is not None:
        from midtrain.tokenizer import load_tokenizer, tokenizer_vocab_size

        vocab = tokenizer_vocab_size(load_tokenizer(tokenizer_dir, "--tokenizer_dir"))

    t0 = time.perf_counter()
    counts = {name: count_dataset(name, path, max_tokens, seed, tokenizer_dir, field, vocab)
              for name, path in {**sources, **goals}.items()}
    size = vocab or max(len(c.counts) for c in counts.values())
    dists = {name: px.distribution(pad_to(c.counts, size)) for name, c in counts.items()}
    measures = (measure,) + tuple(m for m in px.MEASURES if m != measure)
    rows = px.proximity_table(dists, mixes, list(goals), reference, measures)
    result = {
        "measure": measure, "reference": reference, "max_tokens": max_tokens, "seed": seed, "vocab": size,
        "sets": {n: {"path": p, "tokens_counted": counts[n].tokens, "tokens_total": counts[n].total,
                     "source": counts[n].source} for n, p in {**sources, **goals}.items()},
        "mixtures": mixes, "rows": rows, "seconds": round(time.perf_counter() - t0, 3),
    }
    if json_out is not None:
        from midtrain.atomic import write_text_atomic

        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(json_out, json.dumps(result, indent=2) + "\n")
    return result


def format_rows(result: dict) -> str:
    ms = [result["measure"]] + [m for m in px.MEASURES if m != result["measure"]]
    lines = [f"proximity under unigram {', '.join(ms)} (primary: {result['measure']}); advantage = closer than "
             f"{result['reference']!r} (positive = closer; for jsd: JSD(ref) - JSD(mix))"]
    for name, s in result["sets"].items():
        lines.append(f"  {name}: {s['tokens_counted']:,} of {s['tokens_total']:,} tokens counted ({s['source']})")
    head = ["mixture", "target"] + [c for m in ms for c in (m, f"adv/{m}")]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        lines.append("| " + " | ".join([r["mixture"], r["target"]] + [f"{r[k]:+.4f}" if k.startswith("advantage") else
                                                                        f"{r[k]:.4f}" for m in ms
                                                                        for k in (m, f"advantage/{m}")]) + " |")
    return "\n".join(lines)


def proximity(data: list[str], targets: list[str], mixtures: list[str] = [], reference: str = "main",
              measure: str = "cosine", max_tokens: Optional[int] = 10_000_000, seed: int = 0,
              tokenizer_dir: Optional[str] = None, field: str = "text", json: Optional[str] = None) -> int:
    """Token-unigram proximity between datasets (token shards read directly, or raw text tokenised with
    --tokenizer_dir) and each mixture's proximity advantage over --reference.

    Args:
        data: named sets NAME=PATH (shard folder(s) or raw text); sources of the mixtures
        targets: named target sets NAME=PATH
        mixtures: NAME=src:w,src:w over --data names (each --data set alone is always a mixture too)
        reference: the mixture the advantage is measured against
        measure: the primary measure, listed first: cosine (default), jsd or combined
        max_tokens: a seeded sample of at most this many tokens per set (null: all)
        seed: the sample's seed
        tokenizer_dir: for raw-text sets; also bounds token ids of shards
        field: JSONL/parquet text field of raw-text sets
        json: also write the table as JSON
    """
    result = run_proximity(data, targets, mixtures, reference, measure, max_tokens, seed, tokenizer_dir, field, json)
    print(format_rows(result))
    if json:
        print(f"wrote {json}")
    return 0
