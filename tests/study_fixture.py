"""A tiny study on real shards: 1 base + 2 arms + 1 CPT, 1 SFT task x 2 LRs x 2 seeds (35 steps; seeds.vary: midtrain, the control re-run per seed)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml

MODEL = {"name": "study-tiny", "block_size": 32, "vocab_size": 320, "padded_vocab_size": 320, "n_layer": 1,
         "n_head": 2, "n_embd": 32, "rotary_percentage": 0.25, "parallel_residual": True, "bias": True,
         "norm_class_name": "LayerNorm", "mlp_class_name": "GptNeoxMLP", "intermediate_size": 64}


def build(root: Path) -> Path:
    """Writes tokenizer, shards, SFT splits, a base config and ``study.yaml`` under root; returns the spec."""
    from midtrain.data.prepare import prepare_shard
    from midtrain.tokenizer import train_bpe

    rng = random.Random(0)
    prose = [f"The {rng.choice(['old', 'quiet', 'long'])} river {i} passes the mill near town {i * 3}." for i in range(300)]
    code = [f"def f{i}(x):\n    return x * {i} + {rng.randrange(9)}\n" for i in range(300)]
    sft = [{"prompt": f"Write f{i}:", "response": f" def f{i}(x): return x + {i}"} for i in range(60)]
    tok = train_bpe(prose + code + [r["prompt"] + r["response"] for r in sft], root / "tok", vocab_size=320)
    for name, docs in (("1", prose), ("c1", code)):
        raw = root / "raw" / f"{name}.jsonl"
        raw.parent.mkdir(parents=True, exist_ok=True)
        raw.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
        prepare_shard([str(raw)], str(tok), str(root / "shards"), name, val_fraction=0.1, val_dir=str(root / "val"))
    for split, rows in (("train", sft[:40]), ("val", sft[40:50]), ("test", sft[50:])):
        (root / f"sft_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = {
        "model_config": MODEL, "out_dir": str(root / "unused"), "tokenizer_dir": str(tok), "logger_name": "csv",
        "precision": "32-true", "devices": 1,
        "data": {"class_path": "litgpt.data.ShardedMixedDataset",
                 "init_args": {"data_path": str(root / "shards"), "val_data_path": str(root / "val"), "seed": 42,
                               "num_workers": 0}},
        "train": {"max_steps": 12, "global_batch_size": 4, "micro_batch_size": 4, "max_seq_length": 32,
                  "log_interval": 4, "save_interval": 4, "lr_warmup_steps": 2, "min_lr": 1e-4},
        "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.003, "weight_decay": 0.1}},
        "eval": {"interval": 100, "max_iters": 2, "final_validation": False},
        "seed": 42,
    }
    (root / "base.yaml").write_text(yaml.safe_dump(base))
    spec = {
        "name": "tiny",
        "sizes": {"tiny": {"config": str(root / "base.yaml")}},
        "arms": [{"name": "code", "domain": "code", "start": [4], "weight": [0.2, 0.5]},
                 {"name": "cpt-code", "domain": "code", "start": [8], "weight": [1.0]}],
        "seeds": {"values": [0, 1], "vary": "midtrain", "control": "per_seed"},  # each arm and the control re-run per seed
        "sft": {"lrs": [1e-4, 1e-3], "tasks": {"fn": {"data": str(root / "sft_train.jsonl"),
                                                       "val_data": str(root / "sft_val.jsonl"),
                                                       "test_data": str(root / "sft_test.jsonl")}},
                "options": {"epochs": 1, "micro_batch_size": 8, "global_batch_size": 8, "forgetting_batches": 2}},
        "eval": {"max_batches": 2, "batch_size": 4, "checkpoints": "all"},
        "report": {"baseline": "pretrain-only", "proximity": {"max_tokens": 100000},
                   "overlap": {"against": {"prose": str(root / "raw" / "1.jsonl"), "code": str(root / "raw" / "c1.jsonl")}}},
    }
    (root / "study.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return root / "study.yaml"


def statuses(out: Path) -> dict[str, dict]:
    index = json.loads((out / "study.json").read_text())["steps"]
    result = {}
    for sid, info in index.items():
        try:
            result[sid] = json.loads((out / info["out"] / "status.json").read_text())
        except (OSError, ValueError):
            result[sid] = {}
    return result
