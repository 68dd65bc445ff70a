"""Reading run configs: YAML with ``${VAR}`` environment expansion (no cluster paths in configs)."""

from __future__ import annotations

import os
import re
from typing import Any

import yaml

from midtrain.errors import ConfigError

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: Any, where: str, env: dict | None = None) -> Any:
    """Expand ``${VAR}`` / ``${VAR:-default}`` in every string; an unset VAR without default is an error."""
    env = os.environ if env is None else env
    if isinstance(value, str):
        def sub(m: re.Match) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(where, f"${{{name}}} is not set: export {name}=... before running")
        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: expand_env(v, f"{where}.{k}" if where else str(k), env) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, f"{where}[{i}]", env) for i, v in enumerate(value)]
    return value


def load_config(path: str | os.PathLike) -> dict:
    """A YAML mapping with env vars expanded. Errors name the file (and key for unset variables)."""
    path = os.fspath(path)
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError("--config", f"{path} does not exist") from None
    except yaml.YAMLError as e:  # where: line and column (1-based), and what the parser found there
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
        what = " ".join(x for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x)
        raise ConfigError(where, f"not valid YAML ({what or str(e).splitlines()[0]})") from None
    except OSError as e:
        raise ConfigError(path, f"unreadable ({e.strerror or e})") from None
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, dict):
        raise ConfigError(path, "a config must be a YAML mapping of keys to values")
    try:
        return expand_env(cfg, "")
    except ConfigError as e:
        raise ConfigError(f"{path}: {e.field}", str(e).split(": ", 1)[1]) from None
