"""Typed configs: frozen dataclasses filled from plain dicts (TOML, JSON), every field checked by one schema.

The schema is the dataclass's own annotations, validated by pydantic (strict: an integer is not 2.5 nor true nor
"3", a float is finite, a list is not a string), plus the ranges in FIELD_RULES, applied by field name to every
config: a field called `d_model`, `widths` or `seeds` is bounded the same way in every study, and a field someone
adds to a dataclass is type-checked, finite and bounded (integers in [0, 2^31)) with no extra code. Lists whose
default is not empty must not be empty. A field annotated `Annotated[int, Field(ge=...)]` brings its own bounds.
Cross-field rules (heads divide d_model, temperatures fall) stay in each config's `validate()`.

Errors name the dotted field (`study.search.lr`, `study.widths[2]`) and what it accepts, so a user fixes a config
from the message alone.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import Field, Strict, StrictBool, StrictInt, StrictStr, TypeAdapter, ValidationError

from sltlab.errors import ConfigError

T = TypeVar("T")

MAX_SEED = 2**32 - 1  # what numpy's seeding takes; torch's takes more, nothing here needs it
MAX_INT = 2**31 - 1  # every other integer setting unless FIELD_RULES bounds it closer
MAX_WIDTH = 65536  # any one dimension of a model (a 65536 x 65536 float32 matrix is 16 GiB)
#: Bounds by field name, for every config (and its lists' items). Integers only; anything else is checked by type.
FIELD_RULES: dict[str, tuple[int, int]] = {
    **dict.fromkeys(("seed", "seeds", "score_seeds", "search_seeds", "data_seed", "frozen_seed"), (0, MAX_SEED)),
    **dict.fromkeys(("d_model", "d_models", "dense_d_model", "gain_d_model", "d_ff", "n_k", "n_v", "width",
                     "widths", "search_widths", "stack_widths", "target_width", "seq_len", "seq_lens", "max_len"),
                    (1, MAX_WIDTH)),
    **dict.fromkeys(("heads", "n_heads", "n_kv_heads", "per_coordinate"), (1, 4096)),
    **dict.fromkeys(("n_layers", "n_blocks", "blocks", "fold", "folds"), (1, 1024)),
    **dict.fromkeys(("batch_size", "eval_batch"), (1, 2**20)),
    **dict.fromkeys(("steps", "search_steps", "train_steps", "epochs", "n_train", "n_test", "fisher_samples"),
                    (1, 2**30)),
    "threads": (1, 1024),
    "coats": (1, 255),  # a coat count is stored in a byte
    "vocab_size": (0, 2**24),
    "n_outputs": (1, 2**20),
}
#: Strings that name something and cannot be empty.
NON_EMPTY_STRINGS = frozenset({"name", "store", "out_dir", "dataset", "model", "task", "method", "norm"})
_FLOAT = Annotated[float, Strict(), Field(allow_inf_nan=False)]


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Annotated:
        return _describe(get_args(tp)[0])
    if origin is Literal:
        return " | ".join(repr(a) if not isinstance(a, str) else a for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp) if a is not type(None)) + (
            " (or omitted)" if type(None) in get_args(tp) else "")
    if origin in (tuple, list):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return f"a list of {_describe(args[0]) if args else 'values'}"
    if origin is dict or tp is dict:
        return "a table"
    if dataclasses.is_dataclass(tp):
        return f"a table of {tp.__name__} fields"
    return {int: "an integer", float: "a finite number", bool: "true | false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _schema(tp: Any, name: str, nonempty: bool) -> Any:
    """The pydantic type of one field: its annotation, made strict, with the rules of its name."""
    origin = get_origin(tp)
    if tp is Any or origin is Literal:
        return tp
    if origin is Annotated:
        inner, *meta = get_args(tp)
        return Annotated[(_schema(inner, name, nonempty), *meta)]
    if origin in (Union, types.UnionType):
        return Union[tuple(_schema(a, name, False) for a in get_args(tp))]  # noqa: UP007 - built at run time
    if origin in (tuple, list):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        item = _schema(args[0] if args else Any, name, False)
        seq = tuple[item, ...] if origin is tuple else list[item]
        return Annotated[seq, Field(min_length=1)] if nonempty else seq
    if origin is dict or tp is dict:
        return dict[StrictStr, Any]
    if tp is bool:
        return StrictBool
    if tp is int:
        lo, hi = FIELD_RULES.get(name, (0, MAX_INT))
        return Annotated[StrictInt, Field(ge=lo, le=hi)]
    if tp is float:
        return _FLOAT
    if tp is str:
        return Annotated[StrictStr, Field(min_length=1)] if name in NON_EMPTY_STRINGS else StrictStr
    return tp


@functools.cache
def _adapter(cls: type, name: str) -> tuple[TypeAdapter, Any]:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    hint = typing.get_type_hints(cls, include_extras=True)[name]
    if f.default is not dataclasses.MISSING:
        default: Any = f.default
    elif f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    else:
        default = None  # required: a list must have items
    nonempty = default is None or (isinstance(default, tuple | list) and len(default) > 0)
    return TypeAdapter(_schema(hint, name, nonempty)), hint


def _bounds_text(ctx: dict[str, Any]) -> str:
    lo = ctx.get("ge", ctx.get("gt"))
    hi = ctx.get("le", ctx.get("lt"))
    if lo is not None and hi is not None:
        return f"integers in [{lo}, {hi}]"
    return f"values >= {lo}" if lo is not None else f"values <= {hi}"


def _config_error(err: ValidationError, where: str, hint: Any, value: Any) -> ConfigError:
    """The first of pydantic's errors as one ConfigError naming the field (and the list item)."""
    e = err.errors()[0]
    at = where + "".join(f"[{i}]" for i in e["loc"] if isinstance(i, int))
    kind, got, ctx = e["type"], e.get("input", value), e.get("ctx") or {}
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        return ConfigError(at, f"{got!r} is out of range", _bounds_text(ctx))
    if kind == "too_short":
        return ConfigError(at, "is empty", "a non-empty list" if "Tuple" in str(ctx.get("field_type", "Tuple"))
                           or "List" in str(ctx.get("field_type")) else "a non-empty value")
    if kind == "finite_number":
        return ConfigError(at, f"got {got!r}", "a finite number")
    if kind == "string_too_short":
        return ConfigError(at, "is empty", "a non-empty string")
    return ConfigError(at, f"got {got!r}", _describe(hint))


def check_field(cls: type, name: str, value: Any, where: str) -> Any:
    """One field of dataclass `cls` checked against the schema; returns the value to pass to the constructor."""
    adapter, hint = _adapter(cls, name)
    target = _dataclass_in(hint)
    if target is not None and not (value is None and _optional(hint)):
        if dataclasses.is_dataclass(value) and isinstance(value, target):
            return value
        if not isinstance(value, dict):
            raise ConfigError(where, f"got {value!r}", _describe(hint))
        return from_dict(target, value, prefix=where)
    try:
        return adapter.validate_python(value)
    except ValidationError as err:
        raise _config_error(err, where, hint, value) from None


def _optional(hint: Any) -> bool:
    return get_origin(hint) in (Union, types.UnionType) and type(None) in get_args(hint)


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass a field holds (directly or as `X | None`), else None."""
    if get_origin(hint) is Annotated:
        hint = get_args(hint)[0]
    if dataclasses.is_dataclass(hint):
        return hint  # type: ignore[return-value]
    if get_origin(hint) in (Union, types.UnionType):
        found = [a for a in get_args(hint) if dataclasses.is_dataclass(a)]
        return found[0] if found else None  # type: ignore[return-value]
    return None


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from `data`; unknown keys and ill-typed or out-of-range values raise ConfigError
    naming the field. Fields left out take their defaults; the class's own validate() runs on the result."""
    if not isinstance(data, dict):
        raise ConfigError(prefix or cls.__name__, f"got {data!r}", "a table of fields")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(str(k) for k in set(data) - set(fields))
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(where, "is not a known field", ", ".join(sorted(fields)))
    kwargs = {}
    for name, value in data.items():
        where = f"{prefix}.{name}" if prefix else name
        kwargs[name] = check_field(cls, name, value, where)
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        where = f"{prefix}.{missing[0]}" if prefix else missing[0]
        raise ConfigError(where, "is missing", _describe(typing.get_type_hints(cls)[missing[0]]))
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required field is missing
        raise ConfigError(prefix or cls.__name__, str(err)) from None


def table(data: Any, key: str, where: str) -> dict[str, Any]:
    """data[key] when it is a table (absent: an empty one); a value of another type names `where`."""
    if not isinstance(data, dict):
        raise ConfigError(where.rpartition(".")[0] or where, f"got {data!r}", "a table")
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(where, f"got {value!r}", "a table of settings")
    return value


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
