"""Whole-command speed of `midtrain study plan` and `midtrain study status`, as a user on a login node
runs them: a fresh interpreter each time, imports included (bench/study.py times the engine in-process).

    python bench/study_cli.py                 # 5 runs of each command
    python bench/study_cli.py --repeats 9

Commands: `study plan midtrain_configs/studies/paper-main.yaml --check_files false --devices false` (the
devices section imports torch in a child process: several seconds more, by design); `study status` on the
tiny test study (tests/study_fixture.py) materialised, nothing run; `study status` on the paper grid
materialised with half its steps done. Target (issue 16): each <= 1.5 s wall on a quiet machine. Reports
the median wall time and the median / max peak RSS of each command (the child's own rusage, os.wait4).
Not a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

PAPER_ENV = {"DATA_ROOT": "/data", "CKPT_ROOT": "/ckpt", "TOKENIZER_DIR": "/tok", "SFT_ROOT": "/sft"}


def run_once(argv: list[str], env: dict) -> tuple[float, int, int, str]:
    """(wall seconds, peak RSS in MiB, exit status, stderr) of one command, as a child process."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)  # reaped here: keep Popen from waiting again
        err.seek(0)
        return wall, usage.ru_maxrss // 1024, p.returncode, err.read().decode(errors="replace")


def bench(name: str, argv: list[str], env: dict, repeats: int, target: float | None) -> bool:
    walls, rss = [], []
    for _ in range(repeats):
        wall, peak, code, err = run_once(argv, env)
        if code != 0:
            print(f"{name}: exit status {code}\n{err}", file=sys.stderr)
            return False
        walls.append(wall)
        rss.append(peak)
    med = statistics.median(walls)
    ok = target is None or med <= target
    verdict = "" if target is None else f"; target <= {target:g} s: {'pass' if ok else 'FAIL'}"
    print(f"{name}: median {med:.2f} s wall (min {min(walls):.2f}, max {max(walls):.2f}; {repeats} runs), peak RSS "
          f"median {statistics.median(rss):.0f} MiB, max {max(rss)} MiB{verdict}")
    return ok


def tiny_study(root: Path) -> tuple[Path, Path]:
    """The test study (tokenizer, shards, base config, spec) with its folder materialised: nothing run."""
    from study_fixture import build

    from midtrain.study.folder import materialise
    from midtrain.study.files import load_plan

    spec = build(root)
    materialise(load_plan(spec, check_files=False), root / "out", spec)
    return spec, root / "out"


def paper_study(spec: Path, out: Path) -> Path:
    """The paper grid materialised, every other step done (what `status` reads on a study in progress)."""
    from midtrain.study.folder import materialise, write_status
    from midtrain.study.files import load_plan

    plan = load_plan(spec, check_files=False, estimate=False)
    materialise(plan, out, spec)
    for k, step in enumerate(plan.steps):
        if k % 2 == 0:
            write_status(out / step.out, state="done", started=1.0, ended=2.0, outputs=[])
    return out


def setup(tmp: Path, spec: Path) -> dict:
    """Both study folders (run in a child process: building the tiny study imports torch and litdata, and a
    child's peak RSS starts from its parent's at the fork)."""
    r = subprocess.run([sys.executable, __file__, "--setup", str(tmp), "--spec", str(spec)], cwd=REPO,
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"setting up the study folders failed:\n{r.stdout}{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default=str(REPO / "midtrain_configs" / "studies" / "paper-main.yaml"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--target", type=float, default=1.5, help="seconds of wall time per command")
    ap.add_argument("--setup", default=None, help=argparse.SUPPRESS)  # internal: build the folders under this
    a = ap.parse_args()
    for k, v in PAPER_ENV.items():  # the paper spec's ${VARS}; the plan does not check files
        os.environ.setdefault(k, v)
    if a.setup:
        tiny_spec, tiny_out = tiny_study(Path(a.setup) / "tiny")
        paper_out = paper_study(Path(a.spec), Path(a.setup) / "paper")
        print(json.dumps({"tiny_spec": str(tiny_spec), "tiny_out": str(tiny_out), "paper_out": str(paper_out)}))
        return
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    midtrain = [sys.executable, "-m", "midtrain"]
    results = []
    with tempfile.TemporaryDirectory(prefix="midtrain-bench-study-cli-") as tmp:
        paths = setup(Path(tmp), Path(a.spec))
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; load average "
              f"{', '.join(f'{x:.2f}' for x in os.getloadavg())} (quiet machine: well under the CPU count)")
        bench("interpreter start (python -c pass), for reference", [sys.executable, "-c", "pass"], env, a.repeats,
              None)
        results.append(bench(f"study plan {Path(a.spec).name} --check_files false --devices false",
                             midtrain + ["study", "plan", a.spec, "--check_files", "false", "--devices", "false"], env,
                             a.repeats, a.target))
        results.append(bench("study status, tiny study (33 steps)",
                             midtrain + ["study", "status", paths["tiny_spec"], "--out", paths["tiny_out"]], env,
                             a.repeats, a.target))
        results.append(bench(f"study status, {Path(a.spec).name} (half done)",
                             midtrain + ["study", "status", a.spec, "--out", paths["paper_out"]], env, a.repeats,
                             a.target))
    print("all commands within the target" if all(results) else "MISSED: some command is over the target")
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
