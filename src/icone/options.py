"""Option fields that declare their valid values, the check that reads them, and the typing of values given
as text or YAML: for the run config and every method's options alike (no torch here)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from dataclasses import field
from typing import Any, TypeVar

import yaml

from icone.errors import UserError

T = TypeVar("T")


def option(
    default: Any = dataclasses.MISSING,
    *,
    factory: Any = dataclasses.MISSING,
    low: float | None = None,
    high: float | None = None,
    above: float | None = None,
    below: float | None = None,
    choices: tuple[Any, ...] | None = None,
    hint: str = "",
) -> Any:
    """A dataclass field with its valid values: ``low``/``high`` inclusive bounds, ``above``/``below``
    exclusive ones (applied to each number of a list), or ``choices``. :func:`check_options` reads them;
    every float must also be finite."""
    rules = {
        k: v
        for k, v in {"low": low, "high": high, "above": above, "below": below, "choices": choices}.items()
        if v is not None
    }
    metadata = {"rules": rules, "hint": hint}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _rule_text(rules: dict[str, Any]) -> str:
    parts = []
    if "low" in rules and "high" in rules:
        return f"between {rules['low']:g} and {rules['high']:g}"
    if "low" in rules:
        parts.append(f"at least {rules['low']:g}")
    if "above" in rules:
        parts.append(f"greater than {rules['above']:g}")
    if "high" in rules:
        parts.append(f"at most {rules['high']:g}")
    if "below" in rules:
        parts.append(f"less than {rules['below']:g}")
    return " and ".join(parts)


def _check_value(key: str, value: Any, rules: dict[str, Any], hint: str) -> None:
    suffix = f" ({hint})" if hint else ""
    if "choices" in rules:
        if value not in rules["choices"]:
            raise UserError(
                f"{key}={value!r} is not valid; choose one of: {', '.join(str(c) for c in rules['choices'])}{suffix}"
            )
        return
    numbers = value if isinstance(value, list) else [value]
    for number in numbers:
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            continue
        if not math.isfinite(number):
            raise UserError(f"{key} must be a finite number, got {value}{suffix}")
        bad = (
            ("low" in rules and number < rules["low"])
            or ("high" in rules and number > rules["high"])
            or ("above" in rules and number <= rules["above"])
            or ("below" in rules and number >= rules["below"])
        )
        if bad:
            raise UserError(f"{key} must be {_rule_text(rules)}, got {value}{suffix}")


def check_options(obj: Any, prefix: str = "") -> None:
    """Check every field of a (nested) options dataclass against its :func:`option` rules; floats must be finite."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_options(value, f"{key}.")
        elif value is not None:
            _check_value(key, value, f.metadata.get("rules", {}), f.metadata.get("hint", ""))


# ---- values: text and YAML values of a field's type --------------------------------------------------

YAML_NULLS = ("null", "Null", "NULL", "~")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def parse_value(raw: str, tp: Any = Any) -> Any:
    """A text value for a field of type ``tp``, the one rule of the CLI and the API: a string or path field
    takes it verbatim (``#`` included; ``null`` or nothing unsets an optional one); a typed field (number,
    flag, list, mapping) reads it as YAML, but a value with a ``#`` in it is kept whole, never cut as a comment."""
    union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    kinds = [a for a in typing.get_args(tp) if a is not type(None)] if union else [tp]
    if raw == "" or (raw in YAML_NULLS and type(None) in typing.get_args(tp)):
        return None
    if kinds == [str] or raw.lstrip().startswith("#") or " #" in raw:
        return raw
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if str in kinds and not (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return raw  # a number or a name (data.channels=0,DAPI): a number where it reads as one, else the text
    return value


def _coerce_union(value: Any, tp: Any, key: str) -> Any:
    options = typing.get_args(tp)
    if value is None and type(None) in options:
        return None
    errors = []
    for option_type in options:
        if option_type is type(None):
            continue
        try:
            return coerce(value, option_type, key)
        except UserError as err:
            errors.append(str(err))
    raise UserError(errors[0] if errors else f"{key}: invalid value {value!r}")


def _coerce_list(value: Any, tp: Any, key: str) -> list[Any]:
    (inner,) = typing.get_args(tp) or (Any,)
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list):
        value = [value] if not isinstance(value, str) else [v for v in value.split(",") if v]
    return [coerce(parse_value(v, inner) if isinstance(v, str) else v, inner, key) for v in value]


def _coerce_scalar(value: Any, tp: Any, key: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
            return value.lower() in ("true", "yes", "on")
        raise UserError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise UserError(f"{key} must be a whole number, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{key} must be a number, got {value!r}")
        return float(value)
    if isinstance(value, (dict, list)) or value is None:
        raise UserError(f"{key} must be a string, got {value!r}")
    return str(value)


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (int/float/bool/str/list/dict/Optional)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, tp, key)
    if origin is list:
        return _coerce_list(value, tp, key)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise UserError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp in (bool, int, float, str):
        return _coerce_scalar(value, tp, key)
    raise UserError(f"{key}: cannot set a value of type {_type_name(tp)}")


def fields_from(cls: type[T], values: Any) -> T:
    """``values`` as the dataclass ``cls``: an instance of it as it is, else one made of its attributes of
    ``cls``'s field names (a small options value cut from a larger config section)."""
    if isinstance(values, cls):
        return values
    return cls(**{f.name: getattr(values, f.name) for f in dataclasses.fields(cls)})


def update_dataclass(obj: Any, values: dict[str, Any], prefix: str = "") -> None:
    """Set fields of a (nested) dataclass from a nested dict, rejecting unknown keys."""
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise UserError(f"unknown option '{full}'; valid options here: {', '.join(names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise UserError(
                    f"'{full}' is a section; set its fields, e.g. {full}.{dataclasses.fields(current)[0].name}=..."
                )
            update_dataclass(current, value, prefix=f"{full}.")
        elif isinstance(current, dict) and (hints[key] is dict or typing.get_origin(hints[key]) is dict):
            current.update(coerce(value, dict, full))
        else:
            setattr(obj, key, coerce(value, hints[key], full))
