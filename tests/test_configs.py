"""Every YAML under midtrain_configs/ goes through the real CLI parser and a mixture dry run."""

import glob
import os

import pytest
import yaml

from conftest import REPO
from midtrain.cli import mix
from midtrain.config_io import load_config
from midtrain.data.prepare import write_fake_index

CONFIGS = sorted(glob.glob(os.path.join(REPO, "midtrain_configs", "**", "*.yaml"), recursive=True))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    for name in [str(i) for i in range(1, 9)] + ["c1", "c2", "m1", "i1", "q1", "q2", "q3", "q4", "w1"]:
        write_fake_index(root / "data" / "shards" / name, [40_000_000, 30_000_000])
    for name in ("1", "c1", "gsm8k"):
        write_fake_index(root / "data" / "val" / name, [1_000_000])
    values = {"DATA_ROOT": str(root / "data"), "CKPT_ROOT": str(root / "ckpt"), "TOKENIZER_DIR": str(root / "tok"),
              "MIDTRAIN_HOME": REPO}
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    yield values
    for k, v in old.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def test_there_are_paper_and_demo_configs():
    rel = [os.path.relpath(c, os.path.join(REPO, "midtrain_configs")) for c in CONFIGS]
    assert len([r for r in rel if r.startswith("pretrain/")]) >= 5
    assert len([r for r in rel if r.startswith("midtrain/")]) >= 16
    assert len([r for r in rel if r.startswith("ablations/")]) >= 20
    assert {"demo/pretrain.yaml", "demo/midtrain.yaml", "demo/cpt.yaml"} <= set(rel)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, os.path.join(REPO, "midtrain_configs")))
def test_config_parses_and_dry_runs(path, env, capsys):
    assert mix(["--config", path]) == 0
    out = capsys.readouterr().out
    assert "run length:" in out and "type totals:" in out


def test_out_dirs_unique_and_midtrains_point_at_saved_base_steps(env):
    cfgs = {p: load_config(p) for p in CONFIGS}
    out_dirs = [c["out_dir"] for c in cfgs.values()]
    assert len(out_dirs) == len(set(out_dirs)), "two configs write to the same out_dir"
    by_out = {c["out_dir"]: c for c in cfgs.values()}
    for path, c in cfgs.items():
        if "resume_from" not in c:
            continue
        base_dir, step_dir = os.path.split(c["resume_from"])
        assert base_dir in by_out, f"{path}: resume_from is not the out_dir of any config"
        base = by_out[base_dir]
        step = int(step_dir.split("-")[1])
        assert step % base["train"]["save_interval"] == 0, f"{path}: the base run never saves step {step}"
        assert c["train"]["max_steps"] == base["train"]["max_steps"], f"{path}: the LR horizon differs from its base"
        assert c["out_dir"] != base_dir


def test_paper_setup_values(env):
    c = load_config(os.path.join(REPO, "midtrain_configs", "pretrain", "pythia-410m.yaml"))
    t = c["train"]
    assert (t["max_steps"], t["global_batch_size"], t["max_seq_length"], t["micro_batch_size"]) == (61035, 1024, 2048, 8)
    assert (t["lr_warmup_fraction"], t["min_lr"], c["optimizer"]["init_args"]["lr"]) == (0.1, 1e-6, 3e-4)
    assert c["precision"] == "bf16-true" and c["optimizer"]["init_args"]["betas"] == [0.9, 0.95]


def test_unset_variable_is_a_clear_error(monkeypatch):
    from midtrain.errors import ConfigError

    monkeypatch.delenv("CKPT_ROOT", raising=False)
    with pytest.raises(ConfigError, match=r"pythia-70m.yaml: out_dir: \$\{CKPT_ROOT\} is not set"):
        load_config(os.path.join(REPO, "midtrain_configs", "pretrain", "pythia-70m.yaml"))
