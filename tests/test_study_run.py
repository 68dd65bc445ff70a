"""A tiny study run for real with the local executor: killed mid-way and completed by a re-run, a re-run
that starts nothing, a deleted SFT output redone alone, the lock, a changed spec refused, and the
segment chain's final weights equal to one unsegmented run."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from support import REPO, run_cli
from study_fixture import build, statuses


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    return build(root), root


def started(out):
    return {sid: st.get("started") for sid, st in statuses(out).items() if st.get("state") == "done"}


def _start_run(spec, out):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.Popen([sys.executable, "-m", "midtrain", "study", "run", str(spec), "--out", str(out),
                             "--parallel", "2"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, text=True)


def _wait_done(out, n, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(0.3)
        if (out / "study.json").exists() and sum(st.get("state") == "done" for st in statuses(out).values()) >= n:
            return
    raise AssertionError(f"fewer than {n} steps done after {timeout} s")


def test_killed_run_is_completed_by_a_rerun_then_nothing_reruns(study):
    spec, root = study
    out = root / "out"
    # SIGTERM (a scheduler's stop): running steps checkpoint, `run` exits 75, nothing is left "running"
    proc = _start_run(spec, out)
    _wait_done(out, 2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75 and "stopped by signal" in text, text
    states = {st.get("state") for st in statuses(out).values()}
    assert "running" not in states and states <= {"done", "interrupted", None}, states
    # SIGKILL of the whole process group (a node dies): no status is written at all
    proc = _start_run(spec, out)
    _wait_done(out, 6)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = started(out)
    assert 6 <= len(before) < 35
    # the re-run hands out (fake) GPUs: each step gets exactly one through CUDA_VISIBLE_DEVICES (the report
    # none), and steps that ran at the same time never shared one (on CPU the trainer ignores them)
    r = run_cli("study", "run", spec, "--out", out, "--parallel", "3", "--gpus", "0,1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "(3 at a time, GPUs 0,1)" in r.stdout
    after = statuses(out)
    assert all(st["state"] == "done" for st in after.values()), {k: v.get("state") for k, v in after.items()}
    assert all(after[sid]["started"] == t for sid, t in before.items())  # nothing done before the kill re-ran
    rerun = {sid: st for sid, st in after.items() if sid not in before}
    assert {st["devices"] for sid, st in rerun.items() if sid != "report"} == {"0", "1"}
    assert rerun["report"]["devices"] == ""
    overlaps = 0
    for a, sa in rerun.items():
        for b, sb in rerun.items():
            if a < b and sa["started"] < sb["ended"] and sb["started"] < sa["ended"]:
                overlaps += 1
                assert sa["devices"] != sb["devices"] or sa["devices"] == "", (a, b, sa["devices"])
    assert overlaps > 0  # two GPUs, so two steps ran side by side (never three: each needs one)
    # a re-run starts nothing
    r = run_cli("study", "run", spec, "--out", out)
    assert r.returncode == 0 and "35 of 35 steps done, 0 to run" in r.stdout and "start:" not in r.stdout
    assert started(out) == {sid: st["started"] for sid, st in after.items()}
    # status: one row per step and a summary line; --json too
    r = run_cli("study", "status", spec, "--out", out, "--json", root / "status.json")
    assert r.returncode == 0 and "study tiny: 35 steps: 35 done" in r.stdout
    rows = json.loads((root / "status.json").read_text())
    assert len(rows) == 35 and {row["state"] for row in rows} == {"done"}
    # the report: tables, CSV, per-seed results and figures
    rep = out / "report" / "tiny"
    for f in ("table.md", "table.csv", "results.json", "tiny-sft-test.png", "tiny-code-fn-heatmap.png",
              "tiny-proximity.png", "tiny-code-fn-over-weight.png", "tiny-gain-vs-forgetting.png",
              "tiny-eval-checkpoints.png"):
        assert (rep / f).is_file() and (rep / f).stat().st_size > 0, f
    # report.overlap: the val/test items against the raw corpora and the training set (the fixture's SFT
    # responses are code-like functions: "def f3(x): return x + 3" shares its shape with f3 of the train set)
    table = (rep / "table.md").read_text()
    assert "Near-duplicates of the SFT val/test items" in table and "| fn/val | 10 |" in table
    ov = json.loads((rep / "results.json").read_text())["overlap"]
    assert set(ov["eval"]) == {"fn/val", "fn/test"} and set(ov["words_read"]) == {"prose", "code", "fn/train"}
    assert ov["eval"]["fn/val"]["same_response"]["fn/train"] == 10  # only names and numbers differ
    results = json.loads((rep / "results.json").read_text())["sizes"]["tiny"]
    assert len(results["sft"]) == 16 and {c["arm"] for c in results["cells"]} == {
        "pretrain-only", "code20-from4", "code50-from4", "cpt-code100-from8"}
    assert all(len(c["seeds"]) == 2 for c in results["cells"])
    # variance by level (issue 28, item 6): every cell's seed and test-item standard errors, from the items the
    # SFT steps recorded
    levels = {(r["arm"], r["task"]): r for r in results["variance_levels"]}
    assert set(levels) == {(c["arm"], c["task"]) for c in results["cells"]}
    assert all(r["n"] == 2 and r["se_item"] > 0 and r["items"] > 0 for r in levels.values())
    assert levels[("code20-from4", "fn")]["paired_with"] == "pretrain-only"
    assert "Variance by level, SFT test loss" in table
    # proximity with dose (item 7): each row carries its arm's LR-weighted steps, more for an earlier start
    prox = {r["arm"]: r for r in results["proximity"]["rows"]}
    assert prox["code20-from4"]["lr_steps"] > prox["cpt-code100-from8"]["lr_steps"] > 0
    assert prox["code20-from4"]["lr_steps"] == prox["code50-from4"]["lr_steps"]


def test_deleted_sft_output_is_redone_alone(study):
    spec, root = study
    out = root / "out"
    before = started(out)
    index = json.loads((out / "study.json").read_text())["steps"]
    victim = "sft/tiny/code20-from4/fn/lr0.001/s1"
    shutil.rmtree(out / index[victim]["out"])
    r = run_cli("study", "run", spec, "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    starts = [line.split("start: ")[1] for line in r.stdout.splitlines() if "start: " in line]
    assert starts == [victim, "report"]  # the report re-runs because one of its inputs is new
    after = started(out)
    assert {sid for sid in after if after[sid] != before.get(sid)} == {victim, "report"}


def test_second_concurrent_run_is_refused(study):
    from midtrain.study.folder import study_lock

    spec, root = study
    with study_lock(root / "out"):
        r = run_cli("study", "run", spec, "--out", root / "out")
    assert r.returncode == 2 and "is in use by another `midtrain study run`" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_child_forked_by_a_locked_run_does_not_keep_the_folder_locked(tmp_path):
    """A flock is shared by a fork: when a `run` was killed outright (kill -9, a node's OOM killer), the trainers
    it had forked lived on and held its lock, and the re-run meant to wait for them was refused (CI saw it after
    the kill -9 above). Only the run holds it."""
    from midtrain.errors import ConfigError
    from midtrain.study.folder import study_lock

    # (the child says it runs, i.e. its fork hooks have run, before the run is killed: on a loaded machine a
    # kill right after the fork came before the child had been scheduled at all. Each says so in one write(2):
    # print's text and its newline can reach the shared pipe apart, and CI saw "lockedchild\n" then "\n")
    code = ("import os, sys, time\nfrom pathlib import Path\nfrom midtrain.study.folder import study_lock\n"
            "with study_lock(Path(sys.argv[1])):\n    if os.fork() == 0:\n        os.write(1, b'child\\n')\n"
            "        time.sleep(120)\n        os._exit(0)\n    os.write(1, b'locked\\n')\n    time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=REPO), start_new_session=True)
    try:
        assert {proc.stdout.readline(), proc.stdout.readline()} == {"locked\n", "child\n"}
        proc.kill()  # the run dies without unlocking; the step it forked lives on
        proc.wait()
        try:
            with study_lock(tmp_path):
                pass
        except ConfigError as e:
            pytest.fail(f"the forked child kept the lock: {e}")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)


def test_a_step_whose_runner_died_while_its_command_lives_is_still_running():
    """The trainer a step runner forks has its own process group: a kill -9 of the `study run` group leaves it
    running. Its status names it (command_pid), so a re-run waits for it instead of starting a second trainer
    in the same folder (which the lock, shared by fork, used to prevent crudely)."""
    import socket

    from midtrain.study.states import pid_alive

    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "60"])
    try:
        st = {"host": socket.gethostname(), "pid": dead.pid, "command_pid": live.pid}
        assert pid_alive(st)
        assert not pid_alive({**st, "command_pid": dead.pid}) and not pid_alive({**st, "command_pid": None})
        assert not pid_alive({**st, "host": "elsewhere"})
    finally:
        live.kill()
        live.wait()


def test_changed_spec_is_refused_unless_told(study, tmp_path):
    spec, root = study
    changed = yaml.safe_load(spec.read_text())
    changed["sft"]["options"]["epochs"] = 2
    new_spec = tmp_path / "study.yaml"
    new_spec.write_text(yaml.safe_dump(changed))
    r = run_cli("study", "run", new_spec, "--out", root / "out")
    assert r.returncode == 2 and "16 step(s) that already ran" in r.stderr and "--rerun_changed" in r.stderr
    r = run_cli("study", "plan", new_spec)  # planning a changed spec is fine: nothing runs
    assert r.returncode == 0
    # with the folder, plan shows what run would do: the 16 SFT steps changed, the rest done
    r = run_cli("study", "plan", new_spec, "--out", root / "out", "--devices", "false")
    assert r.returncode == 0 and "here: done 18, changed 16, will run 1; `study run` refuses changed steps" in r.stdout, r.stdout
    assert "| changed (ran as sft/tiny/pretrain-only/fn/lr0.0001/s0-" in r.stdout


def test_a_logging_only_change_keeps_finished_runs(study, tmp_path):
    """train.log_interval, logger_name and eval.* decide nothing a run trains: the finished training steps keep
    their folders (plan says so, run starts nothing); a change beside them is a change."""
    spec, root = study
    base = yaml.safe_load((root / "base.yaml").read_text())
    base["train"]["log_interval"] = 2
    base["eval"]["max_iters"] = 1
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    raw = yaml.safe_load(spec.read_text())
    raw["sizes"]["tiny"]["config"] = str(tmp_path / "base.yaml")
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(raw))
    r = run_cli("study", "plan", tmp_path / "study.yaml", "--out", root / "out", "--devices", "false")
    kept = "done (kept: eval.max_iters: 2 -> 1; train.log_interval: 4 -> 2)"
    assert r.returncode == 0 and "| base/tiny/to4 | pretrain | - | base/tiny/to4-" in r.stdout, r.stdout
    assert r.stdout.count(kept) == 10 and "here: done (logging changed, kept) 10, done 25" in r.stdout, r.stdout
    before = started(root / "out")
    r = run_cli("study", "run", tmp_path / "study.yaml", "--out", root / "out")
    assert r.returncode == 0 and "35 of 35 steps done, 0 to run" in r.stdout, r.stdout + r.stderr
    assert "kept base/tiny/to4 (done; only what it logs changed: eval.max_iters: 2 -> 1; " in r.stdout
    assert started(root / "out") == before
    base["train"]["lr_warmup_steps"] = 3  # beside a logging change, a change: another base run (new segments
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))  # beside the old ones), and every step after it
    r = run_cli("study", "plan", tmp_path / "study.yaml", "--out", root / "out", "--devices", "false")
    assert r.returncode == 0 and "here: will run 3, changed 32; `study run` refuses" in r.stdout, r.stdout
    assert "| base/tiny/to4-from0 | pretrain | - |" in r.stdout


def test_segment_chain_equals_an_unsegmented_run(study, tmp_path):
    spec, root = study
    out = root / "out"
    index = json.loads((out / "study.json").read_text())["steps"]
    cfg = yaml.safe_load((root / "base.yaml").read_text())
    cfg["out_dir"] = str(tmp_path / "whole")
    (tmp_path / "whole.yaml").write_text(yaml.safe_dump(cfg))
    # the study ran 2 steps at a time with one torch thread each: the same here (bit-exact comparison)
    r = run_cli("pretrain", "--config", tmp_path / "whole.yaml", env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    # (the base run goes to the last arm start, 8: the control is re-run per seed from 4, seeds.control: per_seed)
    whole = torch.load(tmp_path / "whole" / "step-00000008" / "lit_model.pth", weights_only=False)
    chain = torch.load(out / index["base/tiny/to8"]["out"] / "run" / "final" / "lit_model.pth", weights_only=False)
    assert "base/tiny/to12" not in index and whole["step_count"] == chain["step_count"] == 8
    for k, v in whole["model"].items():
        assert torch.equal(v, chain["model"][k]), k
    # the three segments really were separate runs, each resuming the previous one's final checkpoint
    seg2 = yaml.safe_load((out / index["base/tiny/to8"]["out"] / "run.yaml").read_text())
    assert seg2["resume_from"].endswith(index["base/tiny/to4"]["out"] + "/run/final")
    assert seg2["train"]["max_additional_steps"] == 4
    # that plain run folder as a size's base (sizes.X.base: RUN_DIR): read in place, no base step trained; the
    # arm at 8 starts from its kept step-8 checkpoint, the control's SFT from its final one
    whole_dir = tmp_path / "whole"
    files_before = {p: p.stat().st_mtime_ns for p in whole_dir.rglob("*")}
    s = {**yaml.safe_load(spec.read_text()), "name": "fromrun", "seeds": [0], "eval": {"enabled": False},
         "arms": [{"name": "code", "domain": "code", "start": [8], "weight": [0.2]}],
         "report": {"baseline": "pretrain-only"}}
    s["sizes"]["tiny"]["base"] = str(whole_dir)
    s["sft"] = {**s["sft"], "lrs": [1e-3]}
    (tmp_path / "fromrun.yaml").write_text(yaml.safe_dump(s, sort_keys=False))
    r = run_cli("study", "plan", tmp_path / "fromrun.yaml", "--check_files", "false")
    assert r.returncode == 0 and f"reused: base run folder {whole_dir} (steps 0->12, checkpoints at 4, 8, 12" in r.stdout, \
        r.stdout + r.stderr
    r = run_cli("study", "run", tmp_path / "fromrun.yaml", "--out", tmp_path / "fromrun", "--parallel", "1",
                env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    idx = json.loads((tmp_path / "fromrun" / "study.json").read_text())["steps"]
    assert [sid for sid in idx if sid.startswith("base/")] == ["base/tiny/run-folder"]
    arm_run = yaml.safe_load((tmp_path / "fromrun" / idx["midtrain/tiny/code20-from8"]["out"] / "run.yaml").read_text())
    assert arm_run["resume_from"] == str(whole_dir / "step-00000008")
    sft = json.loads((tmp_path / "fromrun" / idx["sft/tiny/pretrain-only/fn/lr0.001/s0"]["out"] / "step.json").read_text())
    assert str(whole_dir / "final") in sft["argv"]
    assert {p: p.stat().st_mtime_ns for p in whole_dir.rglob("*")} == files_before  # nothing written there
    # that study folder as another spec's base: its bases.json records the run-folder segment it read
    via = {**s, "name": "via"}
    via["sizes"] = {"tiny": {**s["sizes"]["tiny"], "base": str(tmp_path / "fromrun")}}
    (tmp_path / "via.yaml").write_text(yaml.safe_dump(via, sort_keys=False))
    r = run_cli("study", "plan", tmp_path / "via.yaml", "--check_files", "false")
    assert r.returncode == 0 and f"reused: base run folder {whole_dir}" in r.stdout, r.stdout + r.stderr
    # a run folder trained with another value of a field that decides the weights is another base run
    s["sizes"]["tiny"]["set"] = {"train.min_lr": 2e-4}
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(s, sort_keys=False))
    r = run_cli("study", "plan", tmp_path / "other.yaml", "--check_files", "false")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "sizes.tiny.base:" in r.stderr \
        and "train.min_lr: 0.0001" in r.stderr and "says 0.0002" in r.stderr, r.stderr
    # refused too: a run folder without final/ (unfinished or still being written), and one whose checkpoint was
    # trained from another folder's (its history is not in it)
    del s["sizes"]["tiny"]["set"]
    for name, change in (("unfinished", lambda d: shutil.rmtree(d / "final")),
                         ("continued", lambda d: (d / "step-00000008" / "hyperparameters.yaml").write_text(
                             (d / "step-00000008" / "hyperparameters.yaml").read_text().replace(
                                 "resume_from: null", "resume_from: /elsewhere/step-00000004")))):
        copy = tmp_path / name
        shutil.copytree(whole_dir, copy, symlinks=True)
        change(copy)
        s["sizes"]["tiny"]["base"] = str(copy)
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(s, sort_keys=False))
        r = run_cli("study", "plan", tmp_path / f"{name}.yaml", "--check_files", "false")
        want = "has no complete final/ checkpoint" if name == "unfinished" else "was trained from /elsewhere/step-00000004"
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and want in r.stderr, (name, r.stderr)


def test_a_second_spec_in_the_folder_trains_no_base_step_and_starts_from_the_first_specs_checkpoints(study, tmp_path):
    """Two specs with different arm starts run into one folder: the second reuses the first's base segments
    (its arm at step 8 starts from the periodic checkpoint the first spec's 4 -> 12 segment kept), and that
    arm's weights equal the same spec's arm run alone, where a segment ends at 8 (exact resume)."""
    spec, root = study
    base = yaml.safe_load(spec.read_text())
    specs = {}
    for name, start in (("first", 4), ("second", 8)):
        s = {**base, "name": name, "arms": [{"name": "code", "domain": "code", "start": [start], "weight": [0.2]}],
             "seeds": [0], "eval": {"enabled": False}, "report": {"baseline": "pretrain-only"},
             "sft": {**base["sft"], "lrs": [1e-3]}}
        specs[name] = tmp_path / f"{name}.yaml"
        specs[name].write_text(yaml.safe_dump(s, sort_keys=False))
    out, alone = tmp_path / "shared", tmp_path / "alone"
    env = {"OMP_NUM_THREADS": "1"}
    r = run_cli("study", "run", specs["first"], "--out", out, "--parallel", "1", env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    first = statuses(out)
    r = run_cli("study", "plan", specs["second"], "--out", out, "--check_files", "false")
    assert r.returncode == 0 and "reused: 2 base segment(s) planned in this folder by spec 'first'" in r.stdout, r.stdout
    r = run_cli("study", "run", specs["second"], "--out", out, "--parallel", "1", env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    second = statuses(out)
    index = json.loads((out / "studies" / "second.json").read_text())["steps"]
    base_steps = [sid for sid in index if sid.startswith("base/")]
    assert base_steps == ["base/tiny/to4", "base/tiny/to12"]
    for sid in base_steps + ["sft/tiny/pretrain-only/fn/lr0.001/s0"]:  # trained once, by the first spec
        assert second[sid]["started"] == first[sid]["started"] and second[sid]["state"] == "done", sid
    arm = index["midtrain/tiny/code20-from8"]["out"]
    run = yaml.safe_load((out / arm / "run.yaml").read_text())
    assert run["resume_from"] == str(out / index["base/tiny/to12"]["out"] / "run" / "step-00000008")
    assert (out / "report" / "first" / "table.md").is_file() and (out / "report" / "second" / "table.md").is_file()
    r = run_cli("study", "status", specs["first"], "--out", out)  # the first spec still reads as done
    assert r.returncode == 0 and "study first: 6 steps: 6 done" in r.stdout, r.stdout
    # the same arm from a spec run alone (its base cut at 8) has the same weights
    r = run_cli("study", "run", specs["second"], "--out", alone, "--parallel", "1", env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    alone_index = json.loads((alone / "study.json").read_text())["steps"]
    assert [sid for sid in alone_index if sid.startswith("base/")] == ["base/tiny/to8", "base/tiny/to12"]
    # a spec in another folder naming this one as its size's base: reads the base segments in place, writes
    # nothing there, trains no base step; refused in one line while a reused step is not done there
    other = {**yaml.safe_load(specs["second"].read_text()), "name": "elsewhere"}
    other["sizes"]["tiny"]["base"] = str(out)
    (tmp_path / "elsewhere.yaml").write_text(yaml.safe_dump(other, sort_keys=False))
    before = {p: p.stat().st_mtime_ns for p in out.rglob("step.json")}
    r = run_cli("study", "plan", tmp_path / "elsewhere.yaml", "--check_files", "false")
    assert r.returncode == 0 and f"planned in study folder {out} by spec" in r.stdout, r.stdout + r.stderr
    r = run_cli("study", "run", tmp_path / "elsewhere.yaml", "--out", tmp_path / "elsewhere", "--parallel", "1", env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("step.json")} == before
    idx_e = json.loads((tmp_path / "elsewhere" / "study.json").read_text())["steps"]
    assert all(idx_e[sid]["out"].startswith(str(out)) for sid in idx_e if sid.startswith("base/"))
    run_e = yaml.safe_load((tmp_path / "elsewhere" / idx_e["midtrain/tiny/code20-from8"]["out"] / "run.yaml").read_text())
    assert run_e["resume_from"] == str(out / index["base/tiny/to12"]["out"] / "run" / "step-00000008")
    status_file = out / index["base/tiny/to12"]["out"] / "status.json"
    saved = status_file.read_text()
    status_file.write_text(json.dumps({**json.loads(saved), "state": "failed"}))
    r = run_cli("study", "run", tmp_path / "elsewhere.yaml", "--out", tmp_path / "elsewhere2")
    status_file.write_text(saved)
    assert r.returncode == 2 and "sizes.tiny.base: base/tiny/to12 in" in r.stderr and "is not done there" in r.stderr
    other["sizes"]["tiny"]["set"] = {"train.max_steps": 16}  # another base config: nothing to reuse there
    (tmp_path / "elsewhere3.yaml").write_text(yaml.safe_dump(other, sort_keys=False))
    r = run_cli("study", "plan", tmp_path / "elsewhere3.yaml", "--check_files", "false")
    assert r.returncode == 2 and "sizes.tiny.base:" in r.stderr and "holds no base run" in r.stderr, r.stderr
    # seeds.vary: sft (the default) with 2 seeds and 2 LRs: one midtrained checkpoint per arm (the first spec's,
    # reused), SFT per seed, and one LR per checkpoint chosen on the validation loss averaged over its seeds
    third = {**yaml.safe_load(specs["first"].read_text()), "name": "third", "seeds": [0, 1]}
    third["sft"]["lrs"] = [1e-4, 1e-3]
    (tmp_path / "third.yaml").write_text(yaml.safe_dump(third, sort_keys=False))
    r = run_cli("study", "run", tmp_path / "third.yaml", "--out", out, "--parallel", "1", env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    idx3 = json.loads((out / "studies" / "third.json").read_text())["steps"]
    assert [sid for sid in idx3 if sid.startswith("midtrain/")] == ["midtrain/tiny/code20-from4"]
    assert statuses(out)["midtrain/tiny/code20-from4"]["started"] == first["midtrain/tiny/code20-from4"]["started"]
    res = json.loads((out / "report" / "third" / "results.json").read_text())
    assert res["vary"] == "sft" and "SFT data order only" in res["variance"] and res["lr_choice"] == "per_checkpoint"
    for cell in res["sizes"]["tiny"]["cells"]:
        val = {}
        for sid, info in idx3.items():
            if sid.startswith(f"sft/tiny/{cell['arm']}/"):
                m = json.loads((out / info["out"] / "metrics.json").read_text())
                val.setdefault(m["best_lr"], []).append(m["val_loss"])
        best = min(val, key=lambda lr: sum(val[lr]) / len(val[lr]))
        assert cell["seeds"] == [0, 1] and cell["lrs"] == [best, best], (cell, val)
    assert "Seeds 0, 1 (seeds.vary: sft) sample the SFT data order only" in \
        (out / "report" / "third" / "table.md").read_text()
    # a step that failed in an earlier run runs again in the next one (docs/studies.md): the local executor
    # skipped every step whose status said failed
    rep = out / idx3["report"]["out"] / "status.json"
    rep.write_text(json.dumps({**json.loads(rep.read_text()), "state": "failed", "exit_code": 1}))
    r = run_cli("study", "run", tmp_path / "third.yaml", "--out", out, "--parallel", "1", env=env)
    assert r.returncode == 0 and "1 to run" in r.stdout and "done: report" in r.stdout, r.stdout + r.stderr
    assert json.loads(rep.read_text())["state"] == "done"
    a = torch.load(out / arm / "run" / "final" / "lit_model.pth", weights_only=False)
    b = torch.load(alone / alone_index["midtrain/tiny/code20-from8"]["out"] / "run" / "final" / "lit_model.pth",
                   weights_only=False)
    assert a["step_count"] == b["step_count"] == 12
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k


def test_seeds_vary_base_trains_a_base_run_per_seed_with_its_own_init(study, tmp_path):
    spec, root = study
    raw = yaml.safe_load(spec.read_text())
    raw.update(name="bases", arms=[], seeds={"values": [0, 1], "vary": "base"}, eval={"enabled": False})
    raw.pop("sft")
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(raw))
    r = run_cli("study", "run", tmp_path / "b.yaml", "--out", tmp_path / "out", "--parallel", "1")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    index = json.loads((tmp_path / "out" / "study.json").read_text())["steps"]
    runs = {}
    for seed in (0, 1):
        folder = tmp_path / "out" / index[f"base/tiny/s{seed}/to12"]["out"]
        cfg = yaml.safe_load((folder / "run.yaml").read_text())
        assert cfg["seed"] == seed and cfg["data"]["init_args"]["seed"] == seed
        runs[seed] = torch.load(folder / "run" / "step-00000004" / "lit_model.pth", weights_only=False)["model"]
    assert any(not torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_a_mix_config_arm_naming_shards_is_in_the_proximity_table_with_its_mixture(study, tmp_path):
    """Known answer: c1 is the only shard of type code, so an arm given as a mix_config file naming shard c1
    has the same unigram mixture, hence the same proximity advantage, as the typed mixture main:0.5,code:0.5."""
    from midtrain.analysis.tables import SFTResult, aggregate
    from midtrain.study.files import load_plan
    from midtrain.study.report import _proximity

    spec, root = study
    raw = yaml.safe_load(spec.read_text())
    (tmp_path / "qa.json").write_text(json.dumps({"weights": {"main": 0.5, "c1": 0.5}}))
    raw["arms"] = [{"name": "qa", "mix_config": str(tmp_path / "qa.json"), "start": [4]},
                   {"name": "typed", "mixture": "main:0.5,code:0.5", "start": [4]},
                   {"name": "code", "domain": "code", "start": [4], "weight": [0.2]}]
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    plan = load_plan(tmp_path / "s.yaml")
    qa = next(a for a in plan.spec.arms if a.family == "qa")
    assert qa.mixture == "main:0.5,c1:0.5" and qa.mix_config  # the file's weights, as written; the run reads the file
    results = [SFTResult(arm, "fn", seed, 1e-3, 2.0 - d, test_loss=2.0 - d + 0.01 * seed)
               for seed in (0, 1, 2) for arm, d in (("pretrain-only", 0), ("qa-from4", 0.1), ("typed-from4", 0.2),
                                                    ("code20-from4", 0.05))]
    size_res = {}
    lines = _proximity(plan, plan.spec.sizes[0], aggregate(results, "pretrain-only"), tmp_path, size_res)
    rows = {r["arm"]: r for r in size_res["proximity"]["rows"]}
    assert set(rows) == {"qa-from4", "typed-from4", "code20-from4"}
    assert rows["qa-from4"]["advantage"] == pytest.approx(rows["typed-from4"]["advantage"], rel=1e-12)
    assert rows["qa-from4"]["advantage"] != pytest.approx(rows["code20-from4"]["advantage"])
    assert any("| qa-from4 | fn |" in line for line in lines) and (tmp_path / "tiny-proximity.png").stat().st_size > 0


def test_unknown_domain_is_one_line(study, tmp_path):
    spec, _ = study
    bad = yaml.safe_load(spec.read_text())
    bad["arms"][0]["domain"] = "cod"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    r = run_cli("study", "plan", tmp_path / "bad.yaml")
    assert r.returncode == 2 and "arms: code.domain: 'cod' is not a shard type" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    # a forgetting set the val folder lacks is refused at plan time, not by SFT steps after the arms trained
    bad = yaml.safe_load(spec.read_text())
    bad["sft"].setdefault("options", {})["forgetting_sets"] = ["main", "mian"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    r = run_cli("study", "plan", tmp_path / "bad.yaml")
    assert r.returncode == 2 and "sft.options.forgetting_sets: 'mian' is not a validation set in" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


EXTRAS_PY = os.environ.get("MIDTRAIN_EXTRAS_PYTHON")


@pytest.mark.skipif(not EXTRAS_PY and not os.environ.get("CI"), reason="MIDTRAIN_EXTRAS_PYTHON unset (make test)")
def test_lm_eval_step_runs_offline_and_reaches_the_report(study, tmp_path):
    """eval.lm_eval adds one lm-eval step per run (the eval extra; a local task), reported per run."""
    from midtrain.study.folder import materialise
    from midtrain.study.files import load_plan

    assert EXTRAS_PY, "CI runs the extras tests: MIDTRAIN_EXTRAS_PYTHON must be set"
    spec, root = study
    out = root / "out"
    cfg = yaml.safe_load(spec.read_text())
    cfg["eval"]["lm_eval"] = {"tasks": "tiny_arith", "include_path": os.path.join(REPO, "tests", "lm_eval_tasks"),
                              "limit": 4}
    new_spec = tmp_path / "study.yaml"
    new_spec.write_text(yaml.safe_dump(cfg))
    plan = load_plan(new_spec)
    lm = [s for s in plan.steps if s.kind == "lm-eval"]
    assert len(lm) == 8 and all(s.deps[0] in plan.by_id for s in lm)  # 6 arm runs + the control per seed (2)
    before = json.loads((out / "study.json").read_text())["steps"]
    assert all(before[s.id]["out"] == s.out for s in plan.steps if s.kind not in ("lm-eval", "report"))
    materialise(plan, out, new_spec)
    step = plan.by_id["lm-eval/tiny/pretrain-only/s0"]
    r = subprocess.run([EXTRAS_PY, "-m", "midtrain", "study", "step", str(out / step.out)], cwd=REPO,
                       env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (out / step.out / "log.txt").read_text()[-3000:]
    res = json.loads((out / step.out / "lm_eval" / "results.json").read_text())["results"]
    assert "tiny_arith" in res
    from midtrain.study.report import write_report

    rep = write_report(plan, out)
    assert "lm-eval metrics of each run" in (rep / "table.md").read_text() and "tiny_arith/acc" in (rep / "table.md").read_text()


def test_one_ctrl_c_checkpoints_the_running_step_and_the_study_says_so(study, tmp_path):
    """Issue 27, class 12: Ctrl-C sends SIGINT to the whole process group (`kill -INT -- -PGID` here). The
    trainer got it twice, from the terminal and forwarded by its step runner, took the second for an
    impatient Ctrl-C and stopped without a checkpoint (exit 130), while `study run` printed 'running steps
    checkpointed'. Now the trainer, in its own process group, gets it once: it checkpoints and exits 75;
    the step is interrupted with that note, the study exits 75 and says what each step did."""
    spec, root = study
    s = yaml.safe_load(spec.read_text())
    s["name"] = "ctrlc"
    s["sizes"]["tiny"]["set"] = {"train.max_steps": 400, "train.save_interval": 1000, "train.log_interval": 1}
    s["arms"] = [{"name": "code", "domain": "code", "start": [300], "weight": [0.2]}]
    s["seeds"] = {"values": [0], "vary": "sft"}
    (tmp_path / "ctrlc.yaml").write_text(yaml.safe_dump(s, sort_keys=False))
    out = tmp_path / "out"
    proc = _start_run(tmp_path / "ctrlc.yaml", out)
    deadline = time.time() + 300
    log = None
    while time.time() < deadline:
        time.sleep(0.2)
        running = [st for st in (statuses(out).values() if (out / "study.json").exists() else [])
                   if st.get("state") == "running" and st.get("log")]
        if running and os.path.exists(running[0]["log"]) and "step 5/" in open(running[0]["log"]).read():
            log = running[0]["log"]
            break
    assert log, "the base step never reached step 5"
    os.killpg(proc.pid, signal.SIGINT)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, text
    assert "stopped by signal SIGINT:" in text and "checkpointed; run again to continue" in text, text
    body = open(log).read()
    assert "second interrupt" not in body and "signal SIGINT received: checkpointing step" in body, body[-2000:]
    (st,) = [st for st in statuses(out).values() if st.get("log") == log]
    assert st["state"] == "interrupted" and st["exit_code"] == 75, st
    argv = json.loads(open(os.path.join(os.path.dirname(log), "step.json")).read())["argv"]
    run_dir = argv[argv.index("--out_dir") + 1] if "--out_dir" in argv else None
    if run_dir is None:  # the out_dir is in the step's config file
        run_dir = yaml.safe_load(open(argv[argv.index("--config") + 1]).read())["out_dir"]
    kept = [name for name in os.listdir(run_dir) if name.startswith("step-")]
    assert kept and int(kept[0].split("-")[1]) >= 5, kept


def test_dose_matched_arms_get_a_line_per_dose_over_the_start(study, tmp_path):
    """Issue 28, item 1: a dose-matched family (w·(T − S) fixed per dose) is drawn as Δ over the start, one line
    per dose, on both metrics; the weight each start got is in the arm's mixture."""
    from midtrain.analysis.tables import SFTResult, aggregate
    from midtrain.study.files import load_plan
    from midtrain.study.report import _lines_and_scatter

    spec, root = study
    raw = yaml.safe_load(spec.read_text())
    raw["arms"] = [{"name": "dm", "domain": "code", "start": [4, 8], "dose": [2, 3]}]
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    plan = load_plan(tmp_path / "s.yaml")
    names = sorted(a.name for a in plan.spec.arms)
    assert names == ["dm-dose2-from4", "dm-dose2-from8", "dm-dose3-from4", "dm-dose3-from8"]
    weights = {a.name: a.weight * (12 - a.start) for a in plan.spec.arms}
    assert weights["dm-dose2-from4"] == pytest.approx(weights["dm-dose2-from8"]) == pytest.approx(2)
    results = [SFTResult(arm, "fn", seed, 1e-3, 2.0 - d, test_loss=2.0 - d + 0.01 * seed, main_after=3.0 + d,
                         main_before=3.0)
               for seed in (0, 1) for arm, d in (("pretrain-only", 0), ("dm-dose2-from4", 0.1), ("dm-dose2-from8", 0.05),
                                                 ("dm-dose3-from4", 0.2), ("dm-dose3-from8", 0.1))]
    lines = _lines_and_scatter(plan.spec, "tiny", aggregate(results, "pretrain-only"), tmp_path)
    assert "![dm dose-matched over the start on fn](tiny-dm-fn-dose-matched.png)" in lines
    assert (tmp_path / "tiny-dm-fn-dose-matched.png").stat().st_size > 5000
