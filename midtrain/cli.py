"""``midtrain`` command line: one subcommand per job, each a jsonargparse parser over a library function.

A command that is one function (``study plan|run|status|report``, ``evaluate loss|lm-eval|export-hf``, ``sft``,
``report``, ``plot``, ``proximity``, ``overlap``, ``migrate``, ``import``) gets its parser from the function's
signature and docstring (``function_parser``), so names, defaults and help are written once, in the library; a
study step's command line is built from the same signatures (``midtrain.study.kinds``). So do ``prepare``,
``tokenizer train`` and ``demo``. The others declare their options here: the run config (``run_parser``: every
argument of ``train.pretrain.setup``; ``mix`` and ``status`` hand it to ``train.preview``) and ``shard`` (a
positional path). Errors from bad input (ConfigError, argument errors) become one line on
stderr and exit status 2.
"""

from __future__ import annotations

import sys
from typing import Callable, Optional

from midtrain.errors import ConfigError
from midtrain.run_args import PROG, _parser, check_retired_keys, install_litgpt_alias, parse_run, run_parser  # noqa: F401

USAGE = """usage: midtrain <command> [options]

commands:
  mix        show what a run will read from each shard (the mixture plan), without training
  pretrain   pretrain; midtrain from a base checkpoint with a new mixture (resume_from); resume
  status     where a run stands: checkpoints, step, complete or not
  prepare    raw text (JSONL, parquet, text, HF save_to_disk) -> one typed token shard (+ val shard)
  tokenizer  `tokenizer train`: a byte-level BPE tokenizer for offline use
  shard      what a shard holds: its tokenizer, tokens, documents and a few decoded documents
  sft        fine-tune a checkpoint (LR sweep on val, held-out test loss, forgetting)
  evaluate   `evaluate loss` on shard folders, `evaluate lm-eval`, `evaluate export-hf`
  plot       per-source validation loss against step for several runs (PNG)
  report     final per-source losses and SFT results across runs (markdown or CSV)
  study      a whole experiment from one spec: `study plan|run|status|report SPEC --out DIR`
  demo       the paper's findings in miniature on CPU, offline: a study (what `make demo` runs)
  proximity  token-unigram proximity of mixtures to target sets, and the proximity advantage
  overlap    near-duplicate decontamination: eval items sharing a normalised n-gram with corpora / training
             sets, and responses equal to a training response after renaming names and numbers
  migrate    rewrite a config of the original fork into midtrain's form, printing every change
  import     a Hugging Face checkpoint (Pythia, OLMo 1/2, SmolLM2, TinyLlama, Amber, Llama 3.2) -> a midtrain
             checkpoint at a known step of a schedule (read from the revision name where it gives one)

Run `midtrain <command> --help` for a command's options."""


def pretrain(argv: list[str]) -> int:
    """``midtrain pretrain``: pretrain / midtrain / resume (see midtrain.train.pretrain)."""
    from midtrain.run_args import run_config_dict
    from midtrain.train.pretrain import setup

    parser = run_parser("Pretrain, or midtrain from a base checkpoint with a new mixture (resume_from).")
    args, init = parse_run(parser, argv)
    kwargs = {k: v for k, v in vars(init).items() if k not in ("config", "run_yaml", "__path__")}
    hparams = run_config_dict({k: v for k, v in args.as_dict().items() if k not in ("config", "run_yaml", "__path__")})
    return setup(**kwargs, hparams=hparams)


def mix(argv: list[str]) -> int:
    """``midtrain mix``: discovery + weights + the per-shard plan of a run config, without training."""
    from midtrain.train.preview import show_mix

    parser = run_parser("Show the mixture plan of a run: one row per shard, with the tokens the run draws from it.")
    parser.add_argument("--tokens", type=Optional[int], default=None,
                        help="tokens the run trains on (default: train.max_steps x global_batch_size x max_seq_length)")
    parser.add_argument("--json", type=Optional[str], default=None, help="also write the plan as JSON to this path ('-' = stdout)")
    parser.add_argument("--check_files", type=bool, default=True,
                        help="check that every chunk file the mixture reads exists and is complete (a stat each)")
    parser.add_argument("--check_complete", "--check-complete", action="store_true",
                        help="for launchers: a complete run says so and exits 0; otherwise the plan, then exit 3 "
                             "(`midtrain status --check-complete` and this plan in one process)")
    args, init = parse_run(parser, argv)
    return show_mix(args, init)


def status(argv: list[str]) -> int:
    """``midtrain status``: where a run stands (not started / step N of M / complete)."""
    parser = run_parser("Show where a run stands: its checkpoints, step and whether it is complete.")
    parser.add_argument("--check_complete", "--check-complete", action="store_true",
                        help="exit 0 if the run is complete, 3 if not (for launchers)")
    args, init = parse_run(parser, argv)
    from midtrain.train.preview import run_progress

    complete, line, found = run_progress(args, init)
    if not args.check_complete:
        print(line)
        for step, path in found:
            print(f"  {path.name:<16} step {step}" + (" -> " + str(path.resolve()) if path.is_symlink() else ""))
        return 0
    return 0 if complete else 3


def prepare(argv: list[str]) -> int:
    """``midtrain prepare``: ``midtrain.data.prepare.prepare``, its parser built from its signature."""
    from midtrain.data.prepare import prepare

    return call(argv, prepare, config=True)


def shard(argv: list[str]) -> int:
    """``midtrain shard PATH``: a shard's tokenizer identity, token and document counts, decoded samples."""
    from midtrain.data.shard_info import describe

    parser = _parser("What a shard holds: the tokenizer it was made with, its tokens and documents, and its first "
                     "documents decoded (nonsense text: another tokenizer made it).", config=False)
    parser.add_argument("path", type=str, help="a shard folder (with index.json)")
    parser.add_argument("--samples", type=int, default=3, help="documents to decode")
    parser.add_argument("--tokenizer_dir", type=Optional[str], default=None,
                        help="decode with this tokenizer (default: the one the shard records)")
    args = parser.parse_args(argv)
    print(describe(args.path, args.samples, args.tokenizer_dir))
    return 0


def _help(argv: list[str], command: str, subcommands: dict[str, str]) -> bool:
    """``midtrain COMMAND --help`` for a command with subcommands: their list (exit 0)."""
    if not argv or argv[0] not in ("-h", "--help"):
        return False
    width = max(map(len, subcommands))
    print(f"usage: midtrain {command} {{{','.join(subcommands)}}} ...\n\n"
          + "\n".join(f"  {k.ljust(width)}  {v}" for k, v in subcommands.items())
          + f"\n\nRun `midtrain {command} SUBCOMMAND --help` for its options.")
    return True


def tokenizer(argv: list[str]) -> int:
    """``midtrain tokenizer train``: ``midtrain.tokenizer.train``, its parser built from its signature."""
    from midtrain.tokenizer import train

    if _help(argv, "tokenizer", {"train": "train a byte-level BPE into a folder (--input FILES --out DIR)"}):
        return 0
    if not argv or argv[0] != "train":
        raise ConfigError("midtrain tokenizer", "expected the subcommand `train`")
    return call(argv[1:], train, config=True)


def sft(argv: list[str]) -> int:
    """``midtrain sft``: fine-tune a checkpoint, pick the LR on val, report held-out test and forgetting."""
    from midtrain.posttrain.sft import Stopped, format_sft, run_sft

    args = function_parser(run_sft, config=True).parse_args(argv)
    kwargs = {k: v for k, v in vars(args).items() if k not in ("config", "run_yaml", "__path__")}
    try:
        metrics = run_sft(**kwargs)
    except Stopped as e:
        from midtrain.signals import EXIT_REQUEUE

        print(f"midtrain sft: {e}: stopped (SFT keeps no checkpoint; run again to start it over); exiting "
              f"{EXIT_REQUEUE}", flush=True)
        return EXIT_REQUEUE
    import torch.distributed as dist

    from midtrain.train.distributed import leave_group

    if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
        print(format_sft(metrics), flush=True)
    leave_group()
    return 0


def evaluate(argv: list[str]) -> int:
    """``midtrain evaluate loss|lm-eval|export-hf``: the functions of ``midtrain.posttrain.commands``, each parser
    built from its signature and docstring."""
    from docstring_parser import parse as parse_doc

    from midtrain.posttrain.commands import COMMANDS as EVALUATE

    if _help(argv, "evaluate", {k: parse_doc(f.__doc__).short_description.rstrip(".") for k, f in EVALUATE.items()}):
        return 0
    if not argv or argv[0] not in EVALUATE:
        raise ConfigError("midtrain evaluate", "expected one of: loss, lm-eval, export-hf")
    return call(argv[1:], EVALUATE[argv[0]], config=True)


def plot(argv: list[str]) -> int:
    """``midtrain plot``: ``midtrain.report.plot``, its parser built from its signature."""
    from midtrain.report import plot

    return call(argv, plot, config=True)


def report(argv: list[str]) -> int:
    """``midtrain report``: ``midtrain.report.report``, its parser built from its signature."""
    from midtrain.report import report

    return call(argv, report, config=True)


def import_(argv: list[str]) -> int:
    """``midtrain import``: ``midtrain.importer.import_checkpoint``, its parser built from its signature."""
    from midtrain.importer import import_checkpoint

    return call(argv, import_checkpoint)


def migrate(argv: list[str]) -> int:
    """``midtrain migrate``: ``midtrain.migrate.migrate_file``, its parser built from its signature."""
    from midtrain.migrate import migrate_file

    return call(argv, migrate_file)


def proximity(argv: list[str]) -> int:
    """``midtrain proximity``: ``midtrain.analysis.run_proximity.proximity``, its parser built from its signature."""
    from midtrain.analysis.run_proximity import proximity

    return call(argv, proximity, config=True)


def overlap(argv: list[str]) -> int:
    """``midtrain overlap``: ``midtrain.analysis.overlap.overlap``, its parser built from its signature."""
    from midtrain.analysis.overlap import overlap

    return call(argv, overlap, config=True)


def study(argv: list[str]) -> int:
    """``midtrain study plan|run|status|report``: the functions of ``midtrain.study.commands``, each parser built
    from its signature and docstring (the positional spec added here)."""
    from pathlib import Path

    from docstring_parser import parse as parse_doc

    from midtrain.study.commands import COMMANDS

    if _help(argv, "study", {k: parse_doc(f.__doc__).short_description.rstrip(".") for k, f in COMMANDS.items()}):
        return 0
    what, rest = (argv[0], argv[1:]) if argv else ("", [])
    if what == "step":  # internal: what an executor runs for one step
        from midtrain.study.runner import run_step

        if len(rest) != 1:
            raise ConfigError("midtrain study step", "expects one step folder")
        return run_step(Path(rest[0]))
    if what not in COMMANDS:
        raise ConfigError("midtrain study", "expected one of: plan, run, status, report")
    fn = COMMANDS[what]
    parser = _parser(f"midtrain study {what}", config=False)
    spec_help = next(p.description for p in parse_doc(fn.__doc__).params if p.arg_name == "spec")
    parser.add_argument("spec", type=str, nargs="+" if what == "plan" else None, help=spec_help)
    parser.add_function_arguments(fn, skip={"spec"})
    a = parser.parse_args(rest).as_dict()
    return fn(**a)


def demo(argv: list[str]) -> int:
    """``midtrain demo``: ``midtrain.demo.demo`` (a study spec run by the study engine), its parser from its
    signature."""
    from midtrain.demo import demo

    return call(argv, demo, config=True)


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "mix": mix, "pretrain": pretrain, "status": status, "prepare": prepare, "tokenizer": tokenizer,
    "sft": sft, "evaluate": evaluate, "plot": plot, "report": report, "demo": demo, "migrate": migrate,
    "proximity": proximity, "overlap": overlap, "study": study, "import": import_, "shard": shard,
}


STOPPABLE = ("pretrain", "sft")  # commands that take a stop signal at a step boundary (exit 75)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        sys.exit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command in STOPPABLE:  # before anything slow: a SIGTERM/USR1 during start-up must not kill the job
        from midtrain import signals

        signals.install()
    if command not in COMMANDS:
        print(f"midtrain: error: unknown command {command!r} (expected one of {', '.join(COMMANDS)})", file=sys.stderr)
        sys.exit(2)
    PROG[0] = f"midtrain {command}" + (f" {rest[0]}" if command in ("evaluate", "tokenizer", "study") and rest
                                       and not rest[0].startswith("-") else "")
    code = run_command(COMMANDS[command], rest, command)
    if command in STOPPABLE:  # the outcome is decided (and said): a late signal must not turn it into a crash
        from midtrain import signals

        signals.ignore_until_exit()
    sys.exit(code)


def fixed_choice_error(message: str) -> str | None:
    """jsonargparse reports a bad value of a ``Literal`` key nested in a Union (``train.lr_scheduler``,
    ``data.init_args.mixer``, ...) as "Cannot take a Union of no types" inside up to 700 characters of
    noise; this is the one line naming the key, the value and the allowed values (None: not that case)."""
    import re
    import typing

    if "Cannot take a Union of no types" not in message:
        return None
    keys = re.findall(r'Parser key "([^"]+)": Cannot take a Union of no types', message)
    if not keys:
        return None
    from midtrain.data.sharded_mixed import ShardedMixedDataset
    from midtrain.train.args import EvalArgs, TrainArgs
    from midtrain.train.pretrain import setup

    key = keys[-1]
    choices = {}
    for prefix, owner in (("train.", TrainArgs), ("eval.", EvalArgs), ("data.init_args.", ShardedMixedDataset),
                          ("", setup)):
        for field, hint in typing.get_type_hints(owner).items():
            literals = [a for a in typing.get_args(hint) if isinstance(a, str)] if typing.get_origin(hint) in (
                typing.Literal, typing.Union) else []
            if typing.get_origin(hint) is typing.Literal:
                literals = list(typing.get_args(hint))
            if literals:
                choices[prefix + field] = literals
    full = next((k for k in choices if k == key or k.endswith("." + key)), None)
    if full is None:
        return None
    leaf = re.escape(full.rsplit(".", 1)[-1])
    given = re.search(r"NestedArg\(key='[^']*', val='([^']*)'\)", message) or re.search(rf"'{leaf}': '([^']*)'", message)
    value = f"{given.group(1)!r} " if given else ""
    return f"{full}: {value}is not one of {', '.join(map(str, choices[full]))}"


def _rank() -> int:
    """This process's rank in a running process group (0 outside one)."""
    dist = sys.modules.get("torch.distributed")
    return dist.get_rank() if dist is not None and dist.is_available() and dist.is_initialized() else 0


def function_parser(fn: Callable, config: bool = False):
    """The parser of a command that is one library function: from its signature and its docstring's ``Args:``
    (names, defaults and help written once, in the library); ``config``: also ``--config FILE.yaml``."""
    import inspect
    import typing

    from docstring_parser import parse as parse_doc

    if config and "config" in inspect.signature(fn).parameters:
        raise TypeError(f"{fn.__name__} has its own config parameter: its parser cannot also take --config FILE")
    doc = parse_doc(fn.__doc__)
    parser = _parser(" ".join(filter(None, (doc.short_description, doc.long_description))), config=config)
    # jsonargparse reads a list option as one JSON value; a list of strings is given as `--runs a b` instead
    lists = [n for n, t in typing.get_type_hints(fn).items() if t == list[str]]
    helps = {p.arg_name: p.description for p in doc.params}
    for name in lists:
        default = inspect.signature(fn).parameters[name].default
        required = default is inspect.Parameter.empty
        parser.add_argument(f"--{name}", type=str, nargs="+" if required else "*", required=required,
                            default=None if required else list(default), help=helps.get(name))
    parser.add_function_arguments(fn, skip=set(lists))
    return parser


def call(argv: list[str], fn: Callable, config: bool = False) -> int:
    """Parse ``argv`` with ``fn``'s own parser (``function_parser``), then call it."""
    args = function_parser(fn, config).parse_args(argv).as_dict()
    skip = {"__path__"} | ({"config"} if config else set())  # (--config FILE is the parser's; fn may have its own)
    return fn(**{k: v for k, v in args.items() if k not in skip})


def run_command(fn: Callable[[list[str]], int], argv: list[str], name: str) -> int:
    from jsonargparse import ArgumentError

    try:
        return fn(argv)
    except ConfigError as e:
        rank = _rank()
        if (e.speaker == "rank0" and rank == 0) or e.speaker == "self":  # one line per cause, not per rank
            print(f"midtrain {name}: error{f' (rank {rank})' if rank else ''}: {e}", file=sys.stderr)
        return 2
    except ArgumentError as e:
        msg = " ".join(str(e).split())
        print(f"midtrain {name}: error: {fixed_choice_error(msg) or msg}", file=sys.stderr)
        return 2
