import os
import random
import subprocess
import sys

# One compute thread per process, set before anything imports torch, and inherited by every process a test
# starts (the zygote, trainers, srun ranks, SLURM jobs): the suite runs two workers, a test SLURM cluster and
# multi-rank runs on two cores, where torch's default of one OpenMP thread per core oversubscribed them and
# spinning threads took CPU from working ones (a CPU-bound test under load: 15-20% less CPU and wall time).
# What the tests check does not depend on it; a value already set is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

from midtrain.data.prepare import write_fake_index, write_token_shard  # noqa: E402

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


_ZYGOTE = None


def _zygote():
    """This worker's zygote (tests/cli_zygote.py): libraries imported once, a forked child per call."""
    global _ZYGOTE
    if _ZYGOTE is None or _ZYGOTE.poll() is not None:
        import atexit

        _ZYGOTE = subprocess.Popen([sys.executable, os.path.join(REPO, "tests", "cli_zygote.py")], cwd=REPO,
                                   env=dict(os.environ, PYTHONPATH=REPO), stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, bufsize=0)
        if _readline(_ZYGOTE.stdout.fileno(), 300) != "ready":
            raise RuntimeError("the CLI zygote did not start")
        atexit.register(_ZYGOTE.kill)
    return _ZYGOTE


def _readline(fd: int, timeout: float) -> str | None:
    """One line from an unbuffered pipe, or None after ``timeout`` seconds (select sees every byte)."""
    import select
    import time

    deadline, data = time.time() + timeout, b""
    while not data.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.time()))
        if not ready:
            return None
        chunk = os.read(fd, 1)
        if not chunk:
            raise RuntimeError("the CLI zygote exited")
        data += chunk
    return data.decode().strip()


def run_cli(*args, cwd=None, env=None, timeout=300):
    """Run ``python -m midtrain ...`` as a user would, in its own process; returns CompletedProcess.

    The process is forked from a zygote that imported the libraries once (tests/cli_zygote.py), so a
    call starts in milliseconds instead of a new interpreter's ~6.5 s; MIDTRAIN_TEST_NO_ZYGOTE=1 starts
    a fresh interpreter per call instead."""
    import json
    import signal
    import tempfile

    argv = [str(a) for a in args]
    e = dict(os.environ, PYTHONPATH=REPO)
    e.update(env or {})
    if os.environ.get("MIDTRAIN_TEST_NO_ZYGOTE"):
        return subprocess.run([sys.executable, "-m", "midtrain", *argv], capture_output=True, text=True,
                              cwd=cwd or REPO, env=e, timeout=timeout)
    global _ZYGOTE
    z = _zygote()
    pid = None
    with tempfile.TemporaryDirectory() as tmp:
        out, err = os.path.join(tmp, "out"), os.path.join(tmp, "err")
        try:
            z.stdin.write((json.dumps({"argv": argv, "env": e, "cwd": str(cwd or REPO), "out": out, "err": err})
                           + "\n").encode())
            z.stdin.flush()
            fd = z.stdout.fileno()
            pid = int(_readline(fd, 60))
            line = _readline(fd, timeout)
            if line is None:
                raise subprocess.TimeoutExpired([sys.executable, "-m", "midtrain", *argv], timeout)
            code = int(line)
        except BaseException:  # a timeout, an interrupt, a broken pipe: the protocol is out of step, start afresh
            if pid:
                for kill in (os.killpg, os.kill):  # the child leads its own process group (what it started, too)
                    try:
                        kill(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
            z.kill()
            _ZYGOTE = None
            raise
        with open(out) as f_out, open(err) as f_err:
            return subprocess.CompletedProcess([sys.executable, "-m", "midtrain", *argv], code, f_out.read(),
                                               f_err.read())


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


def ctrl_c_until_it_ends(proc, ready, timeout=60) -> str:
    """Wait until ``proc`` (its own process group) says its stop handlers are in place (a file in ``ready``,
    signals.READY_ENV), then send SIGINT to its group every 0.25 s until it ends; returns its output. Repeated: two
    SIGINTs that land while the interpreter is inside one C call run its handler once."""
    import signal
    import time

    deadline = time.time() + timeout
    while not os.listdir(ready):
        assert time.time() < deadline and proc.poll() is None, proc.communicate()[0][-2000:]
        time.sleep(0.02)
    while proc.poll() is None and time.time() < deadline:
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.25)
    return proc.communicate(timeout=timeout)[0]
