import os
import random
import subprocess
import sys

import pytest

from midtrain.data.prepare import write_fake_index, write_token_shard

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def fake_tree(tmp_path):
    """Build a shard tree of index.json-only shards: fake_tree({"1": [100, 50], "c1": [30]})."""

    def make(spec: dict, base=None):
        base = base or tmp_path / "shards"
        base.mkdir(parents=True, exist_ok=True)
        for name, chunks in spec.items():
            write_fake_index(base / name, chunks)
        return base

    return make


@pytest.fixture(scope="session")
def real_tree(tmp_path_factory):
    """Real litdata shards: main/1 (ids 0-99), main/2 (100-199), c1 (200-299), m1 (300-399); val sets."""
    base = tmp_path_factory.mktemp("real") / "data"
    rng = random.Random(0)
    offsets = {"1": 0, "2": 100, "c1": 200, "m1": 300}
    for name, off in offsets.items():
        docs = [[off + rng.randrange(100) for _ in range(rng.randrange(20, 120))] for _ in range(120)]
        write_token_shard(base / name, docs, chunk_tokens=2000)
    val = base.parent / "val"
    for name, off in (("1", 0), ("c1", 200), ("gsm8k", 400)):
        docs = [[off + rng.randrange(100) for _ in range(60)] for _ in range(20)]
        write_token_shard(val / name, docs, chunk_tokens=500)
    return base


def run_cli(*args, cwd=None, env=None):
    """Run ``python -m midtrain ...`` as a user would; returns CompletedProcess."""
    e = dict(os.environ, PYTHONPATH=REPO)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "midtrain", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or REPO, env=e, timeout=300)


# The longest files first: with `pytest -n 2 --dist loadfile --no-loadscope-reorder` (make test) each worker
# takes whole files in collection order, so a long file collected last would run alone at the end (measured:
# the demo was the tail for 9 minutes while xdist's default reorder, by test count, scheduled it late).
# Same order in every worker (xdist requires it).
HEAVY_FIRST = ("test_slurm.py", "test_demo.py", "test_trainer.py", "test_study_run.py", "test_signals.py",
               "test_fault_classes.py", "test_posttrain.py", "test_import.py", "test_slurm_nodes.py", "test_extras.py",
               "test_migrate.py", "test_distributed.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the order within a file is kept
