"""The real launcher against a real single-node SLURM cluster (started here, stopped by pid).

sbatch --wait through model_config_file; an array job over a list file; a requeue: the job is
signalled mid-run, requeues itself and finishes from its checkpoint with no repeated sample.
In CI (CI=true) these tests fail, never skip, when SLURM cannot start.
"""

import os
import random
import sys
import time

import pytest

from conftest import REPO
from midtrain.data.prepare import write_token_shard
from slurm_cluster import SlurmCluster, SlurmUnavailable

LAUNCHER = os.path.join(REPO, "training_scripts", "small_model_pretrain.sh")
CPU_JOB = ["--gpus-per-node=0", "--ntasks-per-node=1", "--cpus-per-task=1", "--time=20"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        c = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    except SlurmUnavailable as e:
        if os.environ.get("CI"):
            pytest.fail(f"SLURM could not start in CI: {e}")
        pytest.skip(f"SLURM unavailable: {e}")
    yield c
    c.stop()


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_data")
    rng = random.Random(0)
    for name, lo, hi in (("1", 0, 1500), ("2", 0, 1500), ("m1", 1500, 2048)):
        write_token_shard(root / "shards" / name, [[rng.randrange(lo, hi) for _ in range(300)] for _ in range(200)])
    for name, lo, hi in (("1", 0, 1500), ("m1", 1500, 2048)):
        write_token_shard(root / "val" / name, [[rng.randrange(lo, hi) for _ in range(300)] for _ in range(20)])
    return root


def job_env(cluster, demo_data, ckpt_root, **extra):
    env = dict(cluster.env, DATA_ROOT=str(demo_data), CKPT_ROOT=str(ckpt_root), PYTHONPATH=REPO,
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    env.pop("model_config_file", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def sbatch(cluster, env, *args, wait=True):
    r = cluster.run("sbatch", "--parsable", *(["--wait"] if wait else []), *CPU_JOB, *args, env=env, check=False,
                    cwd=REPO, timeout=600)
    return r


@pytest.fixture(scope="module")
def base_run(cluster, demo_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("base")
    env = job_env(cluster, demo_data, tmp / "ckpt", model_config_file="midtrain_configs/demo/pretrain.yaml",
                  MIDTRAIN_SAMPLE_TRACE=tmp / "trace")
    r = sbatch(cluster, env, "-o", tmp / "job-%j.out", LAUNCHER)
    return tmp, env, r


def test_sbatch_wait_with_model_config_file(cluster, base_run):
    tmp, env, r = base_run
    assert r.returncode == 0, r.stderr + cluster.logs()
    log = (tmp / f"job-{r.stdout.strip()}.out").read_text()
    assert "mixture: weighted" in log and "main/1" in log  # the plan is printed before training
    assert "done: 120 steps" in log
    assert (tmp / "ckpt" / "demo" / "base" / "final" / "lit_model.pth").is_file()
    again = sbatch(cluster, env, "-o", tmp / "again-%j.out", LAUNCHER)
    assert again.returncode == 0
    assert "run already complete" in (tmp / f"again-{again.stdout.strip()}.out").read_text()


def test_array_job_over_a_list_file(cluster, base_run, demo_data, tmp_path):
    base_tmp, _, r = base_run
    assert r.returncode == 0
    lst = tmp_path / "sweep.txt"
    lst.write_text("# midtrain and continued-pretraining arms from the demo base run\n"
                   "midtrain_configs/demo/midtrain.yaml\n\nmidtrain_configs/demo/cpt.yaml\n")
    env = job_env(cluster, demo_data, base_tmp / "ckpt", CONFIG_LIST=lst)
    r = sbatch(cluster, env, "--array=1-2", "-o", tmp_path / "arr-%A_%a.out", LAUNCHER)
    assert r.returncode == 0, r.stderr + cluster.logs()
    for arm in ("midtrain", "cpt"):
        assert (base_tmp / "ckpt" / "demo" / arm / "final" / "lit_model.pth").is_file()
    logs = "".join(p.read_text() for p in tmp_path.glob("arr-*.out"))
    assert logs.count("mixture change at sample 960") == 2
    bad = job_env(cluster, demo_data, base_tmp / "ckpt", CONFIG_LIST=lst)
    r = sbatch(cluster, bad, "--array=5", "-o", tmp_path / "bad-%A_%a.out", LAUNCHER)
    assert r.returncode != 0
    assert "has no line 5" in "".join(p.read_text() for p in tmp_path.glob("bad-*.out"))


def test_requeue_resumes_without_repeating_samples(cluster, base_run, demo_data, tmp_path):
    base_tmp, _, r = base_run
    assert r.returncode == 0
    env = job_env(cluster, demo_data, tmp_path / "ckpt", model_config_file="midtrain_configs/demo/pretrain.yaml",
                  MIDTRAIN_SAMPLE_TRACE=tmp_path / "trace")
    r = sbatch(cluster, env, "-o", tmp_path / "job.out", LAUNCHER, wait=False)
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip()
    log = tmp_path / "job.out"
    deadline = time.time() + 300
    while "step 40/" not in (log.read_text() if log.exists() else ""):
        assert time.time() < deadline, cluster.logs()
        time.sleep(0.5)
    cluster.run("scancel", "--signal=USR1", "--batch", job)  # what --signal=B:USR1@180 does before the limit
    requeued = False
    while True:
        assert time.time() < deadline, log.read_text() + cluster.logs()
        state = cluster.job_state(job)
        if state == "PENDING" and not requeued:
            cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now", check=False)  # skip the ~120 s delay
            requeued = True
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
            break
        time.sleep(1)
    text = log.read_text()
    assert state == "COMPLETED", text
    assert requeued and "requeueing job" in text and "signal SIGUSR1 received: checkpointing step" in text
    assert "loading" in text and "done: 120 steps" in text
    # the interrupted-and-requeued run consumed exactly the samples of the uninterrupted one
    assert (tmp_path / "trace.rank0").read_text() == (base_tmp / "trace.rank0").read_text()


def test_study_on_slurm_with_dependencies_and_a_cancelled_step(cluster, tmp_path):
    """The tiny study via --executor slurm: one job per step, afterok dependencies; a scancel'ed step
    (and the report waiting on it) is resubmitted by a re-run, which then completes the study."""
    import json

    from study_fixture import build, statuses

    spec = build(tmp_path)
    out = tmp_path / "out"
    env = dict(cluster.env, PYTHONPATH=REPO + os.pathsep + os.path.join(REPO, "tests"),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    opts = json.dumps({"cpus-per-task": 1, "ntasks": 1, "time": 20})
    r = cluster.run(sys.executable, "-m", "midtrain", "study", "run", spec, "--out", out, "--executor", "slurm",
                    "--slurm", opts, env=env, cwd=REPO, check=False, timeout=300)
    assert r.returncode == 0 and "submitted 33 job(s)" in r.stdout, r.stdout + r.stderr
    victim = "sft/tiny/pretrain-only/fn/lr0.001/s1"
    first = statuses(out)
    old_job = first[victim]["job_id"]
    assert first["report"]["state"] == "submitted"
    cluster.run("scancel", old_job)
    r = cluster.run(sys.executable, "-m", "midtrain", "study", "run", spec, "--out", out, "--executor", "slurm",
                    "--slurm", opts, "--wait", "true", env=env, cwd=REPO, check=False, timeout=1200)
    final = statuses(out)
    assert r.returncode == 0, r.stdout + r.stderr + cluster.logs() + str({k: v.get("state") for k, v in final.items()})
    assert "submitted 2 job(s)" in r.stdout  # the cancelled step and the report that waited on it
    assert all(st["state"] == "done" for st in final.values())
    assert final[victim]["job_id"] != old_job
    assert (out / "report" / "table.md").is_file()
    # every step ran as its own SLURM job, after the jobs it depends on
    index = json.loads((out / "study.json").read_text())["steps"]
    for sid, info in index.items():
        for dep in info["deps"]:
            assert final[dep]["ended"] <= final[sid]["started"] + 1e-6, (dep, sid)
    assert len({st["job_id"] for st in final.values()}) == 33
