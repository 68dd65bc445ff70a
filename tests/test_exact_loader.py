"""The exact mixer on real shards: resume, world sizes, workers, stages, and a real 2-process run."""

import os
import random

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from midtrain.data.sharded_mixed import ShardedMixedDataset
from midtrain.errors import ConfigError

MIX = "main:0.6,code:0.3,math:0.1"


def make(real_tree, micro=4, workers=0, mix=MIX, **kw):
    data = ShardedMixedDataset(data_path=real_tree, mix_weights_str=mix, num_workers=workers, seed=7, **kw)
    data.connect(batch_size=micro, max_seq_length=7, global_batch_size=16)
    return data


def take(loader, n):
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


def global_samples(real_tree, n_samples, micro=4, world=1, workers=0, state=None, monkeypatch=None, **kw):
    """The global sample sequence as `world` ranks see it, interleaved back in global micro-batch order."""
    per_rank = []
    for rank in range(world):
        if monkeypatch is not None:
            monkeypatch.setenv("WORLD_SIZE", str(world))
            monkeypatch.setenv("GLOBAL_RANK", str(rank))
        loader = make(real_tree, micro=micro, workers=workers, **kw).train_dataloader(with_source_ids=True)
        if state is not None:
            loader.load_state_dict(state)
        per_rank.append(take(loader, n_samples // (micro * world)))
    rows = []
    for j in range(len(per_rank[0])):
        for rank in range(world):
            rows.append(per_rank[rank][j][0])
    return torch.cat(rows)


def test_single_stream_is_exact_per_global_batch(real_tree):
    loader = make(real_tree).train_dataloader(with_source_ids=True)
    batches = take(loader, 40)
    src = torch.cat([s for _, s in batches]).numpy()
    ids = loader.source_ids
    per_block = src.reshape(-1, 16)
    for block in per_block:  # 16-sample global batch: main/1, main/2 0.3 each, c1 0.3, m1 0.1
        counts = {ids[i]: int((block == i).sum()) for i in range(len(ids))}
        for sid, w in {"main/1": 0.3, "main/2": 0.3, "c1": 0.3, "m1": 0.1}.items():
            assert abs(counts[sid] - 16 * w) < 1
    tokens = torch.cat([t for t, _ in batches])
    assert ((tokens[:, 0] // 100).numpy() == np.array([{"main/1": 0, "main/2": 1, "c1": 2, "m1": 3}[ids[i]] for i in src])).all()
    assert loader.state_dict()["samples"] == 160


def test_the_main_process_runs_no_torch_reduction_per_batch(real_tree):
    """The vocabulary check runs in the main process on every micro-batch. As torch reductions (max/min) of more
    than 32k elements (pythia-160m's 16 x 2049) they ran on torch's intra-op thread pool, whose threads sleep
    between batches and took milliseconds to wake: on an H200, 12.7% of pythia-160m's wall time was in next().
    It runs in numpy now; this holds that no torch op other than views runs per batch in the loader's loop."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        seen: set = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Ops.seen.add(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    loader = make(real_tree, vocab_size=1 << 20).train_dataloader(with_source_ids=True)
    batches = iter(loader)
    next(batches)
    with Ops():
        for _ in range(4):
            tokens, src = next(batches)
    # views, the DataLoader's profiler markers and from_numpy's lift: nothing that computes
    assert Ops.seen <= {"view", "slice", "alias", "detach", "lift_fresh", "_record_function_enter_new",
                        "_record_function_exit"}, Ops.seen


@pytest.mark.parametrize("workers", [0, 2])
def test_tokens_and_sources_are_contiguous_views_of_one_batch(real_tree, workers):
    """The trainer sends each batch to the GPU with .to(non_blocking=True) from pinned memory. A strided view
    (the old layout's ``batch[:, :-1]``, sources in a last column) is first copied to a pageable temporary, and a
    copy from pageable memory waits for the GPU's queue to drain: a host sync per micro-batch, which the CPU
    sync count cannot see. Both parts must be contiguous, and views of one tensor (one crosses the worker
    boundary)."""
    loader = make(real_tree, workers=workers).train_dataloader(with_source_ids=True)
    for tokens, src in take(loader, 6):
        assert tokens.is_contiguous() and src.is_contiguous()
        assert tokens.shape == (4, 8) and src.shape == (4,)
        assert tokens.untyped_storage().data_ptr() == src.untyped_storage().data_ptr()
        assert set(src.tolist()) <= set(range(len(loader.source_ids)))


@pytest.mark.parametrize("world,workers,micro", [(1, 2, 4), (2, 0, 2), (4, 2, 1), (2, 1, 8)])
def test_resume_any_world_workers_micro_is_identical(real_tree, monkeypatch, world, workers, micro):
    reference = global_samples(real_tree, 320)
    stop = random.Random(world * 10 + workers).randrange(1, 10) * 16  # a step boundary
    first = make(real_tree).train_dataloader()
    take(first, stop // 4)
    state = first.state_dict()
    assert state["samples"] == stop
    resumed = global_samples(real_tree, 320 - stop, micro=micro, world=world, workers=workers, state=state,
                             monkeypatch=monkeypatch)
    assert torch.equal(resumed, reference[stop:])


def test_each_source_unique_over_its_pass(real_tree):
    """Every sample of every source once before any repeats, however small the others (litdata: 0.69)."""
    data = make(real_tree, mix="main:0.5,math:0.5")  # m1 is as big as a main shard but drawn twice as often
    loader = data.train_dataloader(with_source_ids=True)
    ids = loader.source_ids
    sizes = {s.id: s.samples(8) for s in data.discovery().shards}
    seen = {sid: [] for sid in ids}
    for tokens, src in loader:
        for row, s in zip(tokens, src):
            seen[ids[int(s)]].append(tuple(row.tolist()))
        if all(len(seen[sid]) >= sizes[sid] for sid in ids if sid.startswith("main/")):
            break
    for sid in ids:
        first_pass = seen[sid][:sizes[sid]]
        assert len(set(first_pass)) == len(first_pass)
    assert len(seen["m1"]) > sizes["m1"]  # the small source wrapped on its own meanwhile


def test_midtrain_stage_switches_exactly_and_continues_sources(real_tree, capsys):
    base = make(real_tree, mix="main:0.9,math:0.1").train_dataloader(with_source_ids=True)
    before = take(base, 20)  # 80 samples = 5 global batches
    state = base.state_dict()
    mid = make(real_tree, mix="main:0.7,code:0.2,math:0.1").train_dataloader(with_source_ids=True)
    mid.load_state_dict(state)
    assert "mixture change at sample 80" in capsys.readouterr().out
    after = take(mid, 20)
    ids = mid.source_ids
    src = torch.cat([s for _, s in after]).numpy().reshape(-1, 16)
    for block in src:
        names = [ids[i] for i in block]
        assert names.count("c1") in (3, 4) and names.count("m1") in (1, 2)
    assert [s["start"] for s in mid.state_dict()["stages"]] == [0, 80]
    # m1 continues where it stopped: its samples after the switch are not the ones before
    m1_before = {tuple(t.tolist()) for tb, sb in before for t, s in zip(tb, sb) if base.source_ids[int(s)] == "m1"}
    m1_after = [tuple(t.tolist()) for tb, sb in after for t, s in zip(tb, sb) if ids[int(s)] == "m1"]
    m1_samples = next(s for s in make(real_tree).discovery().shards if s.id == "m1").samples(8)
    assert m1_before and m1_after and len(m1_before) + len(m1_after) <= m1_samples  # still in m1's first epoch
    assert not m1_before & set(m1_after)


def test_changed_shard_is_refused_unless_allowed(real_tree):
    base = make(real_tree).train_dataloader()
    take(base, 4)
    state = base.state_dict()
    state["stages"][0]["fingerprints"][0] = {"tokens": 1, "chunks": [], "chunk_tokens": [1]}
    mid = make(real_tree, mix="main:0.5,code:0.5").train_dataloader()
    with pytest.raises(ConfigError, match="^data.allow_data_change: shard 'main/1' changed"):
        mid.load_state_dict(state)
    make(real_tree, mix="main:0.5,code:0.5", allow_data_change=True).train_dataloader().load_state_dict(state)


def test_litdata_state_is_refused(real_tree):
    loader = make(real_tree).train_dataloader()
    with pytest.raises(ConfigError, match="^data.mixer"):
        loader.load_state_dict({"dataset": {}})


def _ddp_worker(rank, world, real_tree, out_dir, port):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    loader = make(real_tree, micro=2, workers=1).train_dataloader()
    batches = take(loader, 10)
    torch.save(torch.stack(batches), os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def test_two_process_gloo_run_matches_single_process(real_tree, tmp_path):
    port = 29500 + os.getpid() % 1000
    mp.start_processes(_ddp_worker, args=(2, real_tree, str(tmp_path), port), nprocs=2, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    interleaved = torch.cat([torch.cat([ranks[0][j], ranks[1][j]]) for j in range(10)])
    assert torch.equal(interleaved, global_samples(real_tree, 40, micro=2))


@pytest.fixture(scope="module")
def unique_tree(tmp_path_factory):
    """Shards whose every 8-token sample starts with a distinct id: main/1 (60 samples), c1 (24)."""
    from midtrain.data.prepare import write_token_shard

    base = tmp_path_factory.mktemp("unique") / "data"
    write_token_shard(base / "1", [list(range(i * 8, i * 8 + 8)) for i in range(60)], chunk_tokens=8 * 12)
    write_token_shard(base / "c1", [list(range(1000 + i * 8, 1000 + i * 8 + 8)) for i in range(24)],
                      chunk_tokens=8 * 6)
    return base


def _by_source(loader, n_batches):
    ids, out = loader.source_ids, {}
    for tokens, src in take(loader, n_batches):
        for row, s in zip(tokens, src):
            out.setdefault(ids[int(s)], []).append(int(row[0]))
    return out


@pytest.mark.unit
@pytest.mark.parametrize("stop_batches", [3, 9, 14])
def test_new_seed_on_resume_never_repeats_a_sample_within_an_epoch(unique_tree, capsys, stop_batches):
    """Seed replicates / a changed data.seed: epochs in progress keep their order (the issue saw 3,000 repeats)."""
    def loader(seed, mix):
        data = ShardedMixedDataset(data_path=unique_tree, mix_weights_str=mix, num_workers=0, seed=seed)
        data.connect(batch_size=4, max_seq_length=7, global_batch_size=8)
        return data.train_dataloader(with_source_ids=True)

    first = loader(1, "main:0.75,code:0.25")
    before = _by_source(first, stop_batches)
    second = loader(2, "main:0.75,code:0.25")
    second.load_state_dict(first.state_dict())
    assert "seed 1 -> 2" in capsys.readouterr().out
    after = _by_source(second, 60)
    for sid, size in (("main/1", 60), ("c1", 24)):
        stream = before.get(sid, []) + after[sid]
        for e in range(len(stream) // size):
            epoch = stream[e * size:(e + 1) * size]
            assert len(set(epoch)) == size, (sid, e)  # every sample once per epoch, across the seed change
    # and the new seed does change what comes later: epochs that begin after the switch are reshuffled
    same = loader(1, "main:0.75,code:0.25")
    same.load_state_dict(first.state_dict())
    assert _by_source(same, 60)["main/1"] != after["main/1"]


def test_changed_max_seq_length_on_resume_is_refused(real_tree):
    base = make(real_tree).train_dataloader()
    take(base, 4)
    data = ShardedMixedDataset(data_path=real_tree, mix_weights_str=MIX, num_workers=0, seed=7)
    data.connect(batch_size=4, max_seq_length=15, global_batch_size=16)
    with pytest.raises(ConfigError, match="^train.max_seq_length: 15 differs from the checkpoint's 7"):
        data.train_dataloader().load_state_dict(base.state_dict())


READ_UNDER_LIMIT = r"""
import os, resource, sys
from midtrain.data.sharded_mixed import ShardedMixedDataset
data = ShardedMixedDataset(data_path=sys.argv[1], mix_weights_str="main:1", num_workers=0, seed=1)
data.connect(batch_size=8, max_seq_length=63, global_batch_size=8)
loader = data.train_dataloader()
open_now = len(os.listdir("/proc/self/fd"))
limit = open_now + 100
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
total = sum(data.discovery().by_id()["main/1"].samples(64) for _ in [0])
seen = 0
for batch in loader:
    seen += len(batch)
    if seen >= total:
        break
print(f"limit {limit} chunks {len(data.discovery().by_id()['main/1'].chunk_tokens)} samples {seen} of {total} "
      f"open {len(os.listdir('/proc/self/fd'))}")
"""


def test_a_shard_of_many_more_chunks_than_open_files_reads_to_the_end(tmp_path):
    """Issue 26: one np.memmap per chunk held a file descriptor each; at `ulimit -n` a long run stopped with
    'unreadable while training [Errno 24]'. 400 chunks under a limit of (open now + 100) read to the end."""
    import subprocess
    import sys

    from support import REPO
    from midtrain.data.prepare import write_fake_index

    write_fake_index(tmp_path / "data" / "1", [640] * 400)
    script = tmp_path / "read.py"
    script.write_text(READ_UNDER_LIMIT)
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "data")], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=REPO), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    words = r.stdout.split()
    limit, chunks, seen, total, still_open = (int(words[i]) for i in (1, 3, 5, 7, 9))
    assert chunks == 400 > limit and seen == total == 4000, r.stdout
    assert still_open < limit, r.stdout
