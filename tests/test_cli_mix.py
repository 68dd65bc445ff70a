"""Acceptance for `midtrain mix`: the plan a researcher reads before sbatch."""

import json

import pytest

from support import run_cli


@pytest.fixture
def paper_tree(fake_tree):
    names = [str(i) for i in range(1, 61)] + ["c1", "c2", "c3", "m1", "q1", "q2", "q3", "q4"]
    base = fake_tree({n: [3_000_000, 1_000_000] for n in names})
    (base / "c4_val").mkdir()
    return base


def write_cfg(tmp_path, data_args: dict, train=None, class_path="litgpt.data.ShardedMixedDataset", extra=""):
    import yaml

    cfg = {"model_name": "pythia-160m", "out_dir": "out/x",
           "data": {"class_path": class_path, "init_args": data_args},
           "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 3e-4}},
           "train": train or {"max_steps": 1000, "global_batch_size": 64, "micro_batch_size": 8, "max_seq_length": 2048}}
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(cfg) + extra)
    return p


def test_literal_plan(paper_tree, tmp_path):
    cfg = write_cfg(tmp_path, {"data_path": str(paper_tree), "literal_weights_str": "main/1:0.8,q1:0.1,q2:0.1"})
    r = run_cli("mix", "--config", cfg, "--json", tmp_path / "plan.json")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    rows = [l.split() for l in lines if l.startswith(("main/", "q"))]
    assert [row[0] for row in rows] == ["main/1", "q1", "q2"]
    assert [row[4] for row in rows] == ["0.8000", "0.1000", "0.1000"]
    assert "unused types (discovered, no weight): code, math" in r.stdout
    assert "ignored: c4_val (name matches no shard type)" in r.stdout
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["total_samples"] == 64_000
    q1 = next(r for r in plan["rows"] if r["id"] == "q1")
    assert q1["samples"] == 3_000_000 // 2049 + 1_000_000 // 2049
    assert q1["draw_samples"] == pytest.approx(6400)
    assert q1["epochs"] == pytest.approx(6400 / q1["samples"])


def test_plan_with_tokens_flag_and_no_config(paper_tree):
    r = run_cli("mix", "--data.data_path", paper_tree, "--data.mix_weights_str", "main:0.8,code:0.2",
                "--train.max_seq_length", "2048", "--tokens", "4096000")
    assert r.returncode == 0, r.stderr
    assert "run length: 2,000 samples" in r.stdout
    assert "type totals: main 0.8000, code 0.2000" in r.stdout
    assert len([l for l in r.stdout.splitlines() if l.startswith(("main/", "c"))]) == 63


def test_epochs_above_one_warn(fake_tree):
    base = fake_tree({"1": [10**6], "q1": [5000]})
    r = run_cli("mix", "--data.data_path", base, "--data.mix_weights_str", "main:0.9,qa:0.1",
                "--train.max_seq_length", "99", "--tokens", "99000")
    assert r.returncode == 0, r.stderr
    assert "WARNING: 1 shard(s) will be read more than once: q1" in r.stdout


@pytest.mark.parametrize("data_args,needle", [
    ({"literal_weights_str": "main/1:0.8,q9:0.2"}, "q9"),
    ({"mix_weights_str": "main:0.8,code:abc"}, "code:abc"),
    ({"mix_weights_str": "main:0.8", "literal_weights_str": "q1:1"}, "only one source of weights"),
    ({"mix_weight": 0.2}, "mix_weight"),
    ({"mix_weights_str": ""}, "mix_weights_str: '' is empty"),
    ({"mix_weights_str": "main:1", "mixer": "bogus"}, "data.init_args.mixer: 'bogus' is not one of exact, litdata"),
    ({"mix_weights_str": "main:1", "within_type": "x"}, "data.init_args.within_type: 'x' is not one of equal, tokens"),
])
def test_bad_input_exits_2_with_one_line(paper_tree, tmp_path, data_args, needle):
    cfg = write_cfg(tmp_path, {"data_path": str(paper_tree), **data_args})
    r = run_cli("mix", "--config", cfg, "--json", tmp_path / "plan.json")
    assert r.returncode == 2
    assert r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "plan.json").exists()


def test_unset_env_var_and_missing_paths(tmp_path, paper_tree):
    cfg = write_cfg(tmp_path, {"data_path": "${MIDTRAIN_TEST_UNSET_ROOT}/shards"})
    r = run_cli("mix", "--config", cfg)  # the variable is not set in the test environment
    assert r.returncode == 2 and "MIDTRAIN_TEST_UNSET_ROOT" in r.stderr and "data.init_args.data_path" in r.stderr
    r = run_cli("mix", "--config", cfg, env={"MIDTRAIN_TEST_UNSET_ROOT": str(paper_tree.parent)})
    assert r.returncode == 0, r.stderr
    r = run_cli("mix", "--config", tmp_path / "nope.yaml")
    assert r.returncode == 2 and "nope.yaml does not exist" in r.stderr
    r = run_cli("mix", "--data.data_path", tmp_path / "nowhere", "--train.max_seq_length", "8")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "data_path" in r.stderr


def test_help_lists_commands():
    r = run_cli("--help")
    assert r.returncode == 0 and "mix" in r.stdout
    r = run_cli("nonsense")
    assert r.returncode == 2 and "unknown command 'nonsense'" in r.stderr


def test_a_key_with_fixed_values_says_them_in_one_short_line(paper_tree, tmp_path):
    """jsonargparse's "Cannot take a Union of no types" (up to 700 characters) becomes the allowed values."""
    cfg = write_cfg(tmp_path, {"data_path": str(paper_tree)})
    for args, needle in ((["--train.lr_scheduler", "cosin"], "train.lr_scheduler: is not one of cosine, wsd, decay, constant"),
                         (["--logger_name", "tb"], "logger_name: is not one of tensorboard, csv, wandb")):
        r = run_cli("mix", "--config", cfg, *args)
        assert r.returncode == 2 and r.stderr.strip() == f"midtrain mix: error: {needle}", r.stderr


def test_a_weight_that_quantises_to_no_draw_is_listed_as_excluded_with_the_reason(paper_tree, tmp_path):
    """Below 1/(2·B·2^16) the exact mixer draws nothing from a source: before, the plan showed it as a row of
    weight 0.0000; now it is excluded, with the reason and the weight it was given."""
    cfg = write_cfg(tmp_path, {"data_path": str(paper_tree), "literal_weights_str": "main/1:1.0,q1:1e-9,q2:1e-5"})
    r = run_cli("mix", "--config", cfg, "--json", tmp_path / "plan.json")
    assert r.returncode == 0, r.stderr
    rows = [line.split()[0] for line in r.stdout.splitlines()[4:] if line.startswith(("main/", "q"))]
    assert rows == ["main/1", "q2"], r.stdout  # q2 (1e-5 of 64 x 65,536 draws) is drawn; q1 is not
    assert "q2           " in r.stdout and "1.0e-05" in r.stdout and "0.0000" not in r.stdout
    line = next(x for x in r.stdout.splitlines() if x.startswith("excluded (weight too small"))
    assert "q1 (1.00e-09)" in line and "of the 4,194,304 draws per schedule period" in line
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert [i for i, _ in plan["too_small"]] == ["q1"] and plan["too_small"][0][1] == pytest.approx(1e-9, rel=1e-3)
    assert [r["id"] for r in plan["rows"]] == ["main/1", "q2"]
