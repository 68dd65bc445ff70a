"""Statistics over seeds, proximity measures and the seed-aggregated table: known answers and scipy."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import spatial
from scipy import stats as sps

from midtrain.analysis import proximity as px
from midtrain.analysis import stats
from midtrain.analysis import tables
from midtrain.analysis.tables import SFTResult, aggregate, choose_per_checkpoint, choose_per_seed, csv_text, markdown

pytestmark = pytest.mark.unit  # the fast tier: `make test-unit`

finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False)


# ---- stats ----

@given(st.lists(finite, min_size=2, max_size=30), st.sampled_from([0.8, 0.9, 0.95, 0.99]))
@settings(max_examples=200, deadline=None)
def test_summarize_matches_scipy(xs, conf):
    iv = stats.summarize(xs, conf)
    assert iv.n == len(xs)
    assert iv.mean == pytest.approx(np.mean(xs), abs=1e-9)
    assert iv.sd == pytest.approx(np.std(xs, ddof=1), abs=1e-9)
    if np.std(xs) > 1e-9:
        lo, hi = sps.t.interval(conf, len(xs) - 1, loc=np.mean(xs), scale=sps.sem(xs))
        assert (iv.lo, iv.hi) == (pytest.approx(lo, abs=1e-7), pytest.approx(hi, abs=1e-7))


def test_summarize_known_values():
    iv = stats.summarize([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, 2) = 4.302652729...
    assert (iv.mean, iv.sd) == (2.0, 1.0)
    assert iv.half_width == pytest.approx(4.302652729911275 / math.sqrt(3))
    one = stats.summarize([5.0])
    assert one.n == 1 and math.isnan(one.lo) and math.isnan(one.sd) and one.format() == "5.000"
    with pytest.raises(ValueError):
        stats.summarize([])
    with pytest.raises(ValueError):
        stats.summarize([1.0, float("nan")])


@given(st.dictionaries(st.integers(0, 9), finite, min_size=1), st.dictionaries(st.integers(0, 9), finite, min_size=1))
@settings(max_examples=200, deadline=None)
def test_paired_uses_matched_seeds_only(arm, base):
    common = sorted(set(arm) & set(base))
    if not common:
        with pytest.raises(ValueError):
            stats.paired(arm, base)
        return
    p = stats.paired(arm, base)
    assert p.seeds == tuple(common)
    assert set(p.unmatched) == set(arm) ^ set(base)
    diffs = [arm[s] - base[s] for s in common]
    assert p.diff.mean == pytest.approx(np.mean(diffs), abs=1e-9)
    if len(diffs) >= 2 and np.std(diffs) > 1e-9:  # the paired t-test's interval
        res = sps.ttest_rel([arm[s] for s in common], [base[s] for s in common])
        ci = res.confidence_interval(0.95)
        assert (p.diff.lo, p.diff.hi) == (pytest.approx(ci.low, abs=1e-6), pytest.approx(ci.high, abs=1e-6))


@given(st.lists(finite, min_size=1, max_size=10))
@settings(max_examples=200, deadline=None)
def test_verdict_matches_interval(xs):
    iv = stats.summarize(xs)
    v = stats.verdict(iv)
    assert v in stats.VERDICTS
    if iv.n < 2:
        assert v == "inconclusive"
    elif stats.no_spread(iv.sd, iv.mean, iv.n):  # equal values (to rounding): a zero-width interval is no evidence
        assert v == stats.NO_VARIANCE and math.isnan(stats.t_test_p(xs))
    elif iv.hi < 0:
        assert v == "better" and stats.verdict(iv, lower_is_better=False) == "worse"
    elif iv.lo > 0:
        assert v == "worse" and stats.verdict(iv, lower_is_better=False) == "better"
    else:
        assert v == "inconclusive" and iv.lo <= 0 <= iv.hi


def test_verdict_known_cases():
    assert stats.verdict(stats.summarize([-0.10, -0.12, -0.11])) == "better"
    assert stats.verdict(stats.summarize([0.10, 0.12, 0.11])) == "worse"
    assert stats.verdict(stats.summarize([-0.1, 0.1, 0.05])) == "inconclusive"
    assert stats.verdict(stats.summarize([-0.1])) == "inconclusive"  # one seed: no interval, no claim


def test_choose_lr_on_validation_and_edges():
    c = stats.choose_lr({1e-4: 2.0, 3e-4: 1.5, 1e-3: 1.7})
    assert (c.lr, c.val_loss, c.edge, c.at_edge) == (3e-4, 1.5, None, False)
    assert stats.choose_lr({1e-4: 2.0, 3e-4: 1.9, 1e-3: 1.7}).edge == "high"
    assert stats.choose_lr({1e-4: 1.0, 3e-4: 1.9, 1e-3: 1.7}).edge == "low"
    assert stats.choose_lr({1e-3: 1.0}).edge == "single"
    assert stats.choose_lr({1e-3: 1.0, 1e-4: 1.0, 3e-3: 2.0}).lr == 1e-4  # ties: the smaller LR
    with pytest.raises(ValueError):
        stats.choose_lr({})


def test_pearson_matches_scipy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=12)
    y = 0.5 * x + rng.normal(size=12)
    r = stats.pearson(x.tolist(), y.tolist())
    ref = sps.pearsonr(x, y)
    assert (r.r, r.p) == (pytest.approx(ref.statistic), pytest.approx(ref.pvalue))
    assert r.lo < r.r < r.hi
    assert stats.relative_improvement(2.0, 1.5) == 0.25


# ---- proximity ----

def dist_strategy(vocab=12):
    return st.lists(st.integers(0, 50), min_size=vocab, max_size=vocab).filter(lambda c: sum(c) > 0).map(
        lambda c: px.distribution(np.array(c)))


@given(dist_strategy(), dist_strategy())
@settings(max_examples=200, deadline=None)
def test_measures_match_scipy(p, q):
    assert px.cosine(p, q) == pytest.approx(1 - spatial.distance.cosine(p, q), abs=1e-9)
    # scipy's jensenshannon is the square root of the divergence
    assert px.jsd(p, q) == pytest.approx(spatial.distance.jensenshannon(p, q, base=2) ** 2, abs=1e-9)
    assert 0 <= px.jsd(p, q) <= 1 and 0 <= px.cosine(p, q) <= 1
    a, b = p > 0, q > 0
    assert px.jaccard(p, q) == pytest.approx(1 - spatial.distance.jaccard(a, b))
    assert px.combined(p, q) == pytest.approx(0.4 * px.cosine(p, q) + 0.3 * px.jaccard(p, q) + 0.3 / (1 + px.jsd(p, q)))


@given(dist_strategy())
@settings(max_examples=100, deadline=None)
def test_identical_inputs(p):
    assert px.jsd(p, p) == pytest.approx(0, abs=1e-12)
    assert px.cosine(p, p) == pytest.approx(1)
    assert px.combined(p, p) == pytest.approx(1)
    for m in px.MEASURES:
        assert px.advantage(m, p, p, p) == pytest.approx(0, abs=1e-12)


def test_disjoint_vocabularies():
    p = px.distribution(np.array([3, 1, 0, 0]))
    q = px.distribution(np.array([0, 0, 2, 5]))
    assert px.jsd(p, q) == 1.0 and px.cosine(p, q) == 0.0 and px.jaccard(p, q) == 0.0
    assert px.combined(p, q) == pytest.approx(0.15)


@given(dist_strategy(), dist_strategy(), st.floats(0, 1))
@settings(max_examples=200, deadline=None)
def test_mixture_is_the_weighted_sum(a, b, w):
    if w in (0.0,):
        w = 0.5
    m = px.mixture({"a": a, "b": b}, {"a": w, "b": 1 - w})
    assert np.allclose(m, w * a + (1 - w) * b)
    assert m.sum() == pytest.approx(1)
    # weights are normalised like a config's: 8:2 == 0.8:0.2
    assert np.allclose(px.mixture({"a": a, "b": b}, {"a": 8, "b": 2}), px.mixture({"a": a, "b": b}, {"a": 0.8, "b": 0.2}))


@given(dist_strategy(), dist_strategy())
@settings(max_examples=150, deadline=None)
def test_advantage_rises_with_the_weight_of_a_closer_source(main, target):
    """Mixing the target's own distribution into the main corpus moves the mix monotonically closer."""
    if np.allclose(main, target):
        return
    dists = {"main": main, "dom": target, "t": target}
    weights = np.linspace(0, 1, 11)
    for m in px.MEASURES:
        adv = [px.advantage(m, px.mixture(dists, {"main": 1 - w, "dom": w}), main, target) for w in weights]
        assert adv[0] == pytest.approx(0, abs=1e-12)
        assert all(b >= a - 1e-12 for a, b in zip(adv, adv[1:])), (m, adv)


def test_proximity_table_rows():
    d = {k: px.distribution(np.array(v)) for k, v in
         {"main": [5, 5, 0, 0], "code": [0, 1, 5, 4], "t": [0, 1, 4, 5]}.items()}
    rows = px.proximity_table(d, {"main": {"main": 1}, "code20": {"main": 0.8, "code": 0.2}}, ["t"], "main")
    assert [(r["mixture"], r["target"]) for r in rows] == [("main", "t"), ("code20", "t")]
    assert rows[0]["advantage/cosine"] == 0 and rows[1]["advantage/cosine"] > 0 and rows[1]["advantage/jsd"] > 0


# ---- the table ----

def _results(effect: float, seeds=(0, 1, 2), lrs=(1e-4, 3e-4, 1e-3), noise=0.01):
    rng = np.random.default_rng(1)
    out = []
    shared = {s: rng.normal(0, noise) for s in seeds}  # what a seed does to every arm (data order, init)
    for arm, shift in (("pretrain-only", 0.0), ("code20", effect)):
        for s in seeds:
            seed_noise = shared[s] + (rng.normal(0, noise) if arm != "pretrain-only" else 0.0)
            for lr in lrs:
                val = 2.0 + shift + seed_noise + (0 if lr == 3e-4 else 0.05)
                out.append(SFTResult(arm, "pycode", s, lr, val, test_loss=val + 0.01, main_after=5.0 + shift / 2 + seed_noise / 2,
                                     main_before=4.0))
    return out


def test_lr_is_chosen_on_val_never_test():
    rs = [SFTResult("a", "t", 0, 1e-4, val_loss=1.0, test_loss=9.0), SFTResult("a", "t", 0, 1e-3, val_loss=2.0, test_loss=0.1)]
    (c,) = choose_per_seed(rs)
    assert c.choice.lr == 1e-4 and c.values["sft_test"] == 9.0 and c.choice.edge == "low"
    with pytest.raises(ValueError, match="no test loss"):
        choose_per_seed([SFTResult("a", "t", 0, 1e-4, 1.0), SFTResult("a", "t", 0, 1e-3, 2.0, test_loss=0.1)])


def test_lr_chosen_per_checkpoint_on_the_mean_val_loss_over_its_seeds():
    # one checkpoint fine-tuned with two seeds: seed 0 alone prefers 1e-4, seed 1 alone 1e-3; the mean prefers 1e-3
    rs = [SFTResult("a", "t", 0, 1e-4, 1.00, test_loss=5.0, checkpoint="/r/final"),
          SFTResult("a", "t", 0, 1e-3, 1.05, test_loss=6.0, checkpoint="/r/final"),
          SFTResult("a", "t", 1, 1e-4, 1.30, test_loss=7.0, checkpoint="/r/final"),
          SFTResult("a", "t", 1, 1e-3, 1.10, test_loss=8.0, checkpoint="/r/final")]
    chosen = choose_per_checkpoint(rs)
    assert [(c.seed, c.choice.lr, c.values["sft_test"]) for c in chosen] == [(0, 1e-3, 6.0), (1, 1e-3, 8.0)]
    assert chosen[0].choice.val_loss == pytest.approx((1.05 + 1.10) / 2) and chosen[0].choice.edge == "high"
    assert [c.choice.lr for c in choose_per_seed(rs)] == [1e-4, 1e-3]
    # two checkpoints (one per seed, as with seeds.vary: midtrain): each chooses its own LR
    own = [SFTResult(r.arm, r.task, r.seed, r.lr, r.val_loss, r.test_loss, checkpoint=f"/r{r.seed}") for r in rs]
    assert [c.choice.lr for c in choose_per_checkpoint(own)] == [1e-4, 1e-3]
    assert [c.choice.lr for c in choose_per_checkpoint(own, per_arm=True)] == [1e-3, 1e-3]  # one LR per (arm, task)
    with pytest.raises(ValueError, match="seed 1 has no result for lr 0.001"):
        choose_per_checkpoint(rs[:3])
    with pytest.raises(ValueError, match="no test loss"):
        choose_per_checkpoint([SFTResult(r.arm, r.task, r.seed, r.lr, r.val_loss, None if r.lr == 1e-3 else 1.0,
                                         checkpoint="/r") for r in rs])
    cells = aggregate(rs, None)
    assert cells[0].lrs == (1e-3, 1e-3) and cells[0].edge_seeds == (0, 1)
    assert aggregate(rs, None, lr_choice="per_seed")[0].lrs == (1e-4, 1e-3)
    assert "once per fine-tuned checkpoint" in markdown(cells, None)
    assert "The seeds sample X." in markdown(cells, None, variance="X")


def test_aggregate_paired_deltas_and_verdicts():
    cells = aggregate(_results(-0.2), baseline="pretrain-only")
    base, arm = cells
    assert base.delta == {} and arm.seeds == (0, 1, 2) and arm.lrs == (3e-4,) * 3 and arm.edge_seeds == ()
    assert arm.delta["sft_test"].diff.mean == pytest.approx(-0.2, abs=0.03)
    assert arm.verdict == {"sft_test": "better", "main_after": "better"}
    assert arm.summary["main_increase"].mean == pytest.approx(0.9, abs=0.02)
    assert aggregate(_results(+0.2), "pretrain-only")[1].verdict["sft_test"] == "worse"
    # an effect smaller than the seed noise: the interval includes 0
    assert aggregate(_results(0.0, noise=0.3), "pretrain-only")[1].verdict["sft_test"] == "inconclusive"
    md = markdown(cells, "pretrain-only")
    assert "| code20 |" in md and "(better; Holm: better)" in md and "n=3" in md
    text = csv_text(cells)
    assert text.splitlines()[0].startswith("arm,task,n,seeds") and "better" in text.splitlines()[2]


def test_holm_verdicts_equal_statsmodels_multipletests_over_the_table():
    from scipy.stats import ttest_rel
    from statsmodels.stats.multitest import multipletests

    rs = []
    for task, effect in (("pycode", -0.05), ("gsm8k", -0.02), ("lima", 0.0)):
        rs += [SFTResult(r.arm, task, r.seed, r.lr, r.val_loss, r.test_loss, r.main_after + (0.01 * r.seed if r.arm ==
               "code20" else 0), r.main_before) for r in _results(effect, seeds=(0, 1, 2, 3), noise=0.02)]
    cells = aggregate(rs, "pretrain-only", 0.95)
    family = [(c, m) for c in cells for m in ("sft_test", "main_after") if m in c.delta]
    assert len(family) == 6 and tables.comparisons(cells) == 6
    by = {(c.arm, c.task, c.seed): c.values for c in tables.choose_per_checkpoint(rs)}
    raw_p = [ttest_rel([by[(c.arm, c.task, s)][m] for s in c.seeds],
                       [by[("pretrain-only", c.task, s)][m] for s in c.seeds]).pvalue for c, m in family]
    assert [c.delta[m].p for c, m in family] == pytest.approx(raw_p)
    reject, adjusted, _, _ = multipletests(raw_p, alpha=0.05, method="holm")
    assert [c.p_holm[m] for c, m in family] == pytest.approx(list(adjusted))
    for (c, m), rej in zip(family, reject):
        assert c.holm[m] == (("better" if c.delta[m].diff.mean < 0 else "worse") if rej else "inconclusive")
        # the raw verdict is the interval's, which is the raw test at 5%
        assert (c.verdict[m] != "inconclusive") == (c.delta[m].p < 0.05)
    # a known answer where the adjustment matters: raw p 0.01, 0.04, 0.03 are all < 0.05; Holm: 0.03, 0.06, 0.06
    assert stats.holm([0.01, 0.04, 0.03, float("nan")]) == pytest.approx([0.03, 0.06, 0.06, float("nan")], nan_ok=True)
    assert stats.holm_verdicts([(-1, 0.01), (-1, 0.04), (1, 0.03)]) == ["better", "inconclusive", "inconclusive"]
    md = markdown(cells, "pretrain-only")
    assert "This table holds 6 judged comparisons" in md and "Holm: " in md
    row = next(r for r in csv_text(cells).splitlines()[1:] if r.startswith("code20,pycode"))
    assert ",6" in row


def test_a_cell_above_ln_v_is_not_judged_in_the_table_and_the_findings():
    """Metrics written before the unigram reference was recorded: the lax ln V bound, and the cell says so."""
    from midtrain.demo import findings as F

    ok = aggregate(_results(+0.2), "pretrain-only", ln_vocab=5.2)  # main after SFT 5.0 / 5.1: below ln V
    assert ok[1].verdict["main_after"] == "worse" and not ok[1].regime
    cells = aggregate(_results(+0.2), "pretrain-only", ln_vocab=5.05)  # the arm's 5.1 is above
    base, arm = cells
    assert not base.regime and arm.regime[0].startswith("s0: collapsed: main-corpus loss after SFT 5.10 >= ln V 5.05 "
                                                         "(its metrics predate the unigram reference")
    assert arm.verdict == arm.holm == {"sft_test": "not judged", "main_after": "not judged"}
    assert tables.comparisons(cells) == 0 and tables.not_judged(cells) == 2
    md = markdown(cells, "pretrain-only")
    assert "(not judged: s0: collapsed: main-corpus loss after SFT 5.10 >= ln V 5.05" in md
    assert "2 more are **not judged**" in md
    assert "not judged" in csv_text(cells).splitlines()[2]
    # the baseline's broken cell makes every comparison with it not judged
    assert set(aggregate(_results(-0.2), "pretrain-only", ln_vocab=4.95)[1].verdict.values()) == {"not judged"}
    # an edge winner is outside the regime too
    assert aggregate(_results(-0.2, lrs=(1e-4, 3e-4)), "pretrain-only")[1].verdict["sft_test"] == "not judged"
    # the findings: finding 1 rests on a cell above ln V -> not judged; the others are judged, with Holm and power
    values = {}
    for seed, noise in zip((0, 1, 2, 3), (0.0, 0.01, -0.01, 0.02)):
        for i, (arm, test, after) in enumerate((("pretrain-only", 2.0, 6.0), ("m20", 1.9, 8.0), ("cpt", 2.1, 6.5),
                                                ("el", 1.0, 6.0), ("eh", 1.1, 6.0), ("ll", 1.0, 6.0),
                                                ("lh", 1.3, 6.0))):
            values[(arm, "math" if arm in ("pretrain-only", "m20", "cpt") else "code", seed)] = \
                {"sft_test": test + noise * (arm != "pretrain-only") * (1 + 0.2 * i * i), "main_after": after + noise,
                 "lr": 1e-3, "lr_edge": None}
    for seed in (0, 1, 2, 3):
        values[("pretrain-only", "code", seed)] = {"sft_test": 1.5, "main_after": 6.0, "lr": 1e-3, "lr_edge": None}
    found = F.evaluate(values, (0, 1, 2, 3), {"math": {"mid": "m20", "cpt": "cpt", "task": "math"}},
                       {"task": "code", "early_low": "el", "early_high": "eh", "late_low": "ll", "late_high": "lh"},
                       [], ln_vocab=7.62)
    f = {x["finding"]: x for x in found}
    assert f["1-math"]["verdict"] == "not judged (regime)" and "m20/math/s0: collapsed: main-corpus loss after SFT 8.00" in \
        f["1-math"]["regime"][0]
    # the window, worded as the paper's claim: late high (1.3) above late low (1.0): reproduced, in-domain; the
    # early simple effect is described, not tested; I = 0.3 - 0.1 > 0: reproduced; forgetting: every corner
    # has the same main-corpus loss up to the shared seed noise: no variance sampled, never p = 0
    assert f["3-late-in-domain"]["verdict"] == "reproduced" and f["3-late-in-domain"]["holm"] in F.WORDS.values()
    assert f["3-early-in-domain"]["verdict"] == F.DESCRIPTIVE
    assert f["3-early-in-domain"]["mean"] == pytest.approx(0.1, abs=0.01)
    assert f["3-interaction-in-domain"]["verdict"] == "reproduced"
    assert f["3-interaction-in-domain"]["mean"] == pytest.approx(0.2, abs=0.01)
    for k in ("3-late-forgetting", "3-interaction-forgetting"):
        assert f[k]["verdict"] == "not judged (no variance sampled)" and math.isnan(f[k]["p"]), f[k]
    # the headline family is every tested claim the design declares, whatever its outcome: 8 here, though only
    # 3-late-in-domain and 3-interaction-in-domain are judged (findings 1 and 2 rest on m20's cell above ln V,
    # finding 4 has no cells, forgetting has no variance); the others count with p = 1 and keep their words
    declared = F.declared_family({"math": {}}, {}, None, None)
    assert [x["finding"] for x in found if x["lower_is_better"] is not None] == declared and len(declared) == 8
    assert all(x["family"] == 8 for x in found)
    for k in declared:
        if k not in ("3-late-in-domain", "3-interaction-in-domain"):
            assert f[k]["holm"] == f[k]["verdict"] and f[k]["verdict"].startswith(("not judged", "inconclusive")), f[k]
    # the adjusted verdict over 8 is the headline (bold), the unadjusted one beside it
    text = F.format_findings(found)
    assert "**not judged (regime)**" in text and "the 8 claims of the family the protocol declared" in text
    assert f"**{f['3-late-in-domain']['holm']}** (unadjusted: reproduced)" in text
    # Holm over 8 with the six others at p = 1: the smaller p is multiplied by 8 (statsmodels' holm agrees)
    from statsmodels.stats.multitest import multipletests

    ps = [f[k]["p"] if k in ("3-late-in-domain", "3-interaction-in-domain") else 1.0 for k in declared]
    reject = multipletests(ps, alpha=0.05, method="holm")[0]
    for k, rej in zip(declared, reject):
        if k in ("3-late-in-domain", "3-interaction-in-domain"):
            assert (f[k]["holm"] == "reproduced") == bool(rej), (k, f[k]["p"])
    # the precision control: the late corners at bf16-true, where the high weight no longer hurts (late high 1.0
    # below late low 1.1): finding 3's late effect again under it, on the claimed sign (> 0), so "not reproduced";
    # the two claims join the Holm family
    for seed, noise in zip((0, 1, 2, 3), (0.0, 0.01, -0.01, 0.02)):
        values[("llb", "code", seed)] = {"sft_test": 1.1 + noise, "main_after": 6.0 + noise, "lr": 1e-3, "lr_edge": None}
        values[("lhb", "code", seed)] = {"sft_test": 1.0 + 2 * noise, "main_after": 6.1 + noise, "lr": 1e-3,
                                         "lr_edge": None}
    f = {x["finding"]: x for x in F.evaluate(
        values, (0, 1, 2, 3), {"math": {"mid": "m20", "cpt": "cpt", "task": "math"}},
        {"task": "code", "early_low": "el", "early_high": "eh", "late_low": "ll", "late_high": "lh"}, [],
        ln_vocab=7.62, precision={"precision": "bf16-true", "late_low": "llb", "late_high": "lhb"})}
    assert f["3-late-bf16-true-in-domain"]["verdict"] == "not reproduced"
    assert f["3-late-bf16-true-in-domain"]["mean"] == pytest.approx(-0.1 + 0.005, abs=1e-9)
    assert f["3-late-bf16-true-forgetting"]["verdict"] == "not judged (no variance sampled)"
    assert "under bf16-true, introduced late, a high weight hurts: lhb above llb" in f["3-late-bf16-true-in-domain"]["claim"]
    assert f["3-late-in-domain"]["family"] == 10  # the declared family grows by the two precision claims


def test_collapse_is_judged_against_the_unigram_entropy_of_the_scored_tokens_and_split_seeds_are_flagged():
    """Issue 28, item 4: main-corpus loss after SFT of 5.6-7.7 was judged because it stayed under ln V = 7.62. The
    reference is now the unigram entropy of the tokens scored (recorded by the SFT step): a seed at or above it
    has collapsed, well below ln V; a cell whose seeds fall on both sides of it is flagged with their LRs."""
    import torch

    from midtrain.demo import findings as F
    from midtrain.train.metrics import NoData, unigram_entropy

    # by hand: counts 2, 1, 1 -> plug-in -(0.5 ln 0.5 + 2 x 0.25 ln 0.25) = 1.5 ln 2, plus Miller-Madow's
    # (K - 1) / 2N = 2 / 8
    assert unigram_entropy(torch.tensor([2, 0, 1, 1]), "x") == pytest.approx(1.5 * math.log(2) + 0.25)
    assert unigram_entropy(torch.tensor([0, 7, 0]), "x") == 0.0
    # the correction makes it (nearly) unbiased: samples of a known distribution average to its entropy
    g = torch.Generator().manual_seed(0)
    probs = torch.tensor([0.4, 0.3, 0.1, 0.1, 0.05, 0.05])
    true = float(-(probs * probs.log()).sum())
    samples = [torch.bincount(torch.multinomial(probs, 40, True, generator=g), minlength=6) for _ in range(400)]
    est = sum(unigram_entropy(c, "x") for c in samples) / len(samples)
    plug = sum(unigram_entropy(c, "x") - (int((c > 0).sum()) - 1) / 80 for c in samples) / len(samples)
    assert abs(est - true) < 0.02 and true - plug > 0.04, (est, plug, true)
    with pytest.raises(NoData):
        unigram_entropy(torch.zeros(5, dtype=torch.long), "x")

    def results(ref_by_seed):  # the arm's main-corpus loss after SFT: 5.0 + 0.1 + noise ~ 5.1
        return [SFTResult(r.arm, r.task, r.seed, r.lr, r.val_loss, r.test_loss, r.main_after, r.main_before,
                          main_unigram=ref_by_seed[r.seed] if r.arm == "code20" else 6.0) for r in _results(+0.2)]

    cells = aggregate(results({0: 4.5, 1: 4.5, 2: 4.5}), "pretrain-only", ln_vocab=7.62)  # 5.1 < ln V, > 4.5
    base, arm = cells
    assert not base.regime and len(arm.regime) == 3 and all(
        "collapsed: main-corpus loss after SFT 5.1" in r and ">= 4.50, the unigram entropy of the tokens it scored" in r
        for r in arm.regime), arm.regime
    assert set(arm.verdict.values()) == {"not judged"} and tables.comparisons(cells) == 0
    # below the reference: judged, whatever ln V says
    assert not aggregate(results({0: 6.0, 1: 6.0, 2: 6.0}), "pretrain-only", ln_vocab=5.0)[1].regime
    # seeds on both sides: each collapsed seed is named, and the split itself, with each seed's LR
    arm = aggregate(results({0: 4.5, 1: 6.0, 2: 6.0}), "pretrain-only", ln_vocab=7.62)[1]
    assert arm.regime[0].startswith("s0: collapsed") and arm.regime[-1] == (
        "seeds disagree in regime: collapsed s0 at lr 0.0003; not s1 at lr 0.0003, s2 at lr 0.0003"), arm.regime
    assert stats.regime_disagreement({0: (0.01, "collapsed"), 1: (0.003, None)}) == \
        "seeds disagree in regime: collapsed s0 at lr 0.01; not s1 at lr 0.003"
    assert stats.regime_disagreement({0: (0.01, "c"), 1: (0.003, "c")}) is None
    # the findings read the same reference and flag the same split
    values = {(a, t, s): {"sft_test": 2.0 + 0.1 * (a == "m20") + 0.01 * s, "main_after": 5.0, "lr": lr,
                          "lr_edge": None, "main_unigram": ref}
              for (a, t) in (("pretrain-only", "math"), ("m20", "math"))
              for s, (lr, ref) in enumerate(((0.01, 5.5), (0.003, 4.0), (0.003, 5.5)))}
    found = {f["finding"]: f for f in F.evaluate(values, (0, 1, 2), {"math": {"mid": "m20", "cpt": "cpt", "task": "math"}},
                                                 {"task": "code", "early_low": "el", "early_high": "eh",
                                                  "late_low": "ll", "late_high": "lh"}, [], ln_vocab=7.62)}
    f1 = found["1-math"]
    assert f1["verdict"] == "not judged (regime)", f1
    assert "m20/math: seeds disagree in regime: collapsed s1 at lr 0.003; not s0 at lr 0.01, s2 at lr 0.003" in f1["regime"]


def test_finding_4_weighs_proximity_by_dose_and_resamples_seeds_not_cells():
    """Issue 28, item 7: x = proximity advantage x the arm's LR-weighted steps; r within each seed and a
    t-interval over the seeds of its Fisher z (every cell's improvement is over the same control runs: the
    seeds are the independent units), not Fisher z over the cells."""
    from scipy.stats import pearsonr

    from midtrain.demo import findings as F

    rng = np.random.default_rng(3)
    seeds = (0, 1, 2, 3, 4)
    ctrl = {s: 2.0 + rng.normal(0, 0.05) for s in seeds}  # the shared baseline: one draw per seed for every cell
    cells = {f"a{i}": (adv, steps) for i, (adv, steps) in enumerate(
        [(0.01, 100), (0.02, 100), (0.01, 300), (0.03, 200), (0.02, 400), (0.005, 50)])}
    values = {("pretrain-only", "t", s): {"sft_test": ctrl[s], "main_after": 4.0, "main_unigram": 5.0, "lr": 1e-3,
                                          "lr_edge": None} for s in seeds}
    for arm, (adv, steps) in cells.items():
        for s in seeds:  # the improvement follows the dose-weighted advantage, plus noise per (arm, seed)
            gain = 20 * adv * steps / 1000 + rng.normal(0, 0.01)
            values[(arm, "t", s)] = {"sft_test": ctrl[s] * (1 - gain), "main_after": 4.0, "main_unigram": 5.0,
                                     "lr": 1e-3, "lr_edge": None}
    rows = [{"arm": a, "task": "t", "advantage": adv, "relative_improvement": 0.0, "lr_steps": steps}
            for a, (adv, steps) in cells.items()]
    (f4,) = [f for f in F.evaluate(values, seeds, {}, {"task": "z", "early_low": "x", "early_high": "x",
                                                     "late_low": "x", "late_high": "x"}, rows) if f["finding"] == "4-proximity"]
    from scipy import stats as sps

    xs = [adv * steps for adv, steps in cells.values()]
    zs = [math.atanh(pearsonr(xs, [(ctrl[s] - values[(a, "t", s)]["sft_test"]) / ctrl[s] for a in cells]).statistic)
          for s in seeds]
    half = sps.t.ppf(0.975, len(seeds) - 1) * np.std(zs, ddof=1) / math.sqrt(len(seeds))
    assert f4["mean"] == pytest.approx(math.tanh(np.mean(zs))) and f4["mean"] > 0.9
    assert (f4["lo"], f4["hi"]) == pytest.approx((math.tanh(np.mean(zs) - half), math.tanh(np.mean(zs) + half)))
    assert f4["lo"] > 0 and f4["verdict"] == "reproduced" and f4["p"] == pytest.approx(sps.ttest_1samp(zs, 0).pvalue)
    assert "dose-weighted" in f4["claim"] and "t-interval over the 5 seeds" in f4["detail"]
    # unrelated y: the interval straddles 0; too few cells: refused, never a number; one seed: no interval
    flat = stats.seed_level_r({c: x for c, x in zip("abcde", (1, 2, 3, 4, 5))},
                              {c: {s: float(rng.normal()) for s in seeds} for c in "abcde"}, seeds)
    assert flat.lo < 0 < flat.hi and 0 <= flat.p <= 1
    with pytest.raises(ValueError, match=">= 3 cells"):
        stats.seed_level_r({"a": 1, "b": 2}, {"a": {0: 1.0}, "b": {0: 2.0}}, seeds)
    one = stats.seed_level_r({c: x for c, x in zip("abc", (1, 2, 3))}, {c: {0: v} for c, v in zip("abc", (1, 3, 2))},
                             (0,))
    assert one.r == pytest.approx(0.5) and math.isnan(one.lo) and math.isnan(one.p)


def test_a_diverged_lr_never_wins_and_a_non_finite_cell_is_not_judged_not_a_crash():
    nan = float("nan")
    assert stats.choose_lr({1e-4: nan, 1e-3: 1.0, 1e-2: 1.2}).lr == 1e-3
    none = stats.choose_lr({1e-4: nan, 1e-3: float("inf")})
    assert none.edge == "none finite" and "no SFT LR gave a finite validation loss" in stats.regime_problems({}, none)
    rs = _results(-0.2)
    rs = [SFTResult(r.arm, r.task, r.seed, r.lr, r.val_loss, nan if (r.arm, r.seed) == ("code20", 1) else r.test_loss,
                    r.main_after, r.main_before) for r in rs]
    cells = aggregate(rs, "pretrain-only")
    assert cells[1].verdict["sft_test"] == "not judged" and "s1: sft_test is not finite" in cells[1].regime
    assert cells[1].summary["sft_test"].n == 2  # the finite seeds only, never a NaN mean


def test_detectable_effect_is_statsmodels_power():
    from statsmodels.stats.power import TTestPower

    for sd, n in ((0.02, 3), (0.5, 5), (1.0, 10)):
        d = TTestPower().solve_power(effect_size=None, nobs=n, alpha=0.05, power=0.8, alternative="two-sided")
        assert stats.detectable_effect(sd, n) == pytest.approx(d * sd)
        # at that effect the library's power is 80%
        assert TTestPower().power(effect_size=stats.detectable_effect(sd, n) / sd, nobs=n, alpha=0.05) == \
            pytest.approx(0.8, abs=1e-6)
    assert math.isnan(stats.detectable_effect(0.1, 1)) and math.isnan(stats.detectable_d(1))
    # a priori (issue 28, item 5): from the design's n, never from the observed spread; n = 3 needs ~3.3 sd
    cells = aggregate(_results(-0.2), "pretrain-only")
    n = cells[1].delta["sft_test"].diff.n
    assert cells[1].detect_d["sft_test"] == pytest.approx(stats.detectable_d(n)) and stats.detectable_d(n) == pytest.approx(
        TTestPower().solve_power(effect_size=None, nobs=n, alpha=0.05, power=0.8, alternative="two-sided"))
    other = aggregate(_results(-0.2, noise=0.2), "pretrain-only")  # another spread, the same a-priori figure
    assert other[1].detect_d == cells[1].detect_d
    assert f"{stats.detectable_d(3):.1f} at n = 3" in markdown(cells, "pretrain-only")
    assert 3.2 < stats.detectable_d(3) < 3.3


def test_edge_winner_is_flagged():
    cells = aggregate(_results(-0.2, lrs=(1e-4, 3e-4)), "pretrain-only")
    assert cells[1].edge_seeds == (0, 1, 2) and "†" in markdown(cells, "pretrain-only")
    with pytest.raises(ValueError, match="baseline"):
        aggregate(_results(-0.2), baseline="nope")


def test_a_winner_at_the_protocols_lr_ceiling_is_marked_not_an_edge():
    """sft.lr_ceiling (demo protocol v5): the grid's top is the protocol's bound, so a cell choosing it has the best
    LR the protocol allows (‡), judged; the bottom edge, or a top below a ceiling that is not the grid's, stays an
    edge winner (†, not judged)."""
    c = stats.choose_lr({1e-4: 2.0, 3e-4: 1.9, 1e-3: 1.7}, ceiling=1e-3)
    assert (c.lr, c.edge, c.at_edge, c.at_ceiling) == (1e-3, None, False, True)
    assert stats.regime_problems({"sft_test": 1.0}, c) == []
    assert stats.choose_lr({1e-4: 1.0, 3e-4: 1.9, 1e-3: 1.7}, ceiling=1e-3).edge == "low"
    assert stats.choose_lr({1e-4: 2.0, 3e-4: 1.9, 1e-3: 1.7}, ceiling=3e-3).edge == "high"
    assert stats.choose_lr({1e-4: 2.0, 3e-4: 1.9, 1e-3: 1.7}).edge == "high"
    cells = aggregate(_results(-0.2, lrs=(1e-4, 3e-4)), "pretrain-only", ceiling=3e-4)
    assert [(c.edge_seeds, c.ceiling_seeds) for c in cells] == [((), (0, 1, 2))] * 2
    assert cells[1].verdict["sft_test"] == "better"
    md = markdown(cells, "pretrain-only")
    assert "n=3 ‡" in md and "n=3 †" not in md and "‡ = a chosen LR is the protocol's ceiling" in md
    import csv as csv_module
    import io

    rows = list(csv_module.DictReader(io.StringIO(csv_text(cells))))
    assert [(r["lr_edge_seeds"], r["lr_ceiling_seeds"]) for r in rows] == [("", "0 1 2")] * 2


def test_a_diverged_or_missing_cell_makes_findings_not_judged_never_a_crash():
    """issue 28: findings._paired handed a NaN to stats.paired, which raised after the whole study ran
    ('non-finite value among [-0.1, nan, -0.1]'); a missing cell (a failed step) was silently left out."""
    from midtrain.demo import findings as F

    nan = float("nan")
    values = {}
    for seed in (0, 1, 2):
        for arm, task, test in (("pretrain-only", "math", 2.0), ("m20", "math", 1.9), ("cpt", "math", 2.1),
                                ("el", "code", 1.0), ("eh", "code", 1.1), ("ll", "code", 1.0), ("lh", "code", 1.3)):
            values[(arm, task, seed)] = {"sft_test": test + 0.01 * seed * (arm != "pretrain-only"),
                                         "main_after": 5.0 + 0.02 * seed, "lr": 1e-3, "lr_edge": None}
    values[("m20", "math", 1)]["sft_test"] = nan  # diverged
    del values[("lh", "code", 2)]  # its step failed
    grid = {"task": "code", "early_low": "el", "early_high": "eh", "late_low": "ll", "late_high": "lh"}
    found = {x["finding"]: x for x in F.evaluate(values, (0, 1, 2), {"math": {"mid": "m20", "cpt": "cpt",
                                                                              "task": "math"}}, grid, [], 7.62)}
    assert found["1-math"]["verdict"] == "not judged (regime)"
    assert "m20/math/s1: sft_test is not finite" in found["1-math"]["regime"]
    for k in ("3-late-in-domain", "3-interaction-in-domain", "3-interaction-forgetting"):
        assert found[k]["verdict"] == "not judged (regime)", found[k]
        assert f"lh/code/s2: {stats.MISSING}" in found[k]["regime"]
    assert "not judged" in F.format_findings(list(found.values()))
    # zero spread: "no variance sampled", not p = 0 and a zero-width "better"
    iv = stats.summarize([-0.1, -0.1, -0.1])
    assert stats.verdict(iv) == stats.NO_VARIANCE and math.isnan(stats.t_test_p([-0.1, -0.1, -0.1]))
    assert stats.claim_verdict(iv, -1) == "not judged (no variance sampled)"
    assert stats.claim_verdict(stats.summarize([0.1, 0.2, 0.15]), +1) == "reproduced"
    assert stats.claim_verdict(stats.summarize([0.1, 0.2, 0.15]), -1) == "not reproduced"


def test_the_demo_refuses_a_geometry_whose_near_task_is_not_nearest():
    """Finding 5 compares a distant domain's benefit with the near one's: the demo checks, before any training,
    that the near task is closer to the main corpus than every distant task, and that each distant task is closer
    to its own midtraining corpus than to main (v3's math corpus was not: 0.118 against 0.287), naming the one
    that is not."""
    from midtrain.demo import check_geometry

    cos = {("main", "math"): 0.28, ("main", "code"): 0.45, ("main", "passage"): 0.85,
           ("math", "math"): 0.42, ("code", "code"): 0.73}
    rows = lambda: [{"corpus": c, "task": t, "cosine": v} for (c, t), v in cos.items()]  # noqa: E731
    distant = {"math": "math", "code": "code"}
    assert check_geometry(rows(), "passage", distant) == []
    cos["main", "code"] = 0.9
    assert check_geometry(rows(), "passage", distant) == [
        "task code is as close to the main corpus as the near task passage (0.900 >= 0.850): the demo's near/distant "
        "geometry does not hold",
        "task code is no closer to its midtraining corpus code than to the main corpus (0.730 <= 0.900): the "
        "midtraining data does not bridge to the task"]
    cos["main", "code"], cos["math", "math"] = 0.45, 0.118
    assert check_geometry(rows(), "passage", distant) == [
        "task math is no closer to its midtraining corpus math than to the main corpus (0.118 <= 0.280): the "
        "midtraining data does not bridge to the task"]


def test_finding_5_compares_relative_improvements_per_seed():
    """5-distance-d: per seed, RI(d's arm on d) - RI(near arm on the near task), RI = (L_ctrl - L_arm) / L_ctrl,
    claimed > 0; the near arm's own difference is described, not tested."""
    from midtrain.demo import findings as F

    seeds = [0, 1, 2]
    vals = {}
    for s in seeds:
        for arm, task, loss in (("pretrain-only", "code", 4.0), ("code20", "code", 3.0 + 0.01 * s),
                                ("pretrain-only", "passage", 5.0), ("books20", "passage", 4.9 - 0.01 * s)):
            vals[(arm, task, s)] = {"sft_test": loss, "main_after": 3.0, "main_unigram": 6.0, "lr": 1e-3,
                                    "lr_edge": None}
    out = F.evaluate(vals, seeds, {"code": {"mid": "code20", "cpt": "cpt", "task": "code"}},
                     {"task": "code", "early_low": "a", "early_high": "b", "late_low": "c", "late_high": "d"}, [],
                     ln_vocab=7.6, near={"mid": "books20", "task": "passage"})
    by = {f["finding"]: f for f in out}
    expect = [(4.0 - (3.0 + 0.01 * s)) / 4.0 - (5.0 - (4.9 - 0.01 * s)) / 5.0 for s in seeds]
    assert by["5-distance-code"]["mean"] == pytest.approx(sum(expect) / 3)
    assert by["5-distance-code"]["verdict"] == "reproduced", by["5-distance-code"]["regime"]
    assert by["5-distance-code"]["lower_is_better"] is False
    assert by["5-near"]["verdict"] == "descriptive (not tested)"
    assert by["5-near"]["mean"] == pytest.approx(sum(4.9 - 0.01 * s - 5.0 for s in seeds) / 3)


def test_variance_by_level_separates_seeds_from_test_items():
    """Issue 28, item 6: the report splits a cell's uncertainty into the seed level (what the intervals use, items
    fixed) and the test-item level (a paired bootstrap over the shared test items)."""
    import numpy as np

    from midtrain.analysis.stats import variance_levels
    from midtrain.study.report import _format_levels, variance_by_level

    rng = np.random.default_rng(3)
    x = rng.normal(2.0, 0.5, 60)
    # one seed, one token per item: the mean's bootstrap se is the population sd over sqrt(k)
    lv = variance_levels({0: [(float(v), 1) for v in x]})
    assert lv.n == 1 and math.isnan(lv.se_seed) and lv.items == 60 and lv.draws == 2000
    assert lv.mean == pytest.approx(x.mean()) and lv.se_item == pytest.approx(x.std() / math.sqrt(60), rel=0.05)
    assert lv == variance_levels({0: [(float(v), 1) for v in x]})  # seeded: the same draws every time
    # token weights: the loss is sum / tokens, not a mean of item means
    assert variance_levels({0: [(4.0, 2), (1.0, 1)]}).mean == pytest.approx(5 / 3)
    # paired: an arm that is the baseline plus 0.1 on every item and seed has no item-level variance, and its
    # seed level is the sd of the per-seed differences over sqrt(n)
    base = {s: [(float(v) + s, 1) for v in x] for s in range(3)}
    arm = {s: [(float(v) + s + 0.1 + 0.01 * s * s, 1) for v in x] for s in range(3)}
    lv = variance_levels(arm, base)
    diffs = np.array([0.1, 0.11, 0.14])
    assert lv.mean == pytest.approx(diffs.mean()) and lv.se_item < 1e-12
    assert lv.se_seed == pytest.approx(diffs.std(ddof=1) / math.sqrt(3)) and lv.item_share == pytest.approx(0.0)
    # items that differ by arm: the item level is there, the seed level unchanged in kind
    noisy = {s: [(float(v) + s + 0.3 * float(e), 1) for v, e in zip(x, rng.normal(size=60))] for s in range(3)}
    assert variance_levels(noisy, base).se_item > 0.01
    # nothing to pair: different item counts, or no common seed
    assert variance_levels({0: [(1.0, 1)] * 3}, {0: [(1.0, 1)] * 4}) is None
    assert variance_levels({0: [(1.0, 1)]}, {1: [(1.0, 1)]}) is None
    # the report's rows and words
    from midtrain.analysis.tables import Chosen

    chosen = [Chosen(a, "t", s, None, {}, tuple(items[s])) for a, items in (("pretrain-only", base), ("m", arm))
              for s in range(3)]
    rows = variance_by_level(chosen, "pretrain-only")
    assert [(r["arm"], r["paired_with"]) for r in rows] == [("pretrain-only", None), ("m", "pretrain-only")]
    assert rows[1]["mean"] == pytest.approx(diffs.mean())
    text = "\n".join(_format_levels(rows, "pretrain-only", "the SFT data order only"))
    assert "| m | t | Δ +0.1167 | 3 |" in text and "2,000 bootstrap resamples" in text and "(the SFT data order only)" in text
    assert variance_by_level([Chosen("m", "t", 0, None, {})], "pretrain-only") == []  # no items recorded
    assert variance_by_level(chosen, "pretrain-only", shared_tasks=set()) == []  # a per-seed split pairs nothing


def test_a_seed_missing_from_a_cell_makes_its_comparison_not_judged_never_a_smaller_n():
    """Issue 28, item 4: a cell lacking a seed the study ran (its SFT step failed) was paired silently over the seeds
    that remained. It is now not judged, the missing seed named, in the table and in the precision control."""
    full = aggregate(_results(-0.2, seeds=(0, 1, 2)), "pretrain-only")
    assert full[1].verdict["sft_test"] == "better" and full[1].delta["sft_test"].diff.n == 3
    lost = [r for r in _results(-0.2, seeds=(0, 1, 2)) if not (r.arm == "code20" and r.seed == 2)]
    arm = aggregate(lost, "pretrain-only")[1]
    assert arm.verdict == arm.holm == {"sft_test": "not judged", "main_after": "not judged"}
    assert f"s2: {stats.MISSING}" in arm.regime
    assert "missing (no result" in markdown(aggregate(lost, "pretrain-only"), "pretrain-only")
    # a seed with no result in any cell (e.g. its base run failed, so every step of it was blocked): given the
    # study's seeds, it is missing everywhere; from files given by hand, only the seeds they hold are known
    none_for_s2 = [r for r in _results(-0.2, seeds=(0, 1, 2)) if r.seed != 2]
    assert aggregate(none_for_s2, "pretrain-only")[1].verdict["sft_test"] != "not judged"
    arm = aggregate(none_for_s2, "pretrain-only", seeds=(0, 1, 2))[1]
    assert arm.verdict["sft_test"] == "not judged" and "s2: missing (no result" in " ".join(arm.regime)
