"""A study spec: one YAML file for a whole midtraining experiment (bases × arms × seeds × SFT × evals).

Pure: ``parse_spec(raw, base_configs)`` takes the YAML mapping (``${VAR}`` already expanded) and each
size's base run config (already loaded), and returns a validated ``Spec`` or raises a one-line
``ConfigError`` naming the key. Reading files is ``midtrain.study.files``'s job.

::

    name: paper-main                     # a label
    sizes:                               # one base run per model size (its run YAML + overrides)
      70m: {config: midtrain_configs/pretrain/pythia-70m.yaml, set: {train.max_steps: 61035}}
      # or a public checkpoint imported with `midtrain import` at step S of the config's schedule: nothing
      # is pretrained; arms start at S, pretrain-only continues the checkpoint with the config's mixture
      160m: {checkpoint: ${CKPT_ROOT}/pythia-160m/step-00100000, step: 100000, config: runs/pythia-160m.yaml}
      # or the base run another study folder trained (same base config): its segments and kept checkpoints
      # are reused in place (never written to); what it lacks is trained here
      410m: {config: midtrain_configs/pretrain/pythia-410m.yaml, base: /ckpt/studies/main}
      # or a plain `midtrain pretrain` out_dir trained with the same config (only fields that change no
      # weight may differ): its kept step-*/ and final/ checkpoints, read in place
      1b: {config: midtrain_configs/pretrain/pythia-1b.yaml, base: /ckpt/runs/pythia-1b}
    arms:                                # each a grid: domain × start step × weight
      - {name: code, domain: code, start: [6000], weight: [0.2]}
      - {name: cpt-code, domain: code, start: [40000], weight: [1.0]}   # CPT: weight 1.0
      - {name: qa, mixture: "main:0.8,q1:0.15,q2:0.03,q3:0.015,q4:0.005", start: [40000]}
      # dose-matched: the same domain dose w·(T−S) at every start (here 4,000 steps' worth of domain data), so
      # that the LR at the start and the dose come apart; each start gets weight = dose / (T − S)
      - {name: code-dm, domain: code, start: [40000, 50000], dose: [4000]}
      # a precision control: the same arm (data, seed, schedule) at each precision, named code20-from50000-bf16-true
      # and ...-bf16-mixed; the report gives the precision effect per arm
      - {name: code, domain: code, start: [50000], weight: [0.2], precision: [bf16-true, bf16-mixed]}
      # SFT on some tasks only (default: every task; the control is fine-tuned on every task)
      - {name: math, domain: math, start: [6000], weight: [0.2], tasks: [gsm]}
    seeds: [0, 1, 2, 3, 4]               # SFT seeds: one midtrained checkpoint per arm, fine-tuned per seed
    # or {values: [0, 1, 2], vary: sft | midtrain | base}: what each seed re-runs (see VARY); under vary:
    # midtrain, control: shared (the default: one pretrain-only run) | per_seed (re-run per seed from the earliest
    # arm start; it samples the control's data order only where the base mixture's epochs turn over: CONTROLS)
    sft:
      lrs: [3e-4, 1e-3, 3e-3]
      # lr_ceiling: 3e-3                 # optional: the grid's top is the protocol's bound (a winner there is
                                         # judged and marked ‡, not an edge winner); must equal max(lrs)
      tasks: {pycode: {data: ..., val_data: ..., test_data: ...}}
      options: {epochs: 4}               # any other `midtrain sft` option
    eval: {max_batches: 100}             # loss on the base's val sets for every run (checkpoints: all = every
                                         # saved checkpoint of every run, plotted over steps in the report)
    report: {baseline: pretrain-only}
    slurm:                               # shapes (nodes, tasks, GPUs) come from each run config
      options: {partition: gpu}          # shared by every kind of step
      pretrain: {time: "48:00:00"}       # per kind: pretrain, midtrain, sft, eval, lm_eval, report
      sft: {time: "4:00:00"}
      max_jobs: 500                      # jobs + array tasks kept submitted at once
      array_throttle: 50                 # %N on each SFT array

Arm runs are named ``{name}{100·weight:g}-from{start}`` (``code20-from6000``), dose-matched ones
``{name}-dose{dose:g}-from{start}`` (``code-dm-dose4000-from40000``, weight 4000 / (T − 40000)); the pretrain-only
control (``pretrain-only``) is the base run continued unchanged to ``train.max_steps`` (under ``seeds.control:
per_seed``, one such run per seed from the earliest arm start, with ``data.seed`` = the seed).

Size (~530 lines, over the house's ~450): one job, reading a spec file into typed objects with a one-line refusal
per bad key; the checks sit beside the keys they check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from midtrain.errors import ConfigError
from midtrain.study.kinds import SFT_OPTIONS, SFT_OWNED

CONTROL = "pretrain-only"
# What a seed re-runs, i.e. which sources of variance the intervals over seeds sample.
VARY = {
    "sft": "the SFT data order only: one base run and one midtrained checkpoint per arm, each fine-tuned with "
           "every seed (the paper's protocol); intervals are conditional on that base run and those checkpoints: "
           "checkpoint-level variance is NOT sampled, so a difference between arms is one between two checkpoints "
           "(vary: midtrain samples it)",
    "midtrain": "the midtraining data order (each arm re-run per seed with data.seed = seed: the order of the "
                "sources new at its start and of every source epoch begun after it; an epoch in progress keeps its "
                "order, so no sample repeats) and the SFT data order; one base run, so intervals are conditional "
                "on it",
    "base": "the base run (model init and data order: seed = data.seed = the seed), the midtraining data order "
            "and the SFT data order: the whole grid per base seed",
}


def variance(spec) -> str:
    """What the spec's seeds sample, in words (``VARY``, and under vary: midtrain how the control is run)."""
    text = VARY[spec.vary]
    if spec.vary == "midtrain":
        text += ("; the pretrain-only control is re-run per seed from the earliest arm start (seeds.control: "
                 "per_seed), which reorders only its source epochs begun after that start"
                 if spec.control == "per_seed" else
                 "; the pretrain-only control is the base run's end, one run shared by every seed (seeds.control: "
                 "shared), so its data-order noise is not sampled")
    return text


LR_CHOICES = ("per_checkpoint", "per_seed", "per_arm")
TOP_KEYS = {"name", "sizes", "arms", "seeds", "sft", "eval", "report", "slurm", "description"}
ARM_KEYS = {"name", "domain", "mixture", "mix_config", "start", "weight", "dose", "precision", "sizes", "tasks"}
# Fabric's precision strings (lightning.fabric.plugins.precision.precision._PRECISION_INPUT_STR; a test holds
# them equal): spelt here so that parsing a spec imports no lightning
PRECISIONS = ("transformer-engine", "transformer-engine-float16", "16-true", "16-mixed", "bf16-true", "bf16-mixed",
              "32-true", "64-true")
SFT_KEYS = {"lrs", "tasks", "options", "pretrain_val_path", "one_step_per_lr", "lr_ceiling"}
TASK_KEYS = {"data", "val_data", "test_data", "prompt_key", "response_key"}
EVAL_KEYS = {"enabled", "max_batches", "batch_size", "lm_eval", "checkpoints", "precision"}
LM_EVAL_KEYS = {"tasks", "include_path", "num_fewshot", "limit", "batch_size", "precision"}
REPORT_KEYS = {"baseline", "measure", "confidence", "main_set", "proximity", "demo", "lr_choice", "overlap"}
SEED_KEYS = {"values", "vary", "control"}
# the pretrain-only control under vary: midtrain: one run shared by every seed (the default), or re-run per seed
# (from the earliest arm start with data.seed = seed, as each arm is). A reseed reorders only the source epochs
# that begin after the start (blend.py: an epoch in progress keeps its order), so per_seed samples the control's
# data order only where the base mixture's epochs turn over before the end; in a single-epoch pretraining run its
# re-runs are the same run, paid for again: it is asked for, never assumed
CONTROLS = ("shared", "per_seed")
# SFT_OWNED, SFT_OPTIONS: `midtrain sft`'s parameters, kept with the sft step kind (study.kinds)
SFT_STRATEGIES = ("auto", "ddp", "fsdp", "hsdp")  # midtrain.train.parallel.STRATEGIES (without torch here)
SFT_BATCH_DEFAULTS = {"micro_batch_size": 8, "global_batch_size": 16}  # run_sft's (a test holds them equal)


@dataclass(frozen=True)
class Size:
    name: str
    config: dict           # the base run config, overrides applied
    max_steps: int
    tokens_per_step: int   # global_batch_size × max_seq_length
    data_seed: int
    checkpoint: str | None = None  # an imported checkpoint (`midtrain import`) this size starts from ...
    start_step: int = 0            # ... at this step (no base run is pretrained)
    origin: dict = field(default_factory=dict)  # its import note (files.load_spec): what hashes its steps
    base: str | None = None        # another study folder whose base segments this size reuses (read only)


@dataclass(frozen=True)
class Arm:
    name: str              # resolved: code20-from6000
    family: str            # the spec's arm name: code
    mixture: str           # mix_weights_str
    start: int
    weight: float | None   # the domain's weight (None for a literal mixture)
    domain: str | None
    mix_config: str | None = None      # a mix config file (data.mix_config_path) instead of a weight string
    sizes: tuple[str, ...] | None = None  # the sizes this arm runs on (None: all)
    dose: float | None = None  # dose-matched: weight × (train.max_steps − start), the same at every start
    precision: str | None = None  # a precision control: this arm trains at this precision (None: the config's)
    tasks: tuple[str, ...] | None = None  # the SFT tasks this arm is fine-tuned on (None: every task)


@dataclass(frozen=True)
class Task:
    name: str
    data: str
    val_data: str | None
    test_data: str | None
    prompt_key: str = "prompt"
    response_key: str = "response"


@dataclass(frozen=True)
class Spec:
    name: str
    sizes: tuple[Size, ...]
    arms: tuple[Arm, ...]
    seeds: tuple[int, ...]
    lrs: tuple[float, ...]
    tasks: tuple[Task, ...]
    sft_options: dict = field(default_factory=dict)
    pretrain_val_path: str | None = None
    eval: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    slurm: dict = field(default_factory=dict)
    one_step_per_lr: bool = True   # False: one SFT step per (run, task, seed) sweeping the whole grid
    vary: str = "sft"              # what a seed re-runs (VARY)
    control: str = "shared"        # vary: midtrain: the control re-run per seed ("per_seed") or one run ("shared")
    # the highest SFT LR the protocol allows (the grid's top): a cell choosing it is at the protocol's bound, judged
    # and marked ‡ (a constrained optimum, not bracketed above); None: a winner at the top is an edge winner
    lr_ceiling: float | None = None


def _mapping(value: Any, key: str, allowed: set[str] | None = None) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"expected a mapping, got {type(value).__name__}")
    if allowed is not None:
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise ConfigError(f"{key}.{unknown[0]}", f"unknown key (known: {', '.join(sorted(allowed))})")
    return dict(value)


def _list(value: Any, key: str) -> list:
    if isinstance(value, (list, tuple)):
        return list(value)
    if value is None:
        raise ConfigError(key, "is required")
    return [value]


def _int(value: Any, key: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(key, f"must be >= {minimum}, got {value}")
    return value


def _float(value: Any, key: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(key, f"expected a number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(key, f"expected a number, got {value!r}") from None
    if math.isnan(x) or math.isinf(x):
        raise ConfigError(key, f"must be finite, got {value!r}")
    return x


def data_args(cfg: Mapping) -> dict:
    """The run config's data arguments (``data.init_args`` or ``data`` itself)."""
    data = cfg.get("data") or {}
    return dict(data.get("init_args", data)) if isinstance(data, Mapping) else {}


def set_dotted(cfg: dict, dotted: str, value: Any) -> dict:
    """A copy of ``cfg`` with ``a.b.c = value`` (``data.x`` lands in ``data.init_args.x`` when the config has it)."""
    import copy

    out = copy.deepcopy(cfg)
    parts = dotted.split(".")
    if parts[0] == "data" and len(parts) > 1 and parts[1] != "init_args" and isinstance(out.get("data"), dict) \
            and "init_args" in out["data"]:
        parts = ["data", "init_args"] + parts[1:]
    node = out
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value
    return out


def arm_name(family: str, weight: float | None, start: int, dose: float | None = None) -> str:
    if dose is not None:
        return f"{family}-dose{dose:.10g}-from{start}"
    return f"{family}{weight * 100:g}-from{start}" if weight is not None else f"{family}-from{start}"


def _dose_matched(araw: Mapping, key: str, starts: list[int], sizes: list[Size]) -> list[tuple[int, float, float]]:
    """``dose: [D, ...]`` -> (start, weight, D) with weight = D / (T − start): every start adds the same domain
    dose, D steps' worth of domain data (D × tokens per step). T is the sizes' one ``train.max_steps``."""
    if "weight" in araw:
        raise ConfigError(f"{key}.dose", "give weight or dose, not both (a dose sets each start's weight)")
    doses = [_float(d, f"{key}.dose") for d in _list(araw["dose"], f"{key}.dose")]
    if not doses or any(not d > 0 for d in doses):
        raise ConfigError(f"{key}.dose", f"give one or more positive doses (steps of domain data), got {doses}")
    ends = {sz.max_steps for sz in sizes}
    if len(ends) != 1:
        raise ConfigError(f"{key}.dose", "a dose-matched arm needs one train.max_steps across its sizes, got "
                          f"{', '.join(f'{sz.name}: {sz.max_steps}' for sz in sizes)} (restrict it with sizes:)")
    (end,) = ends
    out = []
    for d in doses:
        for s in starts:
            w = d / (end - s)
            if w > 1 + 1e-12:
                raise ConfigError(f"{key}.dose", f"{d:g} from step {s} needs weight {w:.3g} > 1: only {end - s} steps "
                                  f"remain before train.max_steps {end} (at most dose {end - s} there)")
            out.append((s, min(w, 1.0), d))
    return out


def _slurm(value: Any) -> dict:
    """``slurm:``: shared ``options``, per-kind sections, ``python``/``setup``, ``max_jobs``, ``array_throttle``."""
    from midtrain.study.resources import KIND_OPTIONS, SECTIONS, check_options

    slurm = _mapping(value, "slurm", {"options", "python", "setup", "max_jobs", "array_throttle",
                                      *SECTIONS.values()})
    out = dict(slurm)
    out["options"] = check_options(slurm.get("options"), "slurm.options")
    for section in SECTIONS.values():
        if section in slurm:
            out[section] = check_options(slurm[section], f"slurm.{section}", KIND_OPTIONS)
    for key in ("max_jobs", "array_throttle"):
        if slurm.get(key) is not None:
            out[key] = _int(slurm[key], f"slurm.{key}", 1)
    return out


def parse_spec(raw: Any, base_configs: Mapping[str, dict]) -> Spec:
    """Validate a study spec; ``base_configs``: size name -> its base run config (before ``set``)."""
    raw = _mapping(raw, "study", TOP_KEYS)
    name = str(raw.get("name") or "study")
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ConfigError("name", f"{name!r}: letters, digits, '_', '.', '-' only (it names the spec's report folder "
                          "and index in a study folder several specs can share)")
    sizes_raw = _mapping(raw.get("sizes"), "sizes")
    if not sizes_raw:
        raise ConfigError("sizes", "give at least one model size with its base run config")
    sizes = []
    for sname, sraw in sizes_raw.items():
        key = f"sizes.{sname}"
        sraw = _mapping(sraw, key, {"config", "set", "checkpoint", "step", "base"})
        if "config" not in sraw:
            raise ConfigError(f"{key}.config", "is required (the base run's YAML)")
        cfg = base_configs[str(sname)]
        for dotted, value in _mapping(sraw.get("set"), f"{key}.set").items():
            cfg = set_dotted(cfg, str(dotted), value)
        train = cfg.get("train") or {}
        if train.get("max_steps") is None:
            raise ConfigError(f"{key}.config", "the base run needs train.max_steps (the whole run, the LR horizon)")
        max_steps = _int(train["max_steps"], f"{key}: train.max_steps", 1)
        for k in ("max_additional_steps", "max_iters", "max_tokens"):
            if train.get(k) is not None:
                raise ConfigError(f"{key}: train.{k}", "is set by the study (segments); remove it from the base config")
        if cfg.get("resume_from") or cfg.get("initial_checkpoint_dir"):
            raise ConfigError(f"{key}.config", "a base run starts from scratch (no resume_from/initial_checkpoint_dir)")
        if not data_args(cfg).get("data_path"):
            raise ConfigError(f"{key}: data.data_path", "the base run config names no data_path")
        gbs = _int(train.get("global_batch_size", 0), f"{key}: train.global_batch_size", 1)
        seq = train.get("max_seq_length") or (cfg.get("model_config") or {}).get("block_size")
        seq = _int(seq, f"{key}: train.max_seq_length", 1)
        checkpoint, start_step = sraw.get("checkpoint"), 0
        if checkpoint is not None or "step" in sraw:
            if not checkpoint or "step" not in sraw:
                raise ConfigError(key, "an imported size gives both checkpoint (a `midtrain import` folder) and step")
            start_step = _int(sraw["step"], f"{key}.step", 0)
            if start_step >= max_steps:
                raise ConfigError(f"{key}.step", f"{start_step} is not before train.max_steps {max_steps} of its config")
        base_folder = sraw.get("base")
        if base_folder is not None:
            if checkpoint is not None:
                raise ConfigError(f"{key}.base", "give either base (a study folder whose base run this size reuses) "
                                  "or checkpoint (an imported checkpoint), not both")
            if not isinstance(base_folder, str) or not base_folder:
                raise ConfigError(f"{key}.base", f"expected a study folder or a run folder, got {base_folder!r}")
        sizes.append(Size(str(sname), cfg, max_steps, gbs * seq, int(data_args(cfg).get("seed", 42)),
                          str(checkpoint) if checkpoint else None, start_step, base=base_folder))

    seeds_raw, vary, seeds_key, control = raw.get("seeds", [0]), "sft", "seeds", "shared"
    if isinstance(seeds_raw, Mapping):
        seeds_raw = _mapping(seeds_raw, "seeds", SEED_KEYS)
        vary = seeds_raw.get("vary", "sft")
        if vary not in VARY:
            raise ConfigError("seeds.vary", f"expected one of {', '.join(VARY)}, got {vary!r}")
        control = seeds_raw.get("control", "shared")
        if control not in CONTROLS:
            raise ConfigError("seeds.control", f"expected one of {', '.join(CONTROLS)}, got {control!r}")
        if control == "per_seed" and vary != "midtrain":
            raise ConfigError("seeds.control", f"per_seed re-runs the control as vary: midtrain re-runs the arms; "
                              f"under vary: {vary} " + ("each base seed has its own control already" if vary == "base"
                                                        else "each arm is one checkpoint, and so is the control"))
        seeds_raw, seeds_key = seeds_raw.get("values"), "seeds.values"
    seeds = [_int(s, f"{seeds_key}[{i}]") for i, s in enumerate(_list(seeds_raw, seeds_key))]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(seeds_key, f"give one or more distinct integers, got {seeds}")

    arms: list[Arm] = []
    seen: dict[str, str] = {}
    for i, araw in enumerate(_list(raw.get("arms", []), "arms")):
        key = f"arms[{i}]"
        araw = _mapping(araw, key, ARM_KEYS)
        family = araw.get("name")
        if not family or not isinstance(family, str) or "/" in family:
            raise ConfigError(f"{key}.name", f"give a name without '/', got {family!r}")
        if family == CONTROL:
            raise ConfigError(f"{key}.name", f"{CONTROL!r} is the built-in control (the base run continued)")
        if sum(k in araw for k in ("domain", "mixture", "mix_config")) != 1:
            raise ConfigError(key, "give one of: domain (with weight), mixture (a weights string), mix_config (a file)")
        arm_sizes = None
        if "sizes" in araw:
            arm_sizes = tuple(str(x) for x in _list(araw["sizes"], f"{key}.sizes"))
            unknown = [x for x in arm_sizes if x not in {sz.name for sz in sizes}]
            if unknown or not arm_sizes:
                raise ConfigError(f"{key}.sizes", f"{unknown[0] if unknown else '[]'!r} is not a size of this study")
        starts = [_int(s, f"{key}.start", 1) for s in _list(araw.get("start"), f"{key}.start")]
        if not starts:
            raise ConfigError(f"{key}.start", "give one or more start steps")
        for s in starts:
            for size in (sz for sz in sizes if arm_sizes is None or sz.name in arm_sizes):
                if size.checkpoint and s != size.start_step:
                    raise ConfigError(f"{key}.start", f"step {s} on size {size.name!r}, which starts from an imported "
                                      f"checkpoint at step {size.start_step}: its arms start there (or restrict this "
                                      "arm with sizes:)")
                if s >= size.max_steps:
                    raise ConfigError(f"{key}.start", f"step {s} is not before the end of base run {size.name!r} "
                                      f"(train.max_steps {size.max_steps})")
        if "domain" in araw:
            domain = araw["domain"]
            if not isinstance(domain, str) or not domain or domain == "main":
                raise ConfigError(f"{key}.domain", f"a shard type other than main, got {domain!r}")
            if "dose" in araw:
                pairs = _dose_matched(araw, key, starts, [sz for sz in sizes if arm_sizes is None or sz.name in arm_sizes])
            else:
                weights = [_float(w, f"{key}.weight") for w in _list(araw.get("weight"), f"{key}.weight")]
                if not weights:
                    raise ConfigError(f"{key}.weight", "give one or more weights (or a dose)")
                for w in weights:
                    if not 0 < w <= 1:
                        raise ConfigError(f"{key}.weight", f"must be in (0, 1], got {w}")
                pairs = [(s, w, None) for s in starts for w in weights]
            combos = [(s, w, f"{domain}:1" if w == 1 else f"main:{1 - w:.10g},{domain}:{w:.10g}", d)
                      for s, w, d in pairs]
        else:
            for k in ("weight", "dose"):
                if k in araw:
                    raise ConfigError(f"{key}.{k}", "a literal mixture carries its own weights")
            from midtrain.data.mixture import parse_weights

            domain = None
            if "mixture" in araw:
                mixture = str(araw["mixture"])
                parse_weights(mixture, f"{key}.mixture")
            else:
                mixture = ""
            combos = [(s, None, mixture, None) for s in starts]
        precisions = [None]
        if "precision" in araw:
            precisions = [str(x) for x in _list(araw["precision"], f"{key}.precision")]
            bad = [x for x in precisions if x not in PRECISIONS]
            if bad or not precisions or len(set(precisions)) != len(precisions):
                raise ConfigError(f"{key}.precision", f"give distinct precisions among {', '.join(PRECISIONS)}, got "
                                  f"{precisions}")
        for (s, w, mix, dose), prec in ((c, x) for c in combos for x in precisions):
            resolved = arm_name(family, w, s, dose) + (f"-{prec}" if prec else "")
            if resolved in seen or resolved == CONTROL:
                raise ConfigError(f"{key}", f"arm {resolved!r} resolves to the same output as {seen.get(resolved, CONTROL)}")
            seen[resolved] = key
            arm_tasks = tuple(str(x) for x in _list(araw["tasks"], f"{key}.tasks")) if "tasks" in araw else None
            arms.append(Arm(resolved, family, mix, s, w, domain, araw.get("mix_config"), arm_sizes, dose, prec,
                            arm_tasks))

    if vary == "base":
        imported = next((sz.name for sz in sizes if sz.checkpoint), None)
        if imported:
            raise ConfigError("seeds.vary", f"base: size {imported!r} starts from an imported checkpoint, so there is "
                              "no base run to re-run per seed (use vary: sft or midtrain)")
    sft = _mapping(raw.get("sft"), "sft", SFT_KEYS)
    lrs = [_float(x, "sft.lrs") for x in _list(sft.get("lrs", []), "sft.lrs")] if "lrs" in sft else []
    tasks_raw = _mapping(sft.get("tasks"), "sft.tasks")
    if tasks_raw and not lrs:
        raise ConfigError("sft.lrs", "the LR grid is empty: give one or more learning rates")
    if any(not lr > 0 for lr in lrs) or len(set(lrs)) != len(lrs):
        raise ConfigError("sft.lrs", f"give distinct positive learning rates, got {lrs}")
    ceiling = _float(sft["lr_ceiling"], "sft.lr_ceiling") if sft.get("lr_ceiling") is not None else None
    if ceiling is not None and (not lrs or ceiling != max(lrs)):
        raise ConfigError("sft.lr_ceiling", f"{ceiling:g} must be the grid's highest LR (sft.lrs tops at "
                          f"{max(lrs) if lrs else 'nothing'}): the ceiling states the grid's top as the protocol's bound")
    tasks = []
    for tname, traw in tasks_raw.items():
        key = f"sft.tasks.{tname}"
        if "/" in str(tname):
            raise ConfigError(key, "a task name cannot contain '/'")
        traw = _mapping(traw, key, TASK_KEYS)
        if not traw.get("data"):
            raise ConfigError(f"{key}.data", "is required (the SFT training JSONL)")
        tasks.append(Task(str(tname), str(traw["data"]), traw.get("val_data"), traw.get("test_data"),
                          str(traw.get("prompt_key", "prompt")), str(traw.get("response_key", "response"))))
    task_names = {t.name for t in tasks}
    for arm in arms:
        if arm.tasks is not None and (not arm.tasks or len(set(arm.tasks)) != len(arm.tasks)
                                      or not set(arm.tasks) <= task_names):
            raise ConfigError(f"{seen[arm.name]}.tasks", "give distinct tasks among sft.tasks "
                              f"({', '.join(sorted(task_names)) or 'none'}), got {list(arm.tasks)}")
    options = _mapping(sft.get("options"), "sft.options")
    owned = sorted(set(options) & SFT_OWNED)
    if owned:
        raise ConfigError(f"sft.options.{owned[0]}", "is set by the study (per task, LR, seed and run)")
    unknown = sorted(set(options) - SFT_OPTIONS)
    if unknown:
        raise ConfigError(f"sft.options.{unknown[0]}", f"is not an option of `midtrain sft` (known: "
                          f"{', '.join(sorted(SFT_OPTIONS))})")
    if options.get("strategy", "auto") not in SFT_STRATEGIES:
        raise ConfigError("sft.options.strategy", f"expected one of {', '.join(SFT_STRATEGIES)}, got "
                          f"{options['strategy']!r}")
    from midtrain.study.resources import sft_ranks

    devices, nodes = sft_ranks(options)
    if options.get("strategy") == "hsdp" and nodes < 2:
        raise ConfigError("sft.options.strategy", f"hsdp replicates across nodes and shards within one; num_nodes is "
                          f"{nodes}: use fsdp to shard over the node's devices")
    micro, batch = (options.get(k, v) for k, v in SFT_BATCH_DEFAULTS.items())
    for key, value in (("micro_batch_size", micro), ("global_batch_size", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"sft.options.{key}", f"expected an integer >= 1, got {value!r}")
    if batch % (micro * devices * nodes):
        raise ConfigError("sft.options.global_batch_size", f"{batch} is not a multiple of micro_batch_size {micro} x "
                          f"{devices * nodes} process(es) (devices x num_nodes): each rank takes whole micro-batches "
                          "of every global batch")
    if tasks and options.get("tokenizer_dir") is None:  # what makes every SFT step fail after its arm trained
        bare = next((sz for sz in sizes if sz.checkpoint is None and not sz.config.get("tokenizer_dir")), None)
        if bare is not None:
            raise ConfigError(f"sizes.{bare.name}.config", "sets no tokenizer_dir, and each SFT step reads the "
                              "tokenizer from the checkpoint it fine-tunes, which then holds none: set tokenizer_dir "
                              "in the run config (it is copied into every checkpoint), or sft.options.tokenizer_dir")
    ev = _mapping(raw.get("eval"), "eval", EVAL_KEYS)
    report = _mapping(raw.get("report"), "report", REPORT_KEYS)
    if options.get("forgetting_sets") is not None:  # (checked against the val folder at plan time and by the step)
        fs, main_set = options["forgetting_sets"], report.get("main_set", "main")
        if not isinstance(fs, list) or not fs or not all(isinstance(x, str) for x in fs) or len(set(fs)) != len(fs):
            raise ConfigError("sft.options.forgetting_sets", f"give distinct validation set names, got {fs!r}")
        if main_set not in fs:
            raise ConfigError("sft.options.forgetting_sets", f"leaves out {main_set!r} (report.main_set), on which the "
                              f"report measures forgetting: add it, got {fs}")
    baseline = report.get("baseline", CONTROL)
    if baseline not in {CONTROL, *(a.name for a in arms)}:
        raise ConfigError("report.baseline", f"{baseline!r} is not an arm of this study")
    ov = _mapping(report.get("overlap"), "report.overlap", {"against", "n"})
    if "overlap" in report:
        against = _mapping(ov.get("against"), "report.overlap.against")
        if not against:
            raise ConfigError("report.overlap.against", "name the raw-text corpora to check the SFT val/test sets "
                              "against (NAME: PATH; the tasks' training sets are always checked)")
        _int(ov.get("n", 13), "report.overlap.n", 1)
    if report.get("lr_choice", "per_checkpoint") not in LR_CHOICES:
        raise ConfigError("report.lr_choice", f"expected one of {', '.join(LR_CHOICES)}, got {report['lr_choice']!r}")
    slurm = _slurm(raw.get("slurm"))
    per_lr = sft.get("one_step_per_lr", True)
    if not isinstance(per_lr, bool):
        raise ConfigError("sft.one_step_per_lr", f"expected true or false, got {per_lr!r}")
    lm = _mapping(ev.get("lm_eval"), "eval.lm_eval", LM_EVAL_KEYS)
    if lm and not lm.get("tasks"):
        raise ConfigError("eval.lm_eval.tasks", "give the lm-eval tasks (comma-separated)")
    if ev.get("checkpoints", "final") not in ("final", "all"):
        raise ConfigError("eval.checkpoints", f"expected final or all (every saved checkpoint), got {ev['checkpoints']!r}")
    from midtrain.posttrain.numerics import PRECISIONS as EVAL_PRECISIONS

    for where, section in (("eval", ev), ("eval.lm_eval", lm)):
        if section.get("precision") is not None and section["precision"] not in EVAL_PRECISIONS:
            raise ConfigError(f"{where}.precision", f"expected one of {', '.join(EVAL_PRECISIONS)} (default: bf16-mixed "
                              f"on a GPU with bf16, else 32-true), got {section['precision']!r}")
    if not isinstance(ev.get("enabled", True), bool):
        raise ConfigError("eval.enabled", f"expected true or false, got {ev['enabled']!r}")
    return Spec(name, tuple(sizes), tuple(arms), tuple(seeds), tuple(lrs), tuple(tasks), options,
                sft.get("pretrain_val_path"), ev, report, slurm, per_lr, vary, control, ceiling)
