"""The trainer end to end on CPU: tiny model, real shards, real subprocesses and signals."""

import glob
import hashlib
import os
import random
import signal
import subprocess
import sys

import pytest
import torch
import yaml

from support import REPO, run_cli
from support.runs import TINY_MODEL, assert_same_weights, metrics, weights, write_config  # noqa: F401

def test_tiny_pretrain_learns_and_writes_checkpoints_and_logs(tmp_path, real_tree):
    cfg = write_config(tmp_path, real_tree, train={"max_steps": 40, "save_interval": 10}, keep_last_n=2)
    r = run_cli("pretrain", "--config", cfg)
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "base"
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(("step-", "final"))) == \
        ["final", "step-00000020", "step-00000030"]  # keep_last_n pruned step-10
    assert (out / "latest").read_text().strip() == "final"
    for f in ("lit_model.pth", "model_config.yaml", "hyperparameters.yaml", "training_state.json"):
        assert (out / "final" / f).is_file()
    ckpt = torch.load(out / "final" / "lit_model.pth", weights_only=False)
    assert {"model", "optimizer", "train_dataloader", "iter_num", "step_count"} <= ckpt.keys()
    rows = metrics(out)
    train_rows = [r for r in rows if r["loss"]]
    first, last = float(train_rows[0]["loss"]), sum(float(r["loss"]) for r in train_rows[-5:]) / 5
    assert last < first - 0.3, (first, last)
    assert {"train_loss/main/1", "train_loss/m1", "source_tokens/m1", "val_loss/main", "val_loss/code",
            "val_ppl/gsm8k", "tokens_per_sec", "lr"} <= rows[0].keys()
    assert float(train_rows[-1]["source_share/m1"]) == pytest.approx(0.1, abs=0.01)
    assert "step 40/40" in r.stdout and "ETA" in r.stdout
    # litgpt's own loader reads the checkpoint
    from litgpt import GPT, Config

    model = GPT(Config.from_file(out / "final" / "model_config.yaml"))
    model.load_state_dict(ckpt["model"])


def _run_until_step_then_signal(cmd, env, step, sig=signal.SIGTERM):
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    out = []
    for line in proc.stdout:
        out.append(line)
        if line.startswith(f"step {step}/"):
            proc.send_signal(sig)
    proc.wait(timeout=120)
    return proc.returncode, "".join(out)


@pytest.mark.parametrize("workers", [0, 2])
def test_sigterm_then_resume_equals_uninterrupted(tmp_path, real_tree, workers):
    env = dict(os.environ, PYTHONPATH=REPO)
    straight = write_config(tmp_path, real_tree, "straight.yaml", workers=workers, out_dir=str(tmp_path / "a"))
    r = run_cli("pretrain", "--config", straight, env={"MIDTRAIN_SAMPLE_TRACE": str(tmp_path / "trace_a")})
    assert r.returncode == 0, r.stderr[-2000:]

    cfg = write_config(tmp_path, real_tree, "preempt.yaml", workers=workers, out_dir=str(tmp_path / "b"), resume="auto")
    stop = random.Random(workers).randrange(3, 20)
    cmd = [sys.executable, "-m", "midtrain", "pretrain", "--config", str(cfg)]
    env["MIDTRAIN_SAMPLE_TRACE"] = str(tmp_path / "trace_b")
    code, log = _run_until_step_then_signal(cmd, env, stop)
    assert code == 75, log[-2000:]
    assert "signal SIGTERM received: checkpointing" in log
    r = run_cli("pretrain", "--config", cfg, env={"MIDTRAIN_SAMPLE_TRACE": str(tmp_path / "trace_b")})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "loading" in r.stdout
    assert_same_weights(tmp_path / "a" / "final", tmp_path / "b" / "final")
    assert (tmp_path / "trace_a.rank0").read_text() == (tmp_path / "trace_b.rank0").read_text()


def test_kill_9_leaves_previous_checkpoint_usable(tmp_path, real_tree):
    cfg = write_config(tmp_path, real_tree, resume="auto", train={"save_interval": 4})
    env = dict(os.environ, PYTHONPATH=REPO)
    code, log = _run_until_step_then_signal([sys.executable, "-m", "midtrain", "pretrain", "--config", str(cfg)],
                                            env, 9, signal.SIGKILL)
    assert code == -9
    out = tmp_path / "base"
    # what a kill inside save_checkpoint leaves behind: a partial folder and a half-written pointer
    partial = out / ".step-00000012.partial"
    partial.mkdir(exist_ok=True)
    (partial / "lit_model.pth").write_bytes(b"\x80\x02trunc")
    (out / ".latest.tmp-1").write_text("step-000")
    r = run_cli("pretrain", "--config", cfg)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "loading" in r.stdout and "step-00000008" in r.stdout
    assert (out / "final").is_dir()
    assert "removed what a save cut short left in" in r.stdout and ".latest.tmp-1" in r.stdout
    assert not (out / ".latest.tmp-1").exists() and not partial.exists()  # cleaned at the start, not left to rot


def test_midtrain_continues_lr_separate_out_dir_and_switches_shares(tmp_path, real_tree):
    base_cfg = write_config(tmp_path, real_tree)
    assert run_cli("pretrain", "--config", base_cfg).returncode == 0
    base = tmp_path / "base"
    before = {p: hashlib.md5(open(p, "rb").read()).hexdigest() for p in glob.glob(f"{base}/**/*", recursive=True)
              if os.path.isfile(p)}
    mid_cfg = write_config(tmp_path, real_tree, "mid.yaml", mix="main:0.6,code:0.3,math:0.1",
                           out_dir=str(tmp_path / "mid"), resume_from=str(base / "step-00000008"))
    r = run_cli("pretrain", "--config", mid_cfg)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "mixture change at sample 64" in r.stdout and "c1" in r.stdout
    after = {p: hashlib.md5(open(p, "rb").read()).hexdigest() for p in glob.glob(f"{base}/**/*", recursive=True)
             if os.path.isfile(p)}
    assert before == after  # the base run is untouched
    lr_base = {int(r["step"]): float(r["lr"]) for r in metrics(base) if r["lr"]}
    lr_mid = {int(r["step"]): float(r["lr"]) for r in metrics(tmp_path / "mid") if r["lr"]}
    assert min(lr_mid) == 9
    for step in lr_mid:  # one schedule: the midtrain run continues the base run's curve exactly
        assert lr_mid[step] == pytest.approx(lr_base[step])
    state = yaml.safe_load((tmp_path / "mid" / "final" / "training_state.json").read_text())
    assert [s["start"] for s in state["data"]["stages"]] == [0, 64]
    mid_rows = [r for r in metrics(tmp_path / "mid") if r["loss"]]
    assert float(mid_rows[0]["source_tokens/c1"]) > 0
    base8 = yaml.safe_load((base / "step-00000008" / "training_state.json").read_text())
    assert "c1" not in base8["source_tokens"]
    code_share = (state["source_tokens"]["c1"]) / (16 * 8 * 16)  # 16 midtrain steps x 8 samples x 16 tokens
    assert code_share == pytest.approx(0.3, abs=0.02)


def test_original_symlink_layout_resumes_with_a_new_mixture(tmp_path, real_tree):
    assert run_cli("pretrain", "--config", write_config(tmp_path, real_tree)).returncode == 0
    mid = tmp_path / "mid"
    mid.mkdir()
    os.symlink(tmp_path / "base" / "step-00000008", mid / "step-00000008")
    cfg = write_config(tmp_path, real_tree, "mid.yaml", mix="main:0.5,code:0.5", out_dir=str(mid), resume=True)
    r = run_cli("pretrain", "--config", cfg)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "mixture change at sample 64" in r.stdout
    assert (mid / "step-00000008").is_symlink() and (mid / "final").is_dir()


def test_two_process_ddp_on_cpu(tmp_path, real_tree):
    single = write_config(tmp_path, real_tree, "one.yaml", out_dir=str(tmp_path / "one"), train={"max_steps": 6})
    ddp = write_config(tmp_path, real_tree, "two.yaml", out_dir=str(tmp_path / "two"), devices=2,
                       train={"max_steps": 6, "micro_batch_size": 2})
    assert run_cli("pretrain", "--config", single).returncode == 0
    r = run_cli("pretrain", "--config", ddp)
    assert r.returncode == 0, r.stderr[-3000:]
    # same global batches, same math: DDP over 2 ranks matches one process up to reduction order
    # (Adam turns that noise into visible weight differences on near-zero gradients, so compare losses)
    one = {int(r["step"]): float(r["loss"]) for r in metrics(tmp_path / "one") if r["loss"]}
    two = {int(r["step"]): float(r["loss"]) for r in metrics(tmp_path / "two") if r["loss"]}
    assert one.keys() == two.keys() == set(range(1, 7))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-4)
    s1 = yaml.safe_load((tmp_path / "one" / "final" / "training_state.json").read_text())
    s2 = yaml.safe_load((tmp_path / "two" / "final" / "training_state.json").read_text())
    assert s1["source_tokens"] == s2["source_tokens"] and s1["data"]["samples"] == s2["data"]["samples"] == 48


@pytest.mark.parametrize("override,needle", [
    ({"train": {"global_batch_size": 6}}, "train.global_batch_size"),
    ({"bogus_key": 1}, "bogus_key"),
    ({"resume": True}, "resume: true, but"),
    ({"model_config": {**TINY_MODEL, "padded_vocab_size": 256, "vocab_size": 256}, "resume_from": "BASE"},
     "does not match the model config"),
    ({"resume_from": "CORRUPT"}, "missing or corrupt"),
    ({"resume_from": "BASE", "out_dir": "BASEDIR"}, "out_dir: "),
    ({"tokenizer_dir": "TOKENIZER", "model_config": {**TINY_MODEL, "padded_vocab_size": 16, "vocab_size": 16}},
     "tokenizer vocabulary"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, real_tree, override, needle, trained_base, tiny_tokenizer):
    fix = {"BASE": str(trained_base / "final"), "BASEDIR": str(trained_base), "TOKENIZER": str(tiny_tokenizer)}
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "lit_model.pth").write_bytes(b"not a checkpoint")
    fix["CORRUPT"] = str(corrupt)
    override = {k: fix.get(v, v) if isinstance(v, str) else v for k, v in override.items()}
    train = override.pop("train", None)
    cfg = write_config(tmp_path, real_tree, "bad.yaml", train=train, **{"out_dir": str(tmp_path / "bad"), **override})
    r = run_cli("pretrain", "--config", cfg)
    assert r.returncode == 2, r.stdout[-1000:] + r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "bad" / "final").exists()


@pytest.fixture(scope="module")
def trained_base(tmp_path_factory, real_tree):
    tmp = tmp_path_factory.mktemp("trained")
    assert run_cli("pretrain", "--config", write_config(tmp, real_tree, train={"max_steps": 8})).returncode == 0
    return tmp / "base"


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    out = tmp_path_factory.mktemp("tok")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<|endoftext|>"])
    tok.train_from_iterator(["hello world " * 50, "def f(x): return x + 1"] * 20, trainer)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text('{"tokenizer_class": "PreTrainedTokenizerFast", '
                                               '"eos_token": "<|endoftext|>", "bos_token": null}')
    return out


def test_initial_checkpoint_dir_loads_weights_only(tmp_path, real_tree, trained_base):
    cfg = write_config(tmp_path, real_tree, "init.yaml", out_dir=str(tmp_path / "init"),
                       initial_checkpoint_dir=str(trained_base / "final"), train={"max_steps": 2},
                       eval={"interval": 100, "max_iters": 2, "initial_validation": True})
    r = run_cli("pretrain", "--config", cfg)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "step 1/2" in r.stdout  # counters start at 0: only the weights came along
    first = float([x for x in metrics(tmp_path / "init") if x.get("val_loss/main")][0]["val_loss/main"])
    base_final = float([x for x in metrics(trained_base) if x.get("val_loss/main")][-1]["val_loss/main"])
    assert first == pytest.approx(base_final, abs=1e-5)  # same weights, same validation batches


def _mutate(tmp_path, real_tree, mutate, name="bad.yaml"):
    path = write_config(tmp_path, real_tree, name, out_dir=str(tmp_path / "bad"))
    cfg = yaml.safe_load(path.read_text())
    mutate(cfg)
    path.write_text(yaml.safe_dump(cfg))
    return path


def _set(section, **kv):
    def f(cfg):
        (cfg.setdefault(section, {}) if section else cfg).update(kv)
    return f


def _data(**kv):
    return lambda cfg: cfg["data"]["init_args"].update(kv)


def _file_parent(tmp_path):
    (tmp_path / "afile").write_text("x")
    return str(tmp_path / "afile" / "run")


# The issue-9 catalogue: each bad input is one line naming the key, exit 2, and nothing written.
CATALOGUE = [
    ("keep_last_n", _set(None, keep_last_n=-1), "keep_last_n: must be >= 1"),
    ("precision", _set(None, precision="bf17"), "precision: 'bf17' is not one of"),
    ("seq>block", _set("train", max_seq_length=64), "train.max_seq_length: 64 is longer than the model's block_size 32"),
    ("seq0", _set("train", max_seq_length=0), "train.max_seq_length: must be >= 1"),
    ("steps0", _set("train", max_steps=0), "train.max_steps: must be >= 1"),
    ("steps-1", _set("train", max_steps=-5), "train.max_steps: must be >= 1"),
    ("tokens<batch", _set("train", max_steps=None, max_tokens=100), "train.max_tokens: is less than one optimizer step"),
    ("save-1", _set("train", save_interval=-1), "train.save_interval: must be >= 1"),
    ("eval-1", _set("eval", interval=-1), "eval.interval: must be >= 1"),
    ("workers-1", _data(num_workers=-1), "data.num_workers: must be >= 0"),
    ("data_path''", _data(data_path=""), "data.data_path: '.': give the shard folder's path"),
    ("optimizer", lambda c: c["optimizer"].update(class_path="torch.optim.Bogus"),
     "optimizer: 'torch.optim.Bogus' is not an optimizer class"),
    ("lr<0", lambda c: c["optimizer"]["init_args"].update(lr=-0.1), "optimizer.init_args.lr: must be > 0"),
    ("min_lr>lr", _set("train", min_lr=0.1), "train.min_lr: 0.1 is above the peak LR 0.003"),
    ("no lr", lambda c: c.update(optimizer="AdamW"), "optimizer: no learning rate"),
    ("max_iters placeholder", _set("train", max_steps=None, max_iters=10_000_000, max_additional_steps=10),
     "train.max_iters: 10,000,000 micro-batches = 5,000,000 optimizer steps here is the LR horizon"),
    ("additional past max_steps", _set("train", max_additional_steps=30),
     "train.max_additional_steps: 30 steps from step 0 end at 30, past the run's 24 steps"),
    ("wandb", _set(None, logger_name="wandb"), "logger_name: wandb is not installed: `pip install -e .[wandb]`"),
    ("mix_weight", _data(mix_weight=0.2), "data.init_args.mix_weight: the original read it nowhere"),
    ("out_dir under a file", lambda c: c.update(out_dir="FILEPARENT"), "out_dir: "),
    ("double comma", _data(mix_weights_str="main:0.8,,math:0.2"), "mix_weights_str: empty pair at position 2"),
    ("stable_steps without wsd", _set("train", stable_steps=100), "train.stable_steps: only lr_scheduler: wsd reads it"),
]


@pytest.mark.parametrize("name,mutate,needle", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_bad_input_catalogue(tmp_path, real_tree, name, mutate, needle):
    def fix(cfg):
        mutate(cfg)
        if cfg.get("out_dir") == "FILEPARENT":
            cfg["out_dir"] = _file_parent(tmp_path)
    if name == "wandb":
        pytest.importorskip("yaml")
        import importlib.util

        if importlib.util.find_spec("wandb") is not None:
            pytest.skip("wandb is installed here")
    r = run_cli("pretrain", "--config", _mutate(tmp_path, real_tree, fix))
    assert r.returncode == 2, r.stdout[-1000:] + r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "bad").exists()  # nothing written, not even an empty folder


def test_sample_trace_into_a_missing_folder_is_one_line(tmp_path, real_tree):
    cfg = write_config(tmp_path, real_tree, out_dir=str(tmp_path / "bad"))
    r = run_cli("pretrain", "--config", cfg, env={"MIDTRAIN_SAMPLE_TRACE": str(tmp_path / "nope" / "trace")})
    assert r.returncode == 2 and "MIDTRAIN_SAMPLE_TRACE: " in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_requeue_never_extends_a_run(tmp_path, real_tree, trained_base):
    """max_steps + max_additional_steps: a SIGTERM'd and resumed midtrain job ends where its YAML says (the
    issue saw a 30-step run end at 51)."""
    cfg = write_config(tmp_path, real_tree, "mid.yaml", out_dir=str(tmp_path / "mid"), resume="auto",
                       resume_from=str(trained_base / "final"), mix="main:0.5,code:0.5",
                       train={"max_steps": 24, "max_additional_steps": 10, "save_interval": 100})
    env = dict(os.environ, PYTHONPATH=REPO)
    code, log = _run_until_step_then_signal([sys.executable, "-m", "midtrain", "pretrain", "--config", str(cfg)],
                                            env, 12)
    assert code == 75, log[-2000:]
    assert "this run stops at step 18" in log
    for _ in range(2):  # the requeued job, then a second (already complete) requeue
        r = run_cli("pretrain", "--config", cfg)
        assert r.returncode == 0, r.stderr[-2000:]
    state = yaml.safe_load((tmp_path / "mid" / "final" / "training_state.json").read_text())
    assert state["step"] == state["end_step"] == 18 and state["segment_start"] == 8
    assert "run already complete: step 18 >= 18" in r.stdout


def test_symlink_layout_honours_max_additional_steps(tmp_path, real_tree, trained_base):
    mid = tmp_path / "mid"
    mid.mkdir()
    os.symlink(trained_base / "final", mid / "step-00000008")
    cfg = write_config(tmp_path, real_tree, "mid.yaml", mix="main:0.5,code:0.5", out_dir=str(mid), resume=True,
                       train={"max_steps": 24, "max_additional_steps": 4})
    r = run_cli("pretrain", "--config", cfg)
    assert r.returncode == 0, r.stderr[-2000:]
    state = yaml.safe_load((mid / "final" / "training_state.json").read_text())
    assert state["step"] == 12 and state["segment_start"] == 8


def test_keep_last_n_never_deletes_the_resume_point(tmp_path, real_tree):
    cfg = write_config(tmp_path, real_tree, resume="auto", keep_last_n=1, train={"save_interval": 4})
    env = dict(os.environ, PYTHONPATH=REPO)
    code, log = _run_until_step_then_signal([sys.executable, "-m", "midtrain", "pretrain", "--config", str(cfg)],
                                            env, 10)
    assert code == 75, log[-2000:]
    assert (tmp_path / "base" / "step-00000011").is_dir() or (tmp_path / "base" / "step-00000010").is_dir()
    r = run_cli("pretrain", "--config", cfg)
    assert r.returncode == 0 and "loading" in r.stdout and "fresh run" not in r.stdout


def _copy_tree(real_tree, tmp_path):
    import shutil

    dst = tmp_path / "tree" / "data"
    shutil.copytree(real_tree, dst)
    shutil.copytree(real_tree.parent / "val", tmp_path / "tree" / "val")
    return dst


@pytest.mark.parametrize("damage,needle", [
    ("missing", "missing: the shard's index.json lists this chunk file"),
    ("truncated", "truncated: "),
    ("negative", "has a negative token count"),
])
def test_damaged_shard_is_refused_before_any_work(tmp_path, real_tree, damage, needle):
    import json

    tree = _copy_tree(real_tree, tmp_path)
    shard = tree / "c1"
    index = json.loads((shard / "index.json").read_text())
    chunk = shard / index["chunks"][1]["filename"]
    if damage == "missing":
        chunk.unlink()
    elif damage == "truncated":
        chunk.write_bytes(chunk.read_bytes()[:100])
    else:
        index["chunks"][1]["dim"] = -5
        (shard / "index.json").write_text(json.dumps(index))
    cfg = write_config(tmp_path, tree, mix="main:0.5,code:0.5", out_dir=str(tmp_path / "bad"))
    for command in ("mix", "pretrain"):
        r = run_cli(command, "--config", cfg)
        assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
        assert str(shard) in r.stderr
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("workers", [0, 2])
def test_shard_vanishing_mid_run_checkpoints_then_one_line_and_resumes_exactly(tmp_path, real_tree, workers):
    """Chunk files moved away under a running job: it saves the last step, names the file, and once the
    files are back the resumed run equals an uninterrupted one."""
    tree = _copy_tree(real_tree, tmp_path)
    kw = dict(mix="main:0.5,code:0.5", workers=workers, train={"max_steps": 40, "save_interval": 100})
    ref = write_config(tmp_path, tree, "ref.yaml", out_dir=str(tmp_path / "ref"), **kw)
    assert run_cli("pretrain", "--config", ref).returncode == 0
    cfg = write_config(tmp_path, tree, "run.yaml", out_dir=str(tmp_path / "run"), resume="auto", **kw)
    aside = tmp_path / "aside"
    aside.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "midtrain", "pretrain", "--config", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=REPO), cwd=REPO)
    for line in proc.stdout:
        if line.startswith("step 3/"):
            for f in (tree / "c1").glob("chunk-*.bin"):
                f.rename(aside / f.name)  # chunks already mapped stay readable; the others vanish
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert proc.returncode == 2, err[-2000:]
    assert len(err.strip().splitlines()) == 1 and str(tree / "c1") in err and "Traceback" not in err, err[-2000:]
    saved = [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith("step-")]
    assert len(saved) == 1 and int(saved[0][5:]) > 3
    for f in aside.iterdir():
        f.rename(tree / "c1" / f.name)
    r = run_cli("pretrain", "--config", cfg)
    assert r.returncode == 0, r.stderr[-2000:]
    assert_same_weights(tmp_path / "ref" / "final", tmp_path / "run" / "final")


def test_bf16_true_runs_on_cpu_and_resumes(tmp_path, real_tree):
    """The paper's precision, exercised here before any cluster sees it."""
    cfg = write_config(tmp_path, real_tree, precision="bf16-true", resume="auto", train={"max_steps": 6, "save_interval": 3})
    r = run_cli("pretrain", "--config", cfg)
    assert r.returncode == 0, r.stderr[-2000:]
    w = weights(tmp_path / "base" / "final")
    assert all(v.dtype == torch.bfloat16 for v in w.values() if v.is_floating_point())
    losses = [float(x["loss"]) for x in metrics(tmp_path / "base") if x["loss"]]
    assert len(losses) == 6 and all(l == l and l < 20 for l in losses)


def test_hsdp_on_one_node_is_refused_not_silently_fsdp(tmp_path, real_tree):
    cfg = write_config(tmp_path, real_tree, strategy="hsdp", devices=2, out_dir=str(tmp_path / "bad"))
    r = run_cli("pretrain", "--config", cfg)
    assert r.returncode == 2 and "strategy: hsdp replicates across nodes" in r.stderr and not (tmp_path / "bad").exists()
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def _original_fork_checkpoint(path, real_tree, steps=6):
    """A checkpoint in the original fork's (litgpt pretrain's) format, written as it wrote them: fabric.save of
    {model, optimizer, train_dataloader (a litdata StreamingDataLoader state), iter_num, step_count}, beside
    model_config.yaml; no training_state.json."""
    from litdata.streaming import StreamingDataLoader, StreamingDataset, TokensLoader
    from litgpt import Config
    from litgpt.model import GPT
    from litgpt.utils import save_config

    torch.manual_seed(0)
    config = Config(**TINY_MODEL)
    model = GPT(config)
    opt = torch.optim.AdamW(model.parameters(), lr=0.003, weight_decay=0.1)
    loader = StreamingDataLoader(StreamingDataset(str(real_tree / "1"), item_loader=TokensLoader(block_size=17),
                                                  shuffle=True), batch_size=8)
    it = iter(loader)
    for _ in range(steps):
        batch = next(it).long()
        loss = torch.nn.functional.cross_entropy(model(batch[:, :-1]).reshape(-1, 512), batch[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()
    path.mkdir(parents=True)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "train_dataloader": loader.state_dict(),
                "iter_num": steps, "step_count": steps}, path / "lit_model.pth")
    save_config(config, path)
    return model


def test_resume_from_a_checkpoint_of_the_original_fork(tmp_path, real_tree):
    _original_fork_checkpoint(tmp_path / "orig" / "step-00000006", real_tree)
    cfg = write_config(tmp_path, real_tree, mix="main:0.8,code:0.2", out_dir=str(tmp_path / "mid"),
                       resume_from=str(tmp_path / "orig" / "step-00000006"), train={"max_steps": 12})
    r = run_cli("pretrain", "--config", cfg)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "was written by the original litgpt fork" in r.stdout and "fresh seeded order" in r.stdout
    assert "step 7/12" in r.stdout and "step 6/" not in r.stdout  # the step counter continues
    lrs = {int(x["step"]): float(x["lr"]) for x in metrics(tmp_path / "mid") if x["lr"]}
    from midtrain.train.schedules import Schedule, warmup_steps

    sched = Schedule("cosine", 0.003, 1e-4, 12, warmup_steps(12, 2, None))
    assert lrs[7] == pytest.approx(sched.lr_at(6))  # the LR schedule continues at step 6
    state = yaml.safe_load((tmp_path / "mid" / "final" / "training_state.json").read_text())
    assert state["data"]["notes"][0]["data_restarted"] and state["data"]["notes"][0]["at_step"] == 6
    assert state["data"]["samples"] == 6 * 8  # the 6 steps run here, from a fresh seeded order
    # resumed as our own run afterwards (the note stays), and a plain `resume:` of a foreign checkpoint is refused
    bad = write_config(tmp_path, real_tree, "bad.yaml", out_dir=str(tmp_path / "orig"), resume=True)
    r = run_cli("pretrain", "--config", bad)
    assert r.returncode == 2 and "data.mixer" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("train", [{"max_steps": 24}, {"max_steps": 24, "max_additional_steps": 6},
                                   {"max_steps": None, "max_tokens": 24 * 8 * 16}])
def test_mix_plans_exactly_the_samples_the_trainer_reads(tmp_path, real_tree, trained_base, train):
    """`midtrain mix` and `midtrain pretrain` agree on a midtrain arm's length (the issue saw them disagree)."""
    import json

    cfg = write_config(tmp_path, real_tree, mix="main:0.5,code:0.5", out_dir=str(tmp_path / "mid"),
                       resume_from=str(trained_base / "final"), train={"save_interval": 100, **train})
    r = run_cli("mix", "--config", cfg, "--json", tmp_path / "plan.json")
    assert r.returncode == 0, r.stderr
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert run_cli("pretrain", "--config", cfg).returncode == 0
    state = yaml.safe_load((tmp_path / "mid" / "final" / "training_state.json").read_text())
    read_here = state["data"]["samples"] - 8 * 8  # the base run consumed 8 steps x 8 samples
    assert plan["total_samples"] == read_here == (state["step"] - 8) * 8
    drawn = {row["id"]: row["draw_samples"] for row in plan["rows"]} if "draw_samples" in plan["rows"][0] else None
    if drawn is not None:
        assert sum(drawn.values()) == read_here


def test_original_checkpoint_with_mixer_litdata_and_a_new_mixture_is_one_clear_line(tmp_path, real_tree):
    _original_fork_checkpoint(tmp_path / "orig" / "step-00000006", real_tree)
    cfg = write_config(tmp_path, real_tree, mix="main:0.8,code:0.2", out_dir=str(tmp_path / "mid"),
                       resume_from=str(tmp_path / "orig" / "step-00000006"))
    c = yaml.safe_load(cfg.read_text())
    c["data"]["init_args"]["mixer"] = "litdata"
    cfg.write_text(yaml.safe_dump(c))
    r = run_cli("pretrain", "--config", cfg)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
    assert "data.mixer: litdata cannot resume" in r.stderr and " at 0x" not in r.stderr


def test_a_tokenizer_far_smaller_than_the_embedding_is_said(tmp_path, real_tree, tokenizer_dir):
    """Issue 30: `model_name: pythia-14m` with a 2,048-token tokenizer trains 50,304 embedding rows without a word.
    A run whose tokenizer uses < 90% of the model's rows says so once, with the fix."""
    cfg = write_config(tmp_path, real_tree, tokenizer_dir=str(tokenizer_dir), train={"max_steps": 1},
                       eval={"interval": 0, "max_iters": 1, "final_validation": False})
    r = run_cli("pretrain", "--config", cfg)
    assert r.returncode == 0, r.stderr[-2000:]
    (line,) = [x for x in r.stdout.splitlines() if x.startswith("warning: the tokenizer has")]
    assert "400 ids and the model 512 embedding and output rows (tiny): 112 rows are never" in line
    assert "padded_vocab_size 400" in line
