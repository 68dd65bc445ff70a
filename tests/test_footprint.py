"""Before a run: its strategy and memory per rank on its GPUs, and what bf16-true costs at its LR (issue 26).
Pure figures checked against hand-computed ones and the field notes' measurement; `mix` and `study plan` print
them; a run that fits on no strategy is refused before anything starts."""

import os

import pytest
import yaml

from support import REPO, run_cli
from midtrain.errors import ConfigError


@pytest.mark.unit
def test_bf16_update_survival_reproduces_the_measured_figures():
    """Field notes (AdamW wd 0.1, betas 0.9/0.95, 200 steps, weights ~N(0, 0.0228)): share of weights moved 1.00 /
    0.83 / 0.27 / 0.014 at LR 3e-4 / 9.6e-5 / 2.9e-5 / 1e-6."""
    from midtrain.train.numerics import bf16_update_survival, neox_std

    assert neox_std(768) == pytest.approx(0.0228, abs=1e-4)
    moved = {lr: bf16_update_survival(lr, 0.0228).moved for lr in (3e-4, 9.6e-5, 2.9e-5, 1e-6)}
    assert moved[3e-4] > 0.97 and 0.70 < moved[9.6e-5] < 0.92 and 0.15 < moved[2.9e-5] < 0.40 and moved[1e-6] < 0.05
    assert bf16_update_survival(2.9e-5, 0.0228).magnitude < 0.4
    assert bf16_update_survival(2.9e-5, 0.0228) == bf16_update_survival(2.9e-5, 0.0228)  # deterministic


@pytest.mark.unit
def test_gpu_table_by_type_or_device_name():
    from midtrain.train.footprint import gpu_spec

    assert gpu_spec("NVIDIA H200")[:2] == ("h200", 141)
    assert gpu_spec("a100:8")[:2] == ("a100", 80) and gpu_spec("a100-40")[:2] == ("a100-40", 40)
    assert gpu_spec("NVIDIA H100 PCIe")[1:] == (80, 756) and gpu_spec(None)[0] == "h100"
    assert gpu_spec("NVIDIA A100-SXM4-40GB")[:2] == ("a100", 40)  # the size in a device name wins
    assert gpu_spec("Tesla V100-SXM2-16GB")[1] == 16
    assert gpu_spec("a40:4")[1:] == (None, None)  # unknown: memory not checked, never refused


@pytest.mark.unit
def test_an_unknown_gpu_is_not_checked_and_says_so():
    from litgpt import Config

    from midtrain.train.footprint import footprint, refuse_if_too_big

    fp = footprint(Config.from_name("OLMo-2-1124-7B"), 8, 4096, "bf16-mixed", "ddp", 8, 1, "cuda", gpu_type="a40:8")
    assert fp.fits and "an unknown GPU: memory not checked" in fp.describe()
    refuse_if_too_big(fp, "arm")
    seen = footprint(Config.from_name("pythia-160m"), 16, 2048, None, "auto", 8, 1, "cuda", gpu_type="NVIDIA L4",
                     device_gib=22.0)  # a visible device's own memory
    assert seen.device_gib == 22.0 and "22 GiB" in seen.describe()


@pytest.mark.unit
def test_auto_shards_what_a_replica_cannot_hold_and_nothing_that_fits_nowhere_passes():
    """OLMo-2-7B at micro 1 x 4096 in bf16-mixed: a DDP replica (fp32 weights, grads, AdamW: 16 bytes x 7.3B) fits no
    80 GB GPU, so auto shards it over the node; on 40 GB GPUs it fits only with activation checkpointing, and is
    refused in one line (naming that option) without it. pythia-160m keeps DDP."""
    from litgpt import Config

    from midtrain.train.footprint import footprint, refuse_if_too_big

    olmo = Config.from_name("OLMo-2-1124-7B")
    fp = footprint(olmo, 1, 4096, "bf16-mixed", "auto", 8, 1, "cuda", gpu_type="h100")
    assert fp.strategy == "fsdp" and fp.estimate.shard == 8 and fp.fits
    refuse_if_too_big(fp, "arm")
    small = footprint(olmo, 1, 4096, "bf16-mixed", "auto", 8, 1, "cuda", gpu_type="a100-40")
    with pytest.raises(ConfigError, match="DOES NOT FIT.*activation_checkpointing: true"):
        refuse_if_too_big(small, "arm")
    assert footprint(olmo, 1, 4096, "bf16-mixed", "auto", 8, 1, "cuda", True, gpu_type="a100-40").fits
    pythia = footprint(Config.from_name("pythia-160m"), 16, 2048, None, "auto", 8, 1, "cuda")
    assert pythia.strategy == "ddp" and pythia.precision == "bf16-mixed" and pythia.assumed_gpu
    hsdp = footprint(olmo, 1, 4096, "bf16-mixed", "hsdp", 8, 2, "cuda", True)
    assert hsdp.strategy == "hsdp" and hsdp.estimate.shard == 8 and hsdp.world == 16


def test_mix_prints_the_devices_and_bf16_true_cost(tmp_path, real_tree):
    from support.runs import write_config

    cfg = write_config(tmp_path, real_tree, precision="bf16-true", devices=2, strategy="fsdp", accelerator="cpu",
                       train={"max_steps": 24, "lr_scheduler": "constant", "max_lr": 2.9e-5, "min_lr": 0.0,
                              "micro_batch_size": 2, "lr_warmup_steps": 0})
    r = run_cli("mix", "--config", cfg)
    assert r.returncode == 0, r.stderr
    assert "devices: fsdp x 2, bf16-true on CPU: memory " in r.stdout and "states split over 2 ranks" in r.stdout
    assert "bf16-true: starts at step 0 at LR 2.9e-05: " in r.stdout and "(bf16-mixed: all of them)" in r.stdout


def _spec_with(tmp_path, **base_changes):
    from study_fixture import build

    spec = build(tmp_path)
    base = yaml.safe_load((tmp_path / "base.yaml").read_text())
    base.update(base_changes)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    return spec


def test_study_plan_shows_each_training_shape_and_refuses_what_fits_nowhere(tmp_path):
    spec = _spec_with(tmp_path, precision="bf16-true", accelerator="auto", devices=2)
    r = run_cli("study", "plan", spec, "--rows", "0")
    assert r.returncode == 0, r.stderr
    assert "| training and SFT steps | devices (strategy, precision, memory per rank) |" in r.stdout
    assert "ddp x 2, bf16-true on h100 (80 GiB, assumed)" in r.stdout and "assumed: h100" in r.stdout
    # the midtrain runs from the low-LR start only: the control per seed (the fixture's seeds.control: per_seed,
    # from step 4) and the arms from 4, not the base segments
    assert "bf16-true: midtrain/tiny/pretrain-only/s0 (+5 more) (tiny) starts at LR" in r.stdout, r.stdout
    raw = yaml.safe_load(spec.read_text())
    raw.setdefault("slurm", {}).update(pretrain={"gpus-per-node": "v100:2"}, midtrain={"gpus-per-node": "v100:2"})
    spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    base = yaml.safe_load((tmp_path / "base.yaml").read_text())
    base.update(model_name="OLMo-2-1124-7B", model_config=None)
    base["train"].update(micro_batch_size=4, global_batch_size=8, max_seq_length=4096)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    # run: refused before anything is submitted (no sbatch is ever called), and before a local step starts when the
    # local steps get GPUs (--gpus here; by default the visible ones, as the local executor hands them out)
    for what, args in (("plan", ["--check_files", "false"]), ("run", ["--out", tmp_path / "out", "--executor", "slurm"]),
                       ("run", ["--out", tmp_path / "out", "--executor", "local", "--gpus", "0"])):
        r = run_cli("study", what, spec, *args)
        assert r.returncode == 2 and "DOES NOT FIT" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "v100 (32 GiB)" in r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.unit
def test_the_docs_memory_table_is_the_generated_one():
    """docs/training-on-gpus.md's per-rank memory table is bench/memory_table.py's output, not typed by hand."""
    import sys

    sys.path.insert(0, os.path.join(REPO, "bench"))
    from memory_table import table

    doc = open(os.path.join(REPO, "docs", "training-on-gpus.md")).read()
    assert table() in doc
