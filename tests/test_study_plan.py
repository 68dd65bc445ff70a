"""The study planner (pure): grid expansion, output-path stability, dependency edges, segment chains,
spec errors; and `midtrain study plan` on the paper specs (speed is in bench/study.py)."""

import copy
import glob
import os
import re

import pytest
import yaml

from support import REPO, run_cli
from midtrain.errors import ConfigError
from midtrain.study.plan import make_plan
from midtrain.study.plan_text import format_plan
from midtrain.study.spec import CONTROL, parse_spec

BASE = {"model_name": "pythia-70m", "tokenizer_dir": "/d/tok", "data": {"init_args": {"data_path": "/d/shards", "val_data_path": "/d/val",
                                                           "seed": 42}},
        "train": {"max_steps": 100, "global_batch_size": 8, "max_seq_length": 16}}


def raw(**over):
    spec = {"name": "t", "sizes": {"70m": {"config": "base.yaml"}},
            "arms": [{"name": "code", "domain": "code", "start": [20, 60], "weight": [0.2, 0.5]},
                     {"name": "cpt-code", "domain": "code", "start": [80], "weight": [1.0]}],
            "seeds": [0, 1, 2], "sft": {"lrs": [1e-4, 1e-3], "tasks": {"py": {"data": "/t.jsonl"}}}}
    spec.update(over)
    return spec


MID = {"values": [0, 1, 2], "vary": "midtrain"}  # each arm re-run per seed


def plan_of(spec=None, base=None, **kw):
    spec = spec or raw()
    return make_plan(parse_spec(spec, {s: copy.deepcopy(base or BASE) for s in spec["sizes"]}), **kw)


@pytest.mark.unit
def test_grid_expansion_and_counts():
    p = plan_of(raw(seeds={**MID, "control": "per_seed"}), params={"70m": 70_000_000}, sft_tokens={"py": 1000})
    arms = sorted({s.labels["arm"] for s in p.steps if s.kind == "midtrain"})
    assert arms == ["code20-from20", "code20-from60", "code50-from20", "code50-from60", "cpt-code100-from80",
                    "pretrain-only"]
    c = p.counts()
    # segments cut at 20, 60 and 80 (the base run need not reach the end: the control is re-run per seed,
    # seeds.control: per_seed); 5 arms x 3 seeds + the control x 3 seeds; as many evals;
    # SFT: 1 task x 2 LRs x (5 arms x 3 seeds + control x 3 seeds)
    assert c == {"pretrain": 3, "midtrain": 18, "sft": 2 * (15 + 3), "eval": 18, "lm-eval": 0, "report": 1}
    # the control per seed: the base mixture from the earliest arm start, with the seed's data order
    ctrl = p.by_id["midtrain/70m/pretrain-only/s2"]
    assert ctrl.resume_step == "base/70m/to20" and ctrl.config["data"]["init_args"]["seed"] == 2
    assert "mix_weights_str" not in ctrl.config["data"]["init_args"] and ctrl.tokens == 80 * 8 * 16
    assert {s.deps[0] for s in p.steps if s.kind == "sft" and s.labels["arm"] == "pretrain-only"} == {
        f"midtrain/70m/pretrain-only/s{i}" for i in range(3)}
    assert "the pretrain-only control is re-run per seed from the earliest arm start" in format_plan(p)
    # seeds.control: shared (the default) keeps one control, the base run's end, and says its noise is not sampled
    shared = plan_of(raw(seeds=MID), params={"70m": 70_000_000}, sft_tokens={"py": 1000})
    assert shared.counts() == {"pretrain": 4, "midtrain": 15, "sft": 2 * (15 + 3), "eval": 16, "lm-eval": 0,
                               "report": 1}
    assert "one run shared by every seed (seeds.control: shared)" in format_plan(shared)
    assert shared.total_tokens() == p.total_tokens() - 3 * 80 * 128 + 20 * 128
    cpt = next(s for s in p.steps if s.labels.get("arm") == "cpt-code100-from80")
    assert cpt.config["data"]["init_args"]["mix_weights_str"] == "code:1"
    code20 = p.by_id["midtrain/70m/code20-from20/s1"]
    assert code20.config["data"]["init_args"]["mix_weights_str"] == "main:0.8,code:0.2"
    assert code20.config["data"]["init_args"]["seed"] == 1 and code20.tokens == 80 * 8 * 16
    # FLOPs: the trainer's count per token (pythia-70m without its input embedding, plus attention at seq 16)
    assert code20.flops == (6 * (70_426_624 - 50_304 * 512) + 12 * 6 * 512 * 16) * 80 * 8 * 16
    assert p.total_tokens() == 80 * 128 + sum((100 - s) * 128 * 3 for s in (20, 20, 60, 60, 80, 20)) + 36 * 1000


@pytest.mark.unit
def test_a_dose_matched_arm_plans_equal_domain_doses_at_every_start():
    """Issue 28, item 1: `dose: [D]` gives every start the weight D / (T - S), so that w·(T - S) (the domain
    tokens added, in steps) is the same and the LR at the start and the dose come apart."""
    from midtrain.data.mixture import parse_weights

    spec = raw(arms=[{"name": "code", "domain": "code", "start": [20, 60, 90], "dose": [8, 10]}], seeds=MID)
    p = plan_of(spec)
    runs = {s.labels["arm"]: s for s in p.steps if s.kind == "midtrain" and s.labels["seed"] == 0
            and s.labels["arm"] != CONTROL}
    assert sorted(runs) == sorted(f"code-dose{d}-from{s}" for d in (8, 10) for s in (20, 60, 90))
    for name, step in runs.items():
        dose, start = float(name.split("dose")[1].split("-")[0]), step.labels["start"]
        w = dict(parse_weights(step.config["data"]["init_args"]["mix_weights_str"], "x"))["code"]
        assert w * (100 - start) == pytest.approx(dose, rel=1e-9), (name, w)
        assert step.tokens == (100 - start) * 8 * 16
    # refused in one line: a dose that needs weight > 1, weight and dose together, sizes with different ends
    for arms, msg in (([{"name": "c", "domain": "code", "start": [95], "dose": [10]}],
                       "arms[0].dose: 10 from step 95 needs weight 2 > 1: only 5 steps remain"),
                      ([{"name": "c", "domain": "code", "start": [20], "dose": [10], "weight": [0.2]}],
                       "arms[0].dose: give weight or dose, not both"),
                      ([{"name": "c", "domain": "code", "start": [20], "dose": [0]}], "arms[0].dose: give one or more "
                                                                                       "positive doses")):
        with pytest.raises(ConfigError, match=re.escape(msg)):
            plan_of(raw(arms=arms))
    two = raw(arms=[{"name": "c", "domain": "code", "start": [20], "dose": [10]}],
              sizes={"70m": {"config": "a.yaml"}, "160m": {"config": "b.yaml"}})
    longer = copy.deepcopy(BASE)
    longer["train"]["max_steps"] = 200
    with pytest.raises(ConfigError, match="needs one train.max_steps across its sizes, got 70m: 100, 160m: 200"):
        make_plan(parse_spec(two, {"70m": copy.deepcopy(BASE), "160m": longer}))


@pytest.mark.unit
def test_an_arm_can_be_fine_tuned_on_some_tasks_only():
    """`tasks: [...]` on an arm plans its SFT steps for those tasks only (the demo SFTs each domain's arms on their
    own task); the control and an arm without the key get every task; a task that is not in sft.tasks, a repeat or
    an empty list is refused in one line naming the arm."""
    tasks = {"py": {"data": "/t.jsonl"}, "gsm": {"data": "/g.jsonl"}}
    arms = [{"name": "code", "domain": "code", "start": [20], "weight": [0.2], "tasks": ["py"]},
            {"name": "math", "domain": "math", "start": [20], "weight": [0.2]}]
    p = plan_of(raw(arms=arms, sft={"lrs": [1e-3], "tasks": tasks}))
    sft = {(s.labels["arm"], s.labels["task"]) for s in p.steps if s.kind == "sft"}
    assert sft == {("code20-from20", "py"), ("math20-from20", "py"), ("math20-from20", "gsm"), (CONTROL, "py"),
                   (CONTROL, "gsm")}
    for bad in (["nope"], [], ["py", "py"]):
        arms[0]["tasks"] = bad
        with pytest.raises(ConfigError, match=re.escape("arms[0].tasks: give distinct tasks among sft.tasks (gsm, py)")):
            plan_of(raw(arms=arms, sft={"lrs": [1e-3], "tasks": tasks}))


@pytest.mark.unit
def test_a_precision_control_runs_the_same_arm_at_each_precision_and_the_report_pairs_them():
    """Issue 28, item 2: `precision: [a, b]` on an arm gives one run per precision with the same data, seed and
    schedule (only `precision` differs in the run config); the report gives each arm's precision effect, paired
    over seeds, and whether the timing x weight window reads the same under each precision."""
    import typing

    from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT_STR

    from midtrain.analysis import stats
    from midtrain.analysis.tables import Chosen
    from midtrain.study import report
    from midtrain.study.spec import PRECISIONS

    assert set(PRECISIONS) == set(typing.get_args(_PRECISION_INPUT_STR))  # spelt without importing lightning
    spec = raw(arms=[{"name": "code", "domain": "code", "start": [20, 60], "weight": [0.2, 0.5],
                      "precision": ["bf16-true", "bf16-mixed"]}], seeds=MID)
    p = plan_of(spec)
    runs = {(s.labels["arm"], s.labels["seed"]): s for s in p.steps if s.kind == "midtrain" and s.labels["arm"] != CONTROL}
    assert {a for a, _ in runs} == {f"code{w}-from{st}-{pr}" for w in (20, 50) for st in (20, 60)
                                    for pr in ("bf16-true", "bf16-mixed")}
    a, b = runs[("code20-from60-bf16-true", 1)], runs[("code20-from60-bf16-mixed", 1)]
    assert a.config["precision"] == "bf16-true" and b.config["precision"] == "bf16-mixed"
    assert {k: v for k, v in a.config.items() if k != "precision"} == {k: v for k, v in b.config.items()
                                                                        if k != "precision"}
    assert a.deps == b.deps and a.hash != b.hash
    with pytest.raises(ConfigError, match=re.escape("arms[0].precision: give distinct precisions among")):
        plan_of(raw(arms=[{"name": "c", "domain": "code", "start": [20], "weight": [0.2], "precision": ["bf17"]}]))
    # the report: bf16-mixed minus bf16-true per arm, task and metric; the window under each precision
    parsed = parse_spec(spec, {"70m": copy.deepcopy(BASE)})
    chosen = []
    for arm in parsed.arms:
        late, high, mixed = arm.start == 60, arm.weight == 0.5, arm.precision == "bf16-mixed"
        for seed in (0, 1, 2):
            test = (2.0 + (0.3 + 0.003 * seed) * (late and high) + 0.05 * high + 0.01 * seed - 0.1 * mixed
                    + 0.002 * seed * mixed)
            chosen.append(Chosen(arm.name, "py", seed, stats.LRChoice(1e-3, 1.0, (), None),
                                 {"sft_test": test, "main_after": 4.0 + 0.01 * seed, "main_unigram": 5.0}))
    effects = report.precision_effects(parsed, chosen)
    # a seed missing on one side (its SFT step failed): that arm's precision effect is not judged, the seed named
    lost = report.precision_effects(parsed, [c for c in chosen if (c.arm, c.seed) != ("code20-from60-bf16-mixed", 2)])
    gone = [x for x in lost if x["arm"] == "code20-from60-bf16-mixed"]
    assert gone and all(x["verdict"] == "not judged" for x in gone)
    assert f"code20-from60-bf16-mixed/s2: {stats.MISSING}" in gone[0]["regime"]
    assert all(x["verdict"] != "not judged" for x in lost if x["arm"] != "code20-from60-bf16-mixed" and
               x["metric"] == "sft_test")
    by = {(x["arm"], x["metric"]): x for x in effects}
    assert len(effects) == 4 * 2 and all(x["reference_precision"] == "bf16-true" for x in effects)
    x = by[("code20-from60-bf16-mixed", "sft_test")]
    assert x["reference"] == "code20-from60-bf16-true" and x["interval"]["mean"] == pytest.approx(-0.098)
    assert x["verdict"] == "better" and by[("code20-from60-bf16-mixed", "main_after")]["verdict"] == stats.NO_VARIANCE
    inter = report.interactions(parsed, chosen)
    assert {i["family"] for i in inter} == {"code-bf16-true", "code-bf16-mixed"}
    # the window at the corners, per metric: the late simple effect is the paper's claim (here +0.35 + 0.003 s > 0:
    # reproduced), the early one is described (+0.05), and I = late - early has its own verdict
    x = next(i for i in inter if i["family"] == "code-bf16-true" and i["metric"] == "sft_test")
    assert x["late"]["mean"] == pytest.approx(0.353) and x["early"]["mean"] == pytest.approx(0.05)
    assert x["interaction"]["mean"] == pytest.approx(0.303) and x["verdict"] == x["interaction_verdict"] == "reproduced"
    assert x["per_seed"][2] == pytest.approx({"late": 0.356, "early": 0.05, "interaction": 0.306})
    forgetting = next(i for i in inter if i["family"] == "code-bf16-true" and i["metric"] == "main_after")
    assert forgetting["verdict"] == forgetting["interaction_verdict"] == "not judged (no variance sampled)"
    text = "\n".join(report._format_interactions(inter, 0.95, "midtrain"))
    assert "introduced late, a high weight hurts" in text
    assert "late +0.3530 [" in text and ": **reproduced**; early +0.0500" in text and "I +0.3030 [" in text
    # under vary: sft each corner is one checkpoint: the sections say that the intervals sample no checkpoint noise
    for text in (report._format_interactions(inter, 0.95, "sft"), report._format_precision(effects, [], 0.95, "sft")):
        assert "checkpoint-level variance is NOT sampled" in text[0]
    assert "NOT sampled" not in report._format_interactions(inter, 0.95, "midtrain")[0]
    line, forgot = report.window_under_precision(inter, parsed)
    assert forgot.startswith("- code on py, main-corpus loss after SFT: the window is not compared across "
                             "precisions, a claim it rests on being not judged (bf16-true: not judged (no variance")
    assert line.startswith("- code on py, SFT test loss: the window survives the precision change (bf16-true: "
                           "reproduced; bf16-mixed: reproduced)"), line
    # as paper-window.yaml has it: the grid as configured, and its corners again at another precision; the arm as
    # configured is the reference
    plain = parse_spec(raw(arms=[{"name": "code", "domain": "code", "start": [20, 60], "weight": [0.2, 0.5]},
                                 {"name": "code", "domain": "code", "start": [60], "weight": [0.5],
                                  "precision": ["bf16-mixed"]}], seeds=MID), {"70m": copy.deepcopy(BASE)})
    names = {"code20-from20", "code50-from20", "code20-from60", "code50-from60", "code50-from60-bf16-mixed"}
    assert {arm.name for arm in plain.arms} == names
    ch = [Chosen(c.arm.replace("-bf16-true", ""), c.task, c.seed, c.choice, c.values) for c in chosen
          if c.arm.replace("-bf16-true", "") in names]
    (e1, e2) = report.precision_effects(plain, ch)
    assert (e1["arm"], e1["reference"], e1["reference_precision"]) == ("code50-from60-bf16-mixed", "code50-from60",
                                                                       report.CONFIGURED)
    # the demo's shape: the grid as configured, its two late corners again at bf16-mixed. The sibling tests the late
    # claim alone (early and I not run), so the window is compared across precisions on the late claim
    demo = parse_spec(raw(arms=[{"name": "code", "domain": "code", "start": [20, 60], "weight": [0.2, 0.5]},
                                {"name": "code", "domain": "code", "start": [60], "weight": [0.2, 0.5],
                                 "precision": ["bf16-mixed"]}], seeds=MID), {"70m": copy.deepcopy(BASE)})
    ch = [Chosen(c.arm.replace("-bf16-true", ""), c.task, c.seed, c.choice, c.values) for c in chosen
          if "from20-bf16-mixed" not in c.arm]
    inter = report.interactions(demo, ch)
    late_only = next(i for i in inter if i["family"] == "code-bf16-mixed" and i["metric"] == "sft_test")
    assert late_only["cells"] == {"late_low": "code20-from60-bf16-mixed", "late_high": "code50-from60-bf16-mixed"}
    assert late_only["late"]["mean"] == pytest.approx(0.353) and late_only["verdict"] == "reproduced"
    assert late_only["early"] is None and late_only["interaction_verdict"] == report.NOT_RUN
    assert ("late +0.3530 [" in "\n".join(report._format_interactions(inter, 0.95, "midtrain"))
            and f"early and I: {report.NOT_RUN}" in "\n".join(report._format_interactions(inter, 0.95, "midtrain")))
    line, forgot = report.window_under_precision(inter, demo)
    assert line.startswith("- code on py, SFT test loss: the window survives the precision change (the config's "
                           "precision: reproduced; bf16-mixed: reproduced)"), line
    # a sibling that ran starts of its own keeps them, and never moves the configured family's corners
    later = parse_spec(raw(arms=[{"name": "code", "domain": "code", "start": [20, 60], "weight": [0.2, 0.5]},
                                 {"name": "code", "domain": "code", "start": [60, 80], "weight": [0.2, 0.5],
                                  "precision": ["bf16-mixed"]}], seeds=MID), {"70m": copy.deepcopy(BASE)})
    ch2 = [Chosen(a.name, "py", seed, stats.LRChoice(1e-3, 1.0, (), None),
                  {"sft_test": 2.0 + 0.1 * (a.weight == 0.5) * (a.start >= 60) + 0.01 * seed, "main_after": 4.0 + 0.01 * seed,
                   "main_unigram": 5.0}) for a in later.arms for seed in (0, 1, 2)]
    by_family = {(i["family"], i["metric"]): i for i in report.interactions(later, ch2)}
    plain_x, sib = by_family[("code", "sft_test")], by_family[("code-bf16-mixed", "sft_test")]
    assert plain_x["cells"]["early_low"] == "code20-from20" and plain_x["early"] is not None
    assert sib["cells"] == {"early_low": "code20-from60-bf16-mixed", "early_high": "code50-from60-bf16-mixed",
                            "late_low": "code20-from80-bf16-mixed", "late_high": "code50-from80-bf16-mixed"}
    # a corner outside a valid regime at one precision: the window is not compared, never "depends on the precision"
    broken = [Chosen(c.arm, c.task, c.seed, c.choice, {**c.values, "main_after": 9.0})
              if c.arm == "code50-from60-bf16-mixed" else c for c in ch]
    line = report.window_under_precision(report.interactions(demo, broken), demo)[0]
    assert "the window is not compared across precisions" in line and "bf16-mixed: not judged" in line, line


@pytest.mark.unit
def test_the_lr_ceiling_is_the_grids_top():
    """sft.lr_ceiling states the grid's top as the protocol's bound; any other value is refused in one line."""
    spec = raw()
    spec["sft"]["lr_ceiling"] = 1e-3
    assert parse_spec(spec, {"70m": copy.deepcopy(BASE)}).lr_ceiling == 1e-3
    assert parse_spec(raw(), {"70m": copy.deepcopy(BASE)}).lr_ceiling is None
    for bad in (3e-3, 1e-4):
        spec["sft"]["lr_ceiling"] = bad
        with pytest.raises(ConfigError, match=re.escape(f"sft.lr_ceiling: {bad:g} must be the grid's highest LR "
                                                        "(sft.lrs tops at 0.001)")):
            parse_spec(spec, {"70m": copy.deepcopy(BASE)})


@pytest.mark.unit
def test_segment_chain_and_edges():
    p = plan_of(raw(seeds={**MID, "control": "shared"}))  # (the shared control: the base run to the end)
    segs = [s for s in p.steps if s.kind == "pretrain"]
    assert [(s.labels["start"], s.labels["end"]) for s in segs] == [(0, 20), (20, 60), (60, 80), (80, 100)]
    assert [s.deps for s in segs] == [(), (segs[0].id,), (segs[1].id,), (segs[2].id,)]
    assert [s.config["train"]["max_additional_steps"] for s in segs] == [20, 40, 20, 20]
    assert all(s.resume_step == (s.deps[0] if s.deps else None) for s in segs)
    # an arm waits for the segment that reaches its start, not for the whole base run
    assert p.by_id["midtrain/70m/code20-from20/s0"].deps == ("base/70m/to20",)
    assert p.by_id["midtrain/70m/cpt-code100-from80/s2"].deps == ("base/70m/to80",)
    assert segs[-1].labels["arm"] == CONTROL
    assert p.by_id["sft/70m/pretrain-only/py/lr0.001/s2"].deps == ("base/70m/to100",)
    assert p.by_id["sft/70m/code50-from60/py/lr0.0001/s1"].deps == ("midtrain/70m/code50-from60/s1",)
    assert p.by_id["eval/70m/code50-from60/s1"].deps == ("midtrain/70m/code50-from60/s1",)
    report = p.by_id["report"]
    assert set(report.deps) == {s.id for s in p.steps if s.kind in ("sft", "eval")}
    seen = set()
    for s in p.steps:  # topological order
        assert set(s.deps) <= seen
        seen.add(s.id)
    assert len({s.out for s in p.steps}) == len(p.steps)


@pytest.mark.unit
def test_output_paths_are_stable_and_config_derived():
    a, b = plan_of(), plan_of()
    assert [s.out for s in a.steps] == [s.out for s in b.steps]
    outs = {s.id: s.out for s in a.steps}
    # a changed resolved field moves that step and everything downstream, nothing else
    c = plan_of(raw(sft={"lrs": [1e-4, 1e-3], "tasks": {"py": {"data": "/t.jsonl"}}, "options": {"epochs": 2}}))
    moved = {s.id for s in c.steps if outs.get(s.id) != s.out}
    assert moved == {s.id for s in c.steps if s.kind == "sft"}
    base = copy.deepcopy(BASE)
    base["train"]["global_batch_size"] = 16
    d = plan_of(base=base)
    assert all(outs[s.id] != s.out for s in d.steps if s.kind != "report")
    e = plan_of(raw(seeds=[0, 1, 7]))
    moved = {s.id for s in e.steps if s.id in outs and outs[s.id] != s.out}
    assert moved == set()  # seeds 0 and 1 keep their folders; seed 7's steps are new
    assert {s.id for s in e.steps} - set(outs) and all("s7" in i or i == "report" for i in
                                                        {s.id for s in e.steps} - set(outs))
    f = plan_of(base={**copy.deepcopy(BASE), "optimizer": {"init_args": {"lr": 1e-3}}})
    assert outs["base/70m/to20"] != f.by_id["base/70m/to20"].out


@pytest.mark.unit
@pytest.mark.parametrize("over, needle", [
    ({"arms": [{"name": "x", "domain": "code", "start": [100], "weight": [0.2]}]},
     "arms[0].start: step 100 is not before the end of base run '70m'"),
    ({"arms": [{"name": "x", "domain": "code", "start": [10], "weight": [0.2]},
               {"name": "x", "domain": "math", "start": [10], "weight": [0.2]}]}, "resolves to the same output"),
    ({"sft": {"lrs": [], "tasks": {"py": {"data": "/t"}}}}, "sft.lrs: the LR grid is empty"),
    ({"arms": [{"name": "x", "domain": "code", "start": [10], "weight": [1.5]}]}, "arms[0].weight: must be in (0, 1]"),
    ({"arms": [{"name": "x", "domain": "code", "start": [10], "weights": [0.1]}]}, "arms[0].weights: unknown key"),
    ({"arms": [{"name": CONTROL, "domain": "code", "start": [10], "weight": [0.1]}]}, "built-in control"),
    ({"seeds": [1, 1]}, "seeds: give one or more distinct"),
    ({"seeds": {"values": [1, 1], "vary": "sft"}}, "seeds.values: give one or more distinct"),
    ({"seeds": {"values": [1], "vary": "init"}}, "seeds.vary: expected one of sft, midtrain, base, got 'init'"),
    ({"seeds": {"values": [1], "what": "sft"}}, "seeds.what: unknown key"),
    ({"report": {"lr_choice": "best"}}, "report.lr_choice: expected one of per_checkpoint, per_seed"),
    ({"sizes": {"70m": {"config": "base.yaml", "base": "/s", "checkpoint": "/c", "step": 1}}},
     "sizes.70m.base: give either base"),
    ({"name": "a/b"}, "name: 'a/b': letters, digits"),
    ({"sft": {"lrs": [1e-3], "tasks": {"py": {"data": "/t"}}, "options": {"score_every_lr": True}}},
     "sft.options.score_every_lr: is set by the study"),
    ({"sft": {"lrs": [1e-3], "tasks": {"py": {"data": "/t"}}, "options": {"seed": 3}}}, "sft.options.seed"),
    ({"report": {"baseline": "nope"}}, "report.baseline"),
    ({"arm": []}, "study.arm: unknown key"),
    # an SFT option is checked when the spec is read, not when the step runs after its arm has trained
    ({"sft": {"lrs": [1e-3], "tasks": {"py": {"data": "/t"}}, "options": {"micro_bach_size": 4}}},
     "sft.options.micro_bach_size: is not an option of `midtrain sft`"),
    ({"sft": {"lrs": [1e-3], "tasks": {"py": {"data": "/t"}}, "options": {"devices": 0}}},
     "sft.options.devices: expected an integer >= 1, got 0"),
    ({"sft": {"lrs": [1e-3], "tasks": {"py": {"data": "/t"}}, "options": {"num_nodes": True}}},
     "sft.options.num_nodes: expected an integer >= 1, got True"),
    ({"sft": {"lrs": [1e-3], "tasks": {"py": {"data": "/t"}}, "options": {"strategy": "zero3"}}},
     "sft.options.strategy: expected one of auto, ddp, fsdp, hsdp, got 'zero3'"),
    ({"sft": {"lrs": [1e-3], "tasks": {"py": {"data": "/t"}}, "options": {"strategy": "hsdp", "devices": 8}}},
     "sft.options.strategy: hsdp replicates across nodes"),
    ({"sft": {"lrs": [1e-3], "tasks": {"py": {"data": "/t"}}, "options": {"devices": 8}}},  # defaults: 16 / (8 x 8)
     "sft.options.global_batch_size: 16 is not a multiple of micro_batch_size 8 x 8 process(es)"),
    ({"seeds": {"values": [0, 1], "vary": "midtrain", "control": "each"}},
     "seeds.control: expected one of shared, per_seed, got 'each'"),
    ({"seeds": {"values": [0, 1], "vary": "sft", "control": "per_seed"}},
     "seeds.control: per_seed re-runs the control as vary: midtrain re-runs the arms; under vary: sft each arm is "
     "one checkpoint"),
    ({"sft": {"lrs": [1e-3], "tasks": {"py": {"data": "/t"}}, "options": {"forgetting_sets": "main"}}},
     "sft.options.forgetting_sets: give distinct validation set names, got 'main'"),
    ({"sft": {"lrs": [1e-3], "tasks": {"py": {"data": "/t"}}, "options": {"forgetting_sets": ["code"]}}},
     "sft.options.forgetting_sets: leaves out 'main' (report.main_set)"),
    ({"eval": {"precision": "bf16"}}, "eval.precision: expected one of bf16-mixed, 32-true"),
    ({"eval": {"lm_eval": {"tasks": "x", "precision": "fp8"}}}, "eval.lm_eval.precision: expected one of bf16-mixed"),
])
def test_spec_errors_name_the_key(over, needle):
    with pytest.raises(ConfigError) as e:
        parse_spec(raw(**over), {"70m": copy.deepcopy(BASE)})
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.unit
def test_an_eval_precision_reaches_the_evaluate_command_lines(tmp_path):
    """eval.precision and eval.lm_eval.precision become `midtrain evaluate --precision` (unset: the command's default,
    bf16-mixed on a GPU with bf16, else 32-true, written beside the numbers)."""
    from midtrain.study.steps import step_command

    spec = raw(eval={"precision": "32-true", "lm_eval": {"tasks": "t", "precision": "bf16-mixed"}})
    p = plan_of(spec)
    argv = {s.kind: step_command(p, s, tmp_path, tmp_path / "spec.yaml")[0] for s in p.steps if s.kind in ("eval", "lm-eval")}
    assert argv["eval"][argv["eval"].index("--precision") + 1] == "32-true"
    assert argv["lm-eval"][argv["lm-eval"].index("--precision") + 1] == "bf16-mixed"
    p = plan_of(raw(eval={"lm_eval": {"tasks": "t"}}))
    assert not any("--precision" in step_command(p, s, tmp_path, tmp_path / "spec.yaml")[0] for s in p.steps if s.kind in ("eval", "lm-eval"))


@pytest.mark.unit
def test_every_step_command_line_parses_under_its_commands_own_parser_as_the_spec_said(tmp_path):
    """A study step's command line is built from the command's definition (``study.kinds.command_argv``): parsed by
    the parser the CLI builds for that command (``cli.function_parser``), it gives back what the spec said,
    a null option as null, a boolean and a list included; a name the command does not have is refused."""
    from midtrain.cli import function_parser
    from midtrain.posttrain.commands import lm_eval, loss
    from midtrain.posttrain.sft import run_sft
    from midtrain.study.kinds import command_argv
    from midtrain.study.steps import step_command

    spec = raw(eval={"max_batches": 7, "batch_size": 3, "precision": "32-true", "checkpoints": "all",
                     "lm_eval": {"tasks": "a,b", "num_fewshot": 2, "limit": 0.5, "include_path": "/tasks"}},
               sft={"lrs": [1e-4, 1e-3], "tasks": {"py": {"data": "/t.jsonl", "test_data": "/test.jsonl"}},
                    "options": {"epochs": 2, "activation_checkpointing": True, "forgetting_sets": ["main"],
                                "tokenizer_dir": None}})
    p = plan_of(spec)
    parsers = {"evaluate loss": function_parser(loss, config=True), "evaluate lm-eval": function_parser(lm_eval),
               "sft": function_parser(run_sft, config=True)}
    seen = set()
    for step in p.steps:
        argv = step_command(p, step, tmp_path, tmp_path / "spec.yaml")[0]
        name = " ".join(argv[:2]) if argv[0] == "evaluate" else argv[0]
        if name not in parsers:
            continue
        got = parsers[name].parse_args(argv[2 if argv[0] == "evaluate" else 1:]).as_dict()
        seen.add(name)
        if name == "evaluate loss":
            assert (got["max_batches"], got["batch_size"], got["precision"], got["all_checkpoints"]) == (
                7, 3, "32-true", True)
            assert got["json"] == str(tmp_path / step.out / "loss.json")
        elif name == "evaluate lm-eval":
            assert (got["tasks"], got["num_fewshot"], got["limit"], got["include_path"], got["batch_size"]) == (
                "a,b", 2, 0.5, "/tasks", 1)
        else:
            assert list(got["lrs"]) == list(step.config["lrs"]) and got["seed"] == step.config["seed"]
            assert (got["epochs"], got["activation_checkpointing"], got["forgetting_sets"], got["tokenizer_dir"]) == (
                2, True, ["main"], None)
            assert str(got["test_data"]) == "/test.jsonl" and got["val_data"] is None and got["task"] == "py"
    assert seen == set(parsers)
    with pytest.raises(TypeError, match="--max_batchez"):
        command_argv(loss, checkpoint="c", data="d", max_batchez=3)


@pytest.mark.unit
def test_sft_steps_without_a_tokenizer_are_refused_when_the_spec_is_read():
    """A new user's base config without tokenizer_dir trained every run, then failed every SFT step (the checkpoint
    it reads the tokenizer from held none): refused up front, in one line naming the size, unless sft.options gives
    a tokenizer or the study fine-tunes nothing."""
    bare = {k: v for k, v in BASE.items() if k != "tokenizer_dir"}
    with pytest.raises(ConfigError, match=r"sizes\.70m\.config: sets no tokenizer_dir, and each SFT step"):
        plan_of(base=bare)
    plan_of(raw(sft={"lrs": [1e-3], "tasks": {"py": {"data": "/t.jsonl"}}, "options": {"tokenizer_dir": "/tok"}}),
            base=bare)
    plan_of(raw(sft={}), base=bare)


@pytest.mark.unit
def test_the_spec_knows_every_option_of_midtrain_sft():
    """sft.options are `midtrain sft`'s parameters less what the study sets: the spec's two lists are run_sft's."""
    import inspect

    from midtrain.posttrain.sft import run_sft
    from midtrain.study.spec import SFT_BATCH_DEFAULTS, SFT_OPTIONS, SFT_OWNED, SFT_STRATEGIES
    from midtrain.train.parallel import STRATEGIES

    params = inspect.signature(run_sft).parameters
    assert SFT_OPTIONS | SFT_OWNED == set(params) and not SFT_OPTIONS & SFT_OWNED
    assert SFT_STRATEGIES == STRATEGIES
    assert all(params[k].default == v for k, v in SFT_BATCH_DEFAULTS.items())


@pytest.mark.unit
def test_seeds_vary_sft_is_one_midtrained_checkpoint_per_arm_fine_tuned_with_every_seed():
    p = plan_of(params={"70m": 70_000_000}, sft_tokens={"py": 1000})  # seeds: [0, 1, 2] = vary: sft
    assert p.spec.vary == "sft"
    assert p.counts() == {"pretrain": 4, "midtrain": 5, "sft": 2 * (5 * 3 + 3), "eval": 6, "lm-eval": 0, "report": 1}
    arm = p.by_id["midtrain/70m/code20-from20"]
    assert arm.labels["seed"] is None and arm.config["data"]["init_args"]["seed"] == 42  # the base's data order
    for s in (0, 1, 2):  # every SFT seed fine-tunes the same checkpoint
        assert p.by_id[f"sft/70m/code20-from20/py/lr0.001/s{s}"].deps == ("midtrain/70m/code20-from20",)
    tokens = 100 * 128 + sum((100 - s) * 128 for s in (20, 20, 60, 60, 80)) + 36 * 1000
    assert p.total_tokens() == tokens == p.cost_by_vary["sft"][0]
    mid = plan_of(raw(seeds=MID), params={"70m": 70_000_000}, sft_tokens={"py": 1000})
    assert p.cost_by_vary["midtrain"][0] == mid.total_tokens() == tokens + 2 * sum((100 - s) * 128 for s in (20, 20, 60, 60, 80))
    assert p.cost_by_vary == mid.cost_by_vary and p.cost_by_vary["base"][0] == 3 * 100 * 128 + mid.total_tokens() - 100 * 128
    from midtrain.study.plan_text import format_plan

    text = format_plan(p)
    assert f"seeds.vary: sft      {tokens:,} tokens" in text and "(this plan)" in text and "SFT data order only" in text


@pytest.mark.unit
def test_seeds_vary_base_runs_the_whole_grid_per_base_seed():
    p = plan_of(raw(seeds={"values": [0, 1, 2], "vary": "base"}))
    assert p.counts() == {"pretrain": 12, "midtrain": 15, "sft": 2 * 18, "eval": 18, "lm-eval": 0, "report": 1}
    for s in (0, 1, 2):
        seg = p.by_id[f"base/70m/s{s}/to20"]
        assert seg.config["seed"] == s and seg.config["data"]["init_args"]["seed"] == s  # own init and data order
        assert p.by_id[f"midtrain/70m/code20-from20/s{s}"].deps == (seg.id,)
        assert p.by_id[f"sft/70m/pretrain-only/py/lr0.001/s{s}"].deps == (f"base/70m/s{s}/to100",)
        assert [x for x in p.steps if x.kind == "sft" and x.deps == (f"base/70m/s{s}/to100",)] and \
            {x.labels["seed"] for x in p.steps if x.kind == "sft" and x.deps == (f"base/70m/s{s}/to100",)} == {s}
    assert len({p.by_id[f"base/70m/s{s}/to20"].out for s in (0, 1, 2)}) == 3


@pytest.mark.unit
def test_lr_choice_per_checkpoint_makes_a_sweeping_sft_step_score_every_lr():
    sft = {"lrs": [1e-4, 1e-3], "one_step_per_lr": False, "tasks": {"py": {"data": "/t.jsonl"}}}
    p = plan_of(raw(sft=sft))
    assert all(s.config["options"].get("score_every_lr") for s in p.steps if s.kind == "sft")
    q = plan_of(raw(sft=sft, report={"lr_choice": "per_seed"}))
    assert not any("score_every_lr" in s.config["options"] for s in q.steps if s.kind == "sft")


def _arm(starts, name="code"):
    return [{"name": name, "domain": "code", "start": starts, "weight": [0.2]}]


@pytest.mark.unit
def test_specs_in_one_folder_share_base_segments_and_checkpoints():
    base = copy.deepcopy(BASE)
    base["train"]["save_interval"] = 20  # every 20th step's checkpoint is kept (keep_last_n: null)
    a = plan_of(raw(arms=_arm([20, 60])), base=base)
    assert [(s.labels["start"], s.labels["end"]) for s in a.steps if s.kind == "pretrain"] == [(0, 20), (20, 60), (60, 100)]
    # spec b, other starts, planned into a's folder: no base step of its own; arms start from a's checkpoints
    b = plan_of(raw(name="b", arms=_arm([40, 80])), base=base, known=a.base_segments())
    segs = [s for s in b.steps if s.kind == "pretrain"]
    assert segs and all(s.reused == "t" and s.out == a.by_id[s.id].out for s in segs)
    arm40, arm80 = b.by_id["midtrain/70m/code20-from40"], b.by_id["midtrain/70m/code20-from80"]
    assert (arm40.deps, arm40.resume_step, arm40.resume_at) == (("base/70m/to60",), "base/70m/to60", 40)
    assert (arm80.resume_step, arm80.resume_at) == ("base/70m/to100", 80)
    assert b.total_tokens() == (60 + 20) * 128  # its two arms; SFT has no estimate here
    # the pretrain-only control and its SFT steps are the same steps (same folders) in both specs
    for s in b.steps:
        if s.kind in ("sft", "eval") and s.labels["arm"] == CONTROL:
            assert a.by_id[s.id].out == s.out
    # a segment's folder is the base run + its start and end, not the cuts of the spec that planned it
    c = plan_of(raw(arms=_arm([20])), base=base)
    assert c.by_id["base/70m/to20"].out == a.by_id["base/70m/to20"].out
    assert c.by_id["base/70m/to100"].out != a.by_id["base/70m/to100"].out  # 20 -> 100 is another segment
    # a start that no segment keeps a checkpoint at is trained from the latest kept one before it
    d = plan_of(raw(name="d", arms=_arm([50])), base=base, known=a.base_segments())
    (new,) = [s for s in d.steps if s.kind == "pretrain" and not s.reused]
    assert (new.labels["start"], new.labels["end"], new.resume_step, new.resume_at) == (40, 50, "base/70m/to60", 40)
    assert d.total_tokens() == 10 * 128 + 50 * 128
    # without kept checkpoints (keep_last_n), only segment ends are reused
    kept = {**copy.deepcopy(base), "keep_last_n": 2}
    a2 = plan_of(raw(arms=_arm([20, 60])), base=kept)
    e = plan_of(raw(name="e", arms=_arm([40])), base=kept, known=a2.base_segments())
    (new,) = [s for s in e.steps if s.kind == "pretrain" and not s.reused]
    assert (new.labels["start"], new.labels["end"], new.resume_step, new.resume_at) == (20, 40, "base/70m/to20", None)
    # a changed base config shares nothing
    other = {**copy.deepcopy(base), "optimizer": {"init_args": {"lr": 1e-3}}}
    f = plan_of(raw(name="f", arms=_arm([40])), base=other, known=a.base_segments())
    assert not any(s.reused for s in f.steps) and f.by_id["base/70m/to40"].labels["start"] == 0


@pytest.mark.unit
def test_a_base_folder_s_segments_are_read_in_place_never_scheduled_and_re_plans_are_stable():
    import dataclasses

    from midtrain.study.slurm import schedule

    base = copy.deepcopy(BASE)
    base["train"]["save_interval"] = 20
    c = plan_of(raw(name="c", arms=_arm([20, 60])), base=base)
    in_c = [dataclasses.replace(seg, folder="/studies/c") for seg in c.base_segments()]
    b = plan_of(raw(name="b", arms=_arm([50])), base=base, known=in_c)  # 50: trained here from c's step 40
    ext = [s for s in b.steps if s.external]
    (new,) = [s for s in b.steps if s.kind == "pretrain" and not s.external]
    assert ext and all(s.out.startswith("/studies/c/") for s in ext)
    assert (new.labels["start"], new.resume_step, new.resume_at) == (40, "base/70m/to60", 40)
    # re-planning b (its own bases.json + the base folder's): the same steps, no crash
    again = plan_of(raw(name="b", arms=_arm([50])), base=base, known=b.base_segments() + in_c)
    assert [(s.id, s.out) for s in again.steps] == [(s.id, s.out) for s in b.steps]
    with pytest.raises(ConfigError, match="no study folder this spec reads holds"):
        plan_of(raw(name="b", arms=_arm([50])), base=base, known=b.base_segments())
    # the SLURM scheduler never submits another folder's step, done or not
    states = {s.id: {"state": "pending"} for s in b.steps}
    _, groups = schedule(b, states, {s.id: s.alloc for s in b.steps})
    assert not {s.id for g in groups for s in g} & {s.id for s in ext}


def test_the_paper_specs_planned_into_one_folder_pretrain_each_size_once():
    specs = [os.path.join(REPO, "midtrain_configs", "studies", f"paper-{n}.yaml")
             for n in ("main", "timing", "percentage", "cpt", "window")]
    env = {"DATA_ROOT": "/nonexistent", "CKPT_ROOT": "/c", "TOKENIZER_DIR": "/t", "SFT_ROOT": "/s"}
    r = run_cli("study", "plan", *specs, "--rows", "0", "--check_files", "false", "--devices", "false", env=env)
    assert r.returncode == 0, r.stderr
    for size in ("70m", "160m"):
        assert f"size {size}: 1 base run(s), 4 segment(s), {61035 * 1024 * 2048:,} base tokens in all" in r.stdout
    assert "reused: 8 base segment(s) planned in this folder by spec 'paper-main'" in r.stdout
    window = r.stdout.split("## ")[5]
    assert "steps: " in window and "pretrain 8" in window and "no cut needed" in window


@pytest.mark.unit
def test_base_config_must_be_a_whole_run():
    bad = copy.deepcopy(BASE)
    bad["train"]["max_additional_steps"] = 10
    with pytest.raises(ConfigError, match="max_additional_steps: is set by the study"):
        parse_spec(raw(), {"70m": bad})
    bad = copy.deepcopy(BASE)
    del bad["train"]["max_steps"]
    with pytest.raises(ConfigError, match="needs train.max_steps"):
        parse_spec(raw(), {"70m": bad})


@pytest.mark.parametrize("spec", sorted(glob.glob(os.path.join(REPO, "midtrain_configs", "studies", "*.yaml"))))
def test_shipped_specs_plan(spec):
    env = {"DATA_ROOT": "/nonexistent", "CKPT_ROOT": "/c", "TOKENIZER_DIR": "/t", "SFT_ROOT": "/s",
           "DEMO_ROOT": "/nonexistent"}
    r = run_cli("study", "plan", spec, "--rows", "3", "--check_files", "false", env=env)
    assert r.returncode == 0, r.stderr
    imported = "from-public" in spec  # a public checkpoint: nothing is pretrained
    assert ("no base steps" in r.stdout if imported else "| base/" in r.stdout) and "steps: " in r.stdout
    if "olmo-2-7b" in spec:  # issue 29, item 4: 7B arms and SFT sharded over 8 H100s, each with its memory per rank
        assert ("size 7b starts from its imported checkpoint at step 928,646: LR 6.15e-05 (decay (WSD's decay, from "
                "step 928,646 to 940,567), re-warmed over 100 steps)") in r.stdout, r.stdout[-3000:]
        rows = [line for line in r.stdout.splitlines() if line.startswith(("| midtrain/7b/", "| sft/7b/"))
                and "memory" in line]
        assert len(rows) == 2 and all("fsdp x 8, bf16-mixed, activation checkpointing on h100 (80 GiB)" in row
                                      and "DOES NOT FIT" not in row for row in rows), rows
    if "smollm2" in spec:  # issue 29: where the public schedule puts the arm's start (WSD decays 2.08M -> 2.6M)
        assert ("size 360m starts from its imported checkpoint at step 2,560,000: LR 0.000231 (decay (WSD's decay, "
                "from step 2,080,000 to 2,600,000), re-warmed over 100 steps)") in r.stdout, r.stdout[-3000:]
    # with the files checked, the missing checkpoint or shards are one line naming the key
    r = run_cli("study", "plan", spec, "--devices", "false", env=env)
    size = next(iter(yaml.safe_load(open(spec))["sizes"]))
    key = f"sizes.{size}.checkpoint" if imported else "data.data_path"
    assert r.returncode == 2 and key in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr


def test_an_sft_step_that_fits_no_gpu_is_refused_by_plan_and_sharded_it_fits(tmp_path, monkeypatch):
    """Issue 29, item 4. A 7B size (Amber's public config, FSDP with activation checkpointing for its arms) plans
    its arms on 8 A100s. Its SFT step on one 80 GiB GPU, which would hold the whole model, gradients and AdamW's
    states, is refused in one line before anything runs, naming what would fit; sharded over the node's 8 GPUs
    (sft.options: devices 8, strategy fsdp) it plans, with its memory per rank printed beside the arms'."""
    spec = {"name": "amber", "sizes": {"7b": {"checkpoint": "/c/amber/step-00266715", "step": 266715,
                                              "config": os.path.join(REPO, "midtrain_configs/public/amber-7b.yaml")}},
            "arms": [{"name": "code", "domain": "code", "weight": [0.2], "start": [266715]}], "seeds": [0],
            "sft": {"lrs": [1e-5, 3e-5], "tasks": {"t": {"data": "/s/t.jsonl"}},
                    "options": {"micro_batch_size": 4, "global_batch_size": 64, "max_seq_length": 2048,
                                "precision": "bf16-mixed"}},
            "report": {"baseline": "pretrain-only"},
            "slurm": {"midtrain": {"gpus-per-node": "a100:8"}, "sft": {"gpus-per-node": "a100:1"}}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    env = {"DATA_ROOT": "/nonexistent", "CKPT_ROOT": "/c", "SFT_ROOT": "/s"}
    r = run_cli("study", "plan", tmp_path / "s.yaml", "--check_files", "false", env=env)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stdout[-2000:] + r.stderr
    assert "sft/7b/" in r.stderr and "single x 1, bf16-mixed on a100 (80 GiB)" in r.stderr, r.stderr
    assert "try sft.options.devices: 8 with sft.options.strategy: fsdp" in r.stderr, r.stderr
    # the GPUs the SFT step asks for are the ones its options name: 8 here, or the spec contradicts itself
    spec["sft"]["options"].update(devices=8, strategy="fsdp", activation_checkpointing=True)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    r = run_cli("study", "plan", tmp_path / "s.yaml", "--check_files", "false", env=env)
    assert r.returncode == 2 and "slurm.sft.gpus-per-node: 'a100:1' contradicts sft step" in r.stderr, r.stderr
    assert "from sft.options (devices/num_nodes)" in r.stderr, r.stderr
    spec["slurm"]["sft"] = {"gpus-per-node": "a100:8"}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    r = run_cli("study", "plan", tmp_path / "s.yaml", "--check_files", "false", env=env)
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if line.startswith("| sft/7b/") and "memory" in line)
    assert "fsdp x 8, bf16-mixed, activation checkpointing on a100 (80 GiB): memory" in row, row
    assert "| sft | 4 | 1 node(s) x 8 task(s), 8 a100 GPU/node, srun" in r.stdout, r.stdout
    # what it counts: one copy of the weights (each LR loads the checkpoint afresh), sharded over 8 ranks
    from litgpt import Config

    from midtrain.study.footprints import sft_footprint
    from midtrain.study.files import load_plan
    from midtrain.train.memory import estimate

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    plan = load_plan(str(tmp_path / "s.yaml"), check_files=False, estimate=False)
    sft = next(st for st in plan.steps if st.kind == "sft")
    fp = sft_footprint(sft, plan.by_id[sft.deps[0]])
    model = Config(**yaml.safe_load(open(os.path.join(REPO, "midtrain_configs/public/amber-7b.yaml")))["model_config"])
    assert fp.estimate == estimate(model, 4, 2048, "bf16-mixed", "fsdp", 8, True) and fp.fits
    assert sft.alloc.tasks == 8 and sft.alloc.srun
