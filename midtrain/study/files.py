"""Reading a study: the spec YAML, each size's base config, the checks that need the file system
(shard types of the arms' domains, SFT files), parameter counts and SFT token estimates.

`study plan` and `study status` run on login nodes, again and again: nothing here imports torch, litgpt's
model or litdata (parameter counts are arithmetic: ``midtrain.study.params``)."""

from __future__ import annotations

import json
from dataclasses import replace
import os
from pathlib import Path

from midtrain.errors import ConfigError
from midtrain.study.params import params_of
from midtrain.study.plan import LOGGING_ONLY, Plan, _flat, in_fields, make_plan
from midtrain.study.spec import Spec, data_args, parse_spec


def _resolve(path: str, spec_dir: Path) -> str:
    """A path as given (relative to the working folder), else relative to the spec's folder."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return str(p.resolve())
    q = spec_dir / p
    return str(q.resolve()) if q.exists() else str(p)


def load_spec(path: str | os.PathLike, check_files: bool = True) -> Spec:
    from midtrain.config_io import load_config

    path = Path(path)
    if not path.is_file():
        raise ConfigError("SPEC", f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    raw = load_config(path)
    if isinstance(raw, dict) and not raw.get("name"):  # unnamed: the file's stem names it (report/STEM/)
        raw = {**raw, "name": path.stem}
    spec_dir = path.resolve().parent
    sizes = raw.get("sizes") if isinstance(raw.get("sizes"), dict) else {}
    bases = {}
    for name, s in sizes.items():
        if isinstance(s, dict) and s.get("config"):
            cfg_path = _resolve(str(s["config"]), spec_dir)
            try:
                bases[str(name)] = load_config(cfg_path)
            except ConfigError as e:
                raise ConfigError(f"sizes.{name}.config", str(e)) from None
        else:
            bases[str(name)] = {}
    spec = parse_spec(raw, bases)
    if check_files:  # plan and run (status reads a folder, and stays light): in a child, which imports the trainer
        from midtrain.forked import run_forked

        run_forked(check_run_configs, spec, raw, bases)
    spec = replace(spec, sizes=tuple(replace(s, origin=checkpoint_origin(s.checkpoint)) if s.checkpoint else s
                                     for s in spec.sizes),
                   arms=tuple(_with_mix_config_weights(a) for a in spec.arms))
    if check_files:
        check_inputs(spec, spec_dir)
    return spec


def check_run_configs(spec: Spec, raw: dict, bases: dict) -> None:
    """Every size's run config (its YAML with ``set:`` applied) parsed by the trainer's own parser: a key
    it does not take (``set: {train.max_step: 80}``) or a value of the wrong type is one line here, not a
    plan of another run and a first step that fails (issue 27, class 13). Blames ``set`` when the config
    alone parses. Imports the trainer: ``load_spec`` runs it in a forked child."""
    from jsonargparse import ArgumentError

    for size in spec.sizes:
        try:
            resolved_run_config(size.config)
        except ArgumentError as e:
            where = f"sizes.{size.name}.set"
            if (raw["sizes"][size.name] or {}).get("set"):
                try:
                    resolved_run_config(bases[size.name])
                except ArgumentError:
                    where = f"sizes.{size.name}.config"
            else:
                where = f"sizes.{size.name}.config"
            raise ConfigError(where, f"the trainer's parser refuses it: {' '.join(str(e).split())[:400]}") from None


def _with_mix_config_weights(arm):
    """An arm given as a mix_config file carries that file's weights as its ``mixture`` (types or shard ids,
    as written), so that reports (proximity) see what it trains on; the run itself reads the file."""
    if not arm.mix_config or not Path(arm.mix_config).is_file():
        return arm
    from midtrain.data.mixture import mix_spec

    field = f"arms: {arm.family}.mix_config"
    try:
        cfg = json.loads(Path(arm.mix_config).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(field, f"{arm.mix_config} is not a JSON mix config ({e})") from None
    ms = mix_spec(mix_config=cfg, mix_config_field=field)
    return replace(arm, mixture=",".join(f"{k}:{w:.10g}" for k, w in ms.weights))


def checkpoint_origin(checkpoint: str) -> dict:
    """What identifies a size's starting checkpoint: its `midtrain import` note (with the weights' sha256),
    else the step and the size and mtime of its weights file ({} when it is not there yet)."""
    path = Path(checkpoint)
    try:
        state = json.loads((path / "training_state.json").read_text())
        notes = (state.get("data") or {}).get("notes") or []
        note = next((n for n in notes if "optimizer" in n), None)
        if note is not None:
            return dict(note)
        st = (path / "lit_model.pth").stat()
        return {"step": state.get("step"), "weights_bytes": st.st_size, "weights_mtime_ns": st.st_mtime_ns}
    except (OSError, ValueError, AttributeError):
        return {}


def check_inputs(spec: Spec, spec_dir: Path) -> None:
    """What the pure parser cannot see: the arms' domains exist in each base's shards, SFT files exist."""
    from midtrain.data.shards import discover

    for size in spec.sizes:
        if size.checkpoint:
            _check_imported(size)
        args = data_args(size.config)
        disc = discover(args["data_path"], args.get("shard_types"), f"sizes.{size.name}: data.data_path")
        types = disc.by_type()
        ids = disc.by_id()
        for i, arm in enumerate(spec.arms):
            if arm.domain is not None and arm.domain not in types:
                raise ConfigError(f"arms: {arm.family}.domain", f"{arm.domain!r} is not a shard type under "
                                  f"{args['data_path']} (found: {', '.join(types)})")
            if arm.mix_config:
                if not Path(arm.mix_config).is_file():
                    raise ConfigError(f"arms: {arm.family}.mix_config", f"{arm.mix_config} does not exist")
            elif arm.domain is None:
                from midtrain.data.mixture import parse_weights

                for key, _ in parse_weights(arm.mixture, f"arms: {arm.family}.mixture"):
                    if key not in types and key not in ids:
                        raise ConfigError(f"arms: {arm.family}.mixture", f"{key!r} is neither a shard type nor a "
                                          f"shard under {args['data_path']}")
        val = spec.pretrain_val_path or args.get("val_data_path")
        if not val:
            raise ConfigError("sft.pretrain_val_path", f"base {size.name!r} has no data.val_data_path: give the "
                              "main-corpus val sets (forgetting is the loss on them after SFT)")
        if spec.sft_options.get("forgetting_sets") and spec.tasks and Path(val).is_dir():
            from midtrain.data.shards import discover_val_sets

            # (named as the SFT step will name them: it reads the folder with the default shard types)
            have = discover_val_sets(val, None, "sft.pretrain_val_path")
            missing = [x for x in spec.sft_options["forgetting_sets"] if x not in have]
            if missing:
                raise ConfigError("sft.options.forgetting_sets", f"{missing[0]!r} is not a validation set in {val} "
                                  f"(it has: {', '.join(sorted(have))})")
    for task in spec.tasks:
        for key in ("data", "val_data", "test_data"):
            value = getattr(task, key)
            if value is not None and not Path(value).is_file():
                raise ConfigError(f"sft.tasks.{task.name}.{key}", f"{value} does not exist")


def _check_imported(size) -> None:
    """An imported size's checkpoint exists and was saved at the step the spec says."""
    state_path = Path(size.checkpoint) / "training_state.json"
    if not (Path(size.checkpoint) / "lit_model.pth").is_file() or not state_path.is_file():
        raise ConfigError(f"sizes.{size.name}.checkpoint", f"{size.checkpoint} is not a midtrain checkpoint "
                          "(lit_model.pth + training_state.json; make one with `midtrain import`)")
    try:
        saved = json.loads(state_path.read_text()).get("step")
    except ValueError:
        raise ConfigError(f"sizes.{size.name}.checkpoint", f"{state_path} is not JSON") from None
    if saved != size.start_step:
        raise ConfigError(f"sizes.{size.name}.step", f"{size.start_step}, but {size.checkpoint} was saved at step {saved}")
    from midtrain.train.checkpoint import tied_embeddings

    tied, says = tied_embeddings(Path(size.checkpoint)), (size.config.get("train") or {}).get("tie_embeddings")
    if tied != bool(says):  # every arm would refuse it at its start (startup.check_tied): said before any runs
        raise ConfigError(f"sizes.{size.name}: train.tie_embeddings", f"{'unset' if says is None else says}, but "
                          f"{size.checkpoint} has {'tied' if tied else 'untied'} input/output embeddings: set "
                          f"train.tie_embeddings: {str(tied).lower()} (in its config or set:)")


def sft_token_estimate(spec: Spec, size_config: dict) -> dict[str, int]:
    """Upper bound per SFT run: training examples × epochs × sequence length."""
    epochs = int(spec.sft_options.get("epochs", 4))
    seq = spec.sft_options.get("max_seq_length") or (size_config.get("train") or {}).get("max_seq_length") or \
        (size_config.get("model_config") or {}).get("block_size") or 2048
    out = {}
    for task in spec.tasks:
        try:
            with open(task.data) as f:
                n = sum(1 for line in f if line.strip())
        except OSError:
            continue
        out[task.name] = n * epochs * int(seq)
    return out


def load_plan(path: str | os.PathLike, check_files: bool = True, estimate: bool = True, known=(),
              out: str | os.PathLike | None = None) -> Plan:
    """The plan of the spec at ``path``; ``known``: base segments already planned in its study folder ``out``
    (whose finished training steps outlive a logging-only change)."""
    from midtrain.study.folder import read_bases, read_ran

    spec = load_spec(path, check_files)
    params = {s.name: params_of(s.config) for s in spec.sizes}  # always: a GPU task's memory share depends on it
    tokens = sft_token_estimate(spec, spec.sizes[0].config) if estimate else {}
    known = list(known)
    for size in spec.sizes:
        if size.base:  # another study folder's base run: its segments, read in place
            folder = Path(size.base).resolve()
            if not (folder / "bases.json").is_file():
                if (folder / "final").is_dir() or any(folder.glob("step-*")):  # a plain `midtrain pretrain` run
                    if spec.vary == "base":
                        raise ConfigError(f"sizes.{size.name}.base", f"{size.base} is one base run, and seeds.vary: "
                                          "base trains one per seed (name a study folder that holds them, or vary "
                                          "sft or midtrain)")
                    known = [k for k in known if not (k.run_folder and k.folder == str(folder))]
                    known.append(run_folder_segment(folder, size))  # read afresh: what it holds now
                    continue
                raise ConfigError(f"sizes.{size.name}.base", f"{size.base} is not a study folder with base runs "
                                  "(no bases.json: run a study there first) nor a run folder (no final/ or step-*/ "
                                  "checkpoint)")
            known += [replace(seg, folder=str(folder)) if not seg.folder else seg for seg in read_bases(folder)
                      if not seg.folder or seg.run_folder]
    plan = make_plan(spec, {k: v for k, v in params.items() if v}, tokens, known=known,
                     ran=read_ran(Path(out), spec.name) if out is not None else None)
    for size in spec.sizes:
        if size.base and (Path(size.base) / "bases.json").is_file() and \
                not any(s.external and s.labels.get("size") == size.name for s in plan.steps):
            raise ConfigError(f"sizes.{size.name}.base", f"{size.base} holds no base run with this size's resolved "
                              "config (a base run is reused only when every field of its config is the same)")
    return plan


# Fields of a run config that decide nothing about its weights: where it writes, how it was continued,
# what it logs and evaluates (LOGGING_ONLY), which checkpoints it keeps (exact resume makes every cut the same run).
NOT_WEIGHTS = ("out_dir", "resume", "resume_from", "train.max_additional_steps", "train.save_interval",
               "keep_last_n") + LOGGING_ONLY


def resolved_run_config(cfg: dict) -> dict:
    """``cfg`` resolved the way ``midtrain pretrain`` writes ``hyperparameters.yaml`` (every default filled
    in by its parser), so that a config and a finished run's record compare field by field. Imports the
    trainer (torch): only for a size whose base is a run folder."""

    from midtrain.run_args import run_parser  # the one definition of a run config's fields
    from midtrain.run_args import run_config_dict, run_namespace

    parser = run_parser("")
    args = run_namespace(parser, [], cfg)
    return run_config_dict({k: v for k, v in args.as_dict().items() if k not in ("config", "run_yaml", "__path__")})


def run_folder_segment(folder: Path, size):
    """A plain ``midtrain pretrain`` out_dir as ``size``'s base run (``sizes.X.base: RUN_DIR``): one base
    segment 0 -> its ``final`` checkpoint, with every ``step-*`` checkpoint it kept, read in place.

    Refused in one line unless the folder is the size's base run, trained in this folder from scratch:
    - a finished run: ``final/`` exists (a run still being written, or stopped, may yet change or prune
      what it holds);
    - in every checkpoint it holds, every field that decides the weights equals the size's config (the
      recorded ``hyperparameters.yaml`` and the config, both resolved with the trainer's defaults), and
      ``resume_from`` is unset (a run continued from another folder's checkpoint has a history this
      folder does not show);
    - one mixture stage from step 0 (not a midtrained or imported run), no checkpoint a link out of it."""
    import yaml
    from jsonargparse import ArgumentError

    from midtrain.study.plan import BaseSegment, base_key, config_hash
    from midtrain.study.spec import CONTROL, set_dotted
    from midtrain.train import checkpoint as ckpt

    where = f"sizes.{size.name}.base"
    found = ckpt.list_checkpoints(folder)
    if not (folder / ckpt.FINAL / ckpt.MODEL_FILE).is_file():
        raise ConfigError(where, f"{folder} has no complete final/ checkpoint: the run is not finished (or is still "
                          "being written); name it once it has ended")
    mine = _flat(resolved_run_config(size.config))
    for step, path in found:
        if path.is_symlink() or path.resolve().parent != folder.resolve():
            raise ConfigError(where, f"{path} links out of {folder}: its history is another run's")
        try:
            recorded = yaml.safe_load((path / "hyperparameters.yaml").read_text()) or {}
            state = ckpt.read_training_state(path)
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(where, f"{path}/hyperparameters.yaml is unreadable ({type(e).__name__})") from None
        if recorded.get("resume_from") or recorded.get("initial_checkpoint_dir"):
            raise ConfigError(where, f"{path} was trained from {recorded.get('resume_from') or recorded.get('initial_checkpoint_dir')}"
                              ": a base run named as a size's base must be trained in its own folder from scratch")
        data = state.get("data") or {}
        stages, notes = data.get("stages"), data.get("notes") or []
        if any("imported" in n for n in notes):
            raise ConfigError(where, f"{path} continues an imported checkpoint: name it with checkpoint: and step: instead")
        if stages is not None and (len(stages) != 1 or stages[0].get("start", 0) != 0):
            raise ConfigError(where, f"{path} holds {len(stages)} mixture stages: it was midtrained, not a base run")
        try:  # resolved as the size's config is (an older record wrote the optimizer as it was given)
            theirs = _flat(resolved_run_config(recorded))
        except (ArgumentError, ConfigError):
            theirs = _flat(recorded)
        for key in sorted(set(mine) | set(theirs)):
            if in_fields(key, NOT_WEIGHTS):
                continue
            if mine.get(key) != theirs.get(key):
                raise ConfigError(where, f"{path} was trained with {key}: {theirs.get(key)!r}, and this size's config "
                                  f"says {mine.get(key)!r}: it is another base run (only fields that change no weight "
                                  "may differ: out_dir, resume, save/log intervals, logger, eval)")
    last_step = next(s for s, p in found if p.name == ckpt.FINAL)
    if last_step > size.max_steps:
        raise ConfigError(where, f"{folder} reached step {last_step}, past train.max_steps {size.max_steps}")
    key = base_key(size.config)
    cfg = set_dotted(size.config, "train.max_additional_steps", last_step)
    kept = tuple(sorted({s for s, p in found if p.name != ckpt.FINAL and s < last_step}))
    labels = {"size": size.name, "start": 0, "end": last_step, "seed": None, "base_key": key, "save_every": None,
              "arm": CONTROL if last_step == size.max_steps else None, "kept": [*kept, last_step]}
    h = config_hash("pretrain", cfg, [f"base:{key}", "from:0", f"run-folder:{folder}"])
    return BaseSegment(id=f"base/{size.name}/run-folder", out=".", hash=h, key=key, size=size.name, start=0,
                       end=last_step, save_every=None, config=cfg, labels=labels, spec="run folder", folder=str(folder),
                       kept=kept, run_folder=True)


def spec_digest(path: str | os.PathLike) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
