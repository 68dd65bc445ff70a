"""The demo page's results (docs/demo.md, linked from the README) are the generated docs/demo-results.md, character
for character (issue 28, item 8), and the publishing step that `make demo` runs writes both from a results.md."""

from pathlib import Path

import pytest

from midtrain.demo import publish as P
from support import REPO

pytestmark = pytest.mark.unit  # the fast tier: `make test-unit`


def test_the_demo_page_holds_the_generated_demo_results_unchanged():
    page = (Path(REPO) / P.PAGE).read_text()
    block = P.readme_block(page)
    assert block is not None, f"{P.PAGE} lost its demo-results markers"
    generated = (Path(REPO) / "docs" / "demo-results.md").read_text()
    assert block == generated, f"{P.PAGE}'s demo results differ from docs/demo-results.md: run `make demo`"
    assert "(docs/demo.md)" in (Path(REPO) / "README.md").read_text()  # the front door links the page


def test_the_readmes_demo_time_is_the_published_runs():
    """The README's "~N min" for `make demo` is the published run's runtime (to the minute): a hand-typed number
    outside the generated block, held to the generated one."""
    import re

    readme = (Path(REPO) / "README.md").read_text()
    said = re.search(r"make demo .*\(~(\d+) min on 2 cores\)", readme)
    assert said, "README.md no longer says how long `make demo` takes"
    runtime = re.search(r"Runtime (\d+) s \(commit", (Path(REPO) / "docs" / "demo-results.md").read_text())
    assert runtime, "docs/demo-results.md gives no runtime"
    assert abs(int(said.group(1)) - int(runtime.group(1)) / 60) <= 1, (
        f"README says ~{said.group(1)} min, the published demo ran {runtime.group(1)} s: update README.md")


def test_the_published_demo_ran_under_the_current_protocol():
    """docs/demo-results.md's protocol hash is the one the spec and code at this commit give: a change to the demo's
    spec, its data builder or the analysis that judges it (``PROTOCOL_CODE``) needs `make demo` (which republishes)
    in the same change, so the published numbers are never those of older code."""
    import re

    import midtrain.demo as D

    text = (Path(REPO) / "docs" / "demo-results.md").read_text()
    said = re.search(r"^Protocol ([0-9a-f]{12}) ", text, re.M)
    assert said, "docs/demo-results.md names no protocol hash"
    now = D.protocol_digest(D.REPO / "midtrain_configs" / "studies" / D.SPECS["quick"], "quick", 0)
    assert said.group(1) == now, (f"the published demo ran under protocol {said.group(1)}, the code and spec here give "
                                  f"{now}: run `make demo`")


def test_demo_step_seconds_counts_the_named_arms_steps():
    from types import SimpleNamespace as NS

    from midtrain.demo import step_seconds

    steps = [NS(id="a", labels={"arm": "x-bf16"}), NS(id="b", labels={"arm": "x-bf16", "task": "t"}),
             NS(id="c", labels={"arm": "y"}), NS(id="d", labels={}), NS(id="e", labels={"arm": "x-bf16"})]
    states = {"a": {"state": "done", "started": 10.0, "ended": 14.0}, "b": {"state": "done", "started": 20.0, "ended": 21.5},
              "c": {"state": "done", "started": 0.0, "ended": 10.0}, "d": {"state": "done", "started": 1.0, "ended": 3.0},
              "e": {"state": "failed", "started": 1.0, "ended": 9.0}}
    assert step_seconds(NS(steps=steps), states, {"x-bf16"}) == {"steps": 3, "of_steps": 5, "seconds": 5.5,
                                                                 "of_seconds": 17.5}


def test_publish_writes_the_file_and_the_readme_block(tmp_path):
    out = tmp_path / "out" / "demo-1"
    results = (f"## Protocol\nProtocol abc (x)\n\n# Study demo\n![curves]({out}/study/x.png)\n| a | b |\n"
               f"## Findings\n- finding 1: **reproduced** (Δ = -0.1)\nCurves: {out}/val.png. Runtime 3 s (commit c).")
    (tmp_path / "docs").mkdir()
    (tmp_path / P.PAGE).write_text(f"# x\n\nbefore\n{P.BEGIN}\nold numbers\n{P.END}\n\nafter\n")
    dest = P.publish(results, out, tmp_path)
    text = dest.read_text()
    assert text == ("##### Protocol\nProtocol abc (x)\n\n#### Study demo\n| a | b |\n##### Findings\n"
                    "- finding 1: **reproduced** (Δ = -0.1)\nCurves: OUT/val.png. Runtime 3 s (commit c).\n")
    readme = (tmp_path / P.PAGE).read_text()
    assert P.readme_block(readme) == text and readme.startswith("# x\n\nbefore\n") and readme.endswith("\n\nafter\n")
    assert "old numbers" not in readme


def test_only_the_run_folder_becomes_out(tmp_path, monkeypatch):
    """`--out out`: the folder's name inside words ("without", "about") stays as it is."""
    monkeypatch.chdir(tmp_path)
    text = P.publishable("## T\nwithout data, about 3.5 s; see out/results.json and " + str(tmp_path / "out") + "/x.\n",
                         Path("out"))
    assert text == "##### T\nwithout data, about 3.5 s; see OUT/results.json and OUT/x.\n"
