"""Checks of user-given values, shared by configs and live setters: each names the value and the
accepted form, so a wrong type is a `ConfigError` sentence rather than a TypeError deep inside."""
from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any, TypeVar

from livediff.errors import ConfigError

MAX_SEED = 2 ** 63 - 1
T = TypeVar("T")


def from_options(what: str, cls: type[T], options: dict) -> T:
    """`cls(**options)` for an options dataclass, with unknown and missing keys named beside the
    allowed ones ("unknown bank option(s) 'x'; allowed: ...") instead of a TypeError."""
    allowed = [f.name for f in fields(cls)]
    unknown = sorted(set(options) - set(allowed), key=repr)
    if unknown:
        raise ConfigError(f"unknown {what} option(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}")
    required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
    missing = [name for name in required if name not in options]
    if missing:
        raise ConfigError(f"{what} needs {', '.join(missing)} (given: {', '.join(map(repr, options)) or 'nothing'})")
    return cls(**options)


def number(name: str, value: Any, low: float, high: float, *, low_open: bool = False) -> float:
    """A real number (not a bool or a string) in [low, high] (or (low, high] with `low_open`)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} {value!r} must be a number in {'(' if low_open else '['}{low}, {high}]")
    inside = (low < value if low_open else low <= value) and value <= high
    if not inside:
        raise ConfigError(f"{name} {value!r} is outside {'(' if low_open else '['}{low}, {high}]")
    return float(value)


def whole(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} {value!r} must be a whole number in {low}..{high}")
    if not low <= value <= high:
        raise ConfigError(f"{name} {value!r} is outside {low}..{high}")
    return value


def seed(value: Any) -> int:
    return whole("seed", value, 0, MAX_SEED)


def text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name} {value!r} must be a string (one prompt per stream)")
    return value
