"""The torch-free parameter count of `study plan` (midtrain.study.params) against litgpt's GPT built on the
meta device, and that `study plan` / `study status` import nothing heavy (their speed: bench/study_cli.py)."""

import glob
import json
import os
import subprocess
import sys

import pytest
import yaml

from support import REPO
from midtrain.study.params import gpt_param_count, litgpt_config, litgpt_config_module, params_of

torch = pytest.importorskip("torch")
litgpt = pytest.importorskip("litgpt")

HEAVY = ("torch", "lightning", "litgpt", "litdata", "matplotlib", "scipy")


def meta_count(config: dict) -> int:
    """What the planner used to do: build litgpt's GPT on the meta device and count."""
    from litgpt import GPT, Config

    mc = Config(**config["model_config"]) if config.get("model_config") else Config.from_name(config["model_name"])
    with torch.device("meta"):
        model = GPT(mc)
    if (config.get("train") or {}).get("tie_embeddings"):
        from midtrain.train.parallel import tie_embeddings

        tie_embeddings(model)
    return sum(p.numel() for p in model.parameters())


PYTHIA = [c["name"] for c in litgpt_config_module().configs if c["name"].startswith("pythia-")]


@pytest.mark.unit
def test_every_pythia_config_is_listed():
    for size in ("14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b"):
        assert f"pythia-{size}" in PYTHIA


@pytest.mark.unit
@pytest.mark.parametrize("name", PYTHIA)
def test_pythia_named_configs(name):
    assert params_of({"model_name": name}) == meta_count({"model_name": name})


@pytest.mark.unit
@pytest.mark.parametrize("name", ["SmolLM2-135M", "SmolLM2-360M", "Llama-3.2-1B", "OLMo-1B-hf", "tiny-llama-1.1b"])
def test_tied_and_untied_llama_type_configs(name):
    """Issue 29: SmolLM2, Llama 3.2 1B and OLMo 1B tie their embeddings (one matrix, counted once)."""
    for tied in (False, True):
        cfg = {"model_name": name, "train": {"tie_embeddings": tied}}
        assert params_of(cfg) == meta_count(cfg)
    c = litgpt_config(name, None)
    assert params_of({"model_name": name}) - params_of(cfg) == c.padded_vocab_size * c.n_embd


def repo_model_configs() -> list[tuple[str, dict]]:
    """Every run config under midtrain_configs that gives a model_config, and the test study's model."""
    from study_fixture import MODEL

    found = [("tests/study_fixture.py", MODEL)]
    for path in sorted(glob.glob(os.path.join(REPO, "midtrain_configs", "**", "*.yaml"), recursive=True)):
        with open(path) as f:
            cfg = yaml.safe_load(f)
        if isinstance(cfg, dict) and isinstance(cfg.get("model_config"), dict):
            found.append((os.path.relpath(path, REPO), cfg["model_config"]))
    return found


REPO_CONFIGS = repo_model_configs()


@pytest.mark.unit
def test_repo_has_model_configs():
    assert len(REPO_CONFIGS) >= 4, REPO_CONFIGS  # the fixture's and midtrain_configs/demo/*.yaml


@pytest.mark.unit
@pytest.mark.parametrize("where,model_config", REPO_CONFIGS, ids=[w for w, _ in REPO_CONFIGS])
def test_repo_model_configs(where, model_config):
    cfg = {"model_config": model_config}
    assert params_of(cfg) == meta_count(cfg)


# Named configs covering what the count distinguishes: GQA + RMSNorm + LLaMAMLP (Llama, Mistral, SmolLM2,
# Qwen2.5 with attn_bias), GemmaMLP, LayerNorm without affine (OLMo), olmo2 / default q-k norms and post
# norms (OLMo-2, Qwen3, Gemma-2), shared attention norm (falcon), lm_head bias (phi-2), mixture of experts.
NAMED = ["Llama-3.2-1B", "Mistral-7B-v0.1", "SmolLM2-135M", "Qwen2.5-0.5B", "Gemma-2b", "Gemma-2-2b", "OLMo-1B-hf",
         "OLMo-2-1124-7B", "Qwen3-0.6B", "falcon-7b", "phi-2", "Mixtral-8x7B-v0.1"]

LLAMA = {"name": "llama-ish", "block_size": 256, "vocab_size": 1000, "padding_multiple": 64, "n_layer": 3,
         "n_head": 8, "n_query_groups": 2, "n_embd": 256, "rotary_percentage": 1.0, "parallel_residual": False,
         "bias": False, "norm_class_name": "RMSNorm", "mlp_class_name": "LLaMAMLP", "intermediate_size": 688}
CUSTOM = {
    "llama": LLAMA,
    "llama-head-size": dict(LLAMA, head_size=48, attn_bias=True, lm_head_bias=True),
    "llama-norm-qk": dict(LLAMA, norm_qk=True, post_attention_norm=True, post_mlp_norm=True),
    "olmo2-norm-qk": dict(LLAMA, norm_qk=True, norm_qk_type="olmo2"),
    "neox-shared-norm": {"name": "neox", "n_layer": 2, "n_head": 4, "n_embd": 64, "vocab_size": 500,
                         "parallel_residual": True, "shared_attention_norm": True, "bias": True},
    "moe": dict(LLAMA, mlp_class_name="LLaMAMoE", n_expert=4, n_expert_per_token=2, moe_intermediate_size=128,
                n_shared_expert=2, first_k_dense_replace=1),
    "moe-grouped-router": dict(LLAMA, mlp_class_name="LLaMAMoE", n_expert=8, n_expert_per_token=2,
                               moe_intermediate_size=64, n_expert_groups=2, n_topk_groups=1,
                               n_topk_scores_per_group=2),
    "latent-attention": dict(LLAMA, n_query_groups=8, latent_attention={"q_lora_rank": 96, "kv_lora_rank": 64,
                                                                        "qk_rope_head_dim": 16,
                                                                        "qk_nope_head_dim": 32,
                                                                        "v_head_dim": 32}),
}


@pytest.mark.unit
@pytest.mark.parametrize("name", NAMED)
def test_llama_style_named_configs(name):
    assert params_of({"model_name": name}) == meta_count({"model_name": name})


@pytest.mark.unit
@pytest.mark.parametrize("name", list(CUSTOM))
def test_custom_model_configs(name):
    cfg = {"model_config": CUSTOM[name]}
    assert params_of(cfg) == meta_count(cfg)


@pytest.mark.unit
def test_model_config_wins_over_model_name_and_set_overrides_count():
    two = dict(CUSTOM["llama"], n_layer=2)
    assert params_of({"model_name": "pythia-70m", "model_config": two}) == meta_count({"model_config": two})
    assert params_of({"model_config": two}) < params_of({"model_config": CUSTOM["llama"]})


@pytest.mark.unit
def test_no_estimate_rather_than_a_wrong_one():
    assert params_of({}) is None
    assert params_of({"model_name": "no-such-model"}) is None
    assert params_of({"model_config": dict(LLAMA, mlp_class_name="SomeNewMLP")}) is None
    assert params_of({"model_config": dict(LLAMA, norm_class_name="GroupNorm")}) is None
    assert params_of({"model_config": dict(LLAMA, no_such_field=1)}) is None  # litgpt.Config refuses it too
    # litgpt refuses a sequential residual with a shared attention norm: no count either
    assert params_of({"model_config": dict(CUSTOM["neox-shared-norm"], parallel_residual=False)}) is None


@pytest.mark.unit
def test_derived_fields_are_litgpt_s():
    c = litgpt_config("pythia-70m")
    assert (c.padded_vocab_size, c.head_size, c.n_query_groups, c.intermediate_size) == (50304, 64, 8, 2048)
    assert gpt_param_count(c) == 70_426_624


NO_HEAVY_IMPORTS = r"""
import json, sys
from pathlib import Path
from midtrain.cli import main

def cli(*argv):
    try:
        main(list(argv))
    except SystemExit as e:
        assert e.code == 0, (argv, e.code)

spec, small, out = sys.argv[1:4]
cli("study", "plan", spec, "--check_files", "false", "--rows", "2")
from midtrain.study.folder import materialise
from midtrain.study.files import load_plan
materialise(load_plan(small, check_files=False), Path(out), Path(small))
cli("study", "status", small, "--out", out)
import midtrain.data.mixture, midtrain.data.shards  # what `study plan` with --check_files true reads shards with
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)))
"""


def test_plan_and_status_import_nothing_heavy(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO, DATA_ROOT="/data", CKPT_ROOT="/ckpt", TOKENIZER_DIR="/tok",
               SFT_ROOT="/sft")
    small = tmp_path / "small.yaml"
    small.write_text(yaml.safe_dump({
        "name": "small", "sizes": {"70m": {"config": os.path.join(REPO, "midtrain_configs/pretrain/pythia-70m.yaml")}},
        "arms": [{"name": "code", "domain": "code", "weight": [0.2], "start": [10000]}], "seeds": [0],
        "sft": {"lrs": [1e-4], "tasks": {"py": {"data": "/sft/py/train.jsonl"}}}}))
    code = f"HEAVY = {HEAVY!r}\n" + NO_HEAVY_IMPORTS
    r = subprocess.run([sys.executable, "-c", code, os.path.join(REPO, "midtrain_configs/studies/paper-main.yaml"),
                        str(small), str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "FLOPs (per token: 6 x the parameters without the input embedding" in r.stdout  # it had its counts
    assert json.loads(r.stdout.strip().splitlines()[-1]) == []
