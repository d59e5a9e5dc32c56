"""Typed stage configurations: dataclasses built from plain dicts, unknown keys rejected by name."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from localize.core.errors import ConfigError

T = TypeVar("T")


def _field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of a dataclass's fields (postponed annotations evaluated)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def _nested_dataclass(tp: Any) -> type | None:
    """The dataclass type behind an annotation (``X`` or ``X | None``), else None."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if dataclasses.is_dataclass(arg) and isinstance(arg, type):
                return arg
    return None


def from_dict(cls: type[T], data: Mapping[str, Any] | T | None, where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, recursing into nested dataclass fields.

    An instance of ``cls`` passes through unchanged; an unknown key raises ConfigError naming
    the key, where it sits (``where``) and the valid keys. Lists become tuples where the field's
    default is a tuple.
    """
    if data is None:
        return cls()
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    types_ = _field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        raise ConfigError(f"unknown configuration key {'.'.join(filter(None, [where, unknown[0]]))!r}; "
                          f"valid keys{' of ' + where if where else ''}: {', '.join(sorted(types_))}")
    kwargs = {}
    defaults = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in data.items():
        sub = _nested_dataclass(types_[key])
        if sub is not None and (isinstance(value, Mapping) or value is None and types_[key] is sub):
            value = from_dict(sub, value, ".".join(filter(None, [where, key])))
        elif isinstance(value, list) and isinstance(defaults[key].default, tuple):
            value = tuple(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from e


def to_dict(conf: Any) -> dict[str, Any]:
    """A dataclass configuration as a plain nested dict (tuples kept), for hashing and printing."""
    return dataclasses.asdict(conf)


def replace(conf: T, **changes: Any) -> T:
    """A copy of a (frozen or not) dataclass configuration with some fields changed."""
    return dataclasses.replace(conf, **changes)


def _number(kind: type, low: float, strict: bool) -> Any:
    """argparse type: a ``kind`` number > low (strict) or >= low, with a one-line error otherwise."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") \
                from None
        if value != value or (value <= low if strict else value < low) or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low:g}, got {text}")
        return value
    parse.__name__ = f"{kind.__name__} {'>' if strict else '>='} {low:g}"
    return parse


positive_int = _number(int, 0, True)  # argparse type: an integer >= 1
nonnegative_int = _number(int, 0, False)  # argparse type: an integer >= 0
positive_float = _number(float, 0.0, True)  # argparse type: a finite number > 0
nonnegative_float = _number(float, 0.0, False)  # argparse type: a finite number >= 0
