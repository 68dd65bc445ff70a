"""GPU-true training proven on CPU (issue 26): one init, FSDP2 sharding over gloo, validation that cannot deadlock,
sharded checkpoints resumed at any world size and strategy, bf16 numerics, activation checkpointing, the memory
estimate against real tensors, and saves that never go through $TMPDIR.

Every multi-process run here is a real 2-process `midtrain pretrain` (Fabric starts the second rank, gloo), with the
same config as its 1-process reference but micro_batch_size halved, so the global batches are the same samples.
"""

import glob
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict

import pytest
import torch
import yaml

from support import REPO, run_cli
from support.runs import TINY_MODEL, metrics, write_config

PY = [sys.executable]


def losses(out_dir, key="loss"):
    return {int(r["step"]): float(r[key]) for r in metrics(out_dir) if r.get(key)}


def weights(ckpt_dir):
    """A checkpoint's weights, whatever its format (the loader SFT, eval and export use)."""
    from litgpt import Config
    from litgpt.model import GPT

    from midtrain.train.checkpoint import load_model_weights

    model = GPT(Config(**TINY_MODEL))
    load_model_weights(ckpt_dir, model)
    return model.state_dict()


def max_diff(a, b):
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def samples_per_step(prefix):
    """step -> sorted crc32s of the samples every rank consumed (MIDTRAIN_SAMPLE_TRACE): the same set whatever the
    world size and micro-batch."""
    out = defaultdict(list)
    for path in glob.glob(f"{prefix}.rank*"):
        for line in open(path):
            step, _micro, crc = line.split()
            out[int(step)].append(int(crc))
    return {s: sorted(v) for s, v in out.items()}


# ---- one init ----

def test_step0_weights_are_bitwise_equal_on_one_process_ddp_and_sharded(tmp_path):
    """The trainer's own set-up (pretrain.setup_model) on 1 process, DDP x2 and FSDP2 x2 (and bf16-true shards, a cast
    of the same weights): the same tensors bit for bit, with the NeoX init (embedding std sqrt(2/5/n_embd), not
    torch's N(0, 1)). A sharded model built on meta for a checkpoint load gets the fresh path's rope cache, dtype
    included."""
    from parallel_init import step0

    step0("single", "32-true", tmp_path / "single-32-true.pt")  # one process: here, no second interpreter
    got = {("single", "32-true"): torch.load(tmp_path / "single-32-true.pt")}
    for kind, precision in (("ddp", "32-true"), ("fsdp", "32-true"), ("fsdp", "bf16-true")):
        out = tmp_path / f"{kind}-{precision}.pt"
        r = subprocess.run(PY + [os.path.join(REPO, "tests", "parallel_init.py"), kind, precision, str(out)],
                           cwd=tmp_path, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        got[(kind, precision)] = torch.load(out)
    ref = got[("single", "32-true")]["weights"]
    assert not got[("single", "32-true")]["sharded"] and got[("fsdp", "32-true")]["sharded"]
    for key, value in got.items():
        assert value["weights"].keys() == ref.keys(), key
        assert all(torch.equal(value["weights"][n], ref[n].to(value["weights"][n].dtype)) for n in ref), key
        for fresh, meta in zip(*[value["rope"][k] for k in ("fresh", "meta")]):
            assert fresh.dtype == meta.dtype and torch.equal(fresh, meta), key
    assert got[("fsdp", "bf16-true")]["rope"]["meta"][0].dtype == torch.bfloat16
    std = ref["transformer.wte.weight"].std().item()
    assert std == pytest.approx(math.sqrt(2 / 5 / TINY_MODEL["n_embd"]), rel=0.05), std


# ---- a sharded run against one process ----

@pytest.fixture(scope="module")
def runs(tmp_path_factory, real_tree):
    """20 steps on 1 process and on 2 FSDP2 ranks (with activation checkpointing), checkpoints every 10 steps,
    validation over the whole (unevenly split) sets, sample traces."""
    root = tmp_path_factory.mktemp("parallel")
    common = dict(train={"max_steps": 20, "save_interval": 10}, eval={"interval": 10, "max_iters": 1000})
    one = write_config(root, real_tree, "one.yaml", out_dir=str(root / "one"), **common)
    sharded = write_config(root, real_tree, "fsdp.yaml", out_dir=str(root / "fsdp"), devices=2, strategy="fsdp",
                           activation_checkpointing=True, train={**common["train"], "micro_batch_size": 2},
                           eval=common["eval"])
    for cfg, name in ((one, "one"), (sharded, "fsdp")):
        r = run_cli("pretrain", "--config", cfg, env={"MIDTRAIN_SAMPLE_TRACE": str(root / f"trace-{name}")},
                    timeout=600)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        (root / f"{name}.out").write_text(r.stdout)
    return root


def test_a_sharded_run_matches_one_process(runs):
    """Same samples per step, losses within 1e-4 (reduction order), final weights within 2e-3 (Adam magnifies that
    noise on near-zero gradients); validation over sets the 2 ranks split unevenly finishes with the same loss."""
    assert "strategy: fsdp over 2 process(es), precision 32-true, activation checkpointing" in (runs / "fsdp.out").read_text()
    assert samples_per_step(runs / "trace-fsdp") == samples_per_step(runs / "trace-one")
    one, two = losses(runs / "one"), losses(runs / "fsdp")
    assert one.keys() == two.keys() == set(range(1, 21))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-4), step
    for name in ("main", "code", "gsm8k"):
        v1, v2 = losses(runs / "one", f"val_loss/{name}"), losses(runs / "fsdp", f"val_loss/{name}")
        assert v1.keys() == v2.keys() == {10, 20}
        assert all(v2[s] == pytest.approx(v1[s], rel=1e-6) for s in v1), name
    assert max_diff(weights(runs / "one" / "final"), weights(runs / "fsdp" / "final")) < 2e-3


def test_sharded_checkpoints_say_their_kind_and_final_is_full(runs):
    step = runs / "fsdp" / "step-00000010"
    assert json.loads((step / "training_state.json").read_text())["format"] == "sharded"
    assert sorted(os.listdir(step / "sharded")) == [".metadata", "__0_0.distcp", "__1_0.distcp"] and not (step / "lit_model.pth").exists()
    final = runs / "fsdp" / "final"
    assert json.loads((final / "training_state.json").read_text())["format"] == "full"
    assert set(torch.load(final / "lit_model.pth", weights_only=False)["optimizer"]["state"]) >= {"lm_head.weight"}
    one = runs / "one" / "step-00000010"
    assert json.loads((one / "training_state.json").read_text())["format"] == "full"


def test_eval_and_export_read_a_sharded_step(runs, real_tree):
    """A sharded step checkpoint is read by `evaluate loss --all_checkpoints` (every step of the run) and by
    `evaluate export-hf` (gathered into one lit_model.pth for litgpt's converter), with the weights the run resumes."""
    r = run_cli("evaluate", "loss", "--checkpoint", runs / "fsdp", "--all_checkpoints", "true",
                "--data", real_tree.parent / "val", "--max_batches", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "step 10: " in r.stdout and "step 20: " in r.stdout, r.stdout
    out = runs / "export-sharded"
    r = run_cli("evaluate", "export-hf", "--checkpoint", runs / "fsdp" / "step-00000010", "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    exported = torch.load(out / "model.pth", weights_only=True)
    ours = weights(runs / "fsdp" / "step-00000010")
    assert torch.equal(exported["gpt_neox.embed_in.weight"], ours["transformer.wte.weight"])
    assert not list(runs.glob(".export-sharded*"))


def test_a_sharded_checkpoint_of_another_model_is_one_line(runs, real_tree):
    """torch.distributed.checkpoint's CheckpointException (a BaseException) is unwrapped: resume_from a sharded step
    of a different model is refused in one line, like the same mismatch in a full file."""
    other = {**TINY_MODEL, "intermediate_size": 64}
    cfg = write_config(runs, real_tree, "other.yaml", out_dir=str(runs / "other"), model_config=other,
                       resume_from=str(runs / "fsdp" / "step-00000010"))
    r = run_cli("pretrain", "--config", cfg)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1 and "sharded does not match the model config" in r.stderr, r.stderr


@pytest.fixture(scope="module")
def sft_runs(runs, real_tree, tokenizer_dir):
    """`midtrain sft` of the sharded step-10 checkpoint on 1 process, on 2 FSDP2 ranks (activation checkpointing,
    weights read shard by shard) and on 2 DDP ranks: an LR sweep with every LR scored, evaluation batches that the
    2 ranks split unevenly (5 val batches, 3 forgetting batches), the kept model saved."""
    from support.runs import jsonl as write_jsonl

    rows = [{"prompt": f"Q: {a} plus {b}? A:", "response": f" {a + b}"} for a in range(12) for b in range(8)]
    data = write_jsonl(runs / "sft.jsonl", rows)
    common = ["--checkpoint", runs / "fsdp" / "step-00000010", "--data", data, "--tokenizer_dir", tokenizer_dir,
              "--lrs", "[0.0001, 0.003]", "--epochs", "1", "--micro_batch_size", "2", "--global_batch_size", "8",
              "--pretrain_val_path", real_tree.parent / "val", "--forgetting_batches", "3", "--score_every_lr", "true"]
    out = {}
    for name, extra in (("one", []), ("fsdp", ["--devices", "2", "--strategy", "fsdp", "--activation_checkpointing",
                                               "true"]), ("ddp", ["--devices", "2", "--strategy", "ddp"])):
        r = run_cli("sft", *common, *extra, "--out", runs / f"sft-{name}.json", "--save", runs / f"sft-{name}",
                    timeout=600)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        out[name] = (json.loads((runs / f"sft-{name}.json").read_text()), r.stdout)
    return out


def test_sft_on_two_sharded_or_ddp_ranks_matches_one_process(runs, sft_runs):
    """The same examples make the same updates on 1 or 2 ranks: the kept LR, the losses before any update within
    1e-6 and after within 1e-4 (reduction order), the same held-out counts; the saved model (gathered from the
    shards) within 2e-3 of one process's, as for pretraining."""
    one, _ = sft_runs["one"]
    assert "processes" not in one
    for name in ("fsdp", "ddp"):
        m, stdout = sft_runs[name]
        assert m["processes"] == {"world": 2, "strategy": name}
        assert f"on 2 process(es) ({name}, 32-true)" in stdout and stdout.count("best lr") == 1, stdout
        assert m["best_lr"] == one["best_lr"] and m["examples"] == one["examples"]
        assert m["zero_shot_val_loss"] == pytest.approx(one["zero_shot_val_loss"], rel=1e-6)
        for lr, row in one["lr_sweep"].items():
            got = m["lr_sweep"][lr]
            assert got["steps"] == row["steps"] == 9
            for key in ("val_loss", "final_train_loss", "test_loss"):
                assert got[key] == pytest.approx(row[key], rel=1e-4), (name, lr, key)
            for val_set, f in row["forgetting"].items():
                assert got["forgetting"][val_set]["before"] == pytest.approx(f["before"], rel=1e-6)
                assert got["forgetting"][val_set]["after"] == pytest.approx(f["after"], rel=1e-4)
                assert got["forgetting"][val_set]["unigram_entropy"] == f["unigram_entropy"]
        assert m["test_loss"] == pytest.approx(one["test_loss"], rel=1e-4)
        assert max_diff(weights(runs / "sft-one"), weights(runs / f"sft-{name}")) < 2e-3
        assert not list(runs.glob(f".sft-{name}*"))


def test_memory_estimate_terms_equal_the_real_tensors(runs):
    """memory.json: the estimate's parameter, gradient and optimizer bytes equal rank 0's real tensors after its first
    step, sharded (halves) and not."""
    for name, shard in (("one", 1), ("fsdp", 2)):
        report = json.loads((runs / name / "memory.json").read_text())
        est, real = report["estimate"], report["measured_rank0"]
        assert est["shard"] == shard
        assert (est["params"], est["grads"], est["optimizer"]) == (real["params"], real["grads"], real["optimizer"])
    full = json.loads((runs / "one" / "memory.json").read_text())["estimate"]
    half = json.loads((runs / "fsdp" / "memory.json").read_text())["estimate"]
    assert half["params"] < full["params"] and half["gathered"] > 0 and half["recompute"] > 0


def test_hsdp_over_two_nodes_matches_one_process(runs):
    """2 nodes x 2 devices, as two torchrun agents (one per "node") on this machine: replicated across the nodes,
    sharded within each (a (2, 2) mesh); the same samples and losses as one process, states split over 2 ranks."""
    import socket

    cfg = yaml.safe_load((runs / "fsdp.yaml").read_text())
    cfg.update(out_dir=str(runs / "hsdp"), strategy="hsdp", devices=2, num_nodes=2)
    cfg["train"]["micro_batch_size"] = 1
    (runs / "hsdp.yaml").write_text(yaml.safe_dump(cfg))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PYTHONPATH=REPO, MIDTRAIN_SAMPLE_TRACE=str(runs / "trace-hsdp"))
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    agents = [subprocess.Popen([torchrun, "--nnodes", "2", "--nproc_per_node", "2", "--node_rank", str(node),
                                "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "midtrain", "pretrain",
                                "--config", str(runs / "hsdp.yaml")], cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True) for node in (0, 1)]
    try:
        outs = [a.communicate(timeout=600)[0] for a in agents]
    finally:
        for a in agents:
            if a.poll() is None:
                os.killpg(a.pid, signal.SIGKILL)
    assert all(a.returncode == 0 for a in agents), outs[0][-3000:] + outs[1][-3000:]
    assert "processes: 4 (devices 2 x num_nodes 2; started by torchrun)" in outs[0]
    assert "strategy: hsdp over 4 process(es)" in outs[0] and "states split over 2 ranks" in outs[0]
    assert samples_per_step(runs / "trace-hsdp") == samples_per_step(runs / "trace-one")
    one, hsdp = losses(runs / "one"), losses(runs / "hsdp")
    assert one.keys() == hsdp.keys() and all(hsdp[s] == pytest.approx(one[s], rel=1e-4) for s in one)
    assert len(os.listdir(runs / "hsdp" / "step-00000010" / "sharded")) == 5  # .metadata + one file per rank
    assert max_diff(weights(runs / "one" / "final"), weights(runs / "hsdp" / "final")) < 2e-3


def _resume_copy(runs, src, name, step, **top):
    """A copy of run ``src`` as it stood at ``step`` (later checkpoints removed), configured to resume with ``top``."""
    dest = runs / name
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir()
    shutil.copytree(runs / src / f"step-{step:08d}", dest / f"step-{step:08d}")
    cfg = yaml.safe_load((runs / f"{src}.yaml").read_text())
    cfg.update(out_dir=str(dest), resume="auto", **top)
    cfg.pop("activation_checkpointing", None)
    path = runs / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("src,name,top", [
    ("fsdp", "fsdp-to-fsdp", {"devices": 2, "strategy": "fsdp"}),
    ("fsdp", "fsdp-to-one", {"devices": 1, "strategy": "auto", "train_micro": 4}),
    ("fsdp", "fsdp-to-ddp", {"devices": 2, "strategy": "ddp"}),
    ("one", "one-to-fsdp", {"devices": 2, "strategy": "fsdp", "train_micro": 2}),
])
def test_resume_across_world_sizes_and_strategies_reads_the_same_samples(runs, src, name, top):
    """Sharded 2 -> sharded 2, -> 1 process, -> DDP 2, and a full 1-process checkpoint -> sharded 2: the resumed steps
    read exactly the uninterrupted run's samples, and end at its weights (bitwise for the same strategy)."""
    micro = top.pop("train_micro", None)
    cfg = _resume_copy(runs, src, name, 10, **top)
    if micro:
        data = yaml.safe_load(cfg.read_text())
        data["train"]["micro_batch_size"] = micro
        cfg.write_text(yaml.safe_dump(data))
    r = run_cli("pretrain", "--config", cfg, env={"MIDTRAIN_SAMPLE_TRACE": str(runs / f"trace-{name}")}, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    sharded_source = src == "fsdp"
    assert ("(sharded)" in r.stdout) == sharded_source, r.stdout
    resumed = samples_per_step(runs / f"trace-{name}")
    reference = samples_per_step(runs / f"trace-{src}")
    assert sorted(resumed) == list(range(10, 20)) and all(resumed[s] == reference[s] for s in resumed)
    diff = max_diff(weights(runs / src / "final"), weights(runs / name / "final"))
    assert diff == 0.0 if name == "fsdp-to-fsdp" else diff < 2e-3, diff


# ---- signals during sharded saves ----

def test_sigterm_during_sharded_saves_leaves_every_checkpoint_loadable(tmp_path, real_tree):
    """A checkpoint every step (most of the run's time is saving), SIGTERM to the process group at wall-clock moments:
    exit 75, every complete checkpoint loads, and the resumed run ends at the uninterrupted run's weights."""
    cfg = write_config(tmp_path, real_tree, "run.yaml", out_dir=str(tmp_path / "run"), devices=2, strategy="fsdp",
                       resume="auto", train={"max_steps": 30, "save_interval": 1, "micro_batch_size": 2},
                       eval={"interval": 0, "max_iters": 2})
    ref = write_config(tmp_path, real_tree, "ref.yaml", out_dir=str(tmp_path / "ref"), devices=2, strategy="fsdp",
                       train={"max_steps": 30, "save_interval": 0, "micro_batch_size": 2}, eval={"interval": 0, "max_iters": 2})
    assert run_cli("pretrain", "--config", ref, timeout=600).returncode == 0
    env = dict(os.environ, PYTHONPATH=REPO)
    for delay in (1.5,):
        before = len(glob.glob(str(tmp_path / "run" / "step-*")))
        proc = subprocess.Popen(PY + ["-m", "midtrain", "pretrain", "--config", str(cfg)], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        seen = ""
        while "saved " not in seen:  # the first save of this start has begun: the run is saving most of the time
            line = proc.stdout.readline()
            assert line, proc.stderr.read()[-3000:]
            seen += line
        time.sleep(delay / 10)
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode in (75, 0), err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        steps = sorted(glob.glob(str(tmp_path / "run" / "step-*")))
        assert len(steps) > before
        for step in steps[-3:]:
            weights(step)  # loads
    r = run_cli("pretrain", "--config", cfg, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert max_diff(weights(tmp_path / "ref" / "final"), weights(tmp_path / "run" / "final")) == 0.0


# ---- numerics ----

def _changed_share(before, after):
    changed = sum(int((before[k] != after[k]).sum()) for k in before)
    return changed / sum(v.numel() for v in before.values())


def test_bf16_mixed_keeps_late_updates_that_bf16_true_drops(tmp_path, real_tree):
    """The trainer itself at the paper's 50k-step LR (2.9e-5, constant), 8 steps from a base checkpoint: bf16-true
    rounds most updates away (the weights are bf16), bf16-mixed (fp32 masters, bf16 compute; here under FSDP2 with a
    MixedPrecisionPolicy) changes nearly every weight."""
    base = write_config(tmp_path, real_tree, "base.yaml", out_dir=str(tmp_path / "base"), train={"max_steps": 4})
    assert run_cli("pretrain", "--config", base).returncode == 0
    start = weights(tmp_path / "base" / "final")
    share = {}
    runs = (("bf16-true", {}), ("bf16-mixed", {"devices": 2, "strategy": "fsdp"}), ("bf16-mixed-one", {}))
    for name, top in runs:
        precision = name.replace("-one", "")
        cfg = write_config(tmp_path, real_tree, f"{name}.yaml", out_dir=str(tmp_path / name),
                           precision=precision, resume_from=str(tmp_path / "base" / "final"), **top,
                           train={"max_steps": 12, "lr_scheduler": "constant", "max_lr": 2.9e-5, "min_lr": 0.0,
                                  "micro_batch_size": 2 if top else 4, "save_interval": 0},
                           eval={"interval": 0, "max_iters": 1})
        r = run_cli("pretrain", "--config", cfg, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        end = weights(tmp_path / name / "final")
        cast = {k: v.to(torch.bfloat16).float() for k, v in start.items()} if precision == "bf16-true" else start
        share[name] = _changed_share(cast, end)
    print("share of weights changed", share)
    assert share["bf16-true"] < 0.5 and share["bf16-mixed"] > 0.95, share
    # FSDP2's bf16-mixed computes as autocast does on one process (fp32 residual stream, norms and root)
    one, two = losses(tmp_path / "bf16-mixed-one"), losses(tmp_path / "bf16-mixed")
    assert one.keys() == two.keys() and all(two[k] == pytest.approx(one[k], rel=2e-3) for k in one), (one, two)


def test_activation_checkpointing_keeps_loss_and_gradients():
    from litgpt import Config

    from midtrain.train import parallel
    from midtrain.train.metrics import per_token_loss

    tokens = torch.randint(0, 512, (4, 17), generator=torch.Generator().manual_seed(0))
    grads = []
    for ac in (False, True):
        model = parallel.build_model(Config(**TINY_MODEL), 3)
        model.max_seq_length = 16
        if ac:
            parallel.checkpoint_blocks(model)
        loss = per_token_loss(model(tokens[:, :16]), tokens[:, 1:]).mean()
        loss.backward()
        grads.append((loss.item(), {n.replace("_checkpoint_wrapped_module.", ""): p.grad.clone()
                                    for n, p in model.named_parameters()}))
    (l0, g0), (l1, g1) = grads
    assert l0 == pytest.approx(l1, abs=1e-6) and g0.keys() == g1.keys()
    assert all(torch.allclose(g0[n], g1[n], atol=1e-6, rtol=1e-5) for n in g0)


@pytest.mark.parametrize("autocast,checkpointing,kind", [(False, False, "single"), (True, False, "single"),
                                                         (False, True, "single"), (True, True, "single"),
                                                         (True, False, "fsdp")])
def test_activation_term_equals_the_bytes_a_real_cpu_forward_saves(autocast, checkpointing, kind):
    """The estimate's activations (FakeTensorMode traces of 1 and 2 layers at micro-batches 2 and 3, extended
    linearly) equal what a real 3-layer forward + loss at micro-batch 5 saves for backward on CPU (under FSDP2's
    bf16-mixed: bf16 Blocks, fp32 norms and root)."""
    from litgpt import Config

    from midtrain.train.memory import estimate, saved_tensor_bytes

    config = Config(**{**TINY_MODEL, "n_layer": 3})
    real = saved_tensor_bytes(config, 5, 16, torch.float32, autocast, checkpointing, fake=False,
                              bf16_blocks=kind == "fsdp")  # micro 5: the estimate extends its traces of 2 and 3
    est = estimate(config, 5, 16, "bf16-mixed" if autocast else "32-true", kind, 2 if kind == "fsdp" else 1,
                   checkpointing)
    assert est.activations == real > 0


def test_memory_estimate_by_hand_for_pythia_160m():
    """Params per rank: DDP all 162,322,944 in fp32; FSDP over 8: each tensor's rows in ceil(rows/8) chunks; AdamW
    two fp32 states plus a 4-byte step per tensor; bf16-true halves every term."""
    from litgpt import Config
    from litgpt.model import GPT

    from midtrain.train.memory import estimate

    config = Config.from_name("pythia-160m")
    with torch.device("meta"):
        shapes = [tuple(p.shape) for p in GPT(config).parameters()]
    total = sum(math.prod(s) for s in shapes)
    ddp = estimate(config, 1, 128, "bf16-mixed", "ddp", 1)
    assert ddp.params == ddp.grads == 4 * total and ddp.optimizer == 8 * total + 4 * len(shapes) and ddp.gathered == 0
    local = sum(math.ceil(s[0] / 8) * math.prod(s[1:]) for s in shapes)
    fsdp = estimate(config, 1, 128, "bf16-mixed", "fsdp", 8)
    assert fsdp.params == 4 * local and fsdp.shard == 8 and fsdp.gathered > 0
    true = estimate(config, 1, 128, "bf16-true", "fsdp", 8)
    assert true.params == 2 * local and true.optimizer == 4 * local + 4 * len(shapes)
    # tied embeddings (train.tie_embeddings): one matrix fewer, and one tensor fewer for AdamW's step counters
    tied = estimate(config, 1, 128, "bf16-mixed", "ddp", 1, tied=True)
    matrix = config.padded_vocab_size * config.n_embd
    assert tied.params == tied.grads == 4 * (total - matrix) and tied.optimizer == 8 * (total - matrix) + 4 * (
        len(shapes) - 1)


# ---- saves never staged in $TMPDIR ----

def test_a_tiny_tmpdir_does_not_stop_a_save(tmp_path, real_tree):
    """$TMPDIR on a 64 KiB tmpfs (cluster nodes often have a small node-local /tmp): every checkpoint is written in
    the run folder itself (Fabric's atomic save staged whole files there and failed with ENOSPC)."""
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(tiny)]).returncode:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    try:
        for name, top in (("one", {}), ("two", {"devices": 2, "strategy": "fsdp"})):
            cfg = write_config(tmp_path, real_tree, f"{name}.yaml", out_dir=str(tmp_path / name), **top,
                               train={"max_steps": 4, "save_interval": 2, "micro_batch_size": 2 if top else 4})
            r = run_cli("pretrain", "--config", cfg, env={"TMPDIR": str(tiny)}, timeout=600)
            assert r.returncode == 0, r.stderr[-3000:]
            assert (tmp_path / name / "step-00000002").is_dir() and (tmp_path / name / "final" / "lit_model.pth").is_file()
    finally:
        subprocess.run(["umount", str(tiny)])


@pytest.mark.parametrize("top", [{}, {"devices": 2, "strategy": "fsdp"}], ids=["full", "sharded"])
def test_a_full_disk_at_a_checkpoint_is_one_line_and_leaves_the_last_one(tmp_path, real_tree, top):
    """out_dir on a tmpfs with room for two checkpoints: the third save fails; one line names the folder and the
    bytes, the partial folder is gone, `latest` and its checkpoint still load, and freeing space lets it resume."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(disk)]).returncode:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    try:
        cfg = write_config(tmp_path, real_tree, out_dir=str(disk / "run"), resume="auto", logger_name="csv", **top,
                           train={"max_steps": 12, "save_interval": 2, "micro_batch_size": 2 if top else 4},
                           eval={"interval": 0, "max_iters": 1})
        r = run_cli("pretrain", "--config", cfg, timeout=600)
        assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-3000:]
        lines = [line for line in r.stderr.strip().splitlines() if "error" in line]  # (litdata warns on stderr)
        assert len(lines) == 1 and "disk full" in lines[0] and "MiB free there" in lines[0], r.stderr
        assert "Traceback" not in r.stderr
        left = sorted(p.name for p in (disk / "run").iterdir())
        assert not [n for n in left if n.endswith(".partial")], left
        latest = (disk / "run" / "latest").read_text().strip()
        assert latest in left and f"the last complete checkpoint is {latest}" in lines[0]
        weights(disk / "run" / latest)
        subprocess.run(["mount", "-o", "remount,size=20m", str(disk)], check=True)  # space freed: the run resumes
        r = run_cli("pretrain", "--config", cfg, timeout=600)
        assert r.returncode == 0 and f"loading {disk / 'run' / latest}" in r.stdout and "done: 12 steps" in r.stdout, \
            r.stdout[-2000:] + r.stderr[-2000:]
    finally:
        subprocess.run(["umount", str(disk)])
