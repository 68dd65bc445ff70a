"""Signals at wall-clock moments, not step boundaries: start-up, data set-up, the loop, the final save, the end.

Whatever the moment, a SIGTERM/SIGUSR1 ends `midtrain pretrain` with exit 75 (a consistent checkpoint,
or "nothing to save" before the first step) or exit 0 once the run is complete; resuming then gives
the uninterrupted run's weights and sample trace. Signals go to the whole process group here (as
srun and Ctrl-C deliver them), so the DataLoader workers receive them too.
"""

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from support import REPO, ctrl_c_until_it_ends, run_cli
from support.runs import assert_same_weights, write_config


def _start(cfg, env):
    return subprocess.Popen([sys.executable, "-m", "midtrain", "pretrain", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO,
                            start_new_session=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, real_tree):
    tmp = tmp_path_factory.mktemp("sigref")
    cfg = write_config(tmp, real_tree, workers=2, out_dir=str(tmp / "ref"), train={"max_steps": 16})
    t0 = time.monotonic()
    r = run_cli("pretrain", "--config", cfg, env={"MIDTRAIN_SAMPLE_TRACE": str(tmp / "trace")})
    assert r.returncode == 0, r.stderr[-2000:]
    return tmp, time.monotonic() - t0


@pytest.mark.parametrize("trial", range(6))
def test_signal_at_any_wall_clock_moment(tmp_path, real_tree, reference, trial):
    ref_dir, duration = reference
    rng = random.Random(trial)
    # strata over the run's life: interpreter/imports, set-up, early loop, late loop, around the final save
    lo, hi = [(0.0, 0.08), (0.08, 0.3), (0.3, 0.6), (0.6, 0.85), (0.85, 1.0), (0.95, 1.1)][trial]
    delay = duration * rng.uniform(lo, hi)
    sig = [signal.SIGTERM, signal.SIGUSR1][trial % 2]
    cfg = write_config(tmp_path, real_tree, workers=2, out_dir=str(tmp_path / "run"), resume="auto",
                       train={"max_steps": 16})
    env = dict(os.environ, PYTHONPATH=REPO, MIDTRAIN_SAMPLE_TRACE=str(tmp_path / "trace"))
    proc = _start(cfg, env)
    time.sleep(delay)
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass  # already finished: also a moment
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode in (0, 75), f"delay {delay:.2f}s: exit {proc.returncode}\n{out[-3000:]}"
    assert "Traceback" not in out, out[-3000:]
    if proc.returncode == 75:
        assert "checkpointing step" in out or "nothing to save" in out
        r = run_cli("pretrain", "--config", cfg, env={"MIDTRAIN_SAMPLE_TRACE": str(tmp_path / "trace")})
        assert r.returncode == 0, r.stderr[-2000:]
    assert_same_weights(ref_dir / "ref" / "final", tmp_path / "run" / "final")
    assert (tmp_path / "trace.rank0").read_text() == (ref_dir / "trace.rank0").read_text()


def test_sigint_checkpoints_and_exits_75_and_a_second_one_stops_at_once_with_130(tmp_path, real_tree, reference):
    """One Ctrl-C checkpoints and exits 75 like SIGTERM (issue 27, class 12: 75 always means a consistent
    checkpoint); 130 means only a second interrupt, stopped at once without one."""
    ref_dir, duration = reference
    cfg = write_config(tmp_path, real_tree, workers=2, out_dir=str(tmp_path / "run"), resume="auto",
                       train={"max_steps": 16})
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = _start(cfg, env)
    for line in proc.stdout:
        if line.startswith("step 5/"):
            os.killpg(proc.pid, signal.SIGINT)
            break
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 75 and "signal SIGINT received: checkpointing" in out and "Traceback" not in out
    assert run_cli("pretrain", "--config", cfg).returncode == 0
    assert_same_weights(ref_dir / "ref" / "final", tmp_path / "run" / "final")
    # Ctrl-C pressed again and again during start-up: the second one the process sees stops it at once, with
    # nothing written. Sent once its handlers are in place (signals.READY_ENV), seconds before the trainer could
    # start, and repeated: two SIGINTs that land while the interpreter is inside one C call (loading torch's
    # extension, ~0.5 s and more on a loaded machine) run its handler once, so a fixed pair 0.5 s apart was
    # sometimes seen as one Ctrl-C (exit 75, CI)
    ready = tmp_path / "ready"
    ready.mkdir()
    proc = _start(write_config(tmp_path, real_tree, "two.yaml", out_dir=str(tmp_path / "two")),
                  dict(env, MIDTRAIN_SIGNALS_READY=str(ready)))
    out = ctrl_c_until_it_ends(proc, ready)
    assert proc.returncode == 130 and "second interrupt" in out and "Traceback" not in out, out[-2000:]
    assert not (tmp_path / "two" / "final").exists()


def test_launcher_survives_a_signal_before_the_trainer_starts(tmp_path, real_tree):
    """USR1 while the launcher runs `midtrain mix --check-complete`: no death by signal, nothing to save, exit 0."""
    cfg = write_config(tmp_path, real_tree, out_dir=str(tmp_path / "run"))
    env = dict(os.environ, PYTHONPATH=REPO, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    env.pop("SLURM_JOB_ID", None)
    proc = subprocess.Popen(["bash", "training_scripts/small_model_pretrain.sh", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    time.sleep(0.3)  # inside `midtrain mix`, long before the trainer
    proc.send_signal(signal.SIGUSR1)
    out = proc.communicate(timeout=180)[0]
    assert proc.returncode == 0, out[-2000:]
    assert "USR1 received before the trainer started: nothing to save" in out
    assert not (tmp_path / "run").exists()


def test_launcher_holds_a_signal_until_the_trainer_can_take_it(tmp_path, real_tree):
    """USR1 while the trainer's interpreter is still starting (a sitecustomize that sleeps 4 s stands in for a
    slow shared file system): forwarded at once, it killed the trainer (exit 138, no requeue; CI saw it under
    srun). The launcher holds it until the trainer says its handlers are in place, which then stops cleanly."""
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text("import os, sys, time\nif 'pretrain' in sys.argv[1:2] or "
                                           "os.environ.get('MIDTRAIN_SIGNALS_READY'):\n    time.sleep(4)\n")
    cfg = write_config(tmp_path, real_tree, out_dir=str(tmp_path / "run"))
    env = dict(os.environ, PYTHONPATH=str(slow) + os.pathsep + REPO,
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    env.pop("SLURM_JOB_ID", None)
    log = tmp_path / "out.txt"
    with open(log, "w") as f:
        proc = subprocess.Popen(["bash", "training_scripts/small_model_pretrain.sh", str(cfg)], stdout=f,
                                stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    deadline = time.time() + 120
    while "launch:" not in log.read_text():
        assert time.time() < deadline and proc.poll() is None, log.read_text()[-2000:]
        time.sleep(0.05)
    time.sleep(1.0)  # the trainer's interpreter is in its 4 s start-up
    proc.send_signal(signal.SIGUSR1)
    proc.wait(timeout=180)
    out = log.read_text()
    assert proc.returncode == 0, out[-2000:]
    assert "USR1 received: asking the trainer to checkpoint and stop" in out
    assert "the trainer stopped on a signal" in out, out[-2000:]


@pytest.mark.parametrize("after", [0.0, 0.3])
def test_a_forked_command_ended_by_sigint_dies_of_it_as_a_fresh_interpreter(tmp_path, monkeypatch, after):
    """The study's step runner forks each command (runner.fork_command). A command without stop handlers (eval,
    lm-eval, report) that gets SIGINT must die of it (exit -2), as a fresh `midtrain` interpreter does: the runner
    records that as interrupted and the next run redoes it. Raised as KeyboardInterrupt and exited 1, it was
    recorded as failed (the reviewer's finding)."""
    import runpy

    from midtrain.study.runner import fork_command

    monkeypatch.setattr(runpy, "run_module", lambda *a, **k: time.sleep(30))  # the child inherits it at fork
    log = tmp_path / "log"
    pid = fork_command(["evaluate", "loss"], log, str(tmp_path))
    time.sleep(after)
    os.kill(pid, signal.SIGINT)
    deadline = time.time() + 20
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        assert time.time() < deadline, "the child did not end"
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(done[1]) == -signal.SIGINT, log.read_text()
