import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from midtrain.data.mixture import mix_spec, parse_weights, resolve_mixture
from midtrain.data.shards import Discovery, Shard
from midtrain.errors import ConfigError

pytestmark = pytest.mark.unit  # the fast tier: `make test-unit`

PREFIX = {"main": "", "code": "c", "math": "m", "qa": "q", "web": "w"}


def tree(spec: dict[str, list[int]]) -> Discovery:
    """spec: type -> token count per shard."""
    shards = []
    for t, sizes in spec.items():
        for i, n in enumerate(sizes, start=1):
            sid = f"main/{i}" if t == "main" else f"{PREFIX[t]}{i}"
            shards.append(Shard(sid, t, i, f"/x/{sid}", (n,)))
    types = {k: v for k, v in PREFIX.items() if k != "main"} | {"books": "b"}
    return Discovery("/x", shards, [], types)


def resolve(d, **kw):
    return resolve_mixture(mix_spec(**kw), d)


def test_default_is_main_only_split_equally():
    m = resolve(tree({"main": [10, 30], "code": [5]}))
    assert m.weights() == {"main/1": 0.5, "main/2": 0.5}
    assert m.unused_types == ["code"]


def test_weighted_equal_and_tokens_split():
    d = tree({"main": [10, 30], "code": [5, 15]})
    m = resolve(d, mix_weights_str="main:0.8,code:0.2")
    assert m.weights() == pytest.approx({"main/1": 0.4, "main/2": 0.4, "c1": 0.1, "c2": 0.1})
    m = resolve(d, mix_weights_str="main:0.8,code:0.2", within_type="tokens")
    assert m.weights() == pytest.approx({"main/1": 0.2, "main/2": 0.6, "c1": 0.05, "c2": 0.15})


def test_weights_are_normalised_and_zero_is_excluded():
    d = tree({"main": [10], "code": [5], "math": [5]})
    m = resolve(d, mix_weights_str="main:4,code:1,math:0")
    assert m.weights() == pytest.approx({"main/1": 0.8, "c1": 0.2})
    assert [s.id for s in m.excluded] == ["m1"]
    assert m.unused_types == []


def test_literal_exact_ids():
    d = tree({"main": [10, 10], "qa": [1, 1, 1]})
    m = resolve(d, literal_weights_str="main/1:0.8,q1:0.1,q2:0.1")
    assert m.weights() == pytest.approx({"main/1": 0.8, "q1": 0.1, "q2": 0.1})
    with pytest.raises(ConfigError, match="^literal_weights_str: shard 'q9' not found"):
        resolve(d, literal_weights_str="main/1:0.8,q9:0.2")


def test_proportional_by_tokens_with_type_multipliers():
    d = tree({"main": [30, 10], "code": [10]})
    assert resolve(d, proportional_sampling=True).weights() == pytest.approx({"main/1": 0.6, "main/2": 0.2, "c1": 0.2})
    m = resolve(d, mix_weights_str="main:1,code:2", proportional_sampling=True)
    assert m.weights() == pytest.approx({"main/1": 0.5, "main/2": 10 / 60, "c1": 20 / 60})


def test_mix_config_json_formats():
    d = tree({"main": [10], "code": [10], "qa": [4, 1]})
    assert resolve(d, mix_config={"weights": {"main": 0.8, "code": 0.2}}).type_weights() == pytest.approx(
        {"main": 0.8, "code": 0.2})
    m = resolve(d, mix_config={"literal_weights": {"main/1": 0.9, "q2": 0.1}})
    assert m.weights() == pytest.approx({"main/1": 0.9, "q2": 0.1})
    m = resolve(d, mix_config={"weights": "main:1,qa:1", "proportional_sampling": True})
    assert m.weights() == pytest.approx({"main/1": 10 / 15, "q1": 4 / 15, "q2": 1 / 15})
    m = resolve(d, mix_config={"weights": {"main": 1, "qa": 1}, "within_type": "tokens"})
    assert m.weights() == pytest.approx({"main/1": 0.5, "q1": 0.4, "q2": 0.1})


@pytest.mark.parametrize("kw,pattern", [
    (dict(mix_weights_str="main0.8"), r"^mix_weights_str: malformed pair 'main0.8'"),
    (dict(mix_weights_str="main:0.8,code:abc"), r"^mix_weights_str: 'code:abc': weight 'abc' is not a number"),
    (dict(mix_weights_str="main:-1"), r"^mix_weights_str: 'main:-1': weight must be >= 0"),
    (dict(mix_weights_str="main:nan"), r"^mix_weights_str: 'main:nan': weight must be finite"),
    (dict(mix_weights_str="main:inf"), r"^mix_weights_str: 'main:inf': weight must be finite"),
    (dict(mix_weights_str="main:0,code:0"), r"^mix_weights_str: all weights are zero"),
    (dict(mix_weights_str="main:1,main:2"), r"^mix_weights_str: duplicate key 'main'"),
    (dict(mix_weights_str="main:1,cod:1"), r"^mix_weights_str: unknown type 'cod'"),
    (dict(mix_weights_str="main:1,books:0.1"), r"^mix_weights_str: type 'books' has weight 0.1 but no shards"),
    (dict(literal_weights_str="main/1:1,main/7:1"), r"^literal_weights_str: shard 'main/7' not found"),
    (dict(mix_weights_str="main:1", literal_weights_str="main/1:1"), r"^literal_weights_str: only one source"),
    (dict(mix_weights_str="main:1", mix_config={"weights": {"main": 1}}), r"^mix_config_path: only one source"),
    (dict(mix_config={"weights": {"main": 1}, "mix_weight": 1}), r"^mix_config_path: unknown key 'mix_weight'"),
    (dict(mix_config={"weights": {"main": "x"}}), r"^mix_config_path.weights: 'main:x': weight 'x' is not a number"),
    (dict(mix_config={"weights": {"main": True}}), r"^mix_config_path.weights: .*not a boolean"),
    (dict(mix_config={"weights": {"main": 1}, "literal_weights": {}}), r"^mix_config_path: give either"),
    (dict(mix_config=[1]), r"^mix_config_path: the mix config must be a JSON object"),
    (dict(literal_weights_str="main/1:1", proportional_sampling=True), r"^proportional_sampling: cannot be combined"),
    (dict(within_type="bytes"), r"^within_type: 'bytes' is not one of"),
])
def test_errors_name_field_and_value(kw, pattern):
    d = tree({"main": [10, 10], "code": [5]})
    with pytest.raises(ConfigError, match=pattern):
        resolve(d, **kw)


def test_no_main_shards_default_is_an_error():
    with pytest.raises(ConfigError, match="^data_path: no main shards"):
        resolve(tree({"code": [5]}))


def test_parse_weights_tolerates_spaces_and_trailing_comma():
    assert parse_weights(" main : 0.8 , code:0.2 ,", "f") == (("main", 0.8), ("code", 0.2))


@pytest.mark.parametrize("text,pattern", [
    ("main:0.8,,code:0.2", r"^f: empty pair at position 2"),
    (",main:1", r"^f: empty pair at position 1"),
    ("main:1_0", r"^f: 'main:1_0': weight '1_0' is not a number"),
    ("main:0x1", r"^f: 'main:0x1': weight '0x1' is not a number"),
])
def test_parse_weights_refuses_what_float_would_misread(text, pattern):
    with pytest.raises(ConfigError, match=pattern):
        parse_weights(text, "f")


def test_literal_weights_list_a_named_types_other_shards_as_excluded():
    d = tree({"main": [10, 10, 10], "code": [5]})
    m = resolve(d, literal_weights_str="main/1:0.8,c1:0.2")
    assert [s.id for s in m.excluded] == ["main/2", "main/3"]  # read at weight 0, and shown so
    with pytest.raises(ConfigError, match=r"^literal_weights_str: 'main' is a shard type, not a shard.*mix_weights_str"):
        resolve(d, literal_weights_str="main:0.8,code:0.2")


# ---- properties ----
types_st = st.lists(st.sampled_from(["code", "math", "qa", "web"]), unique=True, max_size=4)


@st.composite
def trees_and_weights(draw):
    spec = {"main": draw(st.lists(st.integers(1, 10**6), min_size=1, max_size=5))}
    for t in draw(types_st):
        spec[t] = draw(st.lists(st.integers(1, 10**6), min_size=1, max_size=5))
    weights = {t: draw(st.one_of(st.just(0.0), st.floats(1e-6, 100))) for t in spec}
    if sum(weights.values()) == 0:
        weights["main"] = 1.0
    return tree(spec), weights


@settings(max_examples=300, deadline=None)
@given(trees_and_weights(), st.sampled_from(["equal", "tokens"]), st.booleans())
def test_weighted_properties(tw, within, proportional):
    d, weights = tw
    text = ",".join(f"{t}:{w!r}" for t, w in weights.items())
    m = resolve(d, mix_weights_str=text, within_type=within, proportional_sampling=proportional)
    ws = m.weights()
    assert math.isclose(sum(ws.values()), 1.0, rel_tol=1e-9)
    assert all(w > 0 for w in ws.values())
    total = sum(weights.values()) if not proportional else None
    by_type = d.by_type()
    for t, w in weights.items():
        got = sum(ws.get(s.id, 0.0) for s in by_type[t])
        if proportional:
            denom = sum(weights[u] * s.tokens for u in weights for s in by_type[u])
            assert math.isclose(got, weights[t] * sum(s.tokens for s in by_type[t]) / denom, rel_tol=1e-9, abs_tol=1e-12)
        else:
            assert math.isclose(got, w / total, rel_tol=1e-9, abs_tol=1e-12)  # type totals preserved
        if w == 0:
            assert all(s.id in {e.id for e in m.excluded} for s in by_type[t])
    if proportional:  # within a type, shares are proportional to tokens
        for t, shards in by_type.items():
            if weights[t] > 0:
                for s in shards:
                    assert math.isclose(ws[s.id] / ws[shards[0].id], s.tokens / shards[0].tokens, rel_tol=1e-9)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 10**6), min_size=1, max_size=8), st.data())
def test_literal_properties(sizes, data):
    d = tree({"main": sizes})
    chosen = data.draw(st.lists(st.sampled_from([s.id for s in d.shards]), unique=True, min_size=1))
    ws = {sid: data.draw(st.floats(0.001, 1000)) for sid in chosen}
    m = resolve(d, literal_weights_str=",".join(f"{k}:{v!r}" for k, v in ws.items()))
    total = sum(ws.values())
    assert m.weights() == pytest.approx({k: v / total for k, v in ws.items()})
    assert [s.shard.id for s in m.sources] == [s.id for s in d.shards if s.id in ws]  # natural order


def test_shard_ids_among_type_weights():
    d = tree({"main": [10, 10], "qa": [1, 1, 1, 1], "code": [5, 5]})
    m = resolve(d, mix_weights_str="main:0.8,q1:0.15,q2:0.03,q3:0.015,q4:0.005")
    assert m.weights() == pytest.approx({"main/1": 0.4, "main/2": 0.4, "q1": 0.15, "q2": 0.03, "q3": 0.015, "q4": 0.005})
    assert m.unused_types == ["code"]
    m = resolve(d, mix_weights_str="code:0.5,c1:0.25,main:0.25")  # c1 exact, code's weight goes to c2
    assert m.weights() == pytest.approx({"main/1": 0.125, "main/2": 0.125, "c1": 0.25, "c2": 0.5})
    m = resolve(d, mix_weights_str="main:1,q1:0")
    assert [s.id for s in m.excluded] == ["q1"]
    with pytest.raises(ConfigError, match="type 'code' has weight 1 but all its shards are also named"):
        resolve(d, mix_weights_str="code:1,c1:1,c2:1")


def test_an_empty_weights_string_is_refused_not_main_only():
    """`mix_weights_str: ''` used to mean "main only" without a word; no key at all still does."""
    from midtrain.data.mixture import mix_spec

    for field in ("mix_weights_str", "literal_weights_str"):
        for value in ("", "  "):
            with pytest.raises(ConfigError, match=f"^{field}: '{value}' is empty: give weights"):
                mix_spec(**{field: value})
    assert mix_spec().mode == "default"
