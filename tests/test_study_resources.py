"""Each study step's allocation: derived from its run config, per-kind options layered, contradictions
refused in one line (pure), and `study plan` printing the allocation and GPU-hours per kind."""

import pytest
import yaml

from support import run_cli
from midtrain.errors import ConfigError
from midtrain.study.resources import allocation, check_options

GPU8 = {"devices": 8, "num_nodes": 1}


def test_training_steps_take_their_shape_from_the_run_config():
    a = allocation("pretrain", GPU8, {})
    assert (a.nodes, a.tasks_per_node, a.gpus_per_node, a.srun) == (1, 8, 8, True)
    # a GPU task's default share: the loader's workers + 2 CPUs, 16 GiB + (4 + 16 / devices) bytes per parameter
    assert a.sbatch_args() == ["--nodes=1", "--ntasks-per-node=8", "--gpus-per-node=8", "--cpus-per-task=10",
                               "--mem-per-gpu=32G"]
    a = allocation("pretrain", GPU8, {}, params=1_011_781_632)  # pythia-1b: 6 bytes x 1.01e9 = 5.65 GiB -> 6
    assert a.options == {"cpus-per-task": 10, "mem-per-gpu": "22G"}
    a = allocation("pretrain", {**GPU8, "data": {"init_args": {"num_workers": 2}}}, {}, params=1_011_781_632)
    assert a.options["cpus-per-task"] == 4
    assert allocation("sft", GPU8, {}, params=1_011_781_632).options["mem-per-gpu"] == "35G"  # 20 bytes/param
    a = allocation("pretrain", GPU8, {"options": {"cpus-per-task": 16, "mem": "900G"}})  # named: kept, no share
    assert a.options == {"cpus-per-task": 16, "mem": "900G"}
    a = allocation("midtrain", {"devices": 2, "accelerator": "cpu"}, {})
    assert a.sbatch_args() == ["--nodes=1", "--ntasks-per-node=2"] and a.gpus == 0
    a = allocation("midtrain", {"devices": 4, "num_nodes": 3}, {})
    assert (a.tasks, a.gpus) == (12, 12)


def test_an_sft_step_takes_its_shape_from_its_options():
    """sft.options devices x num_nodes tasks (one GPU each on a GPU base), srun when more than one; a shape option
    that contradicts them is refused naming where the shape comes from."""
    from midtrain.study.resources import step_ranks

    assert step_ranks("sft", {"options": {"devices": 8, "strategy": "fsdp"}}) == (8, 1)
    assert step_ranks("sft", {"options": {}}) == (1, 1) and step_ranks("eval", {"options": {"devices": 8}}) is None
    a = allocation("sft", GPU8, {}, ranks=(8, 1))
    assert (a.nodes, a.tasks_per_node, a.gpus_per_node, a.srun) == (1, 8, 8, True)
    a = allocation("sft", GPU8, {}, ranks=(1, 1))
    assert (a.nodes, a.tasks_per_node, a.gpus_per_node, a.srun) == (1, 1, 1, False)
    a = allocation("sft", {**GPU8, "accelerator": "cpu"}, {}, ranks=(2, 1))
    assert (a.tasks, a.gpus, a.srun) == (2, 0, True)
    assert allocation("sft", GPU8, {"sft": {"gpus-per-node": "h100:8"}}, ranks=(8, 1)).gpu_type == "h100"
    with pytest.raises(ConfigError, match=r"^slurm.sft.gpus-per-node: 1 contradicts sft step .* from sft.options"):
        allocation("sft", GPU8, {"sft": {"gpus-per-node": 1}}, ranks=(8, 1))


@pytest.mark.parametrize("kind,gpus", [("sft", 1), ("eval", 1), ("lm-eval", 1), ("report", 0)])
def test_single_process_steps_ask_for_one_task(kind, gpus):
    a = allocation(kind, GPU8, {})
    assert (a.nodes, a.tasks_per_node, a.gpus_per_node, a.srun) == (1, 1, gpus, False)
    assert allocation(kind, {**GPU8, "accelerator": "cpu"}, {}).gpus == 0


def test_options_layer_shared_then_kind_then_command_line():
    slurm = {"options": {"partition": "gpu", "time": "1:00:00", "account": "lab"},
             "sft": {"time": "4:00:00"}, "report": {"partition": "cpu"}}
    assert allocation("sft", GPU8, slurm).options == {"partition": "gpu", "time": "4:00:00", "account": "lab",
                                                      "cpus-per-task": 10, "mem-per-gpu": "32G"}
    assert allocation("report", GPU8, slurm).options["partition"] == "cpu"
    assert allocation("pretrain", GPU8, slurm, {"time": "48:00:00"}).options["time"] == "48:00:00"
    # a shape option equal to the derived value is accepted (and not passed twice); a GPU type is kept
    a = allocation("pretrain", GPU8, {"pretrain": {"ntasks-per-node": 8, "gpus-per-node": "h100:8", "nodes": 1}})
    assert a.sbatch_args()[:3] == ["--nodes=1", "--ntasks-per-node=8", "--gpus-per-node=h100:8"]
    assert allocation("sft", GPU8, {"sft": {"gres": "gpu:a100:1"}}).sbatch_args()[:3] == [
        "--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=a100:1"]


@pytest.mark.unit
@pytest.mark.parametrize("slurm,cli,kind,message", [
    ({"pretrain": {"ntasks-per-node": 3}}, None, "pretrain",
     "slurm.pretrain.ntasks-per-node: 3 contradicts pretrain step s: ntasks-per-node=8"),
    ({"options": {"nodes": 2}}, None, "midtrain", "slurm.options.nodes: 2 contradicts midtrain step s: nodes=1"),
    ({"options": {"ntasks-per-node": 8}}, None, "sft", "slurm.options.ntasks-per-node: 8 contradicts sft step s"),
    ({}, {"gpus-per-node": 1}, "report", "--slurm.gpus-per-node: 1 contradicts report step s: gpus-per-node=0"),
    ({}, {"gpus": 4}, "pretrain", "--slurm.gpus: 4 contradicts pretrain step s: gpus=8"),
])
def test_contradictions_are_refused_naming_both_values(slurm, cli, kind, message):
    with pytest.raises(ConfigError) as e:
        allocation(kind, GPU8, slurm, cli, where="s")
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


@pytest.mark.unit
def test_bad_shapes_and_owned_options_are_refused():
    with pytest.raises(ConfigError, match="s: devices: a study step needs the number of devices"):
        allocation("pretrain", {"devices": "auto"}, {}, where="s")
    with pytest.raises(ConfigError, match="num_nodes: expected an integer >= 1"):
        allocation("pretrain", {"devices": 1, "num_nodes": 0}, {}, where="s")
    with pytest.raises(ConfigError, match="slurm.options.array: is set by the study executor"):
        check_options({"array": "0-3"}, "slurm.options")
    with pytest.raises(ConfigError, match="slurm.options.gpus-per-task: would give each task a slice"):
        check_options({"gpus-per-task": 1}, "slurm.options")
    with pytest.raises(ConfigError, match=r"slurm.sft.foo: unknown option here"):
        from midtrain.study.resources import KIND_OPTIONS

        check_options({"foo": 1}, "slurm.sft", KIND_OPTIONS)


def test_plan_prints_allocation_and_gpu_hours_per_kind(tmp_path, monkeypatch):
    for var in ("DATA_ROOT", "SFT_ROOT", "TOKENIZER_DIR", "CKPT_ROOT"):
        monkeypatch.setenv(var, str(tmp_path))
    r = run_cli("study", "plan", "midtrain_configs/studies/paper-main.yaml", "--check_files", "false", "--rows", "0",
                "--devices", "false",
                env={v: str(tmp_path) for v in ("DATA_ROOT", "SFT_ROOT", "TOKENIZER_DIR", "CKPT_ROOT")})
    assert r.returncode == 0, r.stderr
    rows = {line.split("|")[1].strip(): line for line in r.stdout.splitlines() if line.startswith("| ")}
    assert "1 node(s) x 8 task(s), 8 GPU/node, srun; cpus-per-task=8, time=48:00:00" in rows["pretrain"]
    assert "1 node(s) x 1 task(s), 1 GPU/node; cpus-per-task=8, time=12:00:00" in rows["sft"]
    assert "1 node(s) x 1 task(s), no GPU; cpus-per-task=2, time=2:00:00 | no GPU" in rows["report"]
    hours = {k: float(rows[k].split("|")[4].split()[0].replace(",", "")) for k in ("pretrain", "midtrain")}
    assert 0 < hours["pretrain"] < hours["midtrain"]


def test_every_paper_spec_plans_with_per_kind_resources(tmp_path):
    import glob

    env = {v: str(tmp_path) for v in ("DATA_ROOT", "SFT_ROOT", "TOKENIZER_DIR", "CKPT_ROOT")}
    for spec in sorted(glob.glob("midtrain_configs/studies/paper-*.yaml")):
        raw = yaml.safe_load(open(spec))
        assert set(raw["slurm"]) >= {"pretrain", "midtrain", "sft", "eval", "report"}, spec
        r = run_cli("study", "plan", spec, "--check_files", "false", "--rows", "0", "--devices", "false", env=env)
        assert r.returncode == 0 and "| sft |" in r.stdout, (spec, r.stderr)


# ---- what the SLURM executor submits: the pure schedule ----

def _plan(tmp_path, **spec_extra):
    from midtrain.study.plan import make_plan
    from midtrain.study.spec import parse_spec

    base = {"devices": 2, "accelerator": "cpu", "tokenizer_dir": "tok", "data": {"init_args": {"data_path": "x", "val_data_path": "v"}},
            "train": {"max_steps": 12, "global_batch_size": 4, "max_seq_length": 8}}
    raw = {"name": "t", "sizes": {"s": {"config": "base.yaml"}},
           "arms": [{"name": "code", "domain": "code", "start": [4], "weight": [0.2]}],
           # (one shared control: the groups below are of the base run's end and its SFT steps)
           "seeds": {"values": [0, 1], "vary": "midtrain", "control": "shared"},
           "sft": {"lrs": [1e-4, 1e-3], "tasks": {"fn": {"data": "d.jsonl"}}}, **spec_extra}
    return make_plan(parse_spec(raw, {"s": base}))


def _schedule(plan, states, **kw):
    from midtrain.study.slurm import schedule

    full = {s.id: {"state": "pending", **states.get(s.id, {})} for s in plan.steps}
    return schedule(plan, full, {s.id: s.alloc for s in plan.steps}, **kw)


@pytest.mark.unit
def test_schedule_groups_caps_and_replaces(tmp_path):
    plan = _plan(tmp_path)
    replace, groups = _schedule(plan, {})
    ids = [[s.id for s in g] for g in groups]
    assert replace == [] and sum(map(len, ids)) == len(plan.steps)
    assert ids[0] == ["base/s/to4"] and ids[2] == ["midtrain/s/code20-from4/s0", "midtrain/s/code20-from4/s1"]
    ctrl = next(g for g in ids if g[0].startswith("sft/s/pretrain-only/"))
    assert len(ctrl) == 4  # every (LR, seed) of the control checkpoint: one array
    seen = set()
    for g in groups:  # inputs before their users
        assert all(d in seen for s in g for d in s.deps)
        seen |= {s.id for s in g}
    # max_jobs: queued + running + new <= cap, and nothing goes out before its input
    queued = {"base/s/to4": {"state": "running", "job_id": "1"}}
    _, groups = _schedule(plan, queued, max_jobs=3)
    assert [s.id for g in groups for s in g] == ["base/s/to12", "midtrain/s/code20-from4/s0"]
    _, groups = _schedule(plan, queued, max_jobs=1)
    assert groups == []
    # a large group is cut into arrays of at most max_array
    _, groups = _schedule(plan, {}, max_array=3)
    assert max(map(len, groups)) == 3
    # a queued job whose input was resubmitted (its afterok names the old job) is replaced, with what waits on it
    states = {"base/s/to4": {"state": "pending", "job_id": "1"},  # cancelled: gone
              "base/s/to12": {"state": "submitted", "job_id": "2", "slurm_state": "PENDING",
                              "after": {"base/s/to4": "1"}},
              "midtrain/s/code20-from4/s0": {"state": "submitted", "job_id": "3_0", "slurm_state": "PENDING",
                                             "after": {"base/s/to4": "1"}}}
    replace, groups = _schedule(plan, states)
    assert replace == ["base/s/to12", "midtrain/s/code20-from4/s0"]
    assert [s.id for s in groups[0]] == ["base/s/to4"]
    # a queued job whose input is the same job is left alone
    states["base/s/to4"] = {"state": "running", "job_id": "1"}
    replace, groups = _schedule(plan, states)
    assert replace == [] and "base/s/to12" not in {s.id for g in groups for s in g}


@pytest.mark.unit
def test_schedule_without_retry_sends_only_never_submitted_steps(tmp_path):
    plan = _plan(tmp_path)
    done = {s.id: {"state": "done"} for s in plan.steps if s.kind in ("pretrain", "midtrain", "eval")}
    failed_sft = "sft/s/pretrain-only/fn/lr0.001/s1"
    states = {**done, failed_sft: {"state": "failed", "job_id": "9_3"}}
    _, groups = _schedule(plan, states, retry=False)
    sent = {s.id for g in groups for s in g}
    assert failed_sft not in sent and "report" not in sent  # the report waits on the failed step
    assert len(sent) == sum(s.kind == "sft" for s in plan.steps) - 1
    _, groups = _schedule(plan, states, retry=True)  # a new `run` retries it
    assert failed_sft in {s.id for g in groups for s in g}
