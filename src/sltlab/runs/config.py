"""Typed configs: build frozen dataclasses from plain dicts (TOML, JSON), checking every field by its annotation.

Errors name the dotted field (`study.search.lr`) and what it accepts, so a user fixes a config from the message alone.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from sltlab.errors import ConfigError

T = TypeVar("T")


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) if not isinstance(a, str) else a for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if origin in (tuple, list):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return f"a list of {_describe(args[0]) if args else 'values'}"
    if dataclasses.is_dataclass(tp):
        return f"a table of {tp.__name__} fields"
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(where, f"got {value!r}", _describe(tp))
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, where)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(where, f"got {value!r}", _describe(tp))
    if origin in (tuple, list):
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ConfigError(where, f"got {value!r}", _describe(tp))
        args = [a for a in get_args(tp) if a is not Ellipsis]
        inner = args[0] if args else Any
        items = [_convert(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(where, f"got {value!r}", "a table")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value) and isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(where, f"got {value!r}", _describe(tp))
        return from_dict(tp, value, prefix=where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(where, f"got {value!r}", "true | false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(where, f"got {value!r}", "an integer")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            # TOML spells nan and inf; no setting means them, and NaN slips past every `x <= 0` check after this.
            if not math.isfinite(value):
                raise ConfigError(where, f"got {value!r}", "a finite number")
            return float(value)
        raise ConfigError(where, f"got {value!r}", "a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(where, f"got {value!r}", "a string")
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from `data`; unknown keys and ill-typed values raise ConfigError naming the field."""
    if not isinstance(data, dict):
        raise ConfigError(prefix or cls.__name__, f"got {data!r}", "a table of fields")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(where, "is not a known field", ", ".join(sorted(fields)))
    kwargs = {}
    for name, value in data.items():
        where = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _convert(hints[name], value, where)
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required field is missing
        raise ConfigError(prefix or cls.__name__, str(err)) from None


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file; a missing or malformed file gives one clear ConfigError line."""
    from sltlab.errors import DataError
    from sltlab.paths import read_utf8

    p = Path(path)
    if p.is_dir():
        raise ConfigError("config", f"{str(p)!r} is a directory, not a file",
                          "a path to a .toml config, e.g. configs/approx_quick.toml")
    if not p.is_file():
        raise ConfigError("config", f"file {str(p)!r} does not exist",
                          "a path to a .toml config, e.g. configs/approx_quick.toml")
    try:
        text = read_utf8(p)
    except DataError as err:
        raise ConfigError("config", str(err)) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError("config", f"{p} is not valid TOML: {err}") from None


def check_range(
    field: str, value: float, lo: float | None = None, hi: float | None = None,
    *, lo_open: bool = False, hi_open: bool = False,
) -> None:
    """Raise ConfigError unless lo <(=) value <(=) hi (NaN and infinities never pass)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(field, f"{value!r} is not a finite number", "a finite number")
    bad = (
        (lo is not None and (value <= lo if lo_open else value < lo))
        or (hi is not None and (value >= hi if hi_open else value > hi))
    )
    if bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        raise ConfigError(field, f"{value!r} is out of range", f"values in {left}{lo_s}, {hi_s}{right}")


def comma_list(text: str | None) -> list[str] | None:
    """A command-line list such as "sst2, rte" -> ["sst2", "rte"]; None (option not given) stays None."""
    if text is None:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_value(text: str) -> Any:
    """A --set value: TOML when it parses (numbers, booleans, lists, quoted strings), else the plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_sets(data: dict[str, Any], sets: list[str], allowed_top: set[str] | None = None) -> dict[str, Any]:
    """Apply `--set a.b=1` overrides onto a config dict (in place and returned)."""
    for item in sets:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ConfigError("--set", f"{item!r} is not KEY=VALUE", "e.g. --set search.lr=0.1")
        parts = key.split(".")
        if allowed_top is not None and parts[0] not in allowed_top:
            raise ConfigError(f"--set {key}", "is not a setting of this study", ", ".join(sorted(allowed_top)))
        node = data
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {key}", f"{part!r} is not a table", "a key of a table, e.g. search.lr")
            node = nxt
        node[parts[-1]] = parse_value(value)
    return data
