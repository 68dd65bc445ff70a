"""Write the paper's run configs into midtrain_configs/ (pretrain, midtrain, ablations).

Usage: python util_scripts/make_paper_configs.py [--out midtrain_configs]
The setup (FIELD_NOTES / arXiv 2510.14865): Pythia from scratch on C4, seq 2048, global batch 1024,
61,035 steps (128B tokens), AdamW wd 0.1 betas (0.9, 0.95), cosine 3e-4 -> 1e-6 with 10% warmup,
bf16-true, grad clip 1.0, micro batch 16 (70M/160M), 8 (410M), 4 (1B) on 8 GPUs. Midtraining resumes
the base run at step S with a new mixture and keeps the LR schedule. Paths come from ${DATA_ROOT},
${CKPT_ROOT} and ${TOKENIZER_DIR}, expanded when a config is loaded. Copy a file to design a new
experiment; run `midtrain mix --config FILE` to see what it will read.
"""

import argparse
import json
import os

STEPS = 61_035
MICRO = {"70m": 16, "160m": 16, "410m": 8, "1b": 4}
# domain -> (mixture, default start step, per-model start overrides)
MIDTRAIN = {
    "code20": ("main:0.8,code:0.2", 6000, {"70m": 10000}),
    "math12": ("main:0.88,math:0.12", 20000, {}),
    "flan5": ("main:0.95,instruct:0.05", 40000, {}),
    "qa20": (None, 40000, {}),  # mix_configs/qa20.json: q1-q4 at 15/3/1.5/0.5 of the total
    "web20": ("main:0.8,web:0.2", 40000, {}),
}
MIX_FILES = {
    "code20": {"weights": {"main": 0.8, "code": 0.2}},
    "math12": {"weights": {"main": 0.88, "math": 0.12}},
    "flan5": {"weights": {"main": 0.95, "instruct": 0.05}},
    "flan15": {"weights": {"main": 0.85, "instruct": 0.15}},
    "qa20": {"weights": {"main": 0.8, "q1": 0.15, "q2": 0.03, "q3": 0.015, "q4": 0.005}},
    "web20": {"weights": {"main": 0.8, "web": 0.2}},
}


def run(model, out_dir, mix=None, mix_file=None, resume_from=None, scheduler="cosine", comment=""):
    data = {"data_path": "${DATA_ROOT}/shards", "val_data_path": "${DATA_ROOT}/val"}
    if mix:
        data["mix_weights_str"] = mix
    if mix_file:
        data["mix_config_path"] = "${MIDTRAIN_HOME:-.}/midtrain_configs/mix_configs/" + mix_file
    data.update({"seed": 42, "num_workers": 4})
    train = {"max_steps": STEPS, "global_batch_size": 1024, "micro_batch_size": MICRO[model], "max_seq_length": 2048,
             "save_interval": 1000, "log_interval": 10, "lr_scheduler": scheduler, "lr_warmup_fraction": 0.1,
             "min_lr": 1.0e-6, "max_norm": 1.0}
    if scheduler == "wsd":
        train.update({"decay_fraction": 0.2, "decay_shape": "linear"})
    cfg = {"model_name": f"pythia-{model}", "out_dir": out_dir, "precision": "bf16-true",
           "tokenizer_dir": "${TOKENIZER_DIR}", "resume": "auto"}
    if resume_from:
        cfg["resume_from"] = resume_from
    cfg.update({"devices": 8, "num_nodes": 1,
                "data": {"class_path": "litgpt.data.ShardedMixedDataset", "init_args": data}, "train": train,
                "eval": {"interval": 1000, "max_iters": 100, "initial_validation": False, "final_validation": True},
                "optimizer": {"class_path": "torch.optim.AdamW",
                              "init_args": {"lr": 3.0e-4, "weight_decay": 0.1, "betas": [0.9, 0.95]}},
                "logger_name": "tensorboard", "seed": 42})
    return comment, cfg


def base_dir(model):
    return f"${{CKPT_ROOT}}/pretrain/pythia-{model}"


def midtrain(model, name, mix, start, mix_file=None, comment=""):
    return run(model, f"${{CKPT_ROOT}}/midtrain/pythia-{model}-{name}", mix=mix, mix_file=mix_file,
               resume_from=f"{base_dir(model)}/step-{start:08d}", comment=comment)


def all_configs():
    out = {}
    for model in MICRO:
        out[f"pretrain/pythia-{model}.yaml"] = run(model, base_dir(model), comment=(
            f"Pretrain Pythia-{model.upper()} from scratch on C4: {STEPS:,} steps x 1024 x 2048 = 128B tokens."))
    out["pretrain/pythia-160m-wsd.yaml"] = run("160m", "${CKPT_ROOT}/pretrain/pythia-160m-wsd", scheduler="wsd",
                                               comment="Pretrain Pythia-160M with warmup-stable-decay (last 20% decays).")
    for model in MICRO:  # 70M, 160M, 410M and 1B: the paper reports every domain at every size
        for name, (mix, start, overrides) in MIDTRAIN.items():
            s = overrides.get(model, start)
            out[f"midtrain/pythia-{model}-{name}-from{s // 1000}k.yaml"] = midtrain(
                model, f"{name}-from{s // 1000}k", mix, s, mix_file="qa20.json" if mix is None else None,
                comment=f"Midtrain Pythia-{model.upper()}: resume the base run at step {s:,} with the {name} mixture.")
    out["midtrain/pythia-70m-flan15-from40k.yaml"] = midtrain(
        "70m", "flan15-from40k", "main:0.85,instruct:0.15", 40000,
        comment="Midtrain Pythia-70M with 15% FLAN from step 40,000.")
    for model in ("70m", "160m"):
        for start in (20000, 30000, 40000, 50000):
            out[f"ablations/timing/pythia-{model}-code20-from{start // 1000}k.yaml"] = midtrain(
                model, f"timing-code20-from{start // 1000}k", "main:0.8,code:0.2", start,
                comment=f"Timing ablation: 20% code starting at step {start:,}.")
        for pct in (10, 30, 50, 80):
            out[f"ablations/percentage/pythia-{model}-code{pct}-from40k.yaml"] = midtrain(
                model, f"percentage-code{pct}-from40k", f"main:{(100 - pct) / 100:g},code:{pct / 100:g}", 40000,
                comment=f"Percentage ablation: {pct}% code from step 40,000.")
        out[f"ablations/cts_pretrain/pythia-{model}-code100-from40k.yaml"] = midtrain(
            model, "cpt-code100-from40k", "code:1", 40000,
            comment="Continued-pretraining control: 100% code from step 40,000.")
        out[f"ablations/cts_pretrain/pythia-{model}-math100-from56k.yaml"] = midtrain(
            model, "cpt-math100-from56k", "math:1", 56000,
            comment="Continued-pretraining control: 100% math from step 56,000.")
    return out


def main():
    import yaml

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                  "midtrain_configs"))
    args = ap.parse_args()
    for rel, (comment, cfg) in all_configs().items():
        path = os.path.join(args.out, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(f"# {comment}\n# Generated by util_scripts/make_paper_configs.py; "
                    "paths come from ${DATA_ROOT}, ${CKPT_ROOT}, ${TOKENIZER_DIR}.\n")
            yaml.safe_dump(cfg, f, sort_keys=False)
    os.makedirs(os.path.join(args.out, "mix_configs"), exist_ok=True)
    for name, mix in MIX_FILES.items():
        with open(os.path.join(args.out, "mix_configs", f"{name}.json"), "w") as f:
            json.dump(mix, f, indent=2)
            f.write("\n")
    print(f"wrote {len(all_configs())} configs and {len(MIX_FILES)} mix files under {args.out}")


if __name__ == "__main__":
    main()
