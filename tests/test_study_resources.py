"""Each study step's allocation: derived from its run config, per-kind options layered, contradictions
refused in one line (pure), and `study plan` printing the allocation and GPU-hours per kind."""

import pytest
import yaml

from conftest import run_cli
from midtrain.errors import ConfigError
from midtrain.study.resources import allocation, check_options

GPU8 = {"devices": 8, "num_nodes": 1}


def test_training_steps_take_their_shape_from_the_run_config():
    a = allocation("pretrain", GPU8, {})
    assert (a.nodes, a.tasks_per_node, a.gpus_per_node, a.srun) == (1, 8, 8, True)
    assert a.sbatch_args() == ["--nodes=1", "--ntasks-per-node=8", "--gpus-per-node=8"]
    a = allocation("midtrain", {"devices": 2, "accelerator": "cpu"}, {})
    assert a.sbatch_args() == ["--nodes=1", "--ntasks-per-node=2"] and a.gpus == 0
    a = allocation("midtrain", {"devices": 4, "num_nodes": 3}, {})
    assert (a.tasks, a.gpus) == (12, 12)


@pytest.mark.parametrize("kind,gpus", [("sft", 1), ("eval", 1), ("lm-eval", 1), ("report", 0)])
def test_single_process_steps_ask_for_one_task(kind, gpus):
    a = allocation(kind, GPU8, {})
    assert (a.nodes, a.tasks_per_node, a.gpus_per_node, a.srun) == (1, 1, gpus, False)
    assert allocation(kind, {**GPU8, "accelerator": "cpu"}, {}).gpus == 0


def test_options_layer_shared_then_kind_then_command_line():
    slurm = {"options": {"partition": "gpu", "time": "1:00:00", "account": "lab"},
             "sft": {"time": "4:00:00"}, "report": {"partition": "cpu"}}
    assert allocation("sft", GPU8, slurm).options == {"partition": "gpu", "time": "4:00:00", "account": "lab"}
    assert allocation("report", GPU8, slurm).options["partition"] == "cpu"
    assert allocation("pretrain", GPU8, slurm, {"time": "48:00:00"}).options["time"] == "48:00:00"
    # a shape option equal to the derived value is accepted (and not passed twice)
    a = allocation("pretrain", GPU8, {"pretrain": {"ntasks-per-node": 8, "gpus-per-node": "h100:8", "nodes": 1}})
    assert a.sbatch_args() == ["--nodes=1", "--ntasks-per-node=8", "--gpus-per-node=8"]


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


def test_bad_shapes_and_owned_options_are_refused():
    with pytest.raises(ConfigError, match="s: devices: a study step needs the number of devices"):
        allocation("pretrain", {"devices": "auto"}, {}, where="s")
    with pytest.raises(ConfigError, match="num_nodes: expected an integer >= 1"):
        allocation("pretrain", {"devices": 1, "num_nodes": 0}, {}, where="s")
    with pytest.raises(ConfigError, match="slurm.options.array: is set by the study executor"):
        check_options({"array": "0-3"}, "slurm.options")
    with pytest.raises(ConfigError, match=r"slurm.sft.foo: unknown option here"):
        from midtrain.study.resources import KIND_OPTIONS

        check_options({"foo": 1}, "slurm.sft", KIND_OPTIONS)


def test_plan_prints_allocation_and_gpu_hours_per_kind(tmp_path, monkeypatch):
    for var in ("DATA_ROOT", "SFT_ROOT", "TOKENIZER_DIR", "CKPT_ROOT"):
        monkeypatch.setenv(var, str(tmp_path))
    r = run_cli("study", "plan", "midtrain_configs/studies/paper-main.yaml", "--check_files", "false", "--rows", "0",
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
        r = run_cli("study", "plan", spec, "--check_files", "false", "--rows", "0", env=env)
        assert r.returncode == 0 and "| sft |" in r.stdout, (spec, r.stderr)
