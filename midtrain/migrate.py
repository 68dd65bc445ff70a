"""``midtrain migrate``: a config written for the original fork -> midtrain's form, every change said.
``migrate_config`` is pure; ``migrate_file`` is the command (its I/O shell: the CLI's parser is built from its
signature).

The original's configs run here only with a different schedule than the paper's unless rewritten
(FIELD_NOTES, "Defects in the original code"); ``midtrain pretrain`` refuses them with one line,
and this module rewrites them:

- ``train.max_iters: 10000000`` was a placeholder for "forever", and ``max_additional_steps`` (often
  stale, copied between arms) set the real length. Both go; ``train.max_steps`` is the whole run
  (default the paper's 61,035), which is also the LR horizon, so a midtrain arm keeps its base
  run's curve and ends where the base would.
- No LR anywhere meant the original's ``train.max_lr`` default 3e-4; torch's AdamW default would be
  1e-3. The peak LR is written into ``optimizer.init_args.lr``.
- ``resume: true`` on a base run (no weights, or the main corpus only) becomes ``resume: auto``. A
  midtrain arm (weights on another type or shard, or a mix config) must continue a checkpoint:
  with ``--resume_from`` it resumes from it (``resume: auto`` then covers preemption); without it
  ``resume: true`` stays, so the arm refuses to start unless the symlink layout (or its own
  checkpoint) is there, as the original failed loudly; it never trains from step 0 unannounced.
- Keys no code read and empty keys are removed; type weights given as ``literal_weights_str`` move
  to ``mix_weights_str``. ``mix_weight`` alone (the original's "math from 20k" arm: it trained the
  main corpus only) cannot say what was meant: refused unless ``--mix_weights_str`` states it.
- ``logger_name: wandb`` falls back to tensorboard when wandb is not installed.
- ``stable_steps`` with a scheduler other than wsd goes; the from-scratch ``lr_scheduler: decay``
  run with a placeholder ``stable_steps`` (a flat LR to the end) becomes ``constant``.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Optional

PAPER_MAX_STEPS = 61_035
PAPER_PEAK_LR = 3e-4
_SHARD_ID = re.compile(r"^(main/\d+|[A-Za-z_][A-Za-z_\-]*\d+)$")


def is_arm(cfg: dict) -> bool:
    """A midtrain arm: its data weights name a type or shard other than the main corpus, or a mix config."""
    data = cfg.get("data")
    init = (data.get("init_args") if isinstance(data, dict) else None) or {}
    if init.get("mix_config_path"):
        return True
    for key in ("mix_weights_str", "literal_weights_str"):
        for part in str(init.get(key) or "").split(","):
            name = part.rpartition(":")[0].strip()
            if name and name != "main" and not name.startswith("main/"):
                return True
    return False


def migrate_config(cfg: dict, max_steps: int = PAPER_MAX_STEPS, lr: float = PAPER_PEAK_LR,
                   resume_from: Optional[str] = None, wandb_installed: bool = False,
                   mix_weights_str: Optional[str] = None, named_arm: bool = False) -> tuple[dict, list[str]]:
    """(the rewritten config, one line per change). The input is not modified.

    ``named_arm``: the file name says it continues a base (the original's ``*_from_*`` names).
    Raises ConfigError where the original's intent cannot be known (``mix_weight`` as the only
    mixture key without ``mix_weights_str``; ``mix_weights_str`` given for a config with its own)."""
    from midtrain.errors import ConfigError

    new = copy.deepcopy(cfg)
    changes: list[str] = []

    def change(key: str, old: Any, value: Any, why: str) -> None:
        changes.append(f"{key}: {old!r} -> {value!r} ({why})")

    for key in [k for k, v in new.items() if v is None]:
        del new[key]
        changes.append(f"{key}: removed (empty)")

    train = new.setdefault("train", {}) or {}
    new["train"] = train
    if "max_steps" not in train:
        train["max_steps"] = max_steps
        change("train.max_steps", None, max_steps, "the whole run and its LR horizon")
    elif train["max_steps"] != max_steps:
        changes.append(f"train.max_steps: {train['max_steps']!r} kept (the config's own; --max_steps not applied)")
    for key, why in (("max_iters", "the original's 'infinity' placeholder; max_steps is the run length"),
                     ("max_additional_steps", "the original's per-arm remainder, often stale; the run ends at max_steps")):
        if key in train:
            changes.append(f"train.{key}: {train.pop(key)!r} removed ({why})")

    if "stable_steps" in train and train.get("lr_scheduler", "cosine") != "wsd":
        if train.get("lr_scheduler") == "decay" and resume_from is None and not new.get("resume_from"):
            # the original's from-scratch "flatline" run: warmup, then a constant LR; decay runs branch off later
            change("train.lr_scheduler", "decay", "constant", f"stable_steps {train['stable_steps']!r} meant a flat "
                   "LR to the end; decay runs start from its checkpoints with lr_scheduler: decay")
            train["lr_scheduler"] = "constant"
        changes.append(f"train.stable_steps: {train.pop('stable_steps')!r} removed (only wsd reads it)")

    opt = new.get("optimizer")
    if isinstance(opt, str):
        opt = new["optimizer"] = {"class_path": opt if "." in opt else f"torch.optim.{opt}", "init_args": {}}
        changes.append(f"optimizer: {cfg['optimizer']!r} -> {{class_path: {opt['class_path']}, init_args}}")
    if opt is None:
        opt = new["optimizer"] = {"class_path": "torch.optim.AdamW", "init_args": {}}
        changes.append("optimizer: None -> torch.optim.AdamW")
    init = opt.get("init_args")
    if not isinstance(init, dict):
        init = opt["init_args"] = {}
    if "lr" not in init and train.get("max_lr") is None:
        init["lr"] = lr
        change("optimizer.init_args.lr", None, lr, "peak LR: the original's train.max_lr default; torch's would be 1e-3")

    data = new.get("data")
    init_args = data.get("init_args") if isinstance(data, dict) else None
    weight_keys = ("mix_weights_str", "literal_weights_str", "mix_config_path")
    has_weights = isinstance(init_args, dict) and any(init_args.get(k) for k in weight_keys)
    if mix_weights_str is not None:
        if has_weights:
            raise ConfigError("--mix_weights_str", "the config gives its own weights (" + ", ".join(
                k for k in weight_keys if init_args.get(k)) + "); edit them there")
        if not isinstance(data, dict):
            raise ConfigError("--mix_weights_str", "the config has no data section to put the weights in")
        init_args = data.setdefault("init_args", {}) or {}
        data["init_args"] = init_args
        init_args["mix_weights_str"] = mix_weights_str
        change("data.init_args.mix_weights_str", None, mix_weights_str, "given with --mix_weights_str")
    elif isinstance(init_args, dict) and "mix_weight" in init_args and not has_weights:
        raise ConfigError("data.init_args.mix_weight", f"{init_args['mix_weight']!r} is the only mixture key, and the "
                          "original never read it (it trained the main corpus only): state the mixture with "
                          "--mix_weights_str (e.g. main:0.8,math:0.2; main:1.0 for what the original trained)")
    # an arm continues a base checkpoint: weights beyond main, a mixture stated for it, a decay branch (it
    # decays from a checkpoint's LR), or a name that says so
    arm = is_arm(new) or mix_weights_str is not None or train.get("lr_scheduler") == "decay" or named_arm
    if new.get("resume") is True:
        if arm and resume_from is None:
            changes.append("resume: True kept (a midtrain arm must continue a checkpoint: the symlinked base step in "
                           "out_dir, or migrate with --resume_from; it refuses to start without one)")
        else:
            change("resume", True, "auto", "resume this run's newest checkpoint if any, else start")
            new["resume"] = "auto"
    if resume_from is not None:
        change("resume_from", new.get("resume_from"), resume_from, "midtrain: continue the base run at that step")
        new["resume_from"] = resume_from
        new.setdefault("resume", "auto")

    if isinstance(init_args, dict):
        if "mix_weight" in init_args:
            changes.append(f"data.init_args.mix_weight: {init_args.pop('mix_weight')!r} removed (the original read it "
                           "nowhere)")
        literal = init_args.get("literal_weights_str")
        if isinstance(literal, str) and "mix_weights_str" not in init_args:
            keys = [p.rpartition(":")[0].strip() for p in literal.split(",") if p.strip()]
            if keys and not any(_SHARD_ID.match(k) for k in keys):
                init_args["mix_weights_str"] = init_args.pop("literal_weights_str")
                changes.append(f"data.init_args.literal_weights_str -> mix_weights_str ({', '.join(keys)} are shard "
                               "types, not shards)")
        for key in [k for k, v in init_args.items() if v is None]:
            del init_args[key]
            changes.append(f"data.init_args.{key}: removed (empty)")

    if new.get("logger_name") == "wandb" and not wandb_installed:
        change("logger_name", "wandb", "tensorboard", "wandb is not installed here: pip install -e .[wandb]")
        new["logger_name"] = "tensorboard"
    return new, changes


def migrate_file(config: str, out: str, max_steps: int = PAPER_MAX_STEPS, lr: float = PAPER_PEAK_LR,
                 resume_from: Optional[str] = None, mix_weights_str: Optional[str] = None) -> int:
    """Rewrite a config of the original fork into midtrain's form, printing every change.

    What changes: the max_iters placeholder, no LR, resume: true, a stale max_additional_steps, mix_weight, wandb.

    Args:
        config: the original config (YAML)
        out: where the migrated config goes (never overwritten)
        max_steps: the whole run (the paper: 61035)
        lr: peak LR when the config gives none
        resume_from: midtrain arm: the base run's checkpoint to start from (else the symlink layout)
        mix_weights_str: the mixture, for a config whose only mixture key is the never-read mix_weight
    """
    import importlib.util
    from pathlib import Path

    import yaml

    from midtrain.atomic import check_writable_dir, write_text_atomic
    from midtrain.errors import ConfigError

    if max_steps < 1:
        raise ConfigError("--max_steps", f"must be >= 1, got {max_steps}")
    if not lr > 0:
        raise ConfigError("--lr", f"must be > 0, got {lr}")
    try:
        cfg = yaml.safe_load(Path(config).read_text())
    except FileNotFoundError:
        raise ConfigError("--config", f"{config} does not exist") from None
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError("--config", f"{config} is not readable YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(cfg, dict):
        raise ConfigError("--config", f"{config} is not a YAML mapping")
    if Path(out).exists():
        raise ConfigError("--out", f"{out} already exists (never overwritten)")
    check_writable_dir(Path(out).parent, "--out")
    new, changes = migrate_config(cfg, max_steps, lr, resume_from, importlib.util.find_spec("wandb") is not None,
                                  mix_weights_str, named_arm="from_" in Path(config).stem)
    header = [f"# Migrated from {config} by `midtrain migrate`. Changes:"] + [f"#   {c}" for c in changes]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, "\n".join(header) + "\n" + yaml.safe_dump(new, sort_keys=False))
    print(f"{config} -> {out}: {len(changes)} change(s)")
    for c in changes:
        print(f"  {c}")
    if "resume_from" not in new and new.get("resume") is True:  # migrate keeps resume: true for arms only
        print("  note: a midtrain arm without resume_from resumes from the symlink layout: link the base run's "
              "step-N into out_dir (util_scripts/symlink_chkpts.sh), or migrate again with --resume_from BASE/step-N; "
              "it refuses to start without a checkpoint")
    return 0
