"""Every YAML under midtrain_configs/ goes through the real CLI parser and a mixture dry run."""

import glob
import os

import pytest

from support import REPO
from midtrain.cli import mix
from midtrain.config_io import load_config
from midtrain.data.prepare import write_fake_index

CONFIGS = sorted(p for p in glob.glob(os.path.join(REPO, "midtrain_configs", "**", "*.yaml"), recursive=True)
                 if os.sep + "studies" + os.sep not in p)  # study specs: tests/test_study_plan.py


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


@pytest.mark.unit
def test_there_are_paper_and_demo_configs():
    rel = [os.path.relpath(c, os.path.join(REPO, "midtrain_configs")) for c in CONFIGS]
    assert len([r for r in rel if r.startswith("pretrain/")]) >= 5
    assert len([r for r in rel if r.startswith("midtrain/")]) >= 16
    assert len([r for r in rel if r.startswith("ablations/")]) >= 20
    assert {"demo/pretrain.yaml", "demo/midtrain.yaml", "demo/cpt.yaml"} <= set(rel)


@pytest.mark.unit
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, os.path.join(REPO, "midtrain_configs")))
def test_config_parses_and_dry_runs(path, env, capsys):
    assert mix(["--config", path]) == 0
    out = capsys.readouterr().out
    assert "run length:" in out and "type totals:" in out


@pytest.mark.unit
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


@pytest.mark.unit
def test_paper_setup_values(env):
    c = load_config(os.path.join(REPO, "midtrain_configs", "pretrain", "pythia-410m.yaml"))
    t = c["train"]
    assert (t["max_steps"], t["global_batch_size"], t["max_seq_length"], t["micro_batch_size"]) == (61035, 1024, 2048, 8)
    assert (t["lr_warmup_fraction"], t["min_lr"], c["optimizer"]["init_args"]["lr"]) == (0.1, 1e-6, 3e-4)
    assert c["precision"] == "bf16-true" and c["optimizer"]["init_args"]["betas"] == [0.9, 0.95]


@pytest.mark.unit
def test_unset_variable_is_a_clear_error(monkeypatch):
    from midtrain.errors import ConfigError

    monkeypatch.delenv("CKPT_ROOT", raising=False)
    with pytest.raises(ConfigError, match=r"pythia-70m.yaml: out_dir: \$\{CKPT_ROOT\} is not set"):
        load_config(os.path.join(REPO, "midtrain_configs", "pretrain", "pythia-70m.yaml"))


def test_checked_in_configs_are_the_generators_output(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, os.path.join(REPO, "util_scripts", "make_paper_configs.py"), "--out",
                        str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    generated = {os.path.relpath(p, tmp_path) for p in glob.glob(str(tmp_path / "**" / "*.*"), recursive=True)}
    root = os.path.join(REPO, "midtrain_configs")
    checked_in = {os.path.relpath(p, root) for p in glob.glob(os.path.join(root, "**", "*.*"), recursive=True)
                  if not os.path.relpath(p, root).startswith(("demo" + os.sep, "studies" + os.sep, "public" + os.sep))}
    assert checked_in == generated
    for rel in generated:
        with open(tmp_path / rel) as a, open(os.path.join(root, rel)) as b:
            assert a.read() == b.read(), f"{rel} differs from util_scripts/make_paper_configs.py's output"


# The paper's midtraining table (FIELD_NOTES), written out here independently of the generator:
# domain -> (the domain's shares of the mixture, start step, start step for 70M if different)
PAPER_TABLE = {
    "code20": ({"code": 0.20}, 6000, 10000),
    "math12": ({"math": 0.12}, 20000, None),
    "flan5": ({"instruct": 0.05}, 40000, None),
    "qa20": ({"q1": 0.15, "q2": 0.03, "q3": 0.015, "q4": 0.005}, 40000, None),
    "web20": ({"web": 0.20}, 40000, None),
}


def _weights(cfg):
    import json

    init = cfg["data"]["init_args"]
    if "mix_weights_str" in init:
        return {k: float(v) for k, v in (p.split(":") for p in init["mix_weights_str"].split(","))}
    with open(init["mix_config_path"]) as f:
        return {k: float(v) for k, v in json.load(f)["weights"].items()}


@pytest.mark.unit
@pytest.mark.parametrize("model", ["70m", "160m", "410m", "1b"])
@pytest.mark.parametrize("domain", sorted(PAPER_TABLE))
def test_every_midtrain_arm_matches_the_papers_table(env, model, domain):
    shares, start, start_70m = PAPER_TABLE[domain]
    start = start_70m if model == "70m" and start_70m else start
    path = os.path.join(REPO, "midtrain_configs", "midtrain", f"pythia-{model}-{domain}-from{start // 1000}k.yaml")
    cfg = load_config(path)
    weights = _weights(cfg)
    assert weights.pop("main") == pytest.approx(1 - sum(shares.values()))
    assert weights == pytest.approx(shares)
    assert cfg["resume_from"].endswith(f"/pretrain/pythia-{model}/step-{start:08d}")
    t = cfg["train"]
    assert (t["max_steps"], t["global_batch_size"], t["max_seq_length"]) == (61035, 1024, 2048)
    assert "max_additional_steps" not in t and "max_iters" not in t
    assert (t["lr_scheduler"], t["lr_warmup_fraction"], t["min_lr"]) == ("cosine", 0.1, 1e-6)
    assert cfg["optimizer"]["init_args"]["lr"] == 3e-4 and cfg["model_name"] == f"pythia-{model}"
    assert t["micro_batch_size"] == {"70m": 16, "160m": 16, "410m": 8, "1b": 4}[model]


ABLATIONS = (  # FIELD_NOTES: code ablations on 70M/160M, and the continued-pretraining controls
    [(f"timing/pythia-{m}-code20-from{s // 1000}k.yaml", {"code": 0.2}, s) for m in ("70m", "160m")
     for s in (20000, 30000, 40000, 50000)]
    + [(f"percentage/pythia-{m}-code{p}-from40k.yaml", {"code": p / 100}, 40000) for m in ("70m", "160m")
       for p in (10, 30, 50, 80)]
    + [(f"cts_pretrain/pythia-{m}-code100-from40k.yaml", {"code": 1.0}, 40000) for m in ("70m", "160m")]
    + [(f"cts_pretrain/pythia-{m}-math100-from56k.yaml", {"math": 1.0}, 56000) for m in ("70m", "160m")])


@pytest.mark.unit
@pytest.mark.parametrize("rel,shares,start", ABLATIONS, ids=[a[0] for a in ABLATIONS])
def test_every_ablation_arm_matches_the_paper(env, rel, shares, start):
    cfg = load_config(os.path.join(REPO, "midtrain_configs", "ablations", rel))
    weights = _weights(cfg)
    main = weights.pop("main", 0.0)
    assert main == pytest.approx(1 - sum(shares.values())) and weights == pytest.approx(shares)
    assert cfg["resume_from"].endswith(f"step-{start:08d}") and cfg["train"]["max_steps"] == 61035
