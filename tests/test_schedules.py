import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from midtrain.train.schedules import Schedule, anneal, warmup_steps

pytestmark = pytest.mark.unit  # the fast tier: `make test-unit`


def test_cosine_warmup_peak_and_floor():
    s = Schedule("cosine", 3e-4, 1e-6, total_steps=1000, warmup_steps=100)
    assert s.lr_at(0) == pytest.approx(3e-6)
    assert s.lr_at(99) == pytest.approx(3e-4)
    assert s.lr_at(100) == pytest.approx(3e-4)
    assert s.lr_at(550) == pytest.approx((3e-4 + 1e-6) / 2)
    assert s.lr_at(1000) == pytest.approx(1e-6)
    assert s.lr_at(5000) == pytest.approx(1e-6)  # never below min_lr past the horizon


def test_horizon_is_the_whole_run_not_a_constant():
    a = Schedule("cosine", 1.0, 0.0, total_steps=61035, warmup_steps=6104)
    assert a.lr_at(61035) == pytest.approx(0.0) and a.lr_at(30000) > 0.5


def test_wsd_stable_then_decay_to_min_lr():
    s = Schedule("wsd", 1.0, 0.1, total_steps=100, warmup_steps=10, decay_fraction=0.2)
    assert s.decay_start == 80
    assert all(s.lr_at(t) == 1.0 for t in range(10, 80))
    assert s.lr_at(90) == pytest.approx(0.55)
    assert s.lr_at(100) == pytest.approx(0.1)
    s2 = Schedule("wsd", 1.0, 0.0, total_steps=100, warmup_steps=10, stable_steps=30, decay_shape="cosine")
    assert s2.decay_start == 40 and s2.lr_at(70) == pytest.approx(0.5)


def test_decay_from_checkpoint_lr_respects_min_lr():
    s = Schedule("decay", 1.0, 0.05, total_steps=200, decay_from_step=100, decay_from_lr=0.4)
    assert s.lr_at(100) == pytest.approx(0.4)
    assert s.lr_at(150) == pytest.approx(0.225)
    assert s.lr_at(200) == pytest.approx(0.05) and s.lr_at(300) == pytest.approx(0.05)


def test_constant_and_warmup_helpers():
    s = Schedule("constant", 2.0, 0.0, total_steps=10, warmup_steps=4)
    assert [s.lr_at(t) for t in range(6)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    assert warmup_steps(61035, None, 0.1) == 6104
    assert warmup_steps(100, 500, None) == 100
    assert warmup_steps(100, None, None) == 0
    with pytest.raises(ValueError):
        Schedule("step", 1.0, 0.0, 10)


@given(st.sampled_from(["cosine", "wsd", "constant"]), st.integers(1, 5000), st.floats(0, 0.5),
       st.sampled_from(["linear", "cosine", "sqrt"]))
def test_bounded_and_monotone_after_warmup(name, total, frac, shape):
    s = Schedule(name, 1e-3, 1e-5, total_steps=total, warmup_steps=int(frac * total), decay_shape=shape)
    lrs = [s.lr_at(t) for t in range(total + 2)]
    assert all(1e-5 - 1e-12 <= lr <= 1e-3 + 1e-12 for lr in lrs[s.warmup_steps:])
    after = lrs[s.warmup_steps:]
    assert all(a >= b - 1e-15 for a, b in zip(after, after[1:]))
    assert lrs[-1] == pytest.approx(1e-5 if name != "constant" else 1e-3)


def test_anneal_shapes():
    assert anneal(0.25, 1, 0, "sqrt") == pytest.approx(0.5)
    assert anneal(0.5, 1, 0, "cosine") == pytest.approx(0.5)
    assert math.isclose(anneal(2, 1, 0), 0)
