"""``midtrain`` command line: one subcommand per job, each a jsonargparse parser over a library function.

A command that is one function (``study plan|run|status|report``, ``migrate``, ``import``; ``sft`` the same way by
hand) gets its parser from the function's signature and docstring (``call``), so defaults and help are written
once, in the library.
The others still declare their options here: list options (``--runs a b``, ``--tasks``) that jsonargparse would
read as one JSON value, subcommand groups (``evaluate``, ``tokenizer``), and the run config (``run_parser``;
``mix`` and ``status`` hand it to ``train.preview``). Size (~540 lines, over the house's ~450) until what is
left moves into the library: ``report``'s and ``evaluate``'s option checks, the list-option commands' parsers. Errors from bad input (ConfigError, argument errors) become one line on stderr and
exit status 2.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Optional

from midtrain.atomic import write_text_atomic
from midtrain.errors import ConfigError
from midtrain.run_args import _parser, check_retired_keys, install_litgpt_alias, parse_run, run_parser  # noqa: F401

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
    """``midtrain prepare``: raw text -> one typed token shard (and a val shard)."""
    from midtrain.data.prepare import prepare_shard, shard_folder_name

    parser = _parser("Tokenize raw text (JSONL, parquet, text files, HF save_to_disk folders) into one shard.")
    parser.add_argument("--input", type=str, nargs="+", required=True, help="files or folders")
    parser.add_argument("--tokenizer_dir", type=str, required=True)
    parser.add_argument("--out_dir", type=str, required=True, help="the data_path the shard goes under")
    parser.add_argument("--shard", type=Optional[str], default=None, help="shard id: main/7, c3, m1, ...")
    parser.add_argument("--type", type=Optional[str], default=None, help="shard type (main, code, math, ...)")
    parser.add_argument("--index", type=Optional[int], default=None, help="shard number within the type")
    parser.add_argument("--shard_types", type=Optional[dict[str, str]], default=None)
    parser.add_argument("--field", type=str, default="text", help="JSONL field / parquet column with the text")
    parser.add_argument("--val_fraction", type=float, default=0.0)
    parser.add_argument("--val_dir", type=Optional[str], default=None, help="where the val shard goes")
    parser.add_argument("--num_workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--chunk_tokens", type=int, default=1 << 24)
    args = parser.parse_args(argv)
    name = shard_folder_name(args.shard, args.type, args.index, args.shard_types)
    summary = prepare_shard(args.input, args.tokenizer_dir, args.out_dir, name, args.field, args.val_fraction,
                            args.val_dir, args.num_workers, args.chunk_tokens)
    for split, info in summary.items():
        print(f"{split}: {info['path']} ({info['tokens']:,} tokens, {info['chunks']} chunks)")
        if info["documents_with_special_token_text"]:
            print(f"  {info['documents_with_special_token_text']:,} {split} document(s) contain a special token's text "
                  "(e.g. <|endoftext|>): tokenised as ordinary text; the only EOS is the one after each document")
    return 0


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
    """``midtrain tokenizer train``: a byte-level BPE for offline use."""
    from itertools import islice

    from midtrain.data.readers import input_units, read_documents
    from midtrain.tokenizer import train_bpe

    if _help(argv, "tokenizer", {"train": "train a byte-level BPE into a folder (--input FILES --out DIR)"}):
        return 0
    if not argv or argv[0] != "train":
        raise ConfigError("midtrain tokenizer", "expected the subcommand `train`")
    parser = _parser("Train a byte-level BPE tokenizer into a folder litgpt's Tokenizer loads.")
    parser.add_argument("--input", type=str, nargs="+", required=True)
    parser.add_argument("--out", type=str, required=True)
    parser.add_argument("--vocab_size", type=int, default=4096)
    parser.add_argument("--field", type=str, default="text")
    parser.add_argument("--max_documents", type=Optional[int], default=None)
    args = parser.parse_args(argv[1:])
    docs = (d for u in input_units(args.input) for d in read_documents(u, args.field))
    out = train_bpe(islice(docs, args.max_documents), args.out, args.vocab_size)
    print(f"tokenizer: {out}")
    return 0


def sft(argv: list[str]) -> int:
    """``midtrain sft``: fine-tune a checkpoint, pick the LR on val, report held-out test and forgetting."""
    from midtrain.posttrain.sft import Stopped, format_sft, run_sft

    parser = _parser("Full fine-tuning on prompt/response pairs with an LR sweep, held-out test loss and forgetting.")
    parser.add_function_arguments(run_sft)
    args = parser.parse_args(argv)
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


PRECISION_HELP = ("the forward pass: bf16-mixed (bf16 autocast, TF32) or 32-true; default bf16-mixed on a GPU with "
                  "bf16, else 32-true (written beside the numbers)")


def evaluate(argv: list[str]) -> int:
    """``midtrain evaluate loss|lm-eval|export-hf``."""
    if _help(argv, "evaluate", {"loss": "loss per val set of a checkpoint (or of every checkpoint of a run)",
                                "lm-eval": "lm-evaluation-harness tasks on a checkpoint, offline",
                                "export-hf": "a checkpoint as a Hugging Face model folder"}):
        return 0
    from midtrain.posttrain import evaluate as ev

    what = argv[0] if argv else ""
    parser = _parser(f"midtrain evaluate {what}")
    parser.add_argument("--checkpoint", type=str, required=True)
    if what == "loss":
        parser.add_argument("--data", type=str, required=True, help="a shard folder or a folder of val sets")
        parser.add_argument("--max_seq_length", type=Optional[int], default=None)
        parser.add_argument("--batch_size", type=int, default=8)
        parser.add_argument("--max_batches", type=int, default=100)
        parser.add_argument("--json", type=Optional[str], default=None)
        parser.add_argument("--all_checkpoints", type=bool, default=False,
                            help="--checkpoint is a run folder: evaluate every saved checkpoint in it (by_step)")
        parser.add_argument("--precision", type=Optional[str], default=None, help=PRECISION_HELP)
        a = parser.parse_args(argv[1:])
        if a.all_checkpoints:
            result = ev.loss_over_checkpoints(a.checkpoint, a.data, a.max_seq_length, a.batch_size, a.max_batches,
                                              a.precision)
            for step, sets in result["by_step"].items():
                print(f"step {step}: " + ", ".join(f"{n} loss {m['loss']:.4f}" for n, m in sets.items()
                                                   if isinstance(m, dict) and "loss" in m))
        else:
            result = ev.loss_on_shards(a.checkpoint, a.data, a.max_seq_length, a.batch_size, a.max_batches,
                                       a.precision)
        for name, m in result.items():
            if isinstance(m, dict) and "loss" in m:
                print(f"{name}: loss {m['loss']:.4f} ppl {m['ppl']:.2f}")
        print(f"precision: {result['precision']}")
        for note in result.get("checkpoint_notes") or []:
            if note.get("optimizer"):
                print(f"note: {note['optimizer']} at step {note.get('at_step', note.get('step'))}")
        ev.write_json(result, a.json)
    elif what == "lm-eval":
        parser.add_argument("--tasks", type=str, required=True)
        parser.add_argument("--out_dir", type=str, required=True)
        parser.add_argument("--batch_size", type=int, default=1)
        parser.add_argument("--num_fewshot", type=Optional[int], default=None)
        parser.add_argument("--limit", type=Optional[float], default=None)
        parser.add_argument("--include_path", type=Optional[str], default=None,
                            help="a folder of local task YAMLs (data files beside them: works offline)")
        parser.add_argument("--tokenizer_dir", type=Optional[str], default=None, help="default: the checkpoint folder")
        parser.add_argument("--precision", type=Optional[str], default=None, help=PRECISION_HELP)
        a = parser.parse_args(argv[1:])
        table = ev.lm_eval(a.checkpoint, a.tasks, a.out_dir, a.batch_size, a.num_fewshot, a.limit, a.include_path,
                           a.tokenizer_dir, a.precision)
        for task, metrics in table.items():
            print(f"{task}: " + ", ".join(ev.format_lm_eval_metrics(metrics)))
        print(f"wrote {a.out_dir}/results.json")
    elif what == "export-hf":
        parser.add_argument("--out", type=str, required=True)
        a = parser.parse_args(argv[1:])
        print(f"wrote {ev.export_hf(a.checkpoint, a.out)}")
    else:
        raise ConfigError("midtrain evaluate", "expected one of: loss, lm-eval, export-hf")
    return 0


def plot(argv: list[str]) -> int:
    """``midtrain plot``: per-source validation loss against step for several runs (PNG)."""
    from midtrain.report import plot_runs

    parser = _parser("Plot per-source validation loss (or another metric family) against step for runs.")
    parser.add_argument("--runs", type=str, nargs="+", required=True, help="run out_dirs")
    parser.add_argument("--out", type=str, required=True, help="PNG path")
    parser.add_argument("--metric", type=str, default="val_loss", help="metric family: val_loss, val_ppl, train_loss")
    a = parser.parse_args(argv)
    print(f"wrote {plot_runs(a.runs, a.out, a.metric.rstrip('/') + '/')}")
    return 0


def report(argv: list[str]) -> int:
    """``midtrain report``: final per-source losses and SFT results across runs (markdown or CSV)."""
    from midtrain.report import format_table, report_rows

    parser = _parser("A table of final per-source validation losses and SFT results across runs.")
    parser.add_argument("--runs", type=str, nargs="*", default=[])
    parser.add_argument("--sft", type=str, nargs="*", default=[], help="SFT metrics JSON files (midtrain sft --out)")
    parser.add_argument("--format", type=str, default="markdown", help="markdown or csv")
    parser.add_argument("--out", type=Optional[str], default=None)
    parser.add_argument("--by_seed", type=bool, default=False,
                        help="aggregate the --sft files over seeds: arms x tasks, mean ± CI, Δ vs --baseline")
    parser.add_argument("--baseline", type=Optional[str], default="pretrain-only",
                        help="the arm every Δ is measured against (null: no Δ)")
    parser.add_argument("--main_set", type=str, default="main", help="the val set whose loss after SFT is forgetting")
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--lr_choice", type=str, default="per_checkpoint",
                        help="--by_seed: per_checkpoint (one LR per fine-tuned checkpoint and task, on the val loss "
                             "averaged over its seeds), per_arm (one per arm and task) or per_seed")
    a = parser.parse_args(argv)
    if a.format not in ("markdown", "csv"):
        raise ConfigError("--format", f"{a.format!r} is not markdown or csv")
    if a.out:
        from pathlib import Path

        from midtrain.atomic import check_writable_dir

        check_writable_dir(Path(a.out).parent, "--out")
    if a.by_seed:
        from midtrain.report import seed_table

        if not a.sft:
            raise ConfigError("--sft", "--by_seed aggregates SFT metrics files: give them")
        if not 0 < a.confidence < 1:
            raise ConfigError("--confidence", f"must be in (0, 1), got {a.confidence}")
        text = seed_table(a.sft, a.runs, a.baseline, a.format, a.main_set, a.confidence, a.lr_choice).rstrip("\n")
    else:
        if not a.runs:
            raise ConfigError("--runs", "give the run folders to report")
        cols, rows = report_rows(a.runs, a.sft)
        text = format_table(cols, rows, a.format)
    if a.out:
        write_text_atomic(a.out, text + "\n")
    print(text)
    return 0


def import_(argv: list[str]) -> int:
    """``midtrain import``: ``midtrain.importer.import_checkpoint``, its parser built from its signature."""
    return call(argv, "midtrain.importer", "import_checkpoint")


def migrate(argv: list[str]) -> int:
    """``midtrain migrate``: ``midtrain.migrate.migrate_file``, its parser built from its signature."""
    return call(argv, "midtrain.migrate", "migrate_file")


def proximity(argv: list[str]) -> int:
    """``midtrain proximity``: unigram proximity of mixtures (of named sets) to targets, and the advantage."""
    from midtrain.analysis.run_proximity import format_rows, run_proximity

    parser = _parser("Token-unigram proximity between datasets (token shards read directly, or raw text "
                     "tokenised with --tokenizer_dir) and each mixture's proximity advantage over --reference.")
    parser.add_argument("--data", type=str, nargs="+", required=True,
                        help="named sets NAME=PATH (shard folder(s) or raw text); sources of the mixtures")
    parser.add_argument("--targets", type=str, nargs="+", required=True, help="named target sets NAME=PATH")
    parser.add_argument("--mixtures", type=str, nargs="*", default=[],
                        help="NAME=src:w,src:w over --data names (each --data set alone is always a mixture too)")
    parser.add_argument("--reference", type=str, default="main", help="the mixture the advantage is measured against")
    parser.add_argument("--measure", type=str, default="cosine",
                        help="the primary measure, listed first: cosine (default), jsd or combined")
    parser.add_argument("--max_tokens", type=Optional[int], default=10_000_000,
                        help="a seeded sample of at most this many tokens per set (null: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer_dir", type=Optional[str], default=None,
                        help="for raw-text sets; also bounds token ids of shards")
    parser.add_argument("--field", type=str, default="text", help="JSONL/parquet text field of raw-text sets")
    parser.add_argument("--json", type=Optional[str], default=None, help="also write the table as JSON")
    a = parser.parse_args(argv)
    result = run_proximity(a.data, a.targets, a.mixtures, a.reference, a.measure, a.max_tokens, a.seed,
                           a.tokenizer_dir, a.field, a.json)
    print(format_rows(result))
    if a.json:
        print(f"wrote {a.json}")
    return 0


def overlap(argv: list[str]) -> int:
    """``midtrain overlap``: near-duplicates of evaluation items in corpora and training sets."""
    from midtrain.analysis.overlap import format_summary, run_overlap

    parser = _parser("Near-duplicate decontamination: per evaluation set, the items that share a normalised "
                     "word n-gram with any document of --against (case, whitespace and punctuation ignored; an "
                     "item shorter than n words is matched whole), and the items whose response equals a "
                     "training response after replacing names and numbers.")
    parser.add_argument("--eval", type=str, nargs="+", required=True,
                        help="NAME=PATH of prompt/response JSONL sets (or JSONL documents with \"text\", such as a "
                             "corpus's val split)")
    parser.add_argument("--against", type=str, nargs="+", required=True,
                        help="NAME=PATH of corpora (read as `prepare --input` reads them: JSONL/parquet with text, "
                             "any other file as a document, or a folder of them) and training sets (prompt/response "
                             "JSONL: also checked for renamed-entity responses)")
    parser.add_argument("--n", type=int, default=13, help="n-gram length in words (13: common practice)")
    parser.add_argument("--prompt_key", type=str, default="prompt")
    parser.add_argument("--response_key", type=str, default="response")
    parser.add_argument("--json", type=Optional[str], default=None, help="also write the counts and examples as JSON")
    a = parser.parse_args(argv)
    result = run_overlap(a.eval, a.against, a.n, a.json, a.prompt_key, a.response_key)
    print(format_summary(result["eval"], a.n))
    print("words read: " + ", ".join(f"{k} {v:,}" for k, v in result["words_read"].items()))
    return 0


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
    """``midtrain demo``: the paper's findings in miniature (a study spec run by the study engine)."""
    from pathlib import Path

    from midtrain.demo import SPECS, run_demo

    parser = _parser("Run the demo study on CPU, offline: data from the Python stdlib and generators, leak-checked; "
                     "the study in midtrain_configs/studies/demo*.yaml; tables, verdicts, figures.")
    parser.add_argument("--out", type=str, default="out/demo", help="everything goes here; a re-run resumes/skips")
    parser.add_argument("--size", type=str, default="quick", help=f"one of {', '.join(SPECS)} (the test runs tiny)")
    parser.add_argument("--parallel", type=int, default=2, help="study steps run at once")
    parser.add_argument("--publish", type=bool, default=False,
                        help="write the results into docs/demo-results.md and the demo page docs/demo.md (what `make demo` does)")
    a = parser.parse_args(argv)
    return run_demo(Path(a.out), a.size, a.parallel, a.publish)


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


def call(argv: list[str], module: str, name: str) -> int:
    """A command that is one library function: its parser from the signature and the docstring's ``Args:``
    (defaults and help written once, in the library), then the call."""
    import importlib

    from docstring_parser import parse as parse_doc

    fn = getattr(importlib.import_module(module), name)
    doc = parse_doc(fn.__doc__)
    parser = _parser(" ".join(filter(None, (doc.short_description, doc.long_description))), config=False)
    parser.add_function_arguments(fn)
    return fn(**parser.parse_args(argv).as_dict())


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
