"""Proximity between datasets from token-unigram counts (the paper's measure), and mixtures of them.

Pure: numpy arrays in, numbers out; no I/O, no torch. Counting lives in ``counting.py``.

Definitions (p, q: unigram distributions over one tokenizer's vocabulary, each summing to 1):
- ``cosine(p, q)``: cosine similarity of the frequency vectors, in [0, 1] (counts are >= 0).
- ``jsd(p, q)``: Jensen-Shannon divergence with base-2 logarithms, in [0, 1]: 0 iff p == q,
  1 iff their supports are disjoint.
- ``jaccard(p, q)``: |support(p) ∩ support(q)| / |support(p) ∪ support(q)|.
- ``combined(p, q)``: the original code's score 0.4·cosine + 0.3·jaccard + 0.3/(1 + JSD), shown
  only to compare with its numbers.
- A mixture's distribution is its sources' distributions weighted by the mixture weights
  (normalised to sum 1): ``mixture({a: pa, b: pb}, {a: 0.8, b: 0.2}) == 0.8·pa + 0.2·pb``.
- ``advantage(measure, M, ref, T)``: how much closer mixture M is to target T than the reference
  ``ref`` (the paper: C4) is, signed so that positive always means *closer*:
  similarity(M, T) - similarity(ref, T) for cosine/combined, JSD(ref, T) - JSD(M, T) for JSD.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

MEASURES = ("cosine", "jsd", "combined")
# For each measure: does a larger value mean closer?
CLOSER_IS_LARGER = {"cosine": True, "jsd": False, "combined": True, "jaccard": True}


def distribution(counts: np.ndarray) -> np.ndarray:
    """Counts (>= 0, not all 0) -> float64 probabilities summing to 1."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1:
        raise ValueError(f"counts must be 1-D, got shape {counts.shape}")
    if (counts < 0).any():
        raise ValueError("counts must be >= 0")
    total = counts.sum()
    if not total > 0:
        raise ValueError("no tokens counted")
    return counts / total


def _same_shape(p: np.ndarray, q: np.ndarray) -> None:
    if p.shape != q.shape:
        raise ValueError(f"distributions over different vocabularies ({p.shape[0]} vs {q.shape[0]} ids)")


def cosine(p: np.ndarray, q: np.ndarray) -> float:
    _same_shape(p, q)
    return float(np.clip(np.dot(p, q) / (np.linalg.norm(p) * np.linalg.norm(q)), 0.0, 1.0))


def jsd(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence, log base 2, in [0, 1]."""
    _same_shape(p, q)
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return float(np.clip(0.5 * kl(p) + 0.5 * kl(q), 0.0, 1.0))


def jaccard(p: np.ndarray, q: np.ndarray) -> float:
    _same_shape(p, q)
    a, b = p > 0, q > 0
    return float(np.logical_and(a, b).sum() / np.logical_or(a, b).sum())


def combined(p: np.ndarray, q: np.ndarray) -> float:
    """The original code's 0.4·cosine + 0.3·jaccard + 0.3/(1 + JSD)."""
    return 0.4 * cosine(p, q) + 0.3 * jaccard(p, q) + 0.3 / (1.0 + jsd(p, q))


FUNCTIONS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "cosine": cosine, "jsd": jsd, "combined": combined, "jaccard": jaccard}


def measure(name: str, p: np.ndarray, q: np.ndarray) -> float:
    if name not in FUNCTIONS:
        raise ValueError(f"unknown measure {name!r} (known: {', '.join(FUNCTIONS)})")
    return FUNCTIONS[name](p, q)


def mixture(dists: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> np.ndarray:
    """Sum of w_i · p_i over the named sources, weights normalised to sum 1 (zero weights allowed)."""
    unknown = [k for k in weights if k not in dists]
    if unknown:
        raise KeyError(f"no dataset named {unknown[0]!r} (known: {', '.join(dists)})")
    total = sum(float(w) for w in weights.values())
    if not total > 0 or any(float(w) < 0 for w in weights.values()):
        raise ValueError(f"weights must be >= 0 and not all 0, got {dict(weights)}")
    out = None
    for name, w in weights.items():
        term = (float(w) / total) * dists[name]
        out = term if out is None else out + term
    return out


def advantage(name: str, mix: np.ndarray, ref: np.ndarray, target: np.ndarray) -> float:
    """Positive when ``mix`` is closer to ``target`` than ``ref`` is, under measure ``name``."""
    a, b = measure(name, mix, target), measure(name, ref, target)
    return a - b if CLOSER_IS_LARGER[name] else b - a


def proximity_table(dists: Mapping[str, np.ndarray], mixtures: Mapping[str, Mapping[str, float]],
                    targets: list[str], reference: str, measures: tuple[str, ...] = MEASURES) -> list[dict]:
    """One row per (mixture, target): each measure's value and advantage over ``reference`` (a mixture name)."""
    if reference not in mixtures:
        raise KeyError(f"reference {reference!r} is not a mixture (known: {', '.join(mixtures)})")
    mixed = {name: mixture(dists, w) for name, w in mixtures.items()}
    rows = []
    for name, mix in mixed.items():
        for target in targets:
            row = {"mixture": name, "target": target}
            for m in measures:
                row[m] = measure(m, mix, dists[target])
                row[f"advantage/{m}"] = advantage(m, mix, mixed[reference], dists[target])
            rows.append(row)
    return rows
