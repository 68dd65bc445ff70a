"""`midtrain migrate`: configs in the original fork's idioms (written here, not copied) become midtrain configs
that train with the paper's horizon and peak LR; unmigrated, `pretrain` refuses them with one line."""


import pytest
import yaml

from support import run_cli
from midtrain.migrate import migrate_config
from support.runs import TINY_MODEL, metrics

ORIGINAL = """# config.yaml

model_name: pythia-160m

model_config:

out_dir: {out}

precision: bf16-true

initial_checkpoint_dir:

resume: true

data:
  class_path: litgpt.data.ShardedMixedDataset
  init_args:
    data_path: {data}
    num_workers: 2
    {weights}


# 61035 - 48000
train:
  max_iters: 10000000
  max_additional_steps: 13035
  micro_batch_size: 16
  global_batch_size: 1024
  log_interval: 10
  save_interval: 2000
  min_lr: 1e-6
  lr_scheduler: "cosine"
  lr_warmup_fraction: 0.1

eval:
  interval: 1000

optimizer:
  class_path: torch.optim.AdamW

  init_args:
    weight_decay: 0.1

    betas:
      - 0.9
      - 0.95

logger_name: wandb
"""

VARIANTS = {
    "base": 'mix_weights_str: "main:1.0"',
    "math_arm": 'mix_weights_str: "main:0.88,math:0.12"',
    "mix_weight": 'mix_weights_str: "main:0.8,code:0.2"\n    mix_weight: 0.2',
    "literal_types": 'literal_weights_str: "main:0.8,web:0.2"',
    "literal_shards": 'literal_weights_str: "main/1:0.8,q1:0.15,q2:0.05"',
}


def write_original(tmp_path, variant, tree):
    path = tmp_path / f"pythia_160m_midtrain_from_20k_{variant}.yaml"
    path.write_text(ORIGINAL.format(out=tmp_path / "out" / variant, data=tree, weights=VARIANTS[variant]))
    return path


def test_migrate_config_is_pure_and_says_every_change():
    cfg = yaml.safe_load(ORIGINAL.format(out="/o", data="/d", weights=VARIANTS["mix_weight"]))
    before = yaml.safe_dump(cfg)
    new, changes = migrate_config(cfg)
    assert yaml.safe_dump(cfg) == before  # the input is untouched
    t = new["train"]
    assert t["max_steps"] == 61035 and "max_iters" not in t and "max_additional_steps" not in t
    assert new["optimizer"]["init_args"]["lr"] == 3e-4 and new["resume"] is True  # an arm: must continue a checkpoint
    assert new["logger_name"] == "tensorboard" and "mix_weight" not in new["data"]["init_args"]
    assert "model_config" not in new and "initial_checkpoint_dir" not in new
    text = "\n".join(changes)
    for needle in ("train.max_steps: None -> 61035", "train.max_iters: 10000000 removed",
                   "train.max_additional_steps: 13035 removed", "optimizer.init_args.lr: None -> 0.0003",
                   "resume: True kept (a midtrain arm must continue a checkpoint", "mix_weight: 0.2 removed",
                   "logger_name: 'wandb' -> 'tensorboard'"):
        assert needle in text, text
    kept, _ = migrate_config({"train": {"max_steps": 100}, "optimizer": {"class_path": "torch.optim.AdamW",
                                                                          "init_args": {"lr": 1e-3}}})
    assert kept["train"]["max_steps"] == 100 and kept["optimizer"]["init_args"]["lr"] == 1e-3
    wsd = yaml.safe_load(ORIGINAL.format(out="/o", data="/d", weights=VARIANTS["base"]))
    wsd["train"].update(stable_steps=10000000, lr_scheduler="decay", max_additional_steps=61035)
    flat, changes = migrate_config(wsd)
    assert flat["train"]["lr_scheduler"] == "constant" and "stable_steps" not in flat["train"]
    assert any(c.startswith("train.lr_scheduler: 'decay' -> 'constant'") for c in changes)
    base, changes = migrate_config(yaml.safe_load(ORIGINAL.format(out="/o", data="/d", weights=VARIANTS["base"])))
    assert base["resume"] == "auto" and "resume: True -> 'auto'" in "\n".join(changes)  # a base run may start fresh
    given, _ = migrate_config(cfg, resume_from="/base/step-00020000")
    assert given["resume"] == "auto" and given["resume_from"] == "/base/step-00020000"
    lit, _ = migrate_config(yaml.safe_load(ORIGINAL.format(out="/o", data="/d", weights=VARIANTS["literal_types"])))
    assert lit["data"]["init_args"]["mix_weights_str"] == "main:0.8,web:0.2"
    shards, _ = migrate_config(yaml.safe_load(ORIGINAL.format(out="/o", data="/d", weights=VARIANTS["literal_shards"])))
    assert shards["data"]["init_args"]["literal_weights_str"] == "main/1:0.8,q1:0.15,q2:0.05"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_original_configs_are_refused_then_migrate_and_pass_mix(tmp_path, fake_tree, variant):
    tree = fake_tree({"1": [10_000_000], "2": [10_000_000], "c1": [5_000_000], "m1": [5_000_000],
                      "w1": [5_000_000], "q1": [1_000_000], "q2": [1_000_000]})
    original = write_original(tmp_path, variant, tree)
    r = run_cli("pretrain", "--config", original)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
    if variant == "mix_weight":
        assert "mix_weight" in r.stderr
    else:
        assert "optimizer: no learning rate" in r.stderr and "midtrain migrate" in r.stderr
    new = tmp_path / "new.yaml"
    r = run_cli("migrate", "--config", original, "--out", new)
    assert r.returncode == 0, r.stderr
    assert "train.max_iters: 10000000 removed" in r.stdout
    assert "note: a midtrain arm" in r.stdout, r.stdout  # the file name says "from_": even main-only continues a base
    assert new.read_text().startswith(f"# Migrated from {original}")
    r = run_cli("mix", "--config", new)
    assert r.returncode == 0, r.stderr
    assert "run length: 62,499,840 samples = 128.00B tokens" in r.stdout  # 61,035 x 1024 x 2048
    again = run_cli("migrate", "--config", original, "--out", new)
    assert again.returncode == 2 and "--out: " in again.stderr and "already exists" in again.stderr


def test_a_migrated_config_trains_with_the_horizon_and_peak_lr(tmp_path, real_tree):
    """In miniature: the original's idioms on the tiny model, migrated with --max_steps 12, train 12 steps whose
    LR rises to the peak 3e-4 and anneals to min_lr at step 12 (the placeholder would have kept it warming up)."""
    cfg = yaml.safe_load(ORIGINAL.format(out=tmp_path / "run", data=real_tree, weights=VARIANTS["base"]))
    cfg.update(model_config=TINY_MODEL, precision="32-true", logger_name="csv")
    cfg.pop("model_name", None)  # the tiny model instead (both given would be refused: one would be ignored)
    cfg["resume"] = True
    cfg["train"].update(max_additional_steps=5, micro_batch_size=4, global_batch_size=8, max_seq_length=16,
                        log_interval=1, save_interval=4)
    cfg["data"]["init_args"]["num_workers"] = 0
    original = tmp_path / "orig.yaml"
    original.write_text(yaml.safe_dump(cfg))
    new = tmp_path / "new.yaml"
    assert run_cli("migrate", "--config", original, "--out", new, "--max_steps", "12").returncode == 0
    r = run_cli("pretrain", "--config", new)
    assert r.returncode == 0, r.stderr[-2000:]
    lrs = {int(x["step"]): float(x["lr"]) for x in metrics(tmp_path / "run") if x["lr"]}
    assert max(lrs) == 12 and max(lrs.values()) == pytest.approx(3e-4, rel=0.05)
    assert lrs[12] < 0.05 * max(lrs.values())


def test_a_migrated_arm_never_trains_from_step_0_unannounced(tmp_path, real_tree):
    """Before: resume: true became auto, and an arm run without resume_from or the symlink layout started a
    fresh run (LR 4.9e-08 at step 1) where the original failed loudly."""
    cfg = yaml.safe_load(ORIGINAL.format(out=tmp_path / "arm", data=real_tree, weights=VARIANTS["math_arm"]))
    cfg.update(model_config=TINY_MODEL, precision="32-true", logger_name="csv")
    cfg.pop("model_name", None)
    cfg["train"].update(micro_batch_size=4, global_batch_size=8, max_seq_length=16, save_interval=4)
    cfg["data"]["init_args"]["num_workers"] = 0
    original = tmp_path / "orig_arm.yaml"  # no "from_" in the name: the note does not depend on it
    original.write_text(yaml.safe_dump(cfg))
    new = tmp_path / "arm.yaml"
    r = run_cli("migrate", "--config", original, "--out", new, "--max_steps", "12")
    assert r.returncode == 0 and "note: a midtrain arm without resume_from" in r.stdout, r.stdout + r.stderr
    r = run_cli("pretrain", "--config", new)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
    assert "resume: true, but" in r.stderr and "holds no checkpoint" in r.stderr
    assert "step 1" not in r.stdout


def test_mix_weight_as_the_only_mixture_key_is_refused_until_stated(tmp_path, fake_tree):
    """The original's "math from 20k" arm gave only mix_weight, which it never read: it trained main only."""
    tree = fake_tree({"1": [10_000_000], "m1": [5_000_000]})
    path = tmp_path / "pythia_160m_midtrain_from_20k_math.yaml"
    path.write_text(ORIGINAL.format(out=tmp_path / "out", data=tree, weights="mix_weight: 0.2"))
    r = run_cli("migrate", "--config", path, "--out", tmp_path / "new.yaml")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "data.init_args.mix_weight: 0.2 is the only mixture key" in r.stderr and "--mix_weights_str" in r.stderr
    assert not (tmp_path / "new.yaml").exists()
    r = run_cli("migrate", "--config", path, "--out", tmp_path / "new.yaml", "--mix_weights_str", "main:0.8,math:0.2")
    assert r.returncode == 0, r.stderr
    new = yaml.safe_load((tmp_path / "new.yaml").read_text())
    assert new["data"]["init_args"]["mix_weights_str"] == "main:0.8,math:0.2" and "mix_weight" not in new["data"]["init_args"]
    assert "note: a midtrain arm" in r.stdout
    r = run_cli("mix", "--config", tmp_path / "new.yaml")
    assert r.returncode == 0 and "math" in r.stdout, r.stderr
