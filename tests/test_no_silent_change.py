"""Issue 27: fault classes from a second round of public bug reports and a new user's trial, each tested as
a class (docs/no-silent-change.md). Each test failed on the code before its fix.

1. every run-config key reachable from the command line changes the run exactly as the same key in the
   YAML would, or is refused in one line (litgpt#1905: `--optimizer.init_args.lr 30` trained at the YAML's LR);
2. a config field that is recorded and has no effect is honoured (litgpt#1727: `train.tie_embeddings` ties);
4. a run's length is its configured tokens or steps across a resume, and a start past the end is refused;
5. the first non-finite loss or gradient norm ends a run, keeping its last finite checkpoint;
7. undecodable raw text is one line naming file and line;
10. shards record their tokenizer, and a mixture of two tokenizers is refused;
13. a key the trainer does not take inside a study's `set:` is refused by `study plan`;
15. smaller silent paths of a new user's trial.
(3: test_slurm.py; 6: test_extras.py; 8: test_import.py; 11: test_distributed.py; 12: test_study_run.py;
14: test_scripts.py.)
"""

import json
import os

import pytest
import torch
import yaml

from support import run_cli
from support.runs import jsonl
from support.runs import TINY_MODEL, metrics, write_config


def _one_line(r, needle):
    assert r.returncode == 2, (r.stdout[-1500:], r.stderr[-1500:])
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert needle in r.stderr, r.stderr

# ---- 1. command-line keys ----

# Values for keys whose type the generic rule below cannot mutate (None, strings, Literals, paths).
# Every leaf key of the resolved run config must get a value here or from the rule: a key added to the
# run config without one fails `test_every_command_line_key_changes_the_run_as_the_yaml_key_would`.
NEW_VALUES = {
    "model_name": "tiny",
    "model_config.name": "tiny2",
    "model_config.hf_config": {"org": "x", "name": "y"},
    "model_config.norm_class_name": "RMSNorm",
    "model_config.norm_qk_type": "olmo2",
    "model_config.head_size": 8,
    "model_config.n_query_groups": 1,
    "model_config.attention_scores_scalar": 4,
    "model_config.sliding_window_size": 16,
    "model_config.sliding_window_indices": [1, 0],
    "model_config.attention_logit_softcapping": 30.0,
    "model_config.rope_adjustments": {"factor": 2.0},
    "model_config.moe_intermediate_size": 64,
    "model_config.mlp_class_name": "LLaMAMLP",
    "model_config.gelu_approximate": "tanh",
    "model_config.n_shared_expert": 1,
    "model_config.n_expert_groups": 1,
    "model_config.n_topk_groups": 1,
    "model_config.n_topk_scores_per_group": 1,
    "model_config.first_k_dense_replace": 1,
    "model_config.final_logit_softcapping": 30.0,
    "model_config.latent_attention": {"q_lora_rank": 4},
    "model_config.rope_local_base_freq": 100.0,
    "model_config.rope_indices": [0, 1],
    "out_dir": "/elsewhere/run",
    "precision": "bf16-mixed",
    "initial_checkpoint_dir": "/elsewhere/init",
    "resume": "auto",
    "resume_from": "/elsewhere/base/step-00000010",
    "data.class_path": "midtrain.data.ShardedMixedDataset",
    "data.init_args.data_path": "/elsewhere/shards",
    "data.init_args.val_data_path": "/elsewhere/val",
    "data.init_args.mix_config_path": "/elsewhere/mix.yaml",
    "data.init_args.mix_weights_str": "main:0.5,code:0.5",
    "data.init_args.literal_weights_str": "main/1:1",
    "data.init_args.within_type": "tokens",
    "data.init_args.shard_types": {"x": "main"},
    "data.init_args.mixer": "litdata",
    "data.init_args.mix_block": 64,
    "data.init_args.vocab_size": 100,
    "train.save_interval": 7,
    "train.max_additional_steps": 5,
    "train.max_iters": 50,
    "train.max_tokens": 4096,
    "train.max_seq_length": 16,
    "train.tie_embeddings": False,
    "train.max_norm": 0.5,
    "train.max_lr": 0.02,
    "train.lr_scheduler": "wsd",
    "train.lr_warmup_steps": 3,
    "train.lr_warmup_fraction": 0.2,
    "train.stable_steps": 4,
    "train.decay_shape": "cosine",
    "devices": 2,
    "num_nodes": 2,
    "strategy": "fsdp",
    "accelerator": "cpu",
    "tokenizer_dir": "/elsewhere/tok",
    "logger_name": "tensorboard",
    "compile": True,
    "keep_last_n": 3,
    "optimizer.class_path": None,  # switching the class: refused unless it is the YAML's (below)
    "optimizer.init_args.betas": [0.8, 0.9],
    "optimizer.init_args.foreach": True,
    "optimizer.init_args.fused": False,
}


def _new_value(key, value):
    if key in NEW_VALUES:
        return NEW_VALUES[key]
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 3
    if isinstance(value, float):
        return value * 0.5 + 0.0625
    raise KeyError(key)


def _set(cfg, dotted, value):
    *parents, leaf = dotted.split(".")
    for p in parents:
        cfg = cfg.setdefault(p, {})
    cfg[leaf] = value


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _base_cfg():
    return {"model_config": dict(TINY_MODEL), "out_dir": "/runs/base", "logger_name": "csv",
            "data": {"class_path": "litgpt.data.ShardedMixedDataset",
                     "init_args": {"data_path": "/data/shards", "mix_weights_str": "main:1"}},
            "train": {"max_steps": 24, "global_batch_size": 8, "micro_batch_size": 4},
            "optimizer": {"class_path": "torch.optim.AdamW",
                          "init_args": {"lr": 0.003, "weight_decay": 0.1, "betas": [0.9, 0.95], "eps": 1e-8,
                                        "amsgrad": False, "maximize": False, "foreach": None,
                                        "capturable": False, "differentiable": False, "fused": None}}}


def _resolved(parser, cfg, argv=()):
    from midtrain.run_args import run_config_dict, run_namespace

    args = run_namespace(parser, list(argv), cfg)
    plain = {k: v for k, v in args.as_dict().items() if k not in ("config", "run_yaml", "__path__")}
    return _flat(run_config_dict(plain))


def test_every_command_line_key_changes_the_run_as_the_yaml_key_would():
    """Table-driven over every leaf key of the resolved run config: `--KEY VALUE` on the command line gives
    the same resolved config as `KEY: VALUE` in the YAML, and that config differs from the base in KEY.
    Before: the optimizer's keys (`--optimizer.init_args.lr 30`, `--optimizer.lr 30`, a typo) were stored
    as stray keys beside init_args, and the YAML's values trained."""
    from midtrain.run_args import run_parser

    parser = run_parser("")
    base = _resolved(parser, _base_cfg())
    keys = [k for k in base if k != "optimizer.class_path"]
    assert len(keys) > 100 and "optimizer.init_args.lr" in keys and "train.max_lr" in keys
    missing = [k for k in keys if k not in NEW_VALUES and not isinstance(base[k], (bool, int, float))]
    assert not missing, f"keys without a test value: {missing}"
    # keys go in batches of 8 (a parse costs ~0.15 s; 120 keys one by one took ~40 s), the class path and
    # dict values alone; a failing batch names its keys
    alone = [k for k in keys if k == "data.class_path" or isinstance(_new_value(k, base[k]), dict)]
    rest = [k for k in keys if k not in alone]
    for batch in [[k] for k in alone] + [rest[i:i + 8] for i in range(0, len(rest), 8)]:
        cfg, argv = _base_cfg(), []
        for key in batch:
            new = _new_value(key, base[key])
            _set(cfg, key, new)
            argv += [f"--{key}", new if isinstance(new, str) else json.dumps(new)]
        # a parser per parse: jsonargparse merges a parsed dict into the default it holds (hf_config)
        by_yaml = _resolved(run_parser(""), cfg)
        by_cli = _resolved(run_parser(""), _base_cfg(), argv)
        assert by_cli == by_yaml, batch
        changed = {k for k in by_yaml if by_yaml.get(k) != base.get(k)} | (set(base) ^ set(by_yaml))
        for key in batch:
            assert any(k == key or k.startswith(key + ".") for k in changed), (key, "unchanged")
        assert all(any(k == key or k.startswith(key + ".") for key in batch) for k in changed), (batch, changed)
    # the shorthand without init_args, as LightningCLI users write it
    assert _resolved(parser, _base_cfg(), ["--optimizer.lr", "30"])["optimizer.init_args.lr"] == 30.0
    assert _resolved(parser, _base_cfg(), ["--optimizer.init_args.lr=30"])["optimizer.init_args.lr"] == 30.0
    # naming the YAML's own class is accepted and changes nothing
    assert _resolved(parser, _base_cfg(), ["--optimizer.class_path", "torch.optim.AdamW"]) == base
    assert _resolved(parser, _base_cfg(), ["--optimizer", "AdamW"]) == base


@pytest.mark.parametrize("argv, needle", [
    (["--optimizer.init_args.lrr", "5"], "Key 'lrr' is not expected"),
    (["--optimizer.lr", "abc"], 'Parser key "lr"'),
    (["--optimizer.class_path", "torch.optim.SGD"], "--optimizer: names torch.optim.SGD, and the config's optimizer "
                                                     "is torch.optim.AdamW"),
    (["--optimizer", "torch.optim.NotAnOptimizer"], "optimizer"),
    (["--train.max_stepz", "5"], "train.max_stepz"),
    (["--model_name", "pythia-14m"], "model_name: 'pythia-14m' and model_config (name 'tiny') are both given"),
])
def test_a_command_line_key_that_cannot_be_honoured_is_one_line_exit_2(tmp_path, real_tree, argv, needle):
    cfg = write_config(tmp_path, real_tree)
    for command in ("pretrain", "mix"):
        r = run_cli(command, "--config", cfg, *argv)
        assert r.returncode == 2, (command, r.stdout[-1500:], r.stderr[-1500:])
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
        assert needle in r.stderr, r.stderr
    assert not (tmp_path / "base").exists()


def test_command_line_optimizer_and_train_keys_reach_the_trained_run(tmp_path, real_tree):
    """The keys a sweep sets from the command line change what trains: the logged LR follows the new
    peak, the checkpoint's optimizer holds the new weight decay, betas and eps, the run has the new
    length and seed, and hyperparameters.yaml records init_args without stray keys."""
    cfg = write_config(tmp_path, real_tree, train={"max_steps": 6, "save_interval": 3, "lr_warmup_steps": 0,
                                                   "lr_scheduler": "constant"})
    r = run_cli("pretrain", "--config", cfg, "--optimizer.init_args.lr", "0.02", "--optimizer.weight_decay", "0.5",
                "--optimizer.init_args.betas", "[0.8, 0.9]", "--optimizer.eps", "1e-6", "--train.max_steps", "4",
                "--seed", "7", "--out_dir", tmp_path / "cli")
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "cli"
    lrs = {int(x["step"]): float(x["lr"]) for x in metrics(out) if x["lr"]}
    assert sorted(lrs) == [1, 2, 3, 4] and all(abs(v - 0.02) < 1e-12 for v in lrs.values()), lrs
    state = torch.load(out / "final" / "lit_model.pth", weights_only=False)
    groups = state["optimizer"]["param_groups"]
    assert {(g["weight_decay"], tuple(g["betas"]), g["eps"]) for g in groups} == {(0.5, (0.8, 0.9), 1e-6)}
    hp = yaml.safe_load((out / "final" / "hyperparameters.yaml").read_text())
    assert hp["optimizer"] == {"class_path": "torch.optim.AdamW",
                               "init_args": {"lr": 0.02, "weight_decay": 0.5, "betas": [0.8, 0.9], "eps": 1e-6}}
    assert hp["seed"] == 7 and hp["train"]["max_steps"] == 4 and hp["out_dir"] == str(out)
    # the same values written in the YAML train the same weights
    cfg2 = yaml.safe_load(cfg.read_text())
    cfg2["optimizer"]["init_args"].update(lr=0.02, weight_decay=0.5, betas=[0.8, 0.9], eps=1e-6)
    cfg2["train"]["max_steps"], cfg2["seed"], cfg2["out_dir"] = 4, 7, str(tmp_path / "yaml")
    (tmp_path / "same.yaml").write_text(yaml.safe_dump(cfg2))
    r = run_cli("pretrain", "--config", tmp_path / "same.yaml")
    assert r.returncode == 0, r.stderr[-2000:]
    other = torch.load(tmp_path / "yaml" / "final" / "lit_model.pth", weights_only=False)["model"]
    for k, v in state["model"].items():
        assert torch.equal(v, other[k]), k


# ---- 2. recorded fields without effect ----

def test_tie_embeddings_true_trains_one_matrix_and_a_run_from_a_checkpoint_must_agree(tmp_path, real_tree):
    """litgpt 0.5.13's Config has no tie_embeddings: the trainer set an attribute nothing read, and wte and
    lm_head trained apart, bit-identical to an untied run. Now the key ties them as litgpt's pretrain does (wte
    takes lm_head's matrix): after training they are one matrix, the run is another than the untied one, and a
    run from the checkpoint whose config says otherwise is one line (SmolLM2 and Llama 3.2 are tied:
    test_import trains and exports them)."""
    from midtrain.posttrain.sft import load_checkpoint_model

    # (sharded over 2 ranks: FSDP2 keeps a shared parameter shared; its step checkpoint is a sharded one)
    cfg = write_config(tmp_path, real_tree, train={"tie_embeddings": True, "max_steps": 8, "save_interval": 4},
                       strategy="fsdp", devices=2)
    r = run_cli("pretrain", "--config", cfg)
    assert r.returncode == 0, r.stderr[-2000:]
    tied = torch.load(tmp_path / "base" / "final" / "lit_model.pth", weights_only=False)["model"]
    assert torch.equal(tied["transformer.wte.weight"], tied["lm_head.weight"])
    model, _ = load_checkpoint_model(tmp_path / "base" / "step-00000004")  # the sharded checkpoint, read back tied
    assert model.transformer.wte.weight is model.lm_head.weight
    untied_cfg = write_config(tmp_path, real_tree, name="untied.yaml", train={"max_steps": 8},
                              out_dir=str(tmp_path / "untied"))
    r = run_cli("pretrain", "--config", untied_cfg)
    assert r.returncode == 0, r.stderr[-2000:]
    untied = torch.load(tmp_path / "untied" / "final" / "lit_model.pth", weights_only=False)["model"]
    assert not torch.equal(untied["transformer.wte.weight"], untied["lm_head.weight"])
    assert not torch.equal(untied["lm_head.weight"], tied["lm_head.weight"])
    for command in ("pretrain", "mix"):
        r = run_cli(command, "--config", untied_cfg, "--resume_from", tmp_path / "base" / "final",
                    "--out_dir", tmp_path / "mid", "--train.max_steps", "12")
        _one_line(r, "train.tie_embeddings: unset, but the model of resume_from")
        assert "has tied input/output embeddings" in r.stderr
    assert not (tmp_path / "mid").exists()


# ---- 4. a run's length across a resume ----

def test_a_run_length_in_tokens_survives_no_batch_change_and_a_start_past_the_end_is_refused(tmp_path, real_tree):
    """The issue's case: a max_tokens run resumed with another global batch 'completed' at half its tokens
    (exit 0); a resume_from step-8 checkpoint with max_steps 6 exited 0 as 'already complete' and mix
    planned -2 steps. Now both are one line in pretrain and mix, and nothing is written."""
    import shutil

    cfg = write_config(tmp_path, real_tree, train={"max_steps": None, "max_tokens": 8 * 16 * 12, "save_interval": 4})
    r = run_cli("pretrain", "--config", cfg)
    assert r.returncode == 0, r.stderr[-2000:]
    step8 = tmp_path / "base" / "step-00000008"
    for command in ("pretrain", "mix"):
        r = run_cli(command, "--config", cfg, "--resume_from", step8, "--out_dir", tmp_path / "mid",
                    "--train.global_batch_size", "16")
        _one_line(r, "train.global_batch_size: 16 x 16 tokens = 256 per step, but step-00000008 was trained at 128 "
                     "per step and this run's length is train.max_tokens")
        r = run_cli(command, "--config", cfg, "--resume_from", step8, "--out_dir", tmp_path / "mid",
                    "--train.max_steps", "6")
        _one_line(r, "this run starts at step 8")
    assert not (tmp_path / "mid").exists()
    # a base checkpoint that does not exist yet holds no token count: planned from its name, not refused
    r = run_cli("mix", "--config", cfg, "--resume_from", tmp_path / "later" / "step-00000008")
    assert r.returncode == 0 and "does not exist (yet): planned from step 8" in r.stdout, r.stdout + r.stderr
    # a requeue of the run itself (its own folder) with another batch
    own = tmp_path / "own"
    own.mkdir()
    shutil.copytree(tmp_path / "base" / "step-00000004", own / "step-00000004")
    r = run_cli("pretrain", "--config", cfg, "--out_dir", own, "--resume", "auto", "--train.micro_batch_size", "8",
                "--train.global_batch_size", "16")
    _one_line(r, "step-00000004 was trained at 128 per step")
    assert sorted(p.name for p in own.iterdir()) == ["step-00000004"]
    # the same requeue with the run's own batch trains to its end
    r = run_cli("pretrain", "--config", cfg, "--out_dir", own, "--resume", "auto")
    assert r.returncode == 0, r.stderr[-2000:]
    assert torch.load(own / "final" / "lit_model.pth", weights_only=False)["step_count"] == 12


# ---- 5. a diverged run ----

@pytest.mark.parametrize("max_norm", [None, 1.0], ids=["no-clipping", "clipping"])
def test_a_diverged_run_stops_at_the_first_non_finite_step_and_keeps_its_last_finite_checkpoint(tmp_path, real_tree,
                                                                                               max_norm):
    """The issue's case: LR 1e20 without clipping, keep_last_n 1: NaN losses were logged to the end, NaN
    checkpoints replaced every finite one, final/ was written and the exit was 0. Now: one line naming the
    step, exit 2, no final/, and what is kept is finite; a study step records that line as its failure. With
    clipping (every shipped arm config), a non-finite gradient norm is the same line, not clipping's traceback."""
    cfg = write_config(tmp_path, real_tree, train={"max_steps": 12, "save_interval": 1, "log_interval": 4,
                                                   "lr_warmup_steps": 0, "lr_scheduler": "constant",
                                                   "max_norm": max_norm}, keep_last_n=1)
    step_dir = tmp_path / "step"
    step_dir.mkdir()
    (step_dir / "step.json").write_text(json.dumps({
        "id": "arm", "argv": ["pretrain", "--config", str(cfg), "--optimizer.init_args.lr", "1e20"],
        "outputs": [str(tmp_path / "base" / "final" / "lit_model.pth")], "hash": "h", "cwd": None}))
    r = run_cli("study", "step", step_dir)
    assert r.returncode == 2, r.stderr[-2000:]
    log = (step_dir / "log.txt").read_text()
    (line,) = [x for x in log.splitlines() if ": error" in x]
    assert "the loss, gradient norm or weights are not finite at step" in line and "Traceback" not in log
    status = json.loads((step_dir / "status.json").read_text())
    assert status["state"] == "failed" and status["exit_code"] == 2 and status["note"] == line.strip()
    out = tmp_path / "base"
    kept = sorted(p.name for p in out.iterdir() if p.name.startswith(("step-", "final")))
    assert kept and "final" not in kept and len(kept) == 1, kept
    bad_step = int(line.split("not finite at step ")[1].split(":")[0])
    assert int(kept[0].split("-")[1]) < bad_step <= 12
    state = torch.load(out / kept[0] / "lit_model.pth", weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    r = run_cli("status", "--config", cfg, "--check_complete")
    assert r.returncode == 3 and "complete" not in r.stdout


# ---- 13. a typo inside a study's set: ----

@pytest.mark.parametrize("set_, needle", [
    ({"train.max_step": 80}, "sizes.tiny.set: the trainer's parser refuses it"),
    ({"optimizer.init_args.lrr": 0.1}, "sizes.tiny.set: the trainer's parser refuses it"),
    ({"train.log_interval": "often"}, "sizes.tiny.set: the trainer's parser refuses it"),
])
def test_a_key_the_trainer_does_not_take_in_a_study_set_is_refused_by_plan(tmp_path, real_tree, tok_dir, set_, needle):
    """`set: {train.max_step: 80}` planned a 200-step base run with wrong token and GPU-hour figures, and the
    first step failed on it. `study plan` now parses each size's config with the trainer's own parser."""
    cfg = write_config(tmp_path, real_tree)
    (tmp_path / "sft.jsonl").write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n")
    spec = {"name": "typo", "sizes": {"tiny": {"config": str(cfg), "set": set_}},
            "arms": [{"name": "math", "domain": "math", "start": [8], "weight": [0.2]}],
            "seeds": [0], "sft": {"lrs": [1e-3], "tasks": {"t": {"data": str(tmp_path / "sft.jsonl")}},
                                  "options": {"tokenizer_dir": str(tok_dir)}}}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(spec))
    r = run_cli("study", "plan", tmp_path / "study.yaml", "--devices", "false")
    _one_line(r, needle)
    assert next(iter(set_)).split(".")[-1] in r.stderr
    spec["sizes"]["tiny"]["set"] = {"train.max_steps": 80}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(spec))
    r = run_cli("study", "plan", tmp_path / "study.yaml", "--devices", "false")
    assert r.returncode == 0, r.stderr[-2000:]


# ---- 15. smaller silent paths ----

def test_smaller_silent_paths_are_one_line(tmp_path, real_tree, ckpt, tok_dir):
    """mix with a resume_from that is not there planned from step 0; prepare --val_dir without
    --val_fraction wrote no val shard; sft with another model's (larger) tokenizer was a 50-line IndexError;
    `midtrain study|evaluate|tokenizer --help` exited 2; a YAML error named no line."""
    from midtrain.tokenizer import train_bpe

    cfg = write_config(tmp_path, real_tree)
    # a base checkpoint that does not exist yet: planned from the step its name gives, and said; a name without
    # a step, or a folder that is not a checkpoint: refused
    r = run_cli("mix", "--config", cfg, "--resume_from", tmp_path / "nowhere" / "step-00000008")
    assert r.returncode == 0 and "does not exist (yet): planned from step 8" in r.stdout, r.stdout + r.stderr
    r = run_cli("mix", "--config", cfg, "--resume_from", tmp_path / "nowhere" / "latest-base")
    _one_line(r, "its name gives no step")
    r = run_cli("mix", "--config", cfg, "--resume_from", tmp_path)
    _one_line(r, "is not a checkpoint")
    src = jsonl(tmp_path / "docs.jsonl", [{"text": "a lazy dog sleeps under the old wooden bench"}] * 4)
    r = run_cli("prepare", "--input", src, "--tokenizer_dir", tok_dir, "--out_dir", tmp_path / "shards",
                "--shard", "c1", "--val_dir", tmp_path / "val")
    _one_line(r, "--val_fraction: is 0, so nothing would be written to --val_dir")
    assert not (tmp_path / "shards").exists() and not (tmp_path / "val").exists()
    big = train_bpe([f"word{i} other{i * 7} thing{i * 13}" for i in range(3000)], tmp_path / "big", vocab_size=900)
    data = jsonl(tmp_path / "sft.jsonl", [{"prompt": f"q{i}", "response": f" a{i}"} for i in range(16)])
    r = run_cli("sft", "--checkpoint", ckpt, "--data", data, "--tokenizer_dir", big, "--lrs", "[1e-3]",
                "--out", tmp_path / "m.json")
    _one_line(r, "--tokenizer_dir: the tokenizer has 900 tokens and the model 400 embedding rows")
    for command in ("study", "evaluate", "tokenizer"):
        r = run_cli(command, "--help")
        assert r.returncode == 0 and r.stdout.startswith(f"usage: midtrain {command} {{"), (command, r.stderr)
    (tmp_path / "bad.yaml").write_text("train:\n  max_steps: 3\n  lr: [1, 2\nseed: 1\n")
    r = run_cli("pretrain", "--config", tmp_path / "bad.yaml")
    _one_line(r, f"{tmp_path / 'bad.yaml'}:4:5: not valid YAML")


# ---- 7. undecodable text in raw inputs ----

@pytest.mark.parametrize("name, content, needle", [
    ("surrogate.jsonl", b'{"text": "fine"}\n{"text": "half an emoji \\ud83d here"}\n',
     "surrogate.jsonl:2: holds '\\ud83d' at character 14, a lone surrogate"),
    ("latin1.jsonl", b'{"text": "fine"}\n{"text": "caf\xe9"}\n', "latin1.jsonl:2:14: is not UTF-8: byte 0xe9"),
    ("latin1.txt", b"first line\nsecond caf\xe9\n", "latin1.txt:2:11: is not UTF-8 text: byte 0xe9"),
])
def test_undecodable_raw_text_is_one_line_naming_file_and_line(tmp_path, tok_dir, name, content, needle):
    """A lone surrogate (valid JSON) or a Latin-1 byte made `prepare` print a ~50-line litdata worker
    traceback naming neither file nor line, exit 1. Now one line, file:line[:column], exit 2, nothing written;
    `tokenizer train` reads through the same readers."""
    src = tmp_path / "raw" / name
    src.parent.mkdir()
    src.write_bytes(content)
    r = run_cli("prepare", "--input", src.parent, "--tokenizer_dir", tok_dir, "--out_dir", tmp_path / "shards",
                "--shard", "c1")
    _one_line(r, needle)
    assert not (tmp_path / "shards" / "c1").exists()
    r = run_cli("tokenizer", "train", "--input", src, "--out", tmp_path / "tok")
    _one_line(r, needle)


def test_text_files_are_read_with_universal_newlines_as_before(tmp_path):
    """Reading bytes to name a bad byte's line must not change what a good file tokenizes to: CRLF and CR
    line ends still become LF, as Path.read_text gave."""
    from midtrain.data.readers import read_documents

    (tmp_path / "crlf.txt").write_bytes(b"line one\r\nline two\rthree\n")
    assert list(read_documents(str(tmp_path / "crlf.txt"))) == ["line one\nline two\nthree\n"]


# ---- 10. shards made with another tokenizer ----

def test_shards_record_their_tokenizer_and_a_mixture_of_two_tokenizers_is_refused(tmp_path, real_tree):
    """A shard prepared with a second BPE whose ids fit the model mixed and trained with exit 0. Now prepare
    records the tokenizer in each shard; mix and pretrain refuse shards that disagree with each other or
    with tokenizer_dir; older shards without the record get a note; `midtrain shard` shows what one holds."""
    from midtrain.data.identity import tokenizer_identity
    from midtrain.tokenizer import train_bpe

    prose = [f"the river {i} passes the old mill near town {i * 3}." for i in range(200)]
    code = [f"def f{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(200)]
    tok_a = train_bpe(prose + code, tmp_path / "tok_a", vocab_size=400)
    tok_b = train_bpe(code * 2, tmp_path / "tok_b", vocab_size=400)
    assert tokenizer_identity(tok_a) != tokenizer_identity(tok_b)
    data, val = tmp_path / "data", tmp_path / "val"
    for name, docs, tok in (("1", prose, tok_a), ("c1", code, tok_b)):
        raw = jsonl(tmp_path / f"{name}.jsonl", [{"text": d} for d in docs])
        r = run_cli("prepare", "--input", raw, "--tokenizer_dir", tok, "--out_dir", data, "--shard", name,
                    "--val_fraction", "0.1", "--val_dir", val)
        assert r.returncode == 0, r.stderr[-1500:]
    cfg = yaml.safe_load(write_config(tmp_path, real_tree).read_text())
    cfg["data"]["init_args"].update(data_path=str(data), val_data_path=str(val), mix_weights_str="main:0.5,code:0.5")
    cfg["tokenizer_dir"] = str(tok_a)
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(cfg))
    for command in ("mix", "pretrain"):
        r = run_cli(command, "--config", tmp_path / "two.yaml")
        _one_line(r, "data.data_path: its shards were made with different tokenizers")
    # one tokenizer's shards (main and its val set), but tokenizer_dir names the other
    cfg["data"]["init_args"].update(mix_weights_str="main:1", val_data_path=None)
    cfg["tokenizer_dir"] = str(tok_b)
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(cfg))
    r = run_cli("mix", "--config", tmp_path / "other.yaml")
    _one_line(r, f"tokenizer_dir: {tok_b} is tokenizer {tokenizer_identity(tok_b)}, and the shards were made with "
                 f"tokenizer {tokenizer_identity(tok_a)}")
    cfg["tokenizer_dir"] = str(tok_a)
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(cfg))
    r = run_cli("mix", "--config", tmp_path / "ok.yaml")
    assert r.returncode == 0 and "record no tokenizer" not in r.stdout, r.stderr[-1500:]
    # shards made without the record (litdata directly, or before it existed): accepted, with a note
    r = run_cli("mix", "--config", write_config(tmp_path, real_tree, "old.yaml"))
    assert r.returncode == 0 and "shard(s) record no tokenizer" in r.stdout, r.stdout[-1500:]
    # looking at a shard
    r = run_cli("shard", data / "c1", "--samples", "2")
    assert r.returncode == 0, r.stderr[-1500:]
    assert f"tokenizer: {tokenizer_identity(tok_b)}" in r.stdout
    docs = int(r.stdout.split("documents: ")[1].split()[0])
    assert 150 < docs < 200  # the train split of 200 documents (10% went to val)
    first = [line for line in r.stdout.splitlines() if line.startswith("  '")][0]
    assert first.strip().startswith("'def f") and "return x *" in first
    r = run_cli("shard", data / "c1", "--samples", "1", "--tokenizer_dir", tok_a)
    assert "warning: --tokenizer_dir is tokenizer" in r.stdout


# ---- 9. a full disk, for every writer ----

@pytest.fixture
def full_disk(tmp_path):
    """A 256 KiB tmpfs (root only; CI runs as root), unmounted afterwards."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)]).returncode:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    yield disk
    if subprocess.run(["umount", str(disk)]).returncode:
        subprocess.run(["umount", "-l", str(disk)])  # a file still open: detached now, freed when it closes


def test_a_full_disk_is_one_line_and_leaves_nothing_partial_for_every_writer(tmp_path, real_tree, ckpt, tok_dir,
                                                                              full_disk):
    """Checkpoints were done with issue 26 (test_parallel.py). The other writers: prepare (a litdata traceback,
    exit 1), export-hf, and the small files written atomically (a study's status and plan files, mix --json)."""
    big = jsonl(tmp_path / "big.jsonl", [{"text": f"the lazy dog {i} " * 30} for i in range(3000)])
    r = run_cli("prepare", "--input", big, "--tokenizer_dir", tok_dir, "--out_dir", full_disk / "shards",
                "--shard", "main/1")
    _one_line(r, f"--out_dir: disk full (or quota) in {full_disk / 'shards'} (it needs ~")
    assert "MiB free there" in r.stderr and list(full_disk.iterdir()) == []
    (full_disk / "filler").write_bytes(b"\0" * (250 * 1024))  # what is left: less than the weights, the plan's JSON
    r = run_cli("evaluate", "export-hf", "--checkpoint", ckpt, "--out", full_disk / "hf")
    _one_line(r, f"--out: disk full (or quota) in {full_disk}")
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]
    with open(full_disk / "filler", "ab", buffering=0) as f:  # now full
        try:
            while True:
                f.write(b"\0" * 1024)
        except OSError:
            pass
    r = run_cli("mix", "--config", write_config(tmp_path, real_tree), "--json", full_disk / "plan.json")
    _one_line(r, f"{full_disk / 'plan.json'}: disk full (or quota) in {full_disk}")
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]


def test_torch_saves_hidden_enospc_is_read_as_a_full_disk(full_disk, tmp_path):
    """torch.save to a path on a full disk raises RuntimeError 'unexpected pos ...' (its zip writer loses the short
    write's errno; a sharded checkpoint's ranks write this way, and CI once saw it as a traceback). write_error reads
    it as ENOSPC there, as EIO with its text where there is room, and finds errors inside DCP's per-rank failures."""
    import errno

    import torch
    from torch.distributed.checkpoint.api import CheckpointException

    from midtrain.atomic import disk_full, write_error

    with pytest.raises(RuntimeError) as caught:
        torch.save({"w": torch.zeros(100_000)}, full_disk / "w.pt")
    zip_error = caught.value
    assert not isinstance(zip_error, OSError) and not disk_full(zip_error)
    assert write_error(zip_error, full_disk).errno == errno.ENOSPC
    assert write_error(zip_error, tmp_path).errno == errno.EIO  # room there: a write error, not a full disk
    wrapped = CheckpointException("save", {1: (zip_error, None)})
    assert write_error(wrapped, full_disk).errno == errno.ENOSPC
    assert write_error(CheckpointException("save", {0: OSError(errno.EDQUOT, "quota")}), tmp_path).errno == errno.EDQUOT
    assert write_error(ValueError("not a write"), full_disk) is None
    del caught, zip_error, wrapped  # the traceback holds torch's open file: the tmpfs could not be unmounted
    import gc

    gc.collect()
