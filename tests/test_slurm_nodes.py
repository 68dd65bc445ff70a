"""Two nodes for real: two slurmd daemons on this machine (`slurmd -N`), one CPU each, form a
2-node cluster. A study whose base config says devices: 1, num_nodes: 2 runs its training step as
one srun task on each node, and the trainer's world is 2 (each node's local rank 0 says so)."""

import json
import os
import sys

import pytest
import yaml

from support import REPO
from slurm_cluster import SlurmCluster, SlurmUnavailable


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    try:
        c = SlurmCluster(tmp_path_factory.mktemp("slurm2"), nodes=2, first_job_id=7000).start()
    except SlurmUnavailable as e:
        if os.environ.get("CI"):
            pytest.fail(f"a 2-node SLURM cluster could not start in CI: {e}")
        pytest.skip(f"SLURM unavailable: {e}")
    yield c
    c.stop()


def test_two_node_training_step(two_nodes, tmp_path):
    from study_fixture import build, statuses

    spec = build(tmp_path)
    base = yaml.safe_load((tmp_path / "base.yaml").read_text())
    base.update(devices=1, num_nodes=2, accelerator="cpu")
    base["train"]["micro_batch_size"] = 2
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    raw = yaml.safe_load(spec.read_text())
    raw.update(arms=[], sft={}, report={}, eval={"max_batches": 2, "batch_size": 4})
    spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    out = tmp_path / "out"
    env = dict(two_nodes.env, PYTHONPATH=REPO + os.pathsep + os.path.join(REPO, "tests"), MASTER_ADDR="127.0.0.1",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    r = two_nodes.run(sys.executable, "-m", "midtrain", "study", "run", spec, "--out", out, "--executor", "slurm",
                      "--slurm", '{"time": 20}', "--wait", "true", env=env, cwd=REPO, check=False, timeout=600)
    final = statuses(out)
    assert r.returncode == 0, r.stdout + r.stderr + two_nodes.logs()
    assert all(st["state"] == "done" for st in final.values())
    st = final["base/tiny/to12"]
    assert "--nodes=2" in st["sbatch"] and "--ntasks-per-node=1" in st["sbatch"]
    log = open(st["log"]).read()
    assert "srun --kill-on-bad-exit=1 --nodes=2 --ntasks=2 --ntasks-per-node=1" in log, log
    # Fabric prints on the local rank 0 of every node: two nodes, two lines
    assert log.count("processes: 2 (devices 1 x num_nodes 2; started by SLURM)") == 2, log
    assert "--nodes=1" in final["eval/tiny/pretrain-only"]["sbatch"]
    shown = two_nodes.run("scontrol", "show", "job", st["job_id"]).stdout
    assert "NumNodes=2" in shown and "mt-n[1-2]" in shown, shown
    assert json.loads(open(out / "study.json").read())["steps"]
