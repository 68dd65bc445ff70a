"""``midtrain`` command line: one subcommand per job, each a jsonargparse parser.

Errors from bad input (ConfigError, argument errors) become one line on stderr and exit status 2.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Callable, Optional

from midtrain.errors import ConfigError

USAGE = """usage: midtrain <command> [options]

commands:
  mix        show what a run will read from each shard (the mixture plan), without training
  pretrain   pretrain; midtrain from a base checkpoint with a new mixture (resume_from); resume
  status     where a run stands: checkpoints, step, complete or not

Run `midtrain <command> --help` for a command's options."""


def install_litgpt_alias() -> None:
    """Configs written for the original fork say ``class_path: litgpt.data.ShardedMixedDataset``."""
    import litgpt.data

    from midtrain.data.sharded_mixed import ShardedMixedDataset

    litgpt.data.ShardedMixedDataset = ShardedMixedDataset


def _parser(description: str):
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(description=description, exit_on_error=False)
    # Filled from the run YAML by `_run_config_args`; a string of YAML.
    parser.add_argument("--run_yaml", action=ActionConfigFile, help="(internal) the selected part of --config")
    return parser


def run_parser(description: str):
    """The parser of a run config: every argument of ``midtrain.train.pretrain.setup``."""
    from midtrain.train.pretrain import setup

    install_litgpt_alias()
    parser = _parser(description)
    parser.add_argument("--config", type=Optional[str], default=None, help="run YAML (${VARS} are expanded)")
    parser.add_function_arguments(setup, skip={"hparams"})
    # `--data.data_path X` without a class_path means our DataModule.
    parser.set_defaults(data={"class_path": "midtrain.data.ShardedMixedDataset"})
    return parser


def parse_run(parser, argv: list[str]):
    """Parse argv (with ``--config`` read by us, for ${VAR} expansion) -> (namespace, instantiated)."""
    import yaml

    from midtrain.config_io import load_config

    argv = list(argv)
    config_path = _take_config(argv)
    if config_path is not None:
        argv = ["--run_yaml", yaml.safe_dump(load_config(config_path))] + argv
    args = parser.parse_args(argv)
    return args, parser.instantiate_classes(args)


def pretrain(argv: list[str]) -> int:
    """``midtrain pretrain``: pretrain / midtrain / resume (see midtrain.train.pretrain)."""
    from midtrain.train.pretrain import run_config_dict, setup

    parser = run_parser("Pretrain, or midtrain from a base checkpoint with a new mixture (resume_from).")
    args, init = parse_run(parser, argv)
    kwargs = {k: v for k, v in vars(init).items() if k not in ("config", "run_yaml", "__path__")}
    hparams = run_config_dict({k: v for k, v in args.as_dict().items() if k not in ("config", "run_yaml", "__path__")})
    return setup(**kwargs, hparams=hparams)


def _block_size(train, model_name: Optional[str], model_config) -> int:
    if train.max_seq_length is not None:
        return train.max_seq_length
    if model_config is not None:
        return int(model_config.block_size)
    if model_name:
        from litgpt import Config

        try:
            return Config.from_name(model_name).block_size
        except ValueError:
            raise ConfigError("model_name", f"{model_name!r} is not a litgpt model name") from None
    raise ConfigError("train.max_seq_length", "not set, and no model_name/model_config to take block_size from")


def mix(argv: list[str]) -> int:
    """``midtrain mix``: discovery + weights + the per-shard plan of a run config, without training."""
    from midtrain.data.plan import format_plan
    from midtrain.data.sharded_mixed import ShardedMixedDataset

    parser = run_parser("Show the mixture plan of a run: one row per shard, with the tokens the run draws from it.")
    parser.add_argument("--tokens", type=Optional[int], default=None,
                        help="tokens the run trains on (default: train.max_steps x global_batch_size x max_seq_length)")
    parser.add_argument("--json", type=Optional[str], default=None, help="also write the plan as JSON to this path ('-' = stdout)")
    args, init = parse_run(parser, argv)
    data = init.data if init.data is not None else ShardedMixedDataset()
    if not isinstance(data, ShardedMixedDataset):
        raise ConfigError("data.class_path", f"{type(data).__name__}: `midtrain mix` plans ShardedMixedDataset only")
    train = init.train
    seq = _block_size(train, args.model_name, init.model_config)
    data.connect(batch_size=train.micro_batch_size, max_seq_length=seq, global_batch_size=train.global_batch_size)
    if args.tokens is not None:
        if args.tokens < 0:
            raise ConfigError("--tokens", f"must be >= 0, got {args.tokens}")
        total_samples = args.tokens // seq
    elif train.max_steps is None and train.max_iters is None and train.max_tokens is not None:
        total_samples = train.max_tokens // seq
    else:
        steps = train.total_steps(seq_length=seq)
        if steps is None and train.max_additional_steps is not None:
            steps = train.max_additional_steps
        total_samples = None if steps is None else steps * train.global_batch_size
    plan = data.plan(total_samples)
    print(format_plan(plan))
    if args.json:
        text = json.dumps(plan.to_dict(), indent=2)
        if args.json == "-":
            print(text)
        else:
            _write_atomic(args.json, text)
    return 0


def status(argv: list[str]) -> int:
    """``midtrain status``: where a run stands (not started / step N of M / complete)."""
    from pathlib import Path

    from midtrain.train import checkpoint as ckpt

    parser = run_parser("Show where a run stands: its checkpoints, step and whether it is complete.")
    parser.add_argument("--check_complete", "--check-complete", action="store_true",
                        help="exit 0 if the run is complete, 3 if not (for launchers)")
    args, init = parse_run(parser, argv)
    out_dir = Path(args.out_dir)
    found = ckpt.list_checkpoints(out_dir)
    final = out_dir / ckpt.FINAL
    state = ckpt.read_training_state(final) if (final / ckpt.MODEL_FILE).is_file() else {}
    wanted = init.train.max_steps
    complete = bool(state) and state.get("step", 0) >= max(state.get("end_step") or 0, wanted or 0)
    if not found:
        line = f"{out_dir}: not started"
    else:
        step, path = found[-1]
        line = f"{out_dir}: latest {path.name} at step {step}" + (" (complete)" if complete else "")
    if not args.check_complete:
        print(line)
        for step, path in found:
            print(f"  {path.name:<16} step {step}" + (" -> " + str(path.resolve()) if path.is_symlink() else ""))
        return 0
    return 0 if complete else 3


def _take_config(argv: list[str]) -> Optional[str]:
    """Remove ``--config X`` / ``--config=X`` from argv (we read it ourselves: see `mix`)."""
    for i, a in enumerate(argv):
        if a == "--config":
            if i + 1 >= len(argv):
                raise ConfigError("--config", "expects a path")
            path = argv[i + 1]
            del argv[i:i + 2]
            return path
        if a.startswith("--config="):
            del argv[i]
            return a.split("=", 1)[1]
    return None


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


COMMANDS: dict[str, Callable[[list[str]], int]] = {"mix": mix, "pretrain": pretrain, "status": status}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        sys.exit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"midtrain: error: unknown command {command!r} (expected one of {', '.join(COMMANDS)})", file=sys.stderr)
        sys.exit(2)
    sys.exit(run_command(COMMANDS[command], rest, command))


def run_command(fn: Callable[[list[str]], int], argv: list[str], name: str) -> int:
    from jsonargparse import ArgumentError

    try:
        return fn(argv)
    except ConfigError as e:
        print(f"midtrain {name}: error: {e}", file=sys.stderr)
        return 2
    except ArgumentError as e:
        msg = " ".join(str(e).split())
        print(f"midtrain {name}: error: {msg}", file=sys.stderr)
        return 2
