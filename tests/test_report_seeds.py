"""`midtrain report --by_seed` over SFT metrics files, and the figure functions (PNG size, non-empty)."""

import csv
import io
import json

import numpy as np
import pytest

from support import run_cli
from midtrain.analysis import figures, stats


def sft_json(path, arm, task, seed, sweep, test, main_after, main_before=4.0):
    best = min(sweep, key=lambda lr: (sweep[lr], lr))
    m = {"checkpoint": f"/runs/{arm}-s{seed}/final", "data": f"/data/{task}.jsonl", "task": task, "arm": arm,
         "seed": seed, "lr_sweep": {f"{lr:g}": {"val_loss": v, "final_train_loss": 0.0, "steps": 1}
                                    for lr, v in sweep.items()},
         "best_lr": best, "val_loss": sweep[best], "test_loss": test, "zero_shot_val_loss": 9.0,
         "forgetting": {"main": {"before": main_before, "after": main_after, "increase": main_after - main_before}}}
    path.write_text(json.dumps(m))
    return str(path)


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    out = []
    for seed in range(4):
        shared = rng.normal(0, 0.02)
        for arm, eff in (("pretrain-only", 0.0), ("code20", -0.15), ("cpt", 0.0)):
            for task in ("pycode", "gsm8k"):
                noise = 0.0 if arm == "pretrain-only" else rng.normal(0, 0.02 if arm == "code20" else 0.3)
                v = 2.0 + eff + shared + noise
                out.append(sft_json(tmp_path / f"{arm}-{task}-{seed}.json", arm, task, seed,
                                    {1e-4: v + 0.1, 3e-4: v, 1e-3: v + 0.2}, test=v + 0.01, main_after=5 + eff))
    return out


def test_by_seed_markdown_and_csv(files, tmp_path):
    r = run_cli("report", "--by_seed", "true", "--sft", *files)
    assert r.returncode == 0, r.stderr
    assert "| arm | pycode | gsm8k |" in r.stdout and "n=4" in r.stdout
    r = run_cli("report", "--by_seed", "true", "--sft", *files, "--format", "csv", "--out", tmp_path / "t.csv")
    assert r.returncode == 0, r.stderr
    rows = {(row["arm"], row["task"]): row for row in csv.DictReader(io.StringIO((tmp_path / "t.csv").read_text()))}
    assert rows[("code20", "pycode")]["verdict_sft_test"] == "better"
    assert rows[("cpt", "pycode")]["verdict_sft_test"] == "inconclusive"
    assert rows[("pretrain-only", "pycode")]["verdict_sft_test"] == ""
    # each verdict word matches its own interval
    for row in rows.values():
        if row["verdict_sft_test"]:
            lo, hi = float(row["delta_sft_test_lo"]), float(row["delta_sft_test_hi"])
            assert row["verdict_sft_test"] == ("better" if hi < 0 else "worse" if lo > 0 else "inconclusive")
        assert row["n"] == "4" and row["chosen_lrs"] == "0.0003 0.0003 0.0003 0.0003" and row["lr_edge_seeds"] == ""


def test_by_seed_errors(files, tmp_path):
    r = run_cli("report", "--by_seed", "true", "--sft", *files, "--baseline", "nope")
    assert r.returncode == 2 and "--baseline" in r.stderr and len(r.stderr.splitlines()) == 1
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    r = run_cli("report", "--by_seed", "true", "--sft", bad)
    assert r.returncode == 2 and "not an SFT metrics JSON" in r.stderr
    r = run_cli("report", "--by_seed", "true", "--sft", *files, "--main_set", "web")
    assert r.returncode == 2 and "no forgetting on 'web'" in r.stderr
    r = run_cli("report", "--by_seed", "true", "--sft", *files, "--lr_ceiling", "3e-3")
    assert r.returncode == 2 and r.stderr.strip() == ("midtrain report: error: --lr_ceiling: 0.003 is not the top of "
                                                      "the --sft files' LR grids (0.001): the ceiling is the grid's "
                                                      "highest LR"), r.stderr


def test_by_seed_with_the_lr_ceiling_judges_a_top_winner(tmp_path):
    """--lr_ceiling: a cell whose chosen LR is the grid's top, stated as the bound, is marked and judged; without
    it the same cell is an edge winner, not judged."""
    files = [sft_json(tmp_path / f"{arm}-{seed}.json", arm, "py", seed, {1e-4: v + 0.2, 1e-3: v}, test=v,
                      main_after=5.0, main_before=4.0)
             for seed in range(3) for arm, v in (("pretrain-only", 2.0 + 0.01 * seed), ("code20", 1.8 + 0.012 * seed))]
    plain = run_cli("report", "--by_seed", "true", "--sft", *files, "--format", "csv")
    capped = run_cli("report", "--by_seed", "true", "--sft", *files, "--format", "csv", "--lr_ceiling", "1e-3")
    assert plain.returncode == capped.returncode == 0, plain.stderr + capped.stderr
    rows = {name: {row["arm"]: row for row in csv.DictReader(io.StringIO(r.stdout))}
            for name, r in (("plain", plain), ("capped", capped))}
    assert rows["plain"]["code20"]["verdict_sft_test"] == "not judged"
    assert rows["capped"]["code20"]["verdict_sft_test"] == "better"
    assert rows["capped"]["code20"]["lr_ceiling_seeds"] == "0 1 2" and rows["capped"]["code20"]["lr_edge_seeds"] == ""
    run = tmp_path / "run"
    run.mkdir()
    r = run_cli("report", "--runs", run, "--lr_ceiling", "1e-3")  # an option that would be ignored is refused
    assert r.returncode == 2 and r.stderr.strip().startswith("midtrain report: error: --lr_ceiling: applies to "
                                                             "--by_seed tables only"), r.stderr


def png_size(path):
    import matplotlib.image

    img = matplotlib.image.imread(path)
    return img.shape[1], img.shape[0]


@pytest.mark.unit
def test_figures_write_pngs_of_the_asked_size(tmp_path):
    iv = {(s, w): stats.summarize([0.1 * w - s / 1e5 + d for d in (0.0, 0.01, -0.02)])
          for s in (2000, 4000) for w in (0.1, 0.3, 0.5)}
    out = figures.timing_weight_heatmap({"SFT test loss": iv, "main-corpus loss after SFT": iv},
                                        tmp_path / "h" / "heat.png", size=(900, 400))
    assert png_size(out) == (900, 400)
    pts = {"70M": [(0.01 * i, 0.02 * i + 0.001 * (-1) ** i, f"a{i}") for i in range(5)], "160M": [(0.1, 0.2, "x")]}
    out = figures.proximity_scatter(pts, tmp_path / "scatter.png", size=(800, 300))
    assert png_size(out) == (800, 300)
    bars = {"pycode": {"pretrain-only": stats.summarize([2.0, 2.1, 2.05]), "code20": stats.summarize([1.9, 1.95, 1.92])}}
    out = figures.arm_bars(bars, tmp_path / "bars.png", size=(500, 400))
    assert png_size(out) == (500, 400)
    lines = {"SFT test loss": {f"weight {w:g}": [(s, iv[(s, w)]) for s in (2000, 4000)] for w in (0.1, 0.5)},
             "main-corpus loss after SFT": {"weight 0.3": [(s, iv[(s, 0.3)]) for s in (2000, 4000)]}}
    out = figures.delta_lines(lines, tmp_path / "lines.png", "start step", size=(900, 350))
    assert png_size(out) == (900, 350)
    out = figures.gain_vs_forgetting([(iv[(2000, 0.1)], iv[(4000, 0.5)], "a/t"), (iv[(4000, 0.1)], iv[(2000, 0.3)], "b/t")],
                                     tmp_path / "gain.png", size=(600, 500))
    assert png_size(out) == (600, 500)
    out = figures.curves({"main": {"run a": [(4, 3.0), (8, 2.5)], "run b": [(8, 2.7), (12, 2.2)]}}, tmp_path / "c.png",
                         size=(500, 300))
    assert png_size(out) == (500, 300)
    for f in ("h/heat.png", "scatter.png", "bars.png", "lines.png", "gain.png", "c.png"):
        img = __import__("matplotlib.image").image.imread(tmp_path / f)
        assert img[..., :3].std() > 0.01  # something was drawn, not a blank canvas
