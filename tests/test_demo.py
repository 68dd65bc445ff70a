"""`midtrain demo --size tiny`: the demo study at its smallest size, checked independently of its own
reports: no leakage (recomputed here from the raw files), >= 3 seeds per cell, verdict words that
follow from their intervals, the figures and results.json; a re-run starts nothing."""

import json
import math
import re

import pytest

from conftest import REPO, run_cli


def run_demo(*args):
    """`midtrain demo` with room for a slow machine (conftest's run_cli stops a command after 300 s)."""
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "midtrain", "demo", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), timeout=1500)


def norm(text):
    return re.sub(r"\s+", " ", text.strip().lower())


def jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    r = run_demo("--size", "tiny", "--out", out)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return out, r


def test_no_leakage_checked_from_the_raw_files(demo):
    out, r = demo
    corpora = {p.stem: [d["text"] for d in jsonl(p)] for p in (out / "raw" / "corpora").glob("*.jsonl")}
    assert set(corpora) == {"main", "code", "math"} and all(corpora.values())
    text = "\x00".join(norm(d) for docs in corpora.values() for d in docs)
    for task in ("math", "code"):
        splits = {s: jsonl(out / "raw" / "sft" / task / f"{s}.jsonl") for s in ("train", "val", "test")}
        assert all(len(v) >= 20 for v in splits.values()), {k: len(v) for k, v in splits.items()}
        train = {norm(x["prompt"]) for x in splits["train"]} | {norm(x["prompt"] + x["response"]) for x in splits["train"]}
        val = {norm(x["prompt"]) for x in splits["val"]}
        for name in ("val", "test"):
            for x in splits[name]:
                p, whole = norm(x["prompt"]), norm(x["prompt"] + x["response"])
                assert p not in train and whole not in train, (task, name, x)
                assert p not in text and whole not in text and norm(x["response"]) not in text, (task, name, x)
                if name == "test":
                    assert p not in val
    # the shards were built from exactly these corpora: main, code, math typed shards exist
    for shard in ("1", "2", "c1", "m1"):
        assert (out / "data" / "shards" / shard / "index.json").is_file()
    assert "Leakage check" in r.stdout and "| math/test |" in r.stdout


def test_seeds_verdicts_and_outputs(demo):
    out, r = demo
    res = json.loads((out / "results.json").read_text())
    assert res["size"] == "tiny" and res["date"] and res["machine"]
    cells = res["cells"]
    assert {c["arm"] for c in cells} >= {"pretrain-only", "math20-from20", "code20-from20", "code50-from40",
                                         "cpt-math100-from52", "cpt-code100-from52"}
    assert all(len(c["seeds"]) >= 3 for c in cells)
    per_seed = {(p["arm"], p["task"], p["seed"]) for p in res["per_seed"]}
    assert len(per_seed) == len(res["per_seed"]) == sum(len(c["seeds"]) for c in cells)
    words = {"reproduced", "not reproduced", "inconclusive (interval includes 0)"}
    assert {f["finding"].split("-")[0] for f in res["findings"]} == {"1", "2", "3", "4"}
    for f in res["findings"]:
        if f["regime"]:  # a finding resting on a cell outside a valid regime is never judged
            assert f["verdict"] == "not judged (regime)" and f"**not judged (regime)**" in r.stdout
            continue
        assert f["verdict"] in words and f["holm"] in words
        lo, hi = f["lo"], f["hi"]
        if lo is None or (isinstance(lo, float) and math.isnan(lo)):
            assert f["verdict"] == "inconclusive (interval includes 0)"
            continue
        lower_is_better = not f["finding"].startswith(("3", "4"))
        good = hi < 0 if lower_is_better else lo > 0
        bad = lo > 0 if lower_is_better else hi < 0
        assert f["verdict"] == ("reproduced" if good else "not reproduced" if bad else
                                "inconclusive (interval includes 0)"), f
        assert f"**{f['verdict']}**" in r.stdout
    # each cell's verdicts in the table follow from its paired interval too
    by_arm = {(c["arm"], c["task"]): c for c in cells}
    for c in cells:
        for metric, v in c["verdict"].items():
            d = c["delta"][metric]
            if c["regime"] or by_arm[("pretrain-only", c["task"])]["regime"]:
                assert v == "not judged"  # validity gates verdicts (ln V, LR at a grid edge, non-finite)
                continue
            assert v == ("better" if d["hi"] < 0 else "worse" if d["lo"] > 0 else "inconclusive")
        for s in c["seeds"]:  # a seed above ln V is named in the cell's regime problems
            row = next(p for p in res["per_seed"] if (p["arm"], p["task"], p["seed"]) == (c["arm"], c["task"], s))
            if row["main_after"] >= math.log(2048):
                assert any(x.startswith(f"s{s}: main-corpus loss after SFT") for x in c["regime"]), c
    assert "Holm" in r.stdout and "detectable" in r.stdout
    rep = out / "study" / "report" / "demo-tiny"
    for png in ("demo-sft-test.png", "demo-code-code-heatmap.png", "demo-proximity.png", "val_loss_curves.png"):
        assert (rep / png).stat().st_size > 5000, png
    assert "ln(V)" in r.stdout and "Pearson r" in r.stdout and res["main_loss_vs_ln_vocab"]["ln_vocab"] == math.log(2048)


def test_rerun_starts_nothing(demo):
    out, _ = demo
    r = run_demo("--size", "tiny", "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert re.search(r"(\d+) of \1 steps done, 0 to run", r.stdout) and "start:" not in r.stdout
    r = run_demo("--size", "quick", "--out", out)
    assert r.returncode == 2 and "holds a 'tiny' demo" in r.stderr
