import os
import random

# One compute thread per process, set before anything imports torch, and inherited by every process a test
# starts (the zygote, trainers, srun ranks, SLURM jobs): the suite runs two workers, a test SLURM cluster and
# multi-rank runs on two cores, where torch's default of one OpenMP thread per core oversubscribed them and
# spinning threads took CPU from working ones (a CPU-bound test under load: 15-20% less CPU and wall time).
# What the tests check does not depend on it; a value already set is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

from midtrain.data.prepare import write_fake_index, write_token_shard  # noqa: E402
from support.runs import DOCS, WORDS  # noqa: E402



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


# The longest files first: with `pytest -n 2 --dist loadfile --no-loadscope-reorder` (make test) each worker
# takes whole files in collection order, so a long file collected last would run alone at the end (measured:
# the demo was the tail for 9 minutes while xdist's default reorder, by test count, scheduled it late).
# Same order in every worker (xdist requires it).
HEAVY_FIRST = ("test_slurm.py", "test_demo.py", "test_parallel.py", "test_trainer.py", "test_study_run.py",
               "test_signals.py",
               "test_fault_classes.py", "test_posttrain.py", "test_import.py", "test_slurm_nodes.py", "test_extras.py",
               "test_migrate.py", "test_distributed.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the order within a file is kept


# ---- fixtures several test files share ----

@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from midtrain.tokenizer import train_bpe

    return train_bpe(DOCS * 3, tmp_path_factory.mktemp("tok") / "tok", vocab_size=400)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    from midtrain.tokenizer import train_bpe

    texts = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(40)) + f" {i} plus {i % 7} is {i + i % 7}."
             for i in range(200)]
    return train_bpe(texts, tmp_path_factory.mktemp("tok") / "tok", vocab_size=400)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tok_dir):
    """A real (untrained) litgpt checkpoint: lit_model.pth + model_config.yaml + the tokenizer files."""
    import shutil

    import torch
    from litgpt import GPT, Config
    from litgpt.utils import save_config

    out = tmp_path_factory.mktemp("ckpt") / "final"
    out.mkdir()
    config = Config(block_size=64, vocab_size=400, padded_vocab_size=400, n_layer=2, n_head=2, n_embd=32,
                    bias=True, rotary_percentage=1.0, parallel_residual=False)
    torch.manual_seed(0)
    torch.save({"model": GPT(config).state_dict()}, out / "lit_model.pth")
    save_config(config, out)
    for f in tok_dir.iterdir():
        shutil.copy(f, out / f.name)
    return out
