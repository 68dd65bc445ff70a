"""The real launcher against a real single-node SLURM cluster (started here, stopped by pid).

A job through model_config_file; an array job over a list file; a 2-rank requeue: the job is
signalled mid-run, requeues itself and finishes from its checkpoint with every rank's samples those of
an uninterrupted 2-rank run; studies with 2-device steps.
In CI (CI=true) these tests fail, never skip, when SLURM cannot start.
"""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import REPO
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
    return cluster.sbatch(*CPU_JOB, *args, env=env, cwd=REPO, wait=wait)


# The demo model at half width (the shipped config's 128 -> 64; MLP 512 -> 256) for every launcher job here:
# the suite's time on 2 cores. The arms get the same override, so they continue the base's shapes.
NARROW = ["--model_config.n_embd", "64", "--model_config.intermediate_size", "256"]
BASE_ARGS = ["--train.max_steps", "61", *NARROW]


@pytest.fixture(scope="module")
def base_run(cluster, demo_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("base")
    env = job_env(cluster, demo_data, tmp / "ckpt", model_config_file="midtrain_configs/demo/pretrain.yaml",
                  MIDTRAIN_SAMPLE_TRACE=tmp / "trace")
    # 61 of the config's 120 steps: step-00000060 (what the demo arms resume from) is saved, and half the
    # CPU time of the module's longest job is saved too
    r = sbatch(cluster, env, "-o", tmp / "job-%j.out", LAUNCHER, *BASE_ARGS)
    return tmp, env, r


def test_sbatch_wait_with_model_config_file(cluster, base_run):
    tmp, env, r = base_run
    assert r.returncode == 0, r.stderr + cluster.logs()
    log = (tmp / f"job-{r.stdout.strip()}.out").read_text()
    assert "mixture: weighted" in log and "main/1" in log  # the plan is printed before training
    assert "done: 61 steps" in log
    assert (tmp / "ckpt" / "demo" / "base" / "final" / "lit_model.pth").is_file()
    again = sbatch(cluster, env, "-o", tmp / "again-%j.out", LAUNCHER, *BASE_ARGS)
    assert again.returncode == 0
    assert "run already complete" in (tmp / f"again-{again.stdout.strip()}.out").read_text()


def test_array_job_over_a_list_file(cluster, base_run, demo_data, tmp_path):
    base_tmp, _, r = base_run
    assert r.returncode == 0
    lst = tmp_path / "sweep.txt"
    lst.write_text("# midtrain and continued-pretraining arms from the demo base run\n"
                   "midtrain_configs/demo/midtrain.yaml\n\nmidtrain_configs/demo/cpt.yaml\n")
    env = job_env(cluster, demo_data, base_tmp / "ckpt", CONFIG_LIST=lst)
    # each arm: 8 steps past the base's step 60 (arguments after the script go to every task's trainer)
    r = sbatch(cluster, env, "--array=1-2", "-o", tmp_path / "arr-%A_%a.out", LAUNCHER,
               "--train.max_additional_steps", "8", *NARROW)
    assert r.returncode == 0, r.stderr + cluster.logs()
    for arm in ("midtrain", "cpt"):
        assert (base_tmp / "ckpt" / "demo" / arm / "final" / "lit_model.pth").is_file()
    logs = "".join(p.read_text() for p in tmp_path.glob("arr-*.out"))
    assert logs.count("mixture change at sample 960") == 2 and logs.count("done: 68 steps") == 2, logs
    bad = job_env(cluster, demo_data, base_tmp / "ckpt", CONFIG_LIST=lst)
    r = sbatch(cluster, bad, "--array=5", "-o", tmp_path / "bad-%A_%a.out", LAUNCHER)
    assert r.returncode != 0
    assert "has no line 5" in "".join(p.read_text() for p in tmp_path.glob("bad-*.out"))


def _show(cluster, job):
    fields = dict(t.split("=", 1) for t in cluster.run("scontrol", "show", "job", job, check=False).stdout.split()
                  if "=" in t)
    return fields


def test_an_interrupted_array_task_requeues_itself_only(cluster, demo_data, tmp_path):
    """Issue 27, class 3 (pytorch-lightning#15022): the array task whose SLURM_JOB_ID is the array's id
    (the last to start) exited 75 and `scontrol requeue $SLURM_JOB_ID` sent every task back to PENDING: a
    COMPLETED task was requeued and a RUNNING one killed. A 3-task array on 2 CPUs: task 1 is done, task 2
    runs, task 3 starts last, is signalled, checkpoints and requeues only `ARRAY_3`, then finishes."""
    import yaml

    base = yaml.safe_load(open(os.path.join(REPO, "midtrain_configs", "demo", "pretrain.yaml")).read())
    lines = []
    for task, steps in ((1, 2), (2, 400), (3, 20)):
        cfg = dict(base, out_dir=f"${{CKPT_ROOT}}/demo/t{task}")
        cfg["model_config"] = dict(base["model_config"], n_embd=64, intermediate_size=256)  # NARROW
        cfg["train"] = dict(base["train"], max_steps=steps, save_interval=1000, log_interval=1)
        cfg["eval"] = dict(base["eval"], interval=1000, final_validation=False)
        path = tmp_path / f"t{task}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        lines.append(str(path))
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    env = job_env(cluster, demo_data, tmp_path / "ckpt", CONFIG_LIST=tmp_path / "list.txt")
    r = sbatch(cluster, env, "--array=1-3", "-o", tmp_path / "arr-%A_%a.out", LAUNCHER, wait=False)
    assert r.returncode == 0, r.stderr + cluster.logs()
    array = r.stdout.strip()
    log3 = tmp_path / f"arr-{array}_3.out"
    deadline = time.time() + 300
    while "step 3/" not in (log3.read_text() if log3.exists() else ""):  # task 3 starts once task 1 is done
        assert time.time() < deadline, cluster.logs()
        time.sleep(0.3)
    t1, t2, t3 = (_show(cluster, f"{array}_{i}") for i in (1, 2, 3))
    assert t1["JobState"] == "COMPLETED" and t2["JobState"] == "RUNNING" and t3["JobState"] == "RUNNING"
    assert t3["JobId"] == t3["ArrayJobId"] == array  # the task the old `scontrol requeue $SLURM_JOB_ID` hit
    cluster.run("scancel", "--signal=USR1", "--batch", f"{array}_3")
    requeued = False
    while True:
        assert time.time() < deadline, log3.read_text() + cluster.logs()
        state = cluster.job_state(f"{array}_3")
        if state == "PENDING" and not requeued:  # task 3 requeued: the others, at that moment
            t1, t2 = _show(cluster, f"{array}_1"), _show(cluster, f"{array}_2")
            assert t1["JobState"] == "COMPLETED" and t1["Restarts"] == "0", t1  # the finished task stayed finished
            assert t2["JobState"] == "RUNNING" and t2["Restarts"] == "0", t2  # the running task was not touched
            cluster.release_requeued(f"{array}_3")
            requeued = True
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
            break
        time.sleep(0.5)
    text = log3.read_text()
    assert state == "COMPLETED" and requeued and f"requeueing job {array}_3" in text, text + cluster.logs()
    assert "done: 20 steps" in text
    t1, t2 = _show(cluster, f"{array}_1"), _show(cluster, f"{array}_2")
    assert t1["JobState"] == "COMPLETED" and t1["Restarts"] == "0", t1
    assert t2["Restarts"] == "0", t2  # (running still, or finished once)
    assert "restart 1" not in (tmp_path / f"arr-{array}_2.out").read_text()
    # task 2 is stopped as a preemption would (a plain scancel's SIGTERM is one to the launcher, and even a
    # SIGKILL'd task was requeued): it requeues itself, and the pending task is then cancelled for good
    end = time.time() + 180
    while cluster.job_state(f"{array}_2") == "RUNNING":
        cluster.run("scancel", "--signal=USR1", "--batch", f"{array}_2", check=False)
        assert time.time() < end, cluster.logs()
        time.sleep(1.0)
    while cluster.run("squeue", "-h", "-j", array, check=False).stdout.strip():  # gone before the next test
        cluster.run("scancel", f"{array}_2", check=False)
        assert time.time() < end, cluster.logs()
        time.sleep(0.3)


TWO_RANKS = [*NARROW, "--devices", "2", "--train.micro_batch_size", "8", "--train.max_steps", "40",
             "--train.save_interval", "20", "--train.log_interval", "10", "--eval.interval", "1000"]


def two_rank_job(cluster, env, log, *extra, wait=True):
    return cluster.sbatch("--ntasks-per-node=2", "--nodes=1", "--gpus-per-node=0", "--cpus-per-task=1", "--time=20",
                          "-o", log, *extra, LAUNCHER, *TWO_RANKS, env=env, cwd=REPO, wait=wait)


def test_two_rank_launcher_requeue_equals_an_uninterrupted_two_rank_run(cluster, demo_data, tmp_path):
    """small_model_pretrain.sh with --ntasks-per-node=2: srun starts 2 ranks; USR1 mid-run -> checkpoint ->
    requeue -> resume; every rank consumed exactly the samples of an uninterrupted 2-rank run."""
    ref = tmp_path / "ref"
    ref.mkdir()
    env = job_env(cluster, demo_data, ref / "ckpt", model_config_file="midtrain_configs/demo/pretrain.yaml",
                  MIDTRAIN_SAMPLE_TRACE=ref / "trace")
    r = two_rank_job(cluster, env, ref / "job.out")
    text = (ref / "job.out").read_text()
    assert r.returncode == 0, text + cluster.logs()
    assert "processes: 2 (devices 2 x num_nodes 1; started by SLURM)" in text and "done: 40 steps" in text
    # srun no longer inherits --cpus-per-task from sbatch (Slurm >= 22.05): the launcher passes the job's on
    assert "launch: srun --kill-on-bad-exit=1 --cpus-per-task=1 midtrain pretrain --config" in text, text
    run = tmp_path / "run"
    run.mkdir()
    env = job_env(cluster, demo_data, run / "ckpt", model_config_file="midtrain_configs/demo/pretrain.yaml",
                  MIDTRAIN_SAMPLE_TRACE=run / "trace")
    r = two_rank_job(cluster, env, run / "job.out", wait=False)
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip()
    log = run / "job.out"
    deadline = time.time() + 300
    while "step 10/" not in (log.read_text() if log.exists() else ""):
        assert time.time() < deadline, cluster.logs()
        time.sleep(0.3)
    cluster.run("scancel", "--signal=USR1", "--batch", job)
    requeued = False
    while True:
        assert time.time() < deadline, log.read_text() + cluster.logs()
        state = cluster.job_state(job)
        if state == "PENDING" and not requeued:
            cluster.release_requeued(job)
            requeued = True
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
            break
        time.sleep(1)
    text = log.read_text()
    assert state == "COMPLETED" and requeued and "requeueing job" in text, text + cluster.logs()
    assert text.count("signal SIGUSR1 received: checkpointing step") == 1, text  # rank 0 speaks for both
    assert "loading" in text and "done: 40 steps" in text
    for rank in (0, 1):
        assert (run / f"trace.rank{rank}").read_text() == (ref / f"trace.rank{rank}").read_text()
    assert (ref / "trace.rank0").read_text() != (ref / "trace.rank1").read_text()  # the ranks read different data


def test_the_launcher_refuses_a_job_given_gpus_that_cuda_cannot_see(demo_data, tmp_path):
    """A job whose allocation holds GPUs (SLURM_GPUS_ON_NODE) on a node where CUDA sees none (too old a driver, say)
    would train on CPU processes: the launcher exports MIDTRAIN_EXPECT_CUDA and the trainer refuses in one line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(DATA_ROOT=str(demo_data), CKPT_ROOT=str(tmp_path / "ckpt"), PYTHONPATH=REPO, SLURM_GPUS_ON_NODE="8",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    r = subprocess.run(["bash", LAUNCHER, "midtrain_configs/demo/pretrain.yaml", "--train.max_steps", "2"], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert "this step was given GPUs" in r.stderr and "CUDA sees none" in r.stderr, r.stderr
    assert not (tmp_path / "ckpt").exists() or not list((tmp_path / "ckpt").rglob("step-*"))


def test_allocation_that_contradicts_the_config_is_refused_in_one_line(cluster, demo_data, tmp_path):
    """devices: 2 in a job with one task: Lightning would train with 1 process; the trainer refuses."""
    env = job_env(cluster, demo_data, tmp_path / "ckpt", model_config_file="midtrain_configs/demo/pretrain.yaml")
    r = cluster.sbatch("--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1", "--time=5", "-o",
                       tmp_path / "job.out", LAUNCHER, *TWO_RANKS, env=env, cwd=REPO)
    text = (tmp_path / "job.out").read_text()
    assert r.returncode != 0, text
    errors = [line for line in text.splitlines() if "error" in line.lower()]
    assert any("devices: the run config asks for 2 device(s) x 1 node(s) = 2 process(es), but SLURM started 1 task"
               in line for line in errors), text
    assert "Traceback" not in text and "step 1/" not in text
    assert not (tmp_path / "ckpt" / "demo" / "base" / "final").exists()


def test_study_with_two_device_runs_on_slurm(cluster, tmp_path):
    """A study whose base config says devices: 2 (CPU, gloo) and whose spec names no resources: every
    training step runs as 2 srun tasks, and so does every SFT step (sft.options: devices 2, FSDP2); eval/report jobs
    ask for one task; the SFT runs of a checkpoint
    go out as one array; --max_jobs caps what is queued; a cancelled array task is redone alone; a spec
    that contradicts the config is refused before anything is submitted."""
    import json

    import yaml

    from study_fixture import build, statuses

    spec = build(tmp_path)
    base = yaml.safe_load((tmp_path / "base.yaml").read_text())
    base.update(devices=2, accelerator="cpu", strategy="fsdp")  # every training step: 2 FSDP2 ranks under srun
    base["train"]["micro_batch_size"] = 2
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    raw = yaml.safe_load(spec.read_text())
    raw["arms"] = [{"name": "code", "domain": "code", "start": [4], "weight": [0.2]}]
    raw["seeds"]["control"] = "shared"  # one control, the base run's end (the job counts below are of that DAG)
    raw["sft"]["lrs"] = [1e-3]  # one LR: an SFT array per checkpoint still holds a task per seed
    raw["sft"]["options"].update(devices=2, strategy="fsdp", micro_batch_size=4)  # 2 ranks x 4 = the global 8
    spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    out = tmp_path / "out"
    env = dict(cluster.env, PYTHONPATH=REPO + os.pathsep + os.path.join(REPO, "tests"),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])

    def study(*args, spec=spec, timeout=300):
        return cluster.run(sys.executable, "-m", "midtrain", "study", "run", spec, "--out", out, "--executor",
                           "slurm", "--slurm", '{"time": 20}', *args, env=env, cwd=REPO, check=False, timeout=timeout)

    # refused in one line, nothing submitted: a shape option that contradicts devices: 2
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**raw, "slurm": {"pretrain": {"ntasks-per-node": 3}}}, sort_keys=False))
    r = study(spec=bad)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "slurm.pretrain.ntasks-per-node: 3 contradicts pretrain step" in r.stderr and "ntasks-per-node=2" in r.stderr
    assert not out.exists() and cluster.run("squeue", "-h").stdout.strip() == ""
    r = study("--slurm", '{"nodes": 2}')
    assert r.returncode == 2 and "--slurm.nodes: 2 contradicts" in r.stderr and not out.exists(), r.stderr

    # --max_jobs 4: the base chain and the two midtrain runs (an array); the rest waits
    r = study("--max_jobs", "4")
    assert r.returncode == 0 and "submitted 4 step(s) as 3 job(s) (1 array(s))" in r.stdout, r.stdout + r.stderr
    assert "8 not submitted (max_jobs 4)" in r.stdout
    # the first segment's job is killed outright while it runs (what a node failure does): its status file
    # still says running, but `study status` does not, and a re-run replaces the jobs that waited on it
    deadline = time.time() + 120
    while statuses(out)["base/tiny/to4"].get("state") != "running":
        assert time.time() < deadline, cluster.logs()
        time.sleep(0.2)
    first_seg = statuses(out)["base/tiny/to4"]
    os.kill(first_seg["pid"], signal.SIGKILL)  # the step runner dies unannounced; its job ends FAILED
    while cluster.run("squeue", "-h", "-o", "%T", "-j", first_seg["job_id"], check=False).stdout.strip() in (
            "RUNNING", "COMPLETING", "CONFIGURING", "PENDING"):  # an ended job lingers as CANCELLED
        assert time.time() < deadline, cluster.logs()
        time.sleep(0.5)
    assert statuses(out)["base/tiny/to4"]["state"] == "running"  # nobody wrote its end
    cluster.run(sys.executable, "-m", "midtrain", "study", "status", spec, "--out", out, "--json", tmp_path / "st.json",
                env=env, cwd=REPO)
    row = next(row for row in json.loads((tmp_path / "st.json").read_text()) if row["step"] == "base/tiny/to4")
    assert row["state"] == "interrupted" and row["note"] == f"SLURM job {first_seg['job_id']} is gone", row
    r = study("--array_throttle", "2")
    assert r.returncode == 0 and "submitted 12 step(s) as 10 job(s) (2 array(s))" in r.stdout, r.stdout + r.stderr
    first = statuses(out)
    assert "--array=0-1%2" in first["sft/tiny/pretrain-only/fn/lr0.001/s1"]["sbatch"]
    victim = "sft/tiny/pretrain-only/fn/lr0.001/s1"
    old_job = first[victim]["job_id"]
    array = first[victim]["array"]
    assert old_job.startswith(array + "_")
    # every SFT step of the control checkpoint is a task of one array; single-process kinds ask for one task
    sft_ctrl = [sid for sid in first if sid.startswith("sft/tiny/pretrain-only/")]
    assert len(sft_ctrl) == 2 and {first[s]["array"] for s in sft_ctrl} == {array}
    for sid, st in first.items():
        kind = sid.split("/")[0]
        want = "--ntasks-per-node=2" if kind in ("base", "midtrain", "sft") else "--ntasks-per-node=1"
        assert want in st["sbatch"] and "--nodes=1" in st["sbatch"], (sid, st["sbatch"])
        assert not any(a.startswith("--gpus") for a in st["sbatch"]), st["sbatch"]  # accelerator: cpu
    shown = cluster.run("scontrol", "show", "job", old_job).stdout
    assert "NumTasks=2 " in shown or "NumTasks=2\n" in shown, shown
    cluster.run("scancel", old_job)
    # preemption: the resubmitted first segment is told to stop (what --signal=B:USR1@180 does), checkpoints or
    # has nothing to save, and its job requeues itself: the study counts it as queued, and a re-run submits
    # nothing twice (no second job may resume the same checkpoint into the same folder)
    seg = "base/tiny/to4"
    deadline = time.time() + 120
    while statuses(out)[seg].get("state") != "running":
        assert time.time() < deadline, cluster.logs()
        time.sleep(0.2)
    job = statuses(out)[seg]["job_id"]
    cluster.run("scancel", "--signal=USR1", "--batch", job)
    while cluster.job_state(job) != "PENDING" or statuses(out)[seg].get("state") != "interrupted":
        assert time.time() < deadline, cluster.logs()
        time.sleep(0.3)
    cluster.run(sys.executable, "-m", "midtrain", "study", "status", spec, "--out", out, "--json", tmp_path / "st.json",
                env=env, cwd=REPO)
    row = next(row for row in json.loads((tmp_path / "st.json").read_text()) if row["step"] == seg)
    assert row["state"] == "submitted" and row["note"] == f"requeued as SLURM job {job}", row
    r = study()
    assert "submitted 2 step(s) as 2 job(s)" in r.stdout, r.stdout  # the cancelled SFT task and the report only
    cluster.release_requeued(job)  # skip the ~120 s requeue delay
    r = study("--wait", "true", timeout=1200)
    final = statuses(out)
    assert r.returncode == 0, r.stdout + r.stderr + cluster.logs() + str({k: v.get("state") for k, v in final.items()})
    assert "submitted 0 step(s)" in r.stdout, r.stdout
    assert all(st["state"] == "done" for st in final.values())
    assert final[seg]["job_id"] == job  # the requeued job finished the segment
    assert final[victim]["job_id"] != old_job and final[victim]["array"] is None
    assert all(final[s]["job_id"] == first[s]["job_id"] for s in sft_ctrl if s != victim)
    assert (out / "report" / "tiny" / "table.md").is_file()
    index = json.loads((out / "study.json").read_text())["steps"]
    for sid, st in final.items():
        if sid.split("/")[0] in ("base", "midtrain"):
            log = Path(st["log"]).read_text()
            assert "srun --kill-on-bad-exit=1 --nodes=1 --ntasks=2 --ntasks-per-node=2" in log, log
            assert "processes: 2 (devices 2 x num_nodes 1; started by SLURM)" in log, log
            assert "strategy: fsdp over 2 process(es)" in log, log  # sharded (FSDP2 over gloo) under srun
            assert st["processes"] == 2
        if sid.startswith("sft/"):  # `midtrain sft` on 2 FSDP2 ranks under srun, its metrics written once
            log = Path(st["log"]).read_text()
            assert "srun --kill-on-bad-exit=1 --nodes=1 --ntasks=2 --ntasks-per-node=2" in log, log
            assert "on 2 process(es) (fsdp, 32-true)" in log and log.count("best lr") == 1, log
            metrics = json.loads((out / index[sid]["out"] / "metrics.json").read_text())
            assert metrics["processes"] == {"world": 2, "strategy": "fsdp"} and st["processes"] == 2
    for sid, info in index.items():
        for dep in info["deps"]:
            assert final[dep]["ended"] <= final[sid]["started"] + 1e-6, (dep, sid)
    # the launchers in a 2-task job: sft.sh fine-tunes on both tasks (srun, 2 DDP ranks); eval_chkpts.sh runs once,
    # says so, and finishes
    run_dir = out / index["base/tiny/to12"]["out"] / "run"
    for script, args, product in (
            ("sft.sh", [run_dir / "final", tmp_path / "sft_train.jsonl", tmp_path / "sft", "--lrs", "[0.001]",
                        "--epochs", "1", "--micro_batch_size", "4", "--global_batch_size", "8"],
             tmp_path / "sft" / "metrics.json"),
            ("eval_chkpts.sh", [run_dir, tmp_path / "val"], run_dir / "final" / "eval" / "loss.json")):
        log = tmp_path / f"{script}.out"
        r = cluster.sbatch("--ntasks=2", "--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-node=0", "--time=10",
                           "-o", log, os.path.join(REPO, "training_scripts", script), *args, env=env, cwd=REPO)
        text = log.read_text()
        assert r.returncode == 0 and product.is_file(), text + cluster.logs()
        if script == "sft.sh":
            assert "sft: 2 processes, one per task (2 per node x 1 node(s))" in text, text
            assert "on 2 process(es) (ddp, 32-true)" in text and text.count("best lr") == 1, text
        else:
            assert "holds 2 tasks and uses one of them" in text, text
