"""Study engine speed: planning and status of the paper's full grid, and how busy the local executor
keeps its workers.

    python bench/study.py                  # plan + status of midtrain_configs/studies/paper-main.yaml
    python bench/study.py --executor 2     # also run the tiny test study with --parallel 2 (~2 min)

Targets (the studies issue): planning the full paper grid < 1 s; `status` on it < 1 s; the local
executor's wall time <= 1.2 x (sum of step times / N) + the critical path. Medians of --repeats.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def paper_spec(path: Path):
    import yaml

    from midtrain.config_io import expand_env, load_config

    env = {"DATA_ROOT": "/data", "CKPT_ROOT": "/ckpt", "TOKENIZER_DIR": "/tok", "SFT_ROOT": "/sft"}
    raw = expand_env(yaml.safe_load(path.read_text()), "", env)
    os.environ.update({k: v for k, v in env.items() if k not in os.environ})
    bases = {name: load_config(REPO / s["config"]) for name, s in raw["sizes"].items()}
    return raw, bases


def median_time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def executor_run(parallel: int) -> None:
    from study_fixture import build, statuses

    import subprocess

    with tempfile.TemporaryDirectory(prefix="midtrain-bench-study-") as tmp:
        spec = build(Path(tmp))
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "midtrain", "study", "run", str(spec), "--out", f"{tmp}/out",
                            "--parallel", str(parallel)], cwd=REPO, capture_output=True, text=True,
                           env=dict(os.environ, PYTHONPATH=str(REPO)))
        wall = time.perf_counter() - t0
        assert r.returncode == 0, r.stdout + r.stderr
        st = statuses(Path(tmp) / "out")
        index = json.loads((Path(tmp) / "out" / "study.json").read_text())["steps"]
        dur = {sid: s["ended"] - s["started"] for sid, s in st.items()}
        finish: dict[str, float] = {}
        for sid, info in index.items():  # critical path with the measured step times (index is topological)
            finish[sid] = dur[sid] + max((finish[d] for d in info["deps"]), default=0.0)
        total, critical = sum(dur.values()), max(finish.values())
        span = max(v["ended"] for v in st.values()) - min(v["started"] for v in st.values())
        bound = 1.2 * total / parallel + critical
        print(f"local executor, tiny study ({len(dur)} steps), --parallel {parallel}: first step start -> last step end "
              f"{span:.1f} s; sum of step times {total:.1f} s, critical path {critical:.1f} s; bound 1.2 x sum/N + "
              f"critical = {bound:.1f} s: {'met' if span <= bound else 'MISSED'} (span / (sum/N) = "
              f"{span / (total / parallel):.2f}); the `study run` command took {wall:.1f} s in all (interpreter, "
              f"imports, plan: {wall - span:.1f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default=str(REPO / "midtrain_configs" / "studies" / "paper-main.yaml"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--executor", type=int, default=0, help="also run the tiny study with this --parallel")
    a = ap.parse_args()
    from midtrain.study.folder import materialise
    from midtrain.study.slurm import squeue_jobs
    from midtrain.study.states import status_rows
    from midtrain.study.plan import make_plan
    from midtrain.study.spec import parse_spec

    raw, bases = paper_spec(Path(a.spec))
    t_plan, plan = median_time(lambda: make_plan(parse_spec(copy.deepcopy(raw), bases)), a.repeats)
    print(f"plan {Path(a.spec).name}: {len(plan.steps):,} steps ({plan.counts()}) in {t_plan * 1000:.0f} ms "
          f"(median of {a.repeats}; target < 1 s: {'met' if t_plan < 1 else 'MISSED'})")
    with tempfile.TemporaryDirectory(prefix="midtrain-bench-status-") as tmp:
        materialise(plan, Path(tmp), Path(a.spec))
        from midtrain.study.folder import write_status

        for k, step in enumerate(plan.steps):  # a study half done
            if k % 2 == 0:
                write_status(Path(tmp) / step.out, state="done", started=1.0, ended=2.0, outputs=[])
        t_status, rows = median_time(lambda: status_rows(plan, Path(tmp), squeue_jobs), a.repeats)
        print(f"status on it: {len(rows):,} rows in {t_status * 1000:.0f} ms (target < 1 s: "
              f"{'met' if t_status < 1 else 'MISSED'})")
    if a.executor:
        executor_run(a.executor)


if __name__ == "__main__":
    main()
