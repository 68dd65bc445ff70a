"""The shell helpers, run as a user would (outside SLURM they run in the foreground)."""

import os
import re
import subprocess
import sys

import pytest
import torch

from support import REPO, run_cli
from support.runs import write_config


def sh(*args, env=None):
    e = dict(os.environ, PYTHONPATH=REPO, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    e.update(env or {})
    return subprocess.run(["bash", *map(str, args)], capture_output=True, text=True, cwd=REPO, env=e, timeout=600)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, real_tree):
    tmp = tmp_path_factory.mktemp("scripts")
    assert run_cli("pretrain", "--config", write_config(tmp, real_tree, train={"max_steps": 16})).returncode == 0
    return tmp / "base"


def test_eval_chkpts_evaluates_each_checkpoint_once(run_dir, real_tree):
    r = sh("training_scripts/eval_chkpts.sh", run_dir, real_tree.parent / "val")
    assert r.returncode == 0, r.stderr
    assert "evaluated 2 new checkpoint(s)" in r.stdout  # step-00000008 and final
    assert (run_dir / "final" / "eval" / "loss.json").is_file()
    again = sh("training_scripts/eval_chkpts.sh", run_dir, real_tree.parent / "val")
    assert again.returncode == 0 and "evaluated 0 new checkpoint(s)" in again.stdout
    bad = sh("training_scripts/eval_chkpts.sh", run_dir / "nope", real_tree)
    assert bad.returncode == 2 and "RUN_DIR" in bad.stderr


def test_symlink_chkpts_and_collect_results(run_dir, tmp_path):
    r = sh("util_scripts/symlink_chkpts.sh", run_dir, tmp_path / "mid", 8)
    assert r.returncode == 0, r.stderr
    assert os.path.islink(tmp_path / "mid" / "step-00000008")
    assert "exists, left alone" in sh("util_scripts/symlink_chkpts.sh", run_dir, tmp_path / "mid", 8).stdout
    bad = sh("util_scripts/symlink_chkpts.sh", run_dir, tmp_path / "mid", 12)
    assert bad.returncode == 2 and "step-00000012 has no lit_model.pth" in bad.stderr
    r = sh("util_scripts/collect_results.sh", tmp_path / "res.csv", run_dir)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "res.csv").read_text().startswith("run,step,tokens,val_loss/code")


def test_forgetting_is_one_number_in_every_writer(run_dir, tmp_path):
    """Forgetting = the main-corpus loss after SFT in `report --runs --sft`, collect_results.sh and the seed
    tables; the increase over before-SFT is its own column (forgetting_increase), never called forgetting."""
    import csv
    import io
    import json

    m = {"checkpoint": str(run_dir / "final"), "data": "/d/py.jsonl", "task": "py", "arm": "base", "seed": 0,
         "lr_sweep": {"0.001": {"val_loss": 2.0, "final_train_loss": 1.9, "steps": 3}}, "best_lr": 1e-3,
         "val_loss": 2.0, "test_loss": 2.1, "zero_shot_val_loss": 3.0,
         "forgetting": {"main": {"before": 4.0, "after": 5.5, "increase": 1.5}}}
    f = tmp_path / "sft.json"
    f.write_text(json.dumps(m))
    r = run_cli("report", "--runs", run_dir, "--sft", f, "--format", "csv")
    assert r.returncode == 0, r.stderr
    (row,) = csv.DictReader(io.StringIO(r.stdout))
    assert float(row["forgetting/main"]) == 5.5 and float(row["forgetting_increase/main"]) == 1.5
    r = sh("util_scripts/collect_results.sh", tmp_path / "res.csv", run_dir, "--", f)
    assert r.returncode == 0, r.stderr
    (row,) = csv.DictReader(io.StringIO((tmp_path / "res.csv").read_text()))
    assert float(row["forgetting/main"]) == 5.5 and float(row["forgetting_increase/main"]) == 1.5
    r = run_cli("report", "--by_seed", "true", "--sft", f, "--baseline", "null", "--format", "csv")
    assert r.returncode == 0, r.stderr
    (row,) = csv.DictReader(io.StringIO(r.stdout))
    assert float(row["main_after_mean"]) == 5.5 and float(row["main_increase_mean"]) == 1.5


def test_changed_shard_on_resume_is_one_line_exit_2(run_dir, real_tree, tmp_path):
    ckpt = torch.load(run_dir / "step-00000008" / "lit_model.pth", weights_only=False)
    ckpt["train_dataloader"]["stages"][0]["fingerprints"][0]["tokens"] += 1
    bad = tmp_path / "base" / "step-00000008"
    bad.mkdir(parents=True)
    torch.save(ckpt, bad / "lit_model.pth")
    for f in ("model_config.yaml", "training_state.json"):
        (bad / f).write_text((run_dir / "step-00000008" / f).read_text())
    cfg = write_config(tmp_path, real_tree, "mid.yaml", mix="main:0.5,code:0.5", out_dir=str(tmp_path / "mid"),
                       resume_from=str(bad))
    r = run_cli("pretrain", "--config", cfg)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "data.allow_data_change: shard 'main/1' changed" in r.stderr


def test_gpu_bench_script_runs_its_code_path_on_cpu(tmp_path):
    """bench/gpu.sh is first run for real here (tiny model on CPU), not on a rented GPU: every branch of the GPU run
    (one process with accumulation, a save, a restore in a new process and a validation pass; two ranks DDP and
    FSDP2; upstream litgpt on the same config; the paper grid's extrapolation), one table, each line also in
    --out as it is printed."""
    out = tmp_path / "table.md"
    r = sh("bench/gpu.sh", "--smoke", "--steps", "8", "--skip", "3", "--workers", "0", "--out", str(out),
           env={"PYTHON": sys.executable})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert out.read_text().splitlines() == r.stdout.splitlines()
    cells = {line.split(" | ")[0].lstrip("| "): [c.strip() for c in line.strip("| \n").split(" | ")[1:]]
             for line in r.stdout.splitlines() if line.startswith("| tiny")}
    assert set(cells) == {"tiny 1xCPU 32-true micro 4 x accum 2", "tiny 2xCPU ddp eager 32-true micro 4 x accum 2",
                          "tiny 2xCPU fsdp eager 32-true micro 4 x accum 2"}, r.stdout
    one = cells["tiny 1xCPU 32-true micro 4 x accum 2"]  # tokens/s, MFU, peak, data wait, save, restore, val, wall
    assert float(one[0].replace(",", "")) > 0 and one[1] == "-" and re.fullmatch(r"[\d.]+% \([\d.]+%\)", one[3]), one
    assert all(float(x) >= 0 for x in (one[4], one[5], one[6])), one  # measured, not "-"
    for name, row in cells.items():
        assert "FAILED" not in " ".join(row) and float(row[0].replace(",", "")) > 0, (name, row)
    assert "ratio midtrain/litgpt = " in r.stdout
    probe = [line for line in r.stdout.splitlines() if line.startswith("loader alone at tiny's cadence")]
    assert len(probe) == 1 and "FAILED" not in probe[0] and "next() median" in probe[0], r.stdout
    grid = [line for line in r.stdout.splitlines() if line.startswith("- ")]
    assert [g.split(":")[0] for g in grid] == ["- 70m", "- 160m", "- 410m", "- 1b"] and "GPU-hours" in grid[0]
    # --quick (one change checked on a short device budget): the first size's run, its save and validation
    r = sh("bench/gpu.sh", "--smoke", "--quick", "--steps", "3", "--skip", "1", "--workers", "0",
           env={"PYTHON": sys.executable})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rows = [line for line in r.stdout.splitlines() if line.startswith("| tiny")]
    assert len(rows) == 1 and "FAILED" not in rows[0] and "--quick: no restore" in r.stdout
    quick = [c.strip() for c in rows[0].strip("| ").split(" | ")[1:]]
    assert float(quick[4]) >= 0 and quick[5] == "-" and float(quick[6]) >= 0, quick  # save and val, no restore


def test_two_clones_sharing_the_venv_each_run_their_own_code(tmp_path, real_tree):
    """Issue 27, class 14: `make venv` re-ran `pip install -e .` into the one cached venv, so `bin/midtrain`
    and `import midtrain` loaded whichever clone had installed last. The venv now holds dependencies only
    (`make venv` removes such an install) and each clone's bin/midtrain, launchers and study job scripts put
    that clone's code first."""
    import shutil

    clone = tmp_path / "clone"
    shutil.copytree(REPO, clone, ignore=shutil.ignore_patterns(".git", "out", "__pycache__", ".pytest_cache",
                                                                ".hypothesis", "*.egg-info"))
    main = clone / "midtrain" / "__main__.py"
    main.write_text('import sys\nprint("code of the second clone", file=sys.stderr)\n' + main.read_text())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(MIDTRAIN_PYTHON=sys.executable)
    for where, marked in ((clone, True), (REPO, False)):
        r = subprocess.run([os.path.join(where, "bin", "midtrain"), "--help"], capture_output=True, text=True,
                           env=env, cwd=tmp_path, timeout=300)
        assert r.returncode == 0 and r.stdout.startswith("usage: midtrain"), r.stderr[-2000:]
        assert ("code of the second clone" in r.stderr) == marked, (where, r.stderr[-500:])
    # the launcher run from the clone's root runs the clone's trainer
    cfg = write_config(tmp_path, real_tree, train={"max_steps": 2, "save_interval": 2}, out_dir=str(tmp_path / "run"))
    r = subprocess.run(["bash", "training_scripts/small_model_pretrain.sh", str(cfg)], capture_output=True, text=True,
                       env={**env, "PATH": os.path.dirname(sys.executable) + os.pathsep + env["PATH"]}, cwd=clone,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert r.stderr.count("code of the second clone") >= 2  # mix --check-complete, pretrain
    # launched again: one process finds the run complete, and nothing trains
    r = subprocess.run(["bash", "training_scripts/small_model_pretrain.sh", str(cfg)], capture_output=True, text=True,
                       env={**env, "PATH": os.path.dirname(sys.executable) + os.pathsep + env["PATH"]}, cwd=clone,
                       timeout=600)
    assert r.returncode == 0 and "(complete)" in r.stdout and "run already complete: nothing to do" in r.stdout, \
        r.stdout[-2000:] + r.stderr[-2000:]
    assert r.stderr.count("code of the second clone") == 1 and "launch:" not in r.stdout
    # a study's SLURM job script exports the submitting clone first on PYTHONPATH
    r = subprocess.run([sys.executable, "-c", "from midtrain.study.slurm import CLONE; print(CLONE)"],
                       capture_output=True, text=True, env={**env, "PYTHONPATH": str(clone)}, cwd=tmp_path, timeout=300)
    assert r.stdout.strip() == str(clone), r.stderr[-1000:]
