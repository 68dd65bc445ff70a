"""Statistics over seeds: the only place a report's numbers and verdict words come from.

Pure: no I/O, no torch; scipy supplies the distributions (no hand-written t-tables).

Guarantees:
- ``summarize(values)``: mean, sample standard deviation (ddof=1), n and the two-sided t-interval
  ``mean ± t_{(1+c)/2, n-1} · sd / sqrt(n)``. With n < 2 there is no interval: lo/hi are NaN.
- ``paired(arm, baseline)``: differences ``arm[s] - baseline[s]`` on the seeds both have (matched
  seeds only: an unmatched seed is listed, never silently paired with another), summarised as above.
- ``verdict(interval)``: "better" only when the whole interval lies on the better side of 0,
  "worse" only when it lies on the worse side, else "inconclusive" (an interval that touches or
  includes 0, or no interval at all); "no variance sampled" when n >= 2 differences are all equal
  (a zero-width interval is not evidence: the seeds sampled nothing that varies). Reports use these
  words only from here.
- ``claim_verdict(interval, sign)``: the same reading for a stated claim that a difference is > 0
  (``sign`` +1) or < 0 (-1): "reproduced", "not reproduced" (the interval lies on the other side),
  "inconclusive (interval includes 0)", or "not judged (no variance sampled)". Findings and reports
  word a claim with it, so one result has one label everywhere.
- ``choose_lr(val_by_lr)``: the LR with the lowest *validation* loss (ties: the smaller LR); the
  choice is flagged when it sits at either edge of the grid (or the grid has one LR), because then
  the optimum is not bracketed. Test losses never enter the choice: they are not an argument.
- ``pearson(x, y)``: scipy's Pearson r with its p-value and Fisher-z interval (independent points).
- ``seed_level_r(x, y_by_seed, seeds)``: Pearson r over cells whose y share seeds (a common baseline): r
  within each seed, a t-interval over the seeds of their Fisher z (the seeds are the independent units).
- ``paired(...).p``: the two-sided one-sample t-test p-value of the differences (scipy; NaN for n < 2 or
  n identical differences: no test), the test the t-interval inverts: p < 1 - confidence exactly when the
  interval excludes 0.
- ``proximity_r(rows, test, baseline, seeds)``: the one definition of "the benefit tracks proximity, dose
  included" (the study report's proximity section and the demo's finding 4): x = a cell's proximity advantage
  times its arm's LR-weighted steps (``schedules.lr_steps``: start and duration; the weight is in the mixture),
  y = its relative improvement over ``baseline`` per seed, r by ``seed_level_r``; None with <= 3 cells.
- ``regime_problems(values, choice, ln_vocab)``: why a cell is outside a valid regime, so that no verdict
  rests on it ("not judged"): a non-finite loss; **collapse** (``collapsed``): the main-corpus loss after
  SFT at or above ``values["main_unigram"]``, the unigram entropy of the very tokens it scored
  (``metrics.unigram_entropy``); the chosen SFT LR at an edge of its grid, or a one-LR grid (the optimum is
  not bracketed). Why that reference: it is the loss of the best context-free predictor of those tokens, so
  a model at or above it predicts the main corpus no better than its token frequencies, whatever the model,
  its size or the corpus; it needs no free bound (a relative one, "loss rose by more than x", would). ln V, a
  uniform guess, lies far above it (~1.4 nats on the demo's main val split) and let collapsed cells be
  judged; it remains only for metrics written before the entropy was recorded (``ln_vocab``), and says so.
- ``regime_disagreement({seed: (lr, collapsed)})``: a cell whose seeds' chosen LRs put some in collapse and
  others not is flagged (its seeds do not sample one regime), naming each seed's LR.
- ``detectable_d(n)``: a priori, before any result: the smallest true mean difference, in units of the sd of
  the per-seed differences, that a two-sided one-sample t-test at level ``alpha`` over ``n`` seeds finds with
  probability ``power`` (statsmodels ``TTestPower``); ``detectable_effect(sd, n)`` = that × a *stated* sd
  (a pilot's). Reports give the former from the design's n: a detectable effect computed from the observed
  spread (post hoc) says nothing the interval does not, and was dropped.
- ``variance_levels(arm_items, base_items)``: the variance of a cell's mean (or of its mean paired difference
  from the baseline) by level. The seed level: the sd of the per-seed values over sqrt(n), what the t-interval
  uses (test items held fixed). The item level: the sd of the same mean over ``draws`` bootstrap resamples of
  the test items (numpy, seeded: the same draws every time), each resample applied to every seed and to both
  arms (the items are shared: paired), each seed's loss recomputed token-weighted from its items' (loss sum,
  tokens). None when the seeds or arms did not score the same number of items (nothing to pair).
- ``holm(pvalues, alpha)``: Holm's step-down adjusted p-values (statsmodels ``multipletests``) over a
  family of tests; ``holm_verdicts`` gives the verdict word of each test at family-wise level ``alpha``
  (NaN p-values are left out of the family and read "inconclusive").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Hashable, Mapping, Sequence

NO_VARIANCE = "no variance sampled"  # n >= 2 equal differences: a zero-width interval, no evidence either way
VERDICTS = ("better", "worse", "inconclusive", NO_VARIANCE)
NOT_JUDGED = "not judged"  # a verdict resting on a cell outside a valid regime (``regime_problems``)
MISSING = "missing (no result: its step failed or did not run)"  # a cell a seed ran with no value: not judged
CLAIM_WORDS = {"reproduced": "reproduced", "not reproduced": "not reproduced",
               "inconclusive": "inconclusive (interval includes 0)", NO_VARIANCE: f"{NOT_JUDGED} ({NO_VARIANCE})"}


@dataclass(frozen=True)
class Interval:
    mean: float
    sd: float
    n: int
    lo: float
    hi: float
    confidence: float = 0.95

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2

    def format(self, digits: int = 3) -> str:
        """``1.234 ± 0.056`` (``1.234`` when there is no interval)."""
        if math.isnan(self.lo):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}"


def summarize(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean, sd (ddof=1), n and the two-sided t-interval of the mean."""
    from scipy import stats

    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        raise ValueError("no values to summarize")
    if any(math.isnan(v) or math.isinf(v) for v in xs):
        raise ValueError(f"non-finite value among {xs}")
    mean = math.fsum(xs) / n
    if n < 2:
        return Interval(mean, math.nan, n, math.nan, math.nan, confidence)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in xs) / (n - 1))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, sd, n, mean - half, mean + half, confidence)


@dataclass(frozen=True)
class Paired:
    diff: Interval            # of arm - baseline over matched seeds
    seeds: tuple               # the matched seeds, sorted
    unmatched: tuple           # seeds only one side has, sorted
    p: float = math.nan        # two-sided paired t-test p-value (NaN: n < 2 or no spread)


def paired(arm: Mapping[Hashable, float], baseline: Mapping[Hashable, float], confidence: float = 0.95) -> Paired:
    """Differences arm - baseline on matched seeds."""
    seeds = tuple(sorted(set(arm) & set(baseline), key=repr))
    if not seeds:
        raise ValueError(f"no seed in common (arm: {sorted(arm, key=repr)}, baseline: {sorted(baseline, key=repr)})")
    unmatched = tuple(sorted(set(arm) ^ set(baseline), key=repr))
    diffs = [arm[s] - baseline[s] for s in seeds]
    return Paired(summarize(diffs, confidence), seeds, unmatched, t_test_p(diffs))


def t_test_p(diffs: Sequence[float]) -> float:
    """Two-sided one-sample t-test of mean 0 (scipy); NaN for n < 2 or differences without spread."""
    from scipy import stats

    if len(diffs) < 2 or _no_spread(diffs):
        return math.nan
    return float(stats.ttest_1samp(diffs, 0.0).pvalue)


def no_spread(sd: float, mean: float, n: int) -> bool:
    """n >= 2 values whose sd is zero to rounding: nothing that varies was sampled (the one definition)."""
    return n >= 2 and sd <= 1e-12 * max(1.0, abs(mean))


def _no_spread(xs: Sequence[float]) -> bool:
    if len(xs) < 2:
        return False
    mean = math.fsum(xs) / len(xs)
    return no_spread(math.sqrt(math.fsum((v - mean) ** 2 for v in xs) / (len(xs) - 1)), mean, len(xs))


def holm(pvalues: Sequence[float], alpha: float = 0.05) -> list[float]:
    """Holm-adjusted p-values (statsmodels); NaN entries stay NaN and are not part of the family."""
    idx = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    out = [math.nan] * len(pvalues)
    if idx:
        from statsmodels.stats.multitest import multipletests

        adjusted = multipletests([pvalues[i] for i in idx], alpha=alpha, method="holm")[1]
        for i, p in zip(idx, adjusted):
            out[i] = float(p)
    return out


def holm_verdicts(tests: Sequence[tuple[float, float]], alpha: float = 0.05, lower_is_better: bool = True) -> list[str]:
    """``tests``: (mean difference, raw p) per test of one family -> a verdict word each, Holm at ``alpha``."""
    adjusted = holm([p for _, p in tests], alpha)
    out = []
    for (mean, _), p in zip(tests, adjusted):
        if math.isnan(p) or p >= alpha:
            out.append("inconclusive")
        else:
            out.append("better" if (mean < 0) == lower_is_better else "worse")
    return out


def verdict(diff: Interval, lower_is_better: bool = True) -> str:
    """'better' / 'worse' / 'inconclusive' / 'no variance sampled' for a difference arm - baseline (a loss by
    default)."""
    if not math.isnan(diff.sd) and no_spread(diff.sd, diff.mean, diff.n):
        return NO_VARIANCE
    if math.isnan(diff.lo) or math.isnan(diff.hi):
        return "inconclusive"
    below, above = diff.hi < 0, diff.lo > 0
    if below:
        return "better" if lower_is_better else "worse"
    if above:
        return "worse" if lower_is_better else "better"
    return "inconclusive"


def claim_verdict(diff: Interval, sign: int) -> str:
    """The verdict on the claim "the difference is > 0" (``sign`` +1) or "< 0" (-1), worded (CLAIM_WORDS)."""
    word = verdict(diff, lower_is_better=sign < 0)  # "better" = on the claimed side
    return CLAIM_WORDS[{"better": "reproduced", "worse": "not reproduced"}.get(word, word)]


@dataclass(frozen=True)
class LRChoice:
    lr: float
    val_loss: float
    grid: tuple[float, ...]
    edge: str | None  # None (bracketed), "low", "high", or "single" (a one-LR grid)
    at_ceiling: bool = False  # the grid's top won and it is the protocol's declared ceiling (judged; not bracketed above)

    @property
    def at_edge(self) -> bool:
        return self.edge is not None


def choose_lr(val_by_lr: Mapping[float, float], ceiling: float | None = None) -> LRChoice:
    """The LR with the lowest validation loss; flags an edge winner. ``ceiling``: the highest LR the protocol
    allows (``sft.lr_ceiling``); a winner at the grid's top that equals it is at the protocol's bound
    (``at_ceiling``): the best LR the protocol permits, judged as such; its optimum is still not bracketed above,
    so the comparison is between constrained optima (a one-LR grid stays "single", never at the ceiling)."""
    if not val_by_lr:
        raise ValueError("empty LR grid")
    grid = tuple(sorted(float(lr) for lr in val_by_lr))
    vals = {float(lr): float(v) for lr, v in val_by_lr.items()}
    finite = [lr for lr in grid if math.isfinite(vals[lr])]
    if not finite:  # every LR diverged: nothing to choose; the cell is outside a valid regime (regime_problems)
        return LRChoice(grid[0], vals[grid[0]], grid, "none finite")
    best = min(finite, key=lambda lr: (vals[lr], lr))  # a diverged (NaN/inf) LR never wins
    edge = "single" if len(grid) == 1 else "low" if best == grid[0] else "high" if best == grid[-1] else None
    if edge == "high" and ceiling is not None and math.isclose(best, ceiling, rel_tol=1e-9):
        return LRChoice(best, vals[best], grid, None, at_ceiling=True)
    return LRChoice(best, vals[best], grid, edge)


def relative_improvement(base_loss: float, loss: float) -> float:
    """The paper's (L_base - L) / L_base: positive when ``loss`` is lower than the base's."""
    return (base_loss - loss) / base_loss


@dataclass(frozen=True)
class Correlation:
    r: float
    p: float
    n: int
    lo: float
    hi: float


def pearson(x: Sequence[float], y: Sequence[float], confidence: float = 0.95) -> Correlation:
    """Pearson r (scipy), two-sided p and the Fisher-z interval (NaN interval for n <= 3)."""
    from scipy import stats

    if len(x) != len(y):
        raise ValueError(f"x and y differ in length ({len(x)} vs {len(y)})")
    if len(x) < 3:
        raise ValueError(f"Pearson r needs >= 3 points, got {len(x)}")
    res = stats.pearsonr(x, y)
    if len(x) > 3:
        ci = res.confidence_interval(confidence)
        lo, hi = float(ci.low), float(ci.high)
    else:
        lo = hi = math.nan
    return Correlation(float(res.statistic), float(res.pvalue), len(x), lo, hi)


def collapsed(values: Mapping[str, float], ln_vocab: float | None = None) -> str | None:
    """Why a (run, task, seed)'s main-corpus loss after SFT marks collapse (module docstring), or None."""
    after, ref = values.get("main_after"), values.get("main_unigram")
    if after is None or not math.isfinite(after):
        return None
    if ref is not None and math.isfinite(ref):
        if after >= ref:
            return (f"collapsed: main-corpus loss after SFT {after:.2f} >= {ref:.2f}, the unigram entropy of the "
                    "tokens it scored (no better than their frequencies)")
        return None
    if ln_vocab is not None and after >= ln_vocab:
        return (f"collapsed: main-corpus loss after SFT {after:.2f} >= ln V {ln_vocab:.2f} (its metrics predate the "
                "unigram reference: the lax uniform-guess bound)")
    return None


def collapse_known(values: Mapping[str, float], ln_vocab: float | None = None) -> bool:
    """Whether ``collapsed`` can say anything of these values (a finite main-corpus loss after SFT and a
    reference): a seed it cannot judge is on neither side of ``regime_disagreement``."""
    after, ref = values.get("main_after"), values.get("main_unigram")
    return after is not None and math.isfinite(after) and (
        (ref is not None and math.isfinite(ref)) or ln_vocab is not None)


def regime_disagreement(by_seed: Mapping[Hashable, tuple[float, "str | None"]]) -> str | None:
    """``{seed: (chosen lr, collapsed(...))}`` over the seeds ``collapse_known`` judges -> a flag when some
    seeds collapsed and others did not."""
    bad = [s for s, (_, c) in by_seed.items() if c]
    if not bad or len(bad) == len(by_seed):
        return None
    side = lambda seeds: ", ".join(f"s{s} at lr {by_seed[s][0]:g}" for s in seeds)  # noqa: E731
    good = [s for s in by_seed if s not in bad]
    return f"seeds disagree in regime: collapsed {side(bad)}; not {side(good)}"


def seed_level_r(x: Mapping[Hashable, float], y: Mapping[Hashable, Mapping[Hashable, float]], seeds: Sequence,
                 confidence: float = 0.95) -> Correlation:
    """Pearson r between ``x[cell]`` and ``y[cell][seed]`` over the cells, within each seed, and a t-interval
    over the seeds of their Fisher z, back-transformed. The seeds are the independent units: cells that share a
    baseline's runs (every arm's improvement is over the same control runs) are not independent points, which a
    Fisher-z interval over the cells would assume, and a bootstrap over three seeds (ten distinct resamples)
    would be too narrow. ``r``: tanh of the mean z; ``p``: the t-test of the z's (NaN for < 2 seeds); ``n``:
    the cells. Seeds with < 3 cells or no spread give no r."""
    import numpy as np

    cells = [c for c in x if c in y and y[c]]
    if len(cells) < 3:
        raise ValueError(f"Pearson r needs >= 3 cells, got {len(cells)}")
    zs = []
    for s in seeds:
        pts = [(x[c], y[c][s]) for c in cells if s in y[c]]
        if len(pts) < 3:
            continue
        xs, ys = (np.array(v, dtype=float) for v in zip(*pts))
        if np.std(xs) == 0 or np.std(ys) == 0:
            continue
        zs.append(math.atanh(float(np.clip(np.corrcoef(xs, ys)[0, 1], -1 + 1e-12, 1 - 1e-12))))
    if not zs:
        return Correlation(math.nan, math.nan, len(cells), math.nan, math.nan)
    iv = summarize(zs, confidence)
    lo, hi = (math.tanh(v) if math.isfinite(v) else math.nan for v in (iv.lo, iv.hi))
    return Correlation(math.tanh(iv.mean), t_test_p(zs), len(cells), lo, hi)


def proximity_r(rows: Sequence[Mapping], test: Mapping[tuple, float], baseline: str,
                seeds: Sequence) -> "tuple[Correlation | None, int]":
    """See the module docstring. ``rows``: {"arm", "task", "advantage", "lr_steps"} (lr_steps absent: 1);
    ``test``: (arm, task, seed) -> SFT test loss, finite values of the cells to use only. Returns (r or None, the
    cells with at least one seed paired with the baseline)."""
    x, y = {}, {}
    for p in rows:
        cell = (p["arm"], p["task"])
        per_seed = {s: relative_improvement(test[(baseline, p["task"], s)], test[(p["arm"], p["task"], s)])
                    for s in seeds if (p["arm"], p["task"], s) in test and (baseline, p["task"], s) in test}
        if per_seed:
            x[cell], y[cell] = p["advantage"] * p.get("lr_steps", 1.0), per_seed
    return (seed_level_r(x, y, seeds) if len(x) > 3 else None), len(x)


def regime_problems(values: Mapping[str, float], choice: "LRChoice | None" = None,
                    ln_vocab: float | None = None) -> list[str]:
    """Why a (run, task, seed) value set is outside a valid regime ([] when it is valid)."""
    out = []
    for k, v in values.items():
        if v is None or math.isnan(v) or math.isinf(v):
            out.append(f"{k} is not finite")
    why = collapsed(values, ln_vocab)
    if why:
        out.append(why)
    if choice is not None and choice.edge is not None:
        out.append("one SFT LR (the optimum is not bracketed)" if choice.edge == "single" else
                   "no SFT LR gave a finite validation loss" if choice.edge == "none finite" else
                   f"SFT LR {choice.lr:g} at the {choice.edge} edge of the grid")
    return out


def detectable_d(n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest |mean difference| / sd detectable at ``power`` by a two-sided one-sample t-test over ``n``
    (statsmodels); NaN when n < 2 (no test)."""
    if n < 2:
        return math.nan
    from statsmodels.stats.power import TTestPower

    return float(TTestPower().solve_power(effect_size=None, nobs=n, alpha=alpha, power=power,
                                          alternative="two-sided"))


def detectable_effect(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """``detectable_d(n) × sd`` for a stated (pilot) sd; NaN when n < 2 or sd is not finite."""
    if n < 2 or sd is None or math.isnan(sd) or math.isinf(sd):
        return math.nan
    return detectable_d(n, alpha, power) * sd


def a_priori_power_text(ns, confidence: float = 0.95) -> str:
    """One sentence: the smallest effect the design's seed counts ``ns`` can detect, in sd units, a priori."""
    ns = sorted({n for n in ns if n >= 2})
    if not ns:
        return ""
    each = ", ".join(f"{detectable_d(n, 1 - confidence):.1f} at n = {n}" for n in ns)
    return (f"A priori (from n, before any result), a two-sided paired t-test at {1 - confidence:.0%} detects a true "
            f"difference 80% of the time only when it is at least this many sds of the per-seed differences: "
            f"{each}; an inconclusive verdict says nothing about smaller effects.")


@dataclass(frozen=True)
class Levels:
    """``variance_levels``' answer: the mean over ``n`` seeds, its standard error at the seed level and at the
    test-item level (``items`` items, ``draws`` bootstrap resamples)."""
    mean: float
    n: int
    se_seed: float   # NaN for n < 2
    se_item: float
    items: int
    draws: int

    @property
    def item_share(self) -> float:
        """The item level's share of the two variances (NaN without a seed level)."""
        total = self.se_seed ** 2 + self.se_item ** 2
        return self.se_item ** 2 / total if total > 0 and not math.isnan(total) else math.nan


def variance_levels(arm_items: Mapping[Hashable, Sequence[tuple[float, int]]],
                    base_items: Mapping[Hashable, Sequence[tuple[float, int]]] | None = None,
                    draws: int = 2000, seed: int = 0) -> Levels | None:
    """See the module docstring. ``arm_items``: seed -> per-test-item (loss sum, tokens); ``base_items``: the
    baseline's, paired on the seeds both have (then the value is arm - baseline per seed)."""
    import numpy as np

    seeds = [s for s in arm_items if base_items is None or s in base_items]
    if not seeds:
        return None
    arrays = [np.asarray(arm_items[s], dtype=np.float64) for s in seeds]
    bases = [np.asarray(base_items[s], dtype=np.float64) for s in seeds] if base_items is not None else []
    k = len(arrays[0])
    if k == 0 or any(a.shape != (k, 2) for a in arrays + bases):
        return None

    def per_seed(weights):  # weights: (draws, k) item multiplicities -> (draws, seeds) values
        out = np.stack([(weights @ a[:, 0]) / (weights @ a[:, 1]) for a in arrays], axis=1)
        if bases:
            out = out - np.stack([(weights @ b[:, 0]) / (weights @ b[:, 1]) for b in bases], axis=1)
        return out

    values = per_seed(np.ones((1, k)))[0]
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(k, np.full(k, 1.0 / k), size=draws).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):  # a resample with no scored token: left out
        means = per_seed(weights).mean(axis=1)
    means = means[np.isfinite(means)]
    n = len(seeds)
    se_seed = float(np.std(values, ddof=1) / math.sqrt(n)) if n >= 2 else math.nan
    return Levels(float(values.mean()), n, se_seed, float(np.std(means, ddof=1)), k, len(means))
