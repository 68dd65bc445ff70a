"""The parser of a run config (every argument of ``midtrain.train.pretrain.setup``), shared by the
``pretrain``/``mix``/``status`` commands and by the study layer, which resolves a config with the
trainer's own defaults to compare it with a finished run's ``hyperparameters.yaml``."""

from __future__ import annotations

from typing import Optional

from midtrain.errors import ConfigError


def install_litgpt_alias() -> None:
    """Configs written for the original fork say ``class_path: litgpt.data.ShardedMixedDataset``."""
    import litgpt.data

    from midtrain.data.sharded_mixed import ShardedMixedDataset

    litgpt.data.ShardedMixedDataset = ShardedMixedDataset


def _parser(description: str, config: bool = True):
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(description=description, exit_on_error=False)
    if config:
        parser.add_argument("--config", action=ActionConfigFile, help="a YAML file with any of these options")
    return parser


def run_parser(description: str):
    """The parser of a run config: every argument of ``midtrain.train.pretrain.setup``."""
    from midtrain.train.pretrain import setup

    from jsonargparse import ActionConfigFile

    install_litgpt_alias()
    parser = _parser(description, config=False)
    # `--config` is read by `parse_run` (for ${VAR} expansion) and handed over as a YAML string here.
    parser.add_argument("--run_yaml", action=ActionConfigFile, help="(internal) the expanded --config")
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
        cfg = load_config(config_path)
        check_retired_keys(cfg, config_path)
        argv = ["--run_yaml", yaml.safe_dump(cfg)] + argv
    args = parser.parse_args(argv)
    return args, parser.instantiate_classes(args)


RETIRED_KEYS = {
    "mix_weight": "the original read it nowhere; give type weights as mix_weights_str: 'main:0.8,code:0.2'",
}


def check_retired_keys(cfg: dict, path: str) -> None:
    """Keys of the original's configs that no code reads: refused by name, not by jsonargparse's union noise."""
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    places = {"": cfg, "data.": data, "data.init_args.": data.get("init_args") if isinstance(data.get("init_args"), dict) else {}}
    for prefix, section in places.items():
        for key, why in RETIRED_KEYS.items():
            if key in section:
                raise ConfigError(f"{path}: {prefix}{key}", why)


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




def run_config_dict(cfg) -> dict:
    """The resolved config as plain data, for hyperparameters.yaml."""
    from dataclasses import asdict
    from pathlib import Path

    def plain(v):
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if hasattr(v, "__dataclass_fields__"):
            return plain(asdict(v))
        return v
    return plain(cfg)
