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


PROG = ["midtrain"]  # the command line's name in usage lines (cli.main sets "midtrain COMMAND [SUBCOMMAND]")


def _parser(description: str, config: bool = True):
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog=PROG[0], description=description, exit_on_error=False)
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
    parser.add_function_arguments(setup, skip={"hparams", "optimizer"})
    # The optimizer is parsed as a class (class_path + init_args checked against its signature), so that
    # `--optimizer.lr 30` and `--optimizer.init_args.lr 30` set init_args.lr as the YAML key would and a
    # key the class does not take is refused. Typed `Union[str, dict]` (litgpt's), jsonargparse stored them
    # as stray top-level keys that nothing read (litgpt#1905). `run_namespace` turns it back into the
    # `{class_path, init_args}` dict the trainer and hyperparameters.yaml use.
    parser.add_argument("--optimizer", type=_optimizer_type(), default=None,
                        help="the optimizer: a torch.optim class name or {class_path, init_args}")
    # `--data.data_path X` without a class_path means our DataModule.
    parser.set_defaults(data={"class_path": "midtrain.data.ShardedMixedDataset"})
    return parser


def _optimizer_type():
    from typing import Callable, Iterable

    import torch

    return Callable[[Iterable], torch.optim.Optimizer]


def optimizer_dict(value, written: set) -> dict:
    """The parsed optimizer (a jsonargparse Namespace) as the plain ``{class_path, init_args}`` the trainer
    instantiates and hyperparameters.yaml records: the init args the YAML or command line wrote, typed by
    the class's signature (the class's defaults stay its defaults; an unwritten lr stays unwritten, which
    the trainer refuses unless train.max_lr is set)."""
    from jsonargparse import Namespace

    if isinstance(value, Namespace):
        value = value.as_dict()

    def plain(v):
        return [plain(x) for x in v] if isinstance(v, (list, tuple)) else v
    return {"class_path": value["class_path"],
            "init_args": {k: plain(v) for k, v in (value.get("init_args") or {}).items() if k in written}}


def _written_init_args(cfg_optimizer, argv: list[str]) -> set:
    """Names of the optimizer init args that the config or the command line gives."""
    import yaml

    written = set((cfg_optimizer.get("init_args") or {}) if isinstance(cfg_optimizer, dict) else ())
    for i, a in enumerate(argv):
        key, eq, value = a.partition("=")
        if key.startswith("--optimizer."):
            name = key[len("--optimizer."):]
            name = name[len("init_args."):] if name.startswith("init_args.") else name
            if name == "init_args":
                value = value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
                try:
                    written |= set(yaml.safe_load(value) or {})
                except (yaml.YAMLError, TypeError):
                    pass
            elif name != "class_path":
                written.add(name)
        elif key == "--optimizer":
            value = value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
            try:
                given = yaml.safe_load(value)
            except yaml.YAMLError:
                given = None
            if isinstance(given, dict):
                written |= set(given.get("init_args") or {})
    return written


def _class_of(spec) -> Optional[str]:
    """The class path an optimizer spec names (a name, or a dict's class_path); None if it names none."""
    if isinstance(spec, dict):
        spec = spec.get("class_path")
    if not isinstance(spec, str):
        return None
    return spec if "." in spec else f"torch.optim.{spec}"


def _check_optimizer_class(path: str):
    """The class, or one line (jsonargparse's own refusal is a paragraph)."""
    from midtrain.train.startup import optimizer_class

    return optimizer_class(path)


def _cli_optimizer_class(argv: list[str]) -> Optional[str]:
    """The optimizer class the command line names (``--optimizer X``, ``--optimizer.class_path X``), if any."""
    import yaml

    named = None
    for i, a in enumerate(argv):
        key, eq, value = a.partition("=")
        if key in ("--optimizer", "--optimizer.class_path"):
            if not eq:
                value = argv[i + 1] if i + 1 < len(argv) else ""
            try:
                named = _class_of(yaml.safe_load(value)) or named
            except yaml.YAMLError:
                pass
    return named


def run_namespace(parser, argv: list[str], cfg: Optional[dict] = None):
    """Parse a run config (``cfg``, the YAML as a dict) and ``argv`` on top, as ``midtrain pretrain`` does; the
    optimizer comes back as the plain ``{class_path, init_args}`` dict of what was written (``optimizer_dict``).

    The optimizer is AdamW where neither names one. A command line naming another class than the YAML's,
    when the YAML gives init args, is refused: jsonargparse would carry the YAML class's resolved init args
    (its defaults too) into the new class, which the same change in the YAML would not do."""
    import yaml

    cfg = dict(cfg or {})
    named = _cli_optimizer_class(argv)
    written = cfg.get("optimizer")
    if isinstance(written, dict) and "class_path" not in written:  # `optimizer: {lr: ...}`: the default class
        written = cfg["optimizer"] = {"class_path": "torch.optim.AdamW", "init_args": dict(written)}
    classes = {path: _check_optimizer_class(path) for path in {_class_of(written), named} - {None}}
    if written is None and named is None:
        cfg["optimizer"] = "AdamW"
    elif (isinstance(written, dict) and written.get("init_args") and named is not None
          and classes[_class_of(written)] is not classes[named]):
        raise ConfigError("--optimizer", f"names {named}, and the config's optimizer is {_class_of(written)}: change "
                          "the class in the YAML (its init_args belong to that class)")
    args = parser.parse_args(["--run_yaml", yaml.safe_dump(cfg)] + list(argv))
    args.optimizer = optimizer_dict(args.optimizer, _written_init_args(cfg.get("optimizer"), argv))
    return args


def parse_run(parser, argv: list[str]):
    """Parse argv (with ``--config`` read by us, for ${VAR} expansion) -> (namespace, instantiated)."""
    from midtrain.config_io import load_config

    argv = list(argv)
    config_path = _take_config(argv)
    cfg = {}
    if config_path is not None:
        cfg = load_config(config_path)
        check_retired_keys(cfg, config_path)
    args = run_namespace(parser, argv, cfg)
    optimizer = args.pop("optimizer")
    init = parser.instantiate_classes(args)
    args.optimizer = init.optimizer = optimizer
    return args, init


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
