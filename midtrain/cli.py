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


def _data_section(cfg: dict, path: str) -> dict:
    """The ``data:`` section's init args; the class must be ShardedMixedDataset (either name)."""
    data = cfg.get("data") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: data", "expected a mapping with class_path and init_args")
    class_path = data.get("class_path")
    if class_path is None:
        return data
    if class_path not in ("litgpt.data.ShardedMixedDataset", "midtrain.data.ShardedMixedDataset",
                          "midtrain.data.sharded_mixed.ShardedMixedDataset", "ShardedMixedDataset"):
        raise ConfigError(f"{path}: data.class_path", f"{class_path!r}: `midtrain mix` plans ShardedMixedDataset only")
    unknown = set(data) - {"class_path", "init_args"}
    if unknown:
        raise ConfigError(f"{path}: data", f"unknown key {sorted(unknown)[0]!r} beside class_path/init_args")
    return data.get("init_args") or {}


def _block_size(train, model_name: Optional[str], model_config: Optional[dict]) -> int:
    if train.max_seq_length is not None:
        return train.max_seq_length
    if model_config and "block_size" in model_config:
        return int(model_config["block_size"])
    if model_name:
        from litgpt import Config

        try:
            return Config.from_name(model_name).block_size
        except ValueError:
            raise ConfigError("model_name", f"{model_name!r} is not a litgpt model name") from None
    raise ConfigError("train.max_seq_length", "not set, and no model_name/model_config to take block_size from")


def mix(argv: list[str]) -> int:
    """``midtrain mix``: discovery + weights + the per-shard plan for a run config."""
    from midtrain.config_io import load_config
    from midtrain.data.plan import format_plan
    from midtrain.data.sharded_mixed import ShardedMixedDataset
    from midtrain.train.args import TrainArgs

    parser = _parser("Show the mixture plan of a run: one row per shard, with the tokens the run draws from it.")
    parser.add_argument("--config", type=Optional[str], default=None, help="run YAML (pretrain/midtrain config)")
    parser.add_class_arguments(ShardedMixedDataset, "data")
    parser.add_class_arguments(TrainArgs, "train")
    parser.add_argument("--model_name", type=Optional[str], default=None)
    parser.add_argument("--model_config", type=Optional[dict], default=None)
    parser.add_argument("--tokens", type=Optional[int], default=None,
                        help="tokens the run trains on (default: train.max_steps x global_batch_size x max_seq_length)")
    parser.add_argument("--json", type=Optional[str], default=None, help="also write the plan as JSON to this path ('-' = stdout)")

    config_path = _take_config(argv)
    if config_path is not None:
        cfg = load_config(config_path)
        selected = {"data": _data_section(cfg, config_path)}
        for key in ("train", "model_name", "model_config"):
            if cfg.get(key) is not None:
                selected[key] = cfg[key]
        import yaml

        argv = ["--run_yaml", yaml.safe_dump(selected)] + argv
    args = parser.parse_args(argv)
    objs = parser.instantiate_classes(args)
    data: ShardedMixedDataset = objs.data
    train: TrainArgs = objs.train
    seq = _block_size(train, args.model_name, args.model_config)
    data.connect(batch_size=train.micro_batch_size, max_seq_length=seq, global_batch_size=train.global_batch_size)
    if args.tokens is not None:
        if args.tokens < 0:
            raise ConfigError("--tokens", f"must be >= 0, got {args.tokens}")
        total_samples = args.tokens // seq
    elif train.max_steps is None and train.max_iters is None and train.max_tokens is not None:
        total_samples = train.max_tokens // seq
    else:
        steps = train.total_steps(seq_length=seq)
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


COMMANDS: dict[str, Callable[[list[str]], int]] = {"mix": mix}


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
        install_litgpt_alias()
        return fn(argv)
    except ConfigError as e:
        print(f"midtrain {name}: error: {e}", file=sys.stderr)
        return 2
    except ArgumentError as e:
        msg = " ".join(str(e).split())
        print(f"midtrain {name}: error: {msg}", file=sys.stderr)
        return 2
