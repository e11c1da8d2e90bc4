"""Frozen dataclass configs <-> JSON and command-line overrides by dotted field names.

Generic over any tree of frozen dataclasses, so the model and data configs (owned elsewhere) can be
overridden from the command line (`--model.ngf 16`) without this module knowing their fields. It
sits below training and evaluation, which both parse `--data.*` flags with it.
Every bad name or value raises `ValueError` naming the dotted field and what was expected.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_NONE = {"none", "null"}


def field_types(cls: type) -> dict[str, Any]:
    """The resolved type of every init field of dataclass `cls` (string annotations evaluated)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def parse_text(text: str, tp: Any, where: str) -> Any:
    """Parse a command-line string into a value of type `tp` (bool, int, float, str, Literal,
    tuple, `X | None`)."""
    if _is_union(tp):
        args = typing.get_args(tp)
        if type(None) in args and text.strip().lower() in _NONE:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return parse_text(text, arg, where)
            except ValueError:
                continue
        raise ValueError(f"{where}: cannot read {text!r} as {_type_name(tp)}")
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if text not in choices:
            raise ValueError(f"{where}: expected one of {list(choices)}, got {text!r}")
        return text
    if origin is tuple:
        args = typing.get_args(tp)
        parts = [p for p in text.replace(" ", ",").split(",") if p]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(parse_text(p, args[0], where) for p in parts)
        if len(parts) != len(args):
            raise ValueError(f"{where}: expected {len(args)} comma-separated values, got {text!r}")
        return tuple(parse_text(p, a, where) for p, a in zip(parts, args, strict=True))
    if tp is bool:
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(f"{where}: expected true/false, got {text!r}")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{where}: expected an integer, got {text!r}") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{where}: expected a number, got {text!r}") from None
    if tp is str:
        return text
    raise ValueError(
        f"{where}: fields of type {_type_name(tp)} cannot be set from the command line"
    )


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check a JSON value against `tp`, converting lists to tuples and ints to floats."""
    if _is_union(tp):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ValueError(f"{where}: must not be null")
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ValueError:
                continue
        raise ValueError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_plain(tp, value, where)
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ValueError(f"{where}: expected one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ValueError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(
            _coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_plain(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass `cls` from a JSON object, strictly: unknown keys raise, missing keys take
    the field default, values are type-checked."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
    types_ = field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; known: {sorted(types_)}")
    kwargs = {k: _coerce(v, types_[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def to_plain(cfg: Any) -> Any:
    """A JSON-ready copy of a dataclass tree (tuples become lists)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.init}
    if isinstance(cfg, (list, tuple)):
        return [to_plain(v) for v in cfg]
    return cfg


def field_names(cfg: Any, prefix: str = "") -> list[str]:
    """Every settable dotted field name of a dataclass tree."""
    names = []
    for name in field_types(type(cfg)):
        value = getattr(cfg, name)
        dotted = f"{prefix}{name}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            names.extend(field_names(value, dotted + "."))
        else:
            names.append(dotted)
    return names


def _parse_overrides(cfg: Any, pairs: list[tuple[str, str]], prefix: str) -> dict[str, Any]:
    """Parsed values keyed by field name, nested dicts for nested dataclasses."""
    types_ = field_types(type(cfg))
    changes: dict[str, Any] = {}
    grouped: dict[str, list[tuple[str, str]]] = {}
    for dotted, text in pairs:
        head, _, rest = dotted.partition(".")
        full = f"--{prefix}{dotted}"
        if head not in types_:
            raise ValueError(
                f"{full}: unknown field {head!r} of {type(cfg).__name__}; known: {sorted(types_)}"
            )
        current = getattr(cfg, head)
        is_group = dataclasses.is_dataclass(current) and not isinstance(current, type)
        if rest and not is_group:
            raise ValueError(f"{full}: {prefix}{head} is not a group of fields")
        if not rest and is_group:
            raise ValueError(f"{full}: {prefix}{head} is a group; set one of its fields")
        if rest:
            grouped.setdefault(head, []).append((rest, text))
        else:
            changes[head] = parse_text(text, types_[head], full)
    for head, sub in grouped.items():
        changes[head] = _parse_overrides(getattr(cfg, head), sub, f"{prefix}{head}.")
    return changes


def _rebuild(cfg: T, changes: dict[str, Any], prefix: str) -> T:
    values = {}
    for name, change in changes.items():
        values[name] = (
            _rebuild(getattr(cfg, name), change, f"{prefix}{name}.")
            if isinstance(change, dict)
            else change
        )
    try:
        return dataclasses.replace(cfg, **values)
    except (ValueError, TypeError) as e:
        where = prefix.rstrip(".") or type(cfg).__name__
        raise ValueError(f"{where}: {e}") from e


def refuse_repeats(settings: list[tuple[str, str]]) -> None:
    """ValueError naming both flags when two different flags of `settings` ((flag, dotted field it
    sets), in command-line order) set the same field: which one wins would be a silent guess. The
    same flag repeated keeps argparse's rule: the last one wins."""
    seen: dict[str, str] = {}
    for flag, dotted in settings:
        first = seen.setdefault(dotted, flag)
        if first != flag:
            raise ValueError(f"{first} and {flag} both set {dotted}; give one of them")


def apply_overrides(cfg: T, pairs: list[tuple[str, str]]) -> T:
    """A copy of `cfg` with each dotted field (`"model.ngf"`) set from its string value. Each
    dataclass is rebuilt once with all its changes, so its `__post_init__` validation sees them
    together (changing `model.image_size` and `data.image_size` in one command is fine)."""
    if not pairs:
        return cfg
    return _rebuild(cfg, _parse_overrides(cfg, pairs, ""), "")


def diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted names of the fields whose values differ between two plain (JSON) trees."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out.extend(diff(a.get(key), b.get(key), f"{prefix}{key}."))
        return out
    return [] if a == b else [prefix.rstrip(".")]
