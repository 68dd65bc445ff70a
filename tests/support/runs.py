"""A tiny model, run configs over the ``real_tree`` fixture's shards, and readers of a run's outputs."""

import csv
import glob
import json
import os

import numpy as np
import torch
import yaml

DOCS = [f"Document {i}: the quick brown fox jumps over {i * 7} lazy dogs. " * (1 + i % 4) for i in range(120)]
WORDS = "the quick brown fox jumps over a lazy dog while seven small cats watch from under the old wooden bench".split()

TINY_MODEL = {"name": "tiny", "block_size": 32, "vocab_size": 512, "padded_vocab_size": 512, "n_layer": 2,
              "n_head": 2, "n_embd": 32, "rotary_percentage": 0.25, "parallel_residual": True, "bias": True,
              "norm_class_name": "LayerNorm", "mlp_class_name": "GptNeoxMLP", "intermediate_size": 128}


def write_config(tmp_path, real_tree, name="run.yaml", mix="main:0.9,math:0.1", workers=0, train=None, **top):
    cfg = {
        "model_config": TINY_MODEL, "out_dir": str(tmp_path / "base"), "logger_name": "csv",
        "data": {"class_path": "litgpt.data.ShardedMixedDataset",
                 "init_args": {"data_path": str(real_tree), "val_data_path": str(real_tree.parent / "val"),
                               "mix_weights_str": mix, "num_workers": workers}},
        "train": {"max_steps": 24, "global_batch_size": 8, "micro_batch_size": 4, "max_seq_length": 16,
                  "log_interval": 1, "save_interval": 8, "lr_warmup_steps": 2, "min_lr": 1e-4, **(train or {})},
        "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.003, "weight_decay": 0.1}},
        "eval": {"interval": 8, "max_iters": 2},
    }
    cfg.update(top)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def metrics(out_dir):
    (path,) = glob.glob(os.path.join(out_dir, "logs", "csv", "version_*", "metrics.csv"))[-1:]
    with open(path) as f:
        return list(csv.DictReader(f))


def weights(ckpt_dir):
    return torch.load(os.path.join(ckpt_dir, "lit_model.pth"), weights_only=False)["model"]


def assert_same_weights(a, b, atol=1e-6):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=atol, rtol=0), k


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def shard_tokens(path):
    idx = json.loads((path / "index.json").read_text())
    out = []
    for c in idx["chunks"]:
        header = (1 + c["chunk_size"] + 1) * 4
        out.append(np.fromfile(path / c["filename"], dtype=np.int32, offset=header)[: c["dim"]])
    return np.concatenate(out).tolist()
