"""Mixture weight math: from what the user wrote to one normalised weight per shard.

Exactly one source of weights may be given (giving two is an error; the original silently took
the first):

- ``mix_weights_str`` — weighted mode, per *type*: ``"main:0.8,code:0.2"``. A type's weight is
  split over its shards equally (the original's behaviour) or, with ``within_type: tokens``, in
  proportion to each shard's tokens. A key may also be a shard id (``"main:0.8,q1:0.15,q2:0.05"``):
  that shard gets exactly its weight, and its type's weight is split over the type's other shards.
- ``literal_weights_str`` — literal mode, per *shard id*: ``"main/1:0.8,q1:0.1,q2:0.1"``.
- ``mix_config_path`` — a JSON file: ``{"weights": {...}}`` (weighted) or ``{"literal_weights":
  ...}`` (literal), optionally ``"proportional_sampling"`` and ``"within_type"``.
- nothing — the main corpus only.

``proportional_sampling`` weights shards by their true token counts; type weights, when given, act
as multipliers (as in the original). Weight 0 means "excluded" and is reported as such; discovered
types that get no weight at all are reported as unused.

Pure: no I/O (the JSON file is read by the caller), no torch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from midtrain.data.shards import MAIN, Discovery, Shard, type_order
from midtrain.errors import ConfigError

WITHIN_TYPE_MODES = ("equal", "tokens")
MIX_CONFIG_KEYS = ("weights", "literal_weights", "proportional_sampling", "within_type")


@dataclass(frozen=True)
class MixSpec:
    """What the user asked for, before it meets the shards on disk."""

    mode: str  # "default" | "weighted" | "literal"
    weights: tuple[tuple[str, float], ...] = ()  # (type or shard id, raw weight), as written
    field: str = "mix_weights_str"  # where the weights came from, for error messages
    proportional: bool = False
    within_type: str = "equal"


@dataclass(frozen=True)
class SourceWeight:
    shard: Shard
    weight: float  # normalised: all sources sum to 1


@dataclass
class Mixture:
    spec: MixSpec
    sources: list[SourceWeight]  # weight > 0, natural order
    excluded: list[Shard] = field(default_factory=list)  # given weight 0 explicitly
    unused_types: list[str] = field(default_factory=list)  # discovered, but given no weight

    def weights(self) -> dict[str, float]:
        return {s.shard.id: s.weight for s in self.sources}

    def type_weights(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for s in self.sources:
            out[s.shard.type] = out.get(s.shard.type, 0.0) + s.weight
        return out


_DECIMAL = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")  # float() would also take "1_0" as 10


def check_weight(key: str, value: Any, field_name: str, shown: str | None = None) -> float:
    """A finite, non-negative number, or a ConfigError naming ``field_name`` and the pair."""
    shown = shown if shown is not None else f"{key}:{value}"
    if isinstance(value, bool):
        raise ConfigError(field_name, f"{shown!r}: weight must be a number, not a boolean")
    if isinstance(value, str) and not _DECIMAL.match(value.strip()) and \
            value.strip().lower().lstrip("+-") not in ("nan", "inf", "infinity"):
        raise ConfigError(field_name, f"{shown!r}: weight {value!r} is not a number (a plain decimal such as 0.8 or 1e-3)")
    try:
        w = float(value)
    except (TypeError, ValueError):
        raise ConfigError(field_name, f"{shown!r}: weight {value!r} is not a number") from None
    if math.isnan(w) or math.isinf(w):
        raise ConfigError(field_name, f"{shown!r}: weight must be finite")
    if w < 0:
        raise ConfigError(field_name, f"{shown!r}: weight must be >= 0")
    return w


def parse_weights(text: str, field_name: str) -> tuple[tuple[str, float], ...]:
    """``"main:0.8,code:0.2"`` -> (("main", 0.8), ("code", 0.2)); errors name the pair."""
    out: list[tuple[str, float]] = []
    seen: set[str] = set()
    parts = text.split(",")
    for i, raw in enumerate(parts):
        pair = raw.strip()
        if not pair:
            if i == len(parts) - 1 and i > 0:
                continue  # tolerate one trailing comma
            raise ConfigError(field_name, f"empty pair at position {i + 1} in {text!r} (two commas in a row?)")
        key, sep, value = pair.rpartition(":")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ConfigError(field_name, f"malformed pair {pair!r} (expected name:weight, e.g. 'main:0.8')")
        w = check_weight(key, value, field_name, shown=pair)
        if key in seen:
            raise ConfigError(field_name, f"duplicate key {key!r}")
        seen.add(key)
        out.append((key, w))
    if not out:
        raise ConfigError(field_name, f"no weights in {text!r}")
    return tuple(out)


def _weights_from_json(value: Any, field_name: str) -> tuple[tuple[str, float], ...]:
    if isinstance(value, str):
        return parse_weights(value, field_name)
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(field_name, "expected a non-empty object {name: weight} or a 'name:w,...' string")
    return tuple((str(k), check_weight(str(k), v, field_name)) for k, v in value.items())


def _blank(s: str | None) -> bool:
    return s is None or not str(s).strip()


def mix_spec(
    mix_weights_str: str | None = None,
    literal_weights_str: str | None = None,
    mix_config: Mapping[str, Any] | None = None,
    mix_config_field: str = "mix_config_path",
    proportional_sampling: bool = False,
    within_type: str = "equal",
) -> MixSpec:
    """Validate the user's weight fields into a MixSpec. ``mix_config`` is the parsed JSON file."""
    given = [
        name
        for name, present in (
            ("mix_weights_str", not _blank(mix_weights_str)),
            ("literal_weights_str", not _blank(literal_weights_str)),
            (mix_config_field, mix_config is not None),
        )
        if present
    ]
    if len(given) > 1:
        raise ConfigError(given[1], f"only one source of weights may be given, but {' and '.join(given)} are both set")
    if within_type not in WITHIN_TYPE_MODES:
        raise ConfigError("within_type", f"{within_type!r} is not one of {', '.join(WITHIN_TYPE_MODES)}")
    for name, value in (("mix_weights_str", mix_weights_str), ("literal_weights_str", literal_weights_str)):
        if value is not None and _blank(value):  # not silently "main only"
            raise ConfigError(name, f"{value!r} is empty: give weights (e.g. main:0.8,code:0.2), or remove the key "
                              "(no weights at all = the main corpus only)")

    if not _blank(mix_weights_str):
        return MixSpec("weighted", parse_weights(mix_weights_str, "mix_weights_str"), "mix_weights_str",
                       proportional_sampling, within_type)
    if not _blank(literal_weights_str):
        spec = MixSpec("literal", parse_weights(literal_weights_str, "literal_weights_str"), "literal_weights_str",
                       proportional_sampling, within_type)
        _check_literal_not_proportional(spec)
        return spec
    if mix_config is not None:
        return _spec_from_mix_config(mix_config, mix_config_field, proportional_sampling, within_type)
    return MixSpec("default", (), "mix_weights_str", proportional_sampling, within_type)


def _spec_from_mix_config(cfg: Any, fld: str, proportional: bool, within_type: str) -> MixSpec:
    if not isinstance(cfg, Mapping):
        raise ConfigError(fld, "the mix config must be a JSON object")
    unknown = [k for k in cfg if k not in MIX_CONFIG_KEYS]
    if unknown:
        raise ConfigError(fld, f"unknown key {unknown[0]!r} (expected some of {', '.join(MIX_CONFIG_KEYS)})")
    if "weights" in cfg and "literal_weights" in cfg:
        raise ConfigError(fld, "give either 'weights' or 'literal_weights', not both")
    if "proportional_sampling" in cfg:
        if not isinstance(cfg["proportional_sampling"], bool):
            raise ConfigError(f"{fld}.proportional_sampling", "must be true or false")
        proportional = proportional or cfg["proportional_sampling"]
    if "within_type" in cfg:
        within_type = cfg["within_type"]
        if within_type not in WITHIN_TYPE_MODES:
            raise ConfigError(f"{fld}.within_type", f"{within_type!r} is not one of {', '.join(WITHIN_TYPE_MODES)}")
    if "literal_weights" in cfg:
        spec = MixSpec("literal", _weights_from_json(cfg["literal_weights"], f"{fld}.literal_weights"),
                       f"{fld}.literal_weights", proportional, within_type)
        _check_literal_not_proportional(spec)
        return spec
    if "weights" in cfg:
        return MixSpec("weighted", _weights_from_json(cfg["weights"], f"{fld}.weights"), f"{fld}.weights",
                       proportional, within_type)
    return MixSpec("default", (), fld, proportional, within_type)


def _check_literal_not_proportional(spec: MixSpec) -> None:
    if spec.proportional:
        raise ConfigError("proportional_sampling", f"cannot be combined with literal weights ({spec.field}): "
                          "literal weights are exact shard weights")


def resolve_mixture(spec: MixSpec, discovery: Discovery) -> Mixture:
    """One normalised weight per shard. Raises ConfigError naming the field for anything unmatched."""
    by_type = discovery.by_type()
    if spec.mode == "literal":
        raw, excluded, used_types = _literal_raw(spec, discovery)
    else:
        raw, excluded, used_types = _typed_raw(spec, discovery, by_type)

    total = sum(raw.values())
    if total <= 0:
        raise ConfigError(spec.field, "all weights are zero: nothing to train on")
    order = {s.id: i for i, s in enumerate(discovery.shards)}
    shards = discovery.by_id()
    sources = [SourceWeight(shards[sid], w / total) for sid, w in sorted(raw.items(), key=lambda kv: order[kv[0]]) if w > 0]
    excluded = sorted(excluded, key=lambda s: order[s.id])
    unused = sorted((t for t in by_type if t not in used_types), key=type_order)
    return Mixture(spec, sources, excluded, unused)


def _literal_raw(spec: MixSpec, discovery: Discovery):
    shards = discovery.by_id()
    raw: dict[str, float] = {}
    excluded: list[Shard] = []
    for sid, w in spec.weights:
        if sid not in shards:
            if sid == MAIN or sid in discovery.types:
                raise ConfigError(spec.field, f"{sid!r} is a shard type, not a shard: literal weights name shards "
                                  f"(e.g. {next((s.id for s in discovery.shards if s.type == sid), sid + '/1')!r}); "
                                  "type weights go in mix_weights_str")
            known = ", ".join(s.id for s in discovery.shards[:12]) + (", ..." if len(discovery.shards) > 12 else "")
            raise ConfigError(spec.field, f"shard {sid!r} not found under {discovery.base} (discovered: {known or 'none'})")
        if w > 0:
            raw[sid] = w
        else:
            excluded.append(shards[sid])
    used_types = {shards[sid].type for sid, _ in spec.weights}
    # Literal weights are exact: a named type's other shards are read at weight 0, and listed as such.
    named = {sid for sid, _ in spec.weights}
    excluded += [s for s in discovery.shards if s.type in used_types and s.id not in named]
    return raw, excluded, used_types


def _typed_raw(spec: MixSpec, discovery: Discovery, by_type: dict[str, list[Shard]]):
    known_types = {MAIN, *discovery.types}
    if spec.mode == "default":
        if spec.proportional:  # proportional with no type weights: every discovered shard, by tokens
            type_weights = {t: 1.0 for t in by_type}
        else:
            type_weights = {MAIN: 1.0}
            if not by_type.get(MAIN):
                raise ConfigError("data_path", f"no main shards (folders 1, 2, ...) under {discovery.base}; "
                                  "give mix_weights_str or literal_weights_str to train on typed shards")
    else:
        type_weights, shard_weights = {}, {}
        ids = discovery.by_id()
        for t, w in spec.weights:
            if t in ids:  # a shard id among type weights: that shard gets exactly this weight
                shard_weights[t] = w
                continue
            if t not in known_types:
                raise ConfigError(spec.field, f"unknown type {t!r} in '{t}:{w:g}' (known types: "
                                  f"{', '.join(sorted(known_types, key=type_order))}; shard ids also work; "
                                  "add types with shard_types)")
            type_weights[t] = w
        named = {ids[sid].type for sid in shard_weights}
        by_type = {t: [s for s in shards if s.id not in shard_weights] for t, shards in by_type.items()}
        for t, w in type_weights.items():
            if w > 0 and not by_type.get(t):
                why = "all its shards are also named individually" if t in named else f"no shards under {discovery.base}"
                raise ConfigError(spec.field, f"type {t!r} has weight {w:g} but {why}")
        raw, excluded, used = _split_type_weights(spec, type_weights, by_type)
        for sid, w in shard_weights.items():
            if w > 0:
                raw[sid] = w * (ids[sid].tokens if spec.proportional else 1)
            else:
                excluded.append(ids[sid])
        return raw, excluded, used | named
    return _split_type_weights(spec, type_weights, by_type)


def _split_type_weights(spec: MixSpec, type_weights: dict[str, float], by_type: dict[str, list[Shard]]):
    raw: dict[str, float] = {}
    excluded: list[Shard] = []
    for t, w in type_weights.items():
        shards = by_type.get(t, [])
        if w == 0:
            excluded.extend(shards)
            continue
        if spec.proportional:
            for s in shards:
                raw[s.id] = w * s.tokens
        elif spec.within_type == "tokens":
            tokens = sum(s.tokens for s in shards)
            if tokens == 0:
                raise ConfigError(spec.field, f"type {t!r} has no tokens to split its weight by")
            for s in shards:
                raw[s.id] = w * s.tokens / tokens
        else:
            for s in shards:
                raw[s.id] = w / len(shards)
    return raw, excluded, set(type_weights)
