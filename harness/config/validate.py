"""The rules of competition.yaml: types, registered names and rules that span several keys.

Each dataclass field of `spec.py` is converted by its type hint; a field whose metadata names a
registry (`{"registry": "layouts"}`) accepts only the names the caller's `registries` give for
it (the preflight's). Rules that span the registries of other stages (a task's own rules, its
formats, recipes, backbones) are the preflight's.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Union

from ..errors import SpecError

if TYPE_CHECKING:
    from .spec import Competition

# keys of earlier versions: what replaced them
RETIRED = {"search.epochs": "budgets are optimizer steps now: write search.steps, e.g. [2000] "
                            "(an epoch is images / batch_size steps)"}


def build(cls: type, raw: Any, where: str, registries: Mapping[str, Any]) -> Any:
    """`cls` (a spec dataclass) from its YAML mapping; every key checked, one line per mistake; a key
    naming a registry entry is checked against `registries[kind]` (left unchecked without it)."""
    if not isinstance(raw, dict):
        raise SpecError(f"{where or 'spec'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = [k for k in raw if k not in fields]
    if unknown:
        key = _join(where, unknown[0])
        raise SpecError(_unknown(key, unknown[0], fields))
    kwargs = {}
    for name, f in fields.items():
        key = _join(where, name)
        if name in raw and raw[name] == [] and (f.metadata.get("may_be_empty") or (
                f.default_factory is not dataclasses.MISSING and f.default_factory() == [])):
            kwargs[name] = []  # an optional list written empty
            continue
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SpecError(f"missing key '{key}': add it to competition.yaml")
            continue
        choices = f.metadata.get("choices", registries.get(f.metadata.get("registry")))
        kwargs[name] = _convert(hints[name], raw[name], key, choices, registries)
    return cls(**kwargs)


def check_key(cls: type, key: str, where: str = "") -> None:
    """A dotted `key` (`--set search.lr=...`) names a field of `cls` at every level, else one line
    with the close names; below a mapping field (heads.<name>, train.classes) any name is a key."""
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
        if part not in fields:
            raise SpecError(_unknown(_join(where, part), part, fields))
        where, rest = _join(where, part), parts[i + 1:]
        hint = typing.get_type_hints(cls)[part]
        options = [a for a in typing.get_args(hint) if a is not type(None)] \
            if typing.get_origin(hint) is Union else [hint]
        mapping = [o for o in options if typing.get_origin(o) in (dict, Dict)]
        if mapping and len(rest) > 1 and dataclasses.is_dataclass(typing.get_args(mapping[0])[1]):
            check_key(typing.get_args(mapping[0])[1], ".".join(rest[1:]), _join(where, rest[0]))
            return  # heads.<name>.metric
        nested = [o for o in options if dataclasses.is_dataclass(o)]
        if not rest or mapping:
            return  # a value, or a mapping's own keys
        if not nested:
            raise SpecError(f"'{where}' is a value, not a section: write {where}=VALUE")
        cls = nested[0]


def _unknown(key: str, name: str, fields: Mapping[str, Any]) -> str:
    """The line for an unknown `key` (its last part `name`): what replaced a retired key, else the
    keys allowed there and the close ones."""
    if key in RETIRED:
        return f"'{key}' is no longer a key: {RETIRED[key]}"
    close = difflib.get_close_matches(str(name).lower(), list(fields), n=3, cutoff=0.6)
    hint = f": did you mean {' or '.join(close)}?" if close else ""
    return f"unknown key '{key}' (allowed: {', '.join(fields)}){hint}"


def _convert(hint: Any, value: Any, key: str, choices: Any, registries: Mapping[str, Any]) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(option, value, key, choices, registries)
            except SpecError as err:
                errors.append(err)
        raise errors[0]
    if dataclasses.is_dataclass(hint):
        return build(hint, value, key, registries)
    if origin in (list, List):
        items = value if isinstance(value, list) else [value]
        if not items:
            raise SpecError(f"'{key}': needs at least one value")
        return [_convert(args[0], v, key, choices, registries) for v in items]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise SpecError(f"'{key}': expected a mapping, got {value!r}")
        if dataclasses.is_dataclass(args[1]):
            return {str(k): build(args[1], v or {}, f"{key}.{k}", registries) for k, v in value.items()}
        return {str(k): v for k, v in value.items()}
    out = _scalar(hint, value, key)
    _check_choice(out, key, choices)
    return out


def _scalar(hint: Any, value: Any, key: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 3e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif hint is Path:
        return Path(value)
    raise SpecError(f"'{key}': expected {getattr(hint, '__name__', hint)}, got {value!r}")


def _check_choice(value: Any, key: str, choices: Any) -> None:
    if choices is None or value is None:
        return
    if hasattr(choices, "names"):
        choices = choices.names()
    if value not in choices:
        raise SpecError(f"'{key}': unknown value {value!r} (allowed: {', '.join(map(str, choices))})")


def check_consistency(spec: "Competition", path: Path) -> None:
    """Rules that span several of config's own keys."""
    s = spec.search
    if spec.folds < 2:
        raise SpecError(f"{path}: 'folds': needs at least 2, got {spec.folds}: set folds: 5")
    if spec.tile_size < 32:
        raise SpecError(f"{path}: 'tile_size': needs at least 32, got {spec.tile_size}")
    for key in ("lr", "weight_decay"):
        values = getattr(s, key)
        if len(values) > 2 or min(values) <= 0:
            raise SpecError(f"{path}: 'search.{key}': expected [low, high] > 0, got {values}")
    for key in ("image_size", "batch_size", "steps"):
        if min(getattr(s, key)) < 1:
            raise SpecError(f"{path}: 'search.{key}': values must be >= 1, got {getattr(s, key)}")
    if s.heartbeat < 1:
        raise SpecError(f"{path}: 'search.heartbeat': needs at least 1 second, got {s.heartbeat}")
    if s.evals < 1:
        raise SpecError(f"{path}: 'search.evals': needs at least 1, got {s.evals}: validations per fold, e.g. 20")
    if not 0 < s.patience <= 1:
        raise SpecError(f"{path}: 'search.patience': a share of the steps in (0, 1], got {s.patience}: "
                        "e.g. 0.3 (1: no early stopping)")
    if not 0 <= s.prune_warmup < 1:
        raise SpecError(f"{path}: 'search.prune_warmup': a share of the steps in [0, 1), got {s.prune_warmup}")
    if not 0.5 <= s.pseudo_precision <= 1:
        raise SpecError(f"{path}: 'search.pseudo_precision': the OOF precision a pseudo-label needs, in [0.5, 1], "
                        f"got {s.pseudo_precision}: e.g. 0.95")
    if spec.submission.label_shift not in (True, False, "auto", "on", "off"):
        raise SpecError(f"{path}: 'submission.label_shift': unknown value {spec.submission.label_shift!r} "
                        "(allowed: auto, on, off)")
    if min(s.aux_weight) < 0:
        raise SpecError(f"{path}: 'search.aux_weight': values must be >= 0, got {s.aux_weight}")
    if spec.test.target is not None or spec.test.targets:
        raise SpecError(f"{path}: 'test.target': the test set has no target")


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name
