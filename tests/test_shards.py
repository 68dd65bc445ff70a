import os

import pytest

from midtrain.data.shards import DEFAULT_SHARD_TYPES, discover, discover_val_sets, parse_shard_name, resolve_shard_types
from midtrain.errors import ConfigError

pytestmark = pytest.mark.unit  # the fast tier: `make test-unit`


def test_numbered_and_typed_in_natural_order(fake_tree):
    names = [str(i) for i in range(1, 61)] + ["c10", "c2", "c1", "m1", "q1", "q2", "q3", "q4"]
    base = fake_tree({n: [100, 20] for n in names})
    d = discover(base)
    ids = [s.id for s in d.shards]
    assert ids[:60] == [f"main/{i}" for i in range(1, 61)]  # > 50 main shards, 2 before 10
    assert ids[60:] == ["c1", "c2", "c10", "m1", "q1", "q2", "q3", "q4"]
    s = d.by_id()["c10"]
    assert (s.type, s.index, s.tokens, s.path) == ("code", 10, 120, os.path.join(base, "c10"))
    assert s.samples(50) == 2  # blocks never span chunks: 100 // 50 + 20 // 50
    assert d.ignored == []


def test_stray_folders_and_files_are_reported(fake_tree):
    base = fake_tree({"1": [10], "cx1": [10], "code1": [10]})
    (base / "notes.txt").write_text("x")
    (base / "c2").mkdir()  # typed name, no index.json
    (base / ".cache").mkdir()  # hidden: not reported
    d = discover(base)
    assert [s.id for s in d.shards] == ["main/1"]
    assert {(i.name, i.reason) for i in d.ignored} == {
        ("c2", "no index.json"), ("code1", "name matches no shard type"),
        ("cx1", "name matches no shard type"), ("notes.txt", "not a folder")}


def test_custom_types_add_and_override(fake_tree):
    base = fake_tree({"f1": [10], "py1": [10], "c1": [10]})
    d = discover(base, {"flan": "f", "code": "py"})
    assert {s.id: s.type for s in d.shards} == {"f1": "flan", "py1": "code"}
    assert [i.name for i in d.ignored] == ["c1"]


def test_prefix_collision_is_longest_match_never_accident(fake_tree):
    base = fake_tree({"c1": [10], "cc1": [10], "cc12": [10], "ccc1": [10]})
    d = discover(base, {"common_crawl": "cc"})
    assert {s.id: s.type for s in d.shards} == {"c1": "code", "cc1": "common_crawl", "cc12": "common_crawl"}
    assert [i.name for i in d.ignored] == ["ccc1"]


def test_duplicate_prefix_and_bad_type_names_are_errors():
    with pytest.raises(ConfigError, match="share the prefix 'c'"):
        resolve_shard_types({"cpp": "c"})
    with pytest.raises(ConfigError, match="shard_types"):
        resolve_shard_types({"x": "1"})
    with pytest.raises(ConfigError, match="not allowed"):
        resolve_shard_types({"main": "mm"})


@pytest.mark.parametrize("name,expected", [
    ("7", ("main", 7)), ("007", ("main", 7)), ("c3", ("code", 3)), ("q12", ("qa", 12)),
    ("c", None), ("3c", None), ("x1", None), ("c1a", None), ("", None),
])
def test_parse_shard_name(name, expected):
    assert parse_shard_name(name, DEFAULT_SHARD_TYPES) == expected


def test_base_that_is_one_dataset_is_a_single_main_shard(fake_tree, tmp_path):
    base = fake_tree({"x": [5, 6]}, base=tmp_path / "root")
    d = discover(base / "x")
    assert [(s.id, s.type, s.tokens) for s in d.shards] == [("main", "main", 11)]


def test_missing_base_and_broken_index(tmp_path):
    with pytest.raises(ConfigError, match="^data_path: .* is not a directory"):
        discover(tmp_path / "nope")
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "index.json").write_text("{not json")
    with pytest.raises(ConfigError, match="index.json: not a readable litdata token index"):
        discover(tmp_path)


def test_val_sets_grouped_by_type_and_named(fake_tree, tmp_path):
    base = fake_tree({"1": [10], "2": [10], "c1": [10], "gsm8k": [10]}, base=tmp_path / "val")
    (base / "empty").mkdir()
    sets = discover_val_sets(base)
    assert list(sets) == ["main", "code", "gsm8k"]
    assert [s.id for s in sets["main"]] == ["main/1", "main/2"]
    assert discover_val_sets(base / "gsm8k").keys() == {"val"}
    with pytest.raises(ConfigError, match="^val_data_path: no litdata datasets"):
        discover_val_sets(base / "empty")
