"""Properties of the exact mixer's schedule (pure)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from midtrain.data.blend import (PERIOD, Blend, SourceOrder, StageSchedule, StageSpec, append_stage, bit_reverse,
                                 count_reversed_below, micro_batch_starts, quantize_weights)
from midtrain.errors import ConfigError

pytestmark = pytest.mark.unit  # the fast tier: `make test-unit`

weights_st = st.lists(st.floats(1e-4, 1.0), min_size=1, max_size=8)


def spec(weights, block, start=0, seed=0, names=None, fps=None):
    names = names or [f"s{i}" for i in range(len(weights))]
    return StageSpec(start, tuple(names), tuple(quantize_weights(weights, block)), block, seed,
                     tuple(fps or [{"t": 1}] * len(weights)))


def test_count_reversed_below_matches_brute_force():
    bits = 6
    rev = bit_reverse(np.arange(1 << bits), bits)
    for t in range((1 << bits) + 1):
        xs = np.arange((1 << bits) + 1)
        brute = np.array([(rev[:t] < x).sum() for x in xs])
        assert (count_reversed_below(t, xs, bits) == brute).all()


@settings(max_examples=200, deadline=None)
@given(weights_st, st.integers(1, 4096), st.lists(st.integers(0, 10**9), min_size=1, max_size=5))
def test_every_block_within_one_of_target_and_closed_form_counts(weights, block, blocks):
    s = StageSchedule(spec(weights, block), 0)
    target = np.array(s.spec.units) / PERIOD  # the quantised weight x B
    for b in blocks:
        c = s.block_counts(b)
        assert c.sum() == block
        assert (np.abs(c - target) < 1).all()
        assert (s.counts_before_block(b + 1) - s.counts_before_block(b) == c).all()
        sources, rank, before = s.block_order(b)
        assert (np.bincount(sources, minlength=len(weights)) == c).all()
        for i in range(len(weights)):  # ranks within the block are 0..c_i-1 in order of appearance
            assert (rank[sources == i] == np.arange(c[i])).all()


@settings(max_examples=100, deadline=None)
@given(weights_st, st.integers(1, 2048), st.integers(1, 50))
def test_long_run_shares_exact_per_period(weights, block, periods):
    s = StageSchedule(spec(weights, block), 0)
    q = np.array(s.spec.units)
    assert (s.counts_before_block(periods * PERIOD) == periods * q).all()
    # and close in between: the quantised weight is within 1/(B*P) of the requested one
    w = np.array(weights) / sum(weights)
    assert (np.abs(q / (block * PERIOD) - w) <= 1 / (block * PERIOD)).all()


def test_cumulative_counts_brute_force_small():
    s = StageSchedule(spec([0.8, 0.15, 0.03, 0.015, 0.005], 64), 0)
    total = np.zeros(5, dtype=np.int64)
    for b in range(2000):
        assert (s.counts_before_block(b) == total).all()
        total += s.block_counts(b)
    w = np.array(s.spec.units) / (64 * PERIOD)
    assert np.abs(total - w * 64 * 2000).max() < 8  # bounded drift inside a period, exact at its end


@settings(max_examples=60, deadline=None)
@given(weights_st, st.integers(1, 300), st.integers(0, 5000), st.integers(1, 700))
def test_locate_is_contiguous_per_source_and_slices_agree(weights, block, g0, n):
    b = Blend([spec(weights, block)])
    src, pos = b.locate(0, g0 + n)
    for i in range(len(weights)):  # each source's samples are 0, 1, 2, ... in order: no gap, no repeat
        assert (pos[src == i] == np.arange((src == i).sum())).all()
    s2, p2 = b.locate(g0, n)
    assert (s2 == src[g0:]).all() and (p2 == pos[g0:]).all()
    consumed = b.consumed(g0 + n)
    assert [consumed[f"s{i}"] for i in range(len(weights))] == [int((src == i).sum()) for i in range(len(weights))]


def test_stages_switch_exactly_and_sources_continue():
    a = spec([0.9, 0.1], 10, names=["main/1", "c1"])
    bstage = spec([0.7, 0.2, 0.1], 10, start=50, names=["main/1", "m1", "c1"])
    blend = Blend([a, bstage])
    src, pos = blend.locate(0, 150)
    ids = blend.source_ids
    assert ids == ["main/1", "c1", "m1"]
    first = np.bincount(src[:50], minlength=3)
    assert list(first) == [45, 5, 0]
    for blk in range(5, 15):  # every block after the switch has the new counts
        assert list(np.bincount(src[blk * 10:(blk + 1) * 10], minlength=3)) == [7, 1, 2]
    for i in range(3):  # positions continue across the switch: no sample repeats, none skipped
        assert (pos[src == i] == np.arange((src == i).sum())).all()


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 8), st.integers(0, 4), st.integers(1, 8), st.integers(0, 40))
def test_rank_worker_sharding_disjoint_and_complete(world, workers, micro, start_mb):
    start = start_mb * micro
    n_per = 6
    single = list(np.arange(start, start + world * max(workers, 1) * n_per * micro, micro))
    got = []
    for rank in range(world):
        per_worker = [list(_take(micro_batch_starts(start, micro, rank, world, w, max(workers, 1)), n_per))
                      for w in range(max(workers, 1))]
        # the DataLoader emits worker 0, 1, ..., 0, 1, ...: the rank's order must not depend on workers
        emitted = [per_worker[j % len(per_worker)][j // len(per_worker)] for j in range(n_per * len(per_worker))]
        alone = list(_take(micro_batch_starts(start, micro, rank, world), n_per * len(per_worker)))
        assert emitted == alone
        got += emitted
    assert sorted(got) == single and len(set(got)) == len(got)


def _take(it, n):
    for _ in range(n):
        yield next(it)


def test_source_order_epochs_are_permutations_and_local():
    order = SourceOrder([50, 0, 30, 20], seed=1, source_id="c1")
    e, c, i = order.locate(np.arange(300))
    for ep in range(3):
        pairs = set(zip(c[e == ep].tolist(), i[e == ep].tolist()))
        assert len(pairs) == 100 and all(0 <= it < [50, 0, 30, 20][ch] for ch, it in pairs)
    assert (c[:100] != c[100:200]).any() or (i[:100] != i[100:200]).any()  # a fresh order per epoch
    assert (np.diff(c[:100]) != 0).sum() == 2  # chunk-by-chunk: reads stay local


def test_append_stage_rules():
    a = spec([1.0], 8, names=["main/1"], fps=[{"t": 10}])
    assert append_stage([a], spec([1.0], 8, start=80, names=["main/1"], fps=[{"t": 10}])) == [a]
    b = spec([0.5, 0.5], 8, start=80, names=["main/1", "c1"], fps=[{"t": 10}, {"t": 3}])
    assert append_stage([a], b) == [a, b]
    changed = spec([0.5, 0.5], 8, start=80, names=["main/1", "c1"], fps=[{"t": 11}, {"t": 3}])
    with pytest.raises(ConfigError, match="^data.allow_data_change: shard 'main/1' changed"):
        append_stage([a], changed)
    assert append_stage([a], changed, allow_data_change=True) == [a, changed]
    c = spec([0.2, 0.8], 8, start=80, names=["main/1", "c1"], fps=[{"t": 10}, {"t": 3}])
    assert append_stage([a, b], c) == [a, c]  # b consumed nothing: replaced


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=6), st.integers(0, 400), st.integers(0, 5),
       st.integers(0, 5))
def test_new_seed_never_repeats_or_skips_within_an_epoch(chunk_items, switch, seed_a, seed_b):
    """Positions before `switch` read with seed a, after it with a + (switch, b): every epoch is a permutation."""
    old = SourceOrder(chunk_items, seed_a, "main/1")
    new = SourceOrder(chunk_items, [(0, seed_a), (switch, seed_b)], "main/1")
    total = sum(chunk_items)
    n = switch + 3 * total
    e0, c0, i0 = old.locate(np.arange(switch))
    e1, c1, i1 = new.locate(np.arange(switch, n))
    e, c, i = np.concatenate([e0, e1]), np.concatenate([c0, c1]), np.concatenate([i0, i1])
    for ep in range(n // total):
        pairs = list(zip(c[e == ep].tolist(), i[e == ep].tolist()))
        assert len(pairs) == total and len(set(pairs)) == total
    # the epoch in progress at the switch keeps its order; epochs beginning at/after it use seed b
    in_progress = switch // total
    for ep in range(n // total):
        expect = seed_a if ep * total < switch else seed_b
        assert new.epoch_seed(ep) == expect
    assert new.epoch_seed(in_progress) == (seed_a if in_progress * total < switch else seed_b)


def test_blend_source_seeds_follow_stages():
    a = spec([1.0], 8, names=["main/1"], seed=1)
    b = spec([0.5, 0.5], 8, start=80, names=["main/1", "c1"], seed=2)
    blend = Blend([a, b])
    assert blend.source_seeds("main/1") == [(0, 1), (80, 2)]
    assert blend.source_seeds("c1") == [(0, 2)]


def test_seed_change_on_resume_is_a_stage_and_is_described():
    from midtrain.data.blend import describe_change

    a = spec([1.0], 8, names=["main/1"], seed=1)
    b = spec([1.0], 8, start=80, names=["main/1"], seed=2)
    assert append_stage([a], b) == [a, b]
    text = describe_change(a, b)
    assert "seed 1 -> 2" in text and "no sample is repeated or skipped" in text


def test_sample_length_change_is_refused():
    import dataclasses

    a = dataclasses.replace(spec([1.0], 8, names=["main/1"]), sample_len=17)
    same = dataclasses.replace(spec([0.5, 0.5], 8, start=80, names=["main/1", "c1"]), sample_len=17)
    assert append_stage([a], same)[-1].sample_len == 17
    other = dataclasses.replace(same, sample_len=33)
    with pytest.raises(ConfigError, match="^train.max_seq_length: 32 differs from the checkpoint's 16"):
        append_stage([a], other)
    legacy = dataclasses.replace(a, sample_len=0)  # written before lengths were recorded
    assert append_stage([legacy], same)[0].sample_len == 17
    assert StageSpec.from_dict({k: v for k, v in a.to_dict().items() if k != "sample_len"}).sample_len == 0
