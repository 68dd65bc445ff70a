"""Issue 29, item 2: revision names of the published intermediate checkpoints, read into steps and tokens.

Every name below is a real published one, copied from where it was read (nothing invented). Where a family's batch
size in tokens is published, the schedule's tokens at the name's step are checked to agree with the name's as
`midtrain import` checks them (revisions.tokens_agree)."""

import pytest

from midtrain import revisions
from midtrain.revisions import parse, tokens_agree

pytestmark = pytest.mark.unit  # the fast tier: `make test-unit`

# (name, step, tokens in the name or None) per family, with the source of the list
PUBLISHED = {
    # github.com/EleutherAI/pythia README: "154 checkpoints ... steps 0 (initialization), 1, 2, 4, 8, 16, 32, 64,
    # 128, 256, 512, 1000, and then every 1,000 subsequent steps"; "step143000 corresponds exactly to ... main"
    "pythia": [("step0", 0, None), ("step1", 1, None), ("step2", 2, None), ("step512", 512, None),
               ("step1000", 1000, None), ("step100000", 100000, None), ("step143000", 143000, None)],
    # huggingface.co/allenai/OLMo-7B card: "The naming convention is step1000-tokens4B", with step556000-tokens2460B
    # and step452000-tokens2000B; allenai/OLMo README (OLMo 2): stage1-step928646-tokens3896B (7B),
    # stage1-step596057-tokens5001B (13B), stage2-ingredient1-step11931-tokens50B; huggingface.co/allenai/
    # OLMo-2-1124-7B/discussions/6: step150-tokens1B, step2150-tokens10B (branches without the stage1- prefix)
    "olmo": [("step1000-tokens4B", 1000, 4e9), ("step556000-tokens2460B", 556000, 2460e9),
             ("step452000-tokens2000B", 452000, 2000e9), ("stage1-step928646-tokens3896B", 928646, 3896e9),
             ("stage1-step596057-tokens5001B", 596057, 5001e9),
             ("stage2-ingredient1-step11931-tokens50B", 11931, 50e9), ("step150-tokens1B", 150, 1e9),
             ("step2150-tokens10B", 2150, 10e9)],
    # HuggingFaceTB/SmolLM2-{135M,360M,1.7B}-intermediate-checkpoints cards: revisions step-240000, step-160000,
    # step-125000
    "smollm2": [("step-240000", 240000, None), ("step-160000", 160000, None), ("step-125000", 125000, None)],
    # github.com/jzhang38/TinyLlama README release table (repo names); TinyLlama/tinyLlama-intermediate-checkpoints
    # branches step-480k-token-1007B, step-720k-token-1510B
    "tinyllama": [("TinyLlama-1.1B-step-50K-105b", 50000, 105e9),
                  ("TinyLlama-1.1B-intermediate-step-240k-503b", 240000, 503e9),
                  ("TinyLlama-1.1B-intermediate-step-480k-1T", 480000, 1e12),
                  ("TinyLlama-1.1B-intermediate-step-715k-1.5T", 715000, 1.5e12),
                  ("TinyLlama-1.1B-intermediate-step-955k-token-2T", 955000, 2e12),
                  ("TinyLlama-1.1B-intermediate-step-1195k-token-2.5T", 1195000, 2.5e12),
                  ("TinyLlama-1.1B-intermediate-step-1431k-3T", 1431000, 3e12),
                  ("step-480k-token-1007B", 480000, 1007e9), ("step-720k-token-1510B", 720000, 1510e9)],
    # huggingface.co/LLM360/Amber card: 'a revision with a value between "ckpt_000" and "ckpt_358"'
    "amber": [("ckpt_000", None, 1 * revisions.AMBER_CHUNK_TOKENS), ("ckpt_100", None, 101 * revisions.AMBER_CHUNK_TOKENS),
              ("ckpt_358", None, 359 * revisions.AMBER_CHUNK_TOKENS)],
}
# tokens per optimizer step where the publisher states it: Pythia README (1024 x 2048); TinyLlama README (2M:
# 1024 x 2048); OLMo 2 configs/official-1124 (7B: 1024 x 4096; 13B: 2048 x 4096); OLMo-7B: the names fit
# 2160 x 2048 (the card's step556000-tokens2460B), OLMo 1B configs/official: 2048 x 2048
BATCH = {"step1000-tokens4B": 2160 * 2048, "step556000-tokens2460B": 2160 * 2048, "step452000-tokens2000B": 2160 * 2048,
         "stage1-step928646-tokens3896B": 1024 * 4096, "stage1-step596057-tokens5001B": 2048 * 4096,
         "stage2-ingredient1-step11931-tokens50B": 1024 * 4096, "step150-tokens1B": 1024 * 4096,
         "step2150-tokens10B": 1024 * 4096, **{n: 1024 * 2048 for n, _, _ in PUBLISHED["tinyllama"]}}
CASES = [(family, *case) for family, cases in PUBLISHED.items() for case in cases]


@pytest.mark.parametrize("family,name,step,tokens", CASES, ids=[c[1] for c in CASES])
def test_every_published_name_reads_as_its_step_and_tokens(family, name, step, tokens):
    rev = parse(name)
    assert rev is not None and rev.scheme == family and rev.step == step, rev
    assert rev.tokens == pytest.approx(tokens) if tokens is not None else rev.tokens is None
    # exactly one scheme matches it, and a folder named after it (the usual --local-dir) reads the same
    assert sum(bool(p.search(name)) for p, _, _ in revisions.SCHEMES.values()) == 1, name
    assert parse(f"/data/ckpts/some-model-{name}") == rev
    if name in BATCH:  # the publisher's batch puts the step at the name's tokens
        assert tokens_agree(rev, step * BATCH[name], BATCH[name]), name
        if tokens >= 10 * rev.token_unit:  # (below ten units the rounding hides it: step150-tokens1B)
            assert not tokens_agree(rev, step * BATCH[name] * 2, BATCH[name] * 2), name  # a doubled batch is caught


def test_what_is_not_a_revision_name():
    for name in ("main", "SmolLM2-360M", "OLMo-2-1124-7B", "pythia-160m", "Llama-3.2-1B", "TinyLlama-1.1B-Chat-v1.0",
                 "steps", "step", "checkpoint-500", "stepping-stone", "ckpt_1000"):
        assert parse(name) is None, name


def test_amber_chunks_check_a_given_step_to_within_half_a_chunk():
    """amber-train main.py: 1,706,976 // 2,240 = 762 steps per chunk, so ckpt_k is step 762 (k + 1); a --step one
    chunk off is refused (the 1% a rounded name allows is not given to an exact one)."""
    batch = 2240 * 2048
    for name, k in (("ckpt_100", 100), ("ckpt_358", 358)):
        rev = parse(name)
        assert tokens_agree(rev, 762 * (k + 1) * batch, batch), name
        assert not tokens_agree(rev, 762 * k * batch, batch) and not tokens_agree(rev, 762 * (k + 2) * batch, batch)


def test_the_rounding_each_name_shows_is_all_that_is_allowed():
    rev = parse("TinyLlama-1.1B-intermediate-step-480k-1T")
    assert rev.rounded and "thousands" in rev.note
    assert tokens_agree(rev, 1.4e12, 2e6) and not tokens_agree(rev, 1.6e12, 2e6)  # 1T: half a trillion either way
    rev = parse("step20000-tokens84B")
    assert tokens_agree(rev, 83.9e9, 4e6) and not tokens_agree(rev, 86e9, 4e6)  # 84B: one billion either way
    assert parse("stage2-ingredient1-step11931-tokens50B").stage == 2
    assert "restart" not in parse("stage1-step928646-tokens3896B").note


@pytest.mark.parametrize("config,names,phase", [
    ("smollm2-360m.yaml", ["step-160000", "step-2080000", "step-2560000"], ["stable", "decay", "decay"]),
    ("tinyllama-1.1b.yaml", ["TinyLlama-1.1B-intermediate-step-480k-1T", "step-480k-token-1007B",
                             "step-720k-token-1510B", "TinyLlama-1.1B-intermediate-step-1195k-token-2.5T"],
     ["cosine"] * 4),
    ("olmo-1b.yaml", ["step20000-tokens84B", "step117850-tokens494B"], ["cosine"] * 2),
    # allenai/OLMo-1B-hf's branches, which count slightly fewer tokens than OLMo-1B's (public scripts that fetch
    # them, found by the project's code search: a prefetch list and an analysis script's checkpoint table)
    ("olmo-1b.yaml", ["step10000-tokens41B", "step20000-tokens83B", "step330000-tokens1383B",
                      "step460000-tokens1928B", "step620000-tokens2599B", "step720000-tokens3018B",
                      "step738020-tokens3094B"], ["cosine"] * 7),
    ("olmo-2-7b.yaml", ["stage1-step928646-tokens3896B", "step150-tokens1B", "step2150-tokens10B"],
     ["cosine", "warmup", "cosine"]),
    ("pythia-160m.yaml", ["step1000", "step100000"], ["warmup", "cosine"]),
    ("olmo-2-7b-anneal.yaml", ["stage1-step928646-tokens3896B"], ["decay"]),
    ("olmo-2-13b.yaml", ["stage1-step596057-tokens5001B"], ["cosine"]),  # the allenai/OLMo README's name
    # OLMo-2-0425-1B: the README's last stage-1 name, and two that public code fetching it uses
    ("olmo-2-1b.yaml", ["stage1-step1907359-tokens4001B", "stage1-step10000-tokens21B", "stage1-step23100-tokens49B"],
     ["cosine"] * 3),
    # SmolLM2-135M and -1.7B: every 240k and 125k steps (their intermediate-checkpoint model cards)
    ("smollm2-135m.yaml", ["step-240000", "step-1440000", "step-1680000"], ["stable", "stable", "decay"]),
    ("smollm2-1.7b.yaml", ["step-125000", "step-4625000", "step-4750000"], ["stable", "stable", "decay"]),
])
def test_the_public_schedules_put_published_revisions_at_their_tokens(config, names, phase, monkeypatch):
    """Issue 29, item 3: each midtrain_configs/public/ run config's batch puts the family's published revisions at
    the tokens their names state (OLMo-1B's names: the TransformerLens/TRL lists of allenai/OLMo-1B branches), and
    says which phase of the schedule each sits in (SmolLM2's WSD decays from step 2,080,000)."""
    import os

    from support import REPO
    from midtrain.importer import _run_model_and_schedule, resolve_step, schedule_phase

    for var in ("DATA_ROOT", "CKPT_ROOT"):
        monkeypatch.setenv(var, "/unused")
    model, train, _ = _run_model_and_schedule(os.path.join(REPO, "midtrain_configs", "public", config))
    seq = train.max_seq_length or model.block_size
    horizon = train.total_steps(1, 1, seq)
    for name, where in zip(names, phase):
        step, said = resolve_step(None, name, "/unused", train.global_batch_size * seq)
        assert step == parse(name).step and said["step_from_name"], name
        assert schedule_phase(train, horizon, step).startswith(where), (name, schedule_phase(train, horizon, step))


def test_amber_public_config_checks_a_given_step_against_its_chunk(monkeypatch):
    """midtrain_configs/public/amber-7b.yaml's batch (2,240 x 2,048): ckpt_k at --step 762 (k + 1) agrees, a step
    one chunk off is one line naming --step, and no step at all is one line saying why."""
    import os

    from support import REPO
    from midtrain.errors import ConfigError
    from midtrain.importer import _run_model_and_schedule, resolve_step

    for var in ("DATA_ROOT", "CKPT_ROOT"):
        monkeypatch.setenv(var, "/unused")
    model, train, _ = _run_model_and_schedule(os.path.join(REPO, "midtrain_configs", "public", "amber-7b.yaml"))
    per_step = train.global_batch_size * (train.max_seq_length or model.block_size)
    assert resolve_step(762 * 350, "ckpt_349", "/unused", per_step)[0] == 266700
    with pytest.raises(ConfigError, match="^--step: .* either the step or the schedule's batch"):
        resolve_step(762 * 349, "ckpt_349", "/unused", per_step)
    with pytest.raises(ConfigError, match="^--step: not given, .* Amber's ckpt_NNN counts data chunks"):
        resolve_step(None, "ckpt_349", "/unused", per_step)


def test_olmo_2_anneal_config_is_olmo_2s_stage_2_schedule_step_for_step(monkeypatch):
    """midtrain_configs/public/olmo-2-7b-anneal.yaml: from the last stage-1 step, OLMo 2's stage 2 (OLMo2-7B-stage2-
    seed42.yaml: linear_with_warmup, t_warmup 0, lr 6.1499e-5, alpha_f 0 over max_duration 50e9 tokens of 1,024 x
    4,096): the LR at each step t of the anneal is 6.1499e-5 x (1 - t x 4,194,304 / 50e9), written out here."""
    import os

    from support import REPO
    from midtrain.importer import _run_model_and_schedule
    from midtrain.train.footprint import schedule_lr

    for var in ("DATA_ROOT", "CKPT_ROOT"):
        monkeypatch.setenv(var, "/unused")
    model, train, _ = _run_model_and_schedule(os.path.join(REPO, "midtrain_configs", "public", "olmo-2-7b-anneal.yaml"))
    per_step = train.global_batch_size * (train.max_seq_length or model.block_size)
    assert per_step == 1024 * 4096 and train.max_steps - 928646 == round(50e9 / per_step)
    for t in (0, 1, 5000, 11000, 11920):
        olmo = 6.1499e-5 * (1 - t * per_step / 50e9)
        assert schedule_lr(train, 6.1499e-5, train.max_steps, 928646 + t) == pytest.approx(olmo, rel=1e-3, abs=1e-9), t


# EleutherAI/pythia models/<S>/pythia-<s>.yml at a19eecb (read for issue 29): lr and min_lr per size; every size:
# train-iters 143,000, warmup 0.01, cosine, Adam (0.9, 0.95) eps 1e-8, weight-decay 0.1, clip 1.0, seq 2,048;
# the global batch of 1,024 sequences is the repo README's
PYTHIA = {"14m": (1e-3, 1e-4), "31m": (1e-3, 1e-4), "70m": (1e-3, 1e-4), "160m": (6e-4, 6e-5), "410m": (3e-4, 3e-5), "1b": (2.5e-4, 2.5e-5),
          "1.4b": (2e-4, 2e-5), "2.8b": (1.6e-4, 1.6e-5), "6.9b": (1.2e-4, 1.2e-5), "12b": (1.2e-4, 1.2e-5)}


@pytest.mark.parametrize("size", sorted(PYTHIA))
def test_pythia_public_configs_are_its_training_configs(size, monkeypatch):
    import os

    from support import REPO
    from midtrain.importer import _run_model_and_schedule
    from midtrain.train.startup import optimizer_lr

    for var in ("DATA_ROOT", "CKPT_ROOT"):
        monkeypatch.setenv(var, "/unused")
    path = os.path.join(REPO, "midtrain_configs", "public", f"pythia-{size}.yaml")
    model, train, raw = _run_model_and_schedule(path)
    lr, min_lr = PYTHIA[size]
    opt = raw["optimizer"]["init_args"]
    assert (optimizer_lr(raw["optimizer"]), train.min_lr) == (lr, min_lr) and model.name == f"pythia-{size}"
    assert (opt["weight_decay"], opt["betas"], opt["eps"], train.max_norm) == (0.1, [0.9, 0.95], 1e-8, 1.0)
    assert (train.max_steps, train.global_batch_size, train.max_seq_length, train.lr_warmup_fraction,
            train.lr_scheduler) == (143000, 1024, 2048, 0.01, "cosine")
    assert model.block_size == 2048  # 14m and 31m too, where litgpt's named configs say 512 and 1,024
