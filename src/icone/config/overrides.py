"""Options as people give them, in one place: ``KEY=VALUE`` items, the ``METHOD.key`` short form of a
method's own options, nested and flat option dicts, and "which options the user gave" (checked on resume,
refused where a flag owns them). The CLI, the Python API, ``--resume`` and the bench all read options here.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from icone.config.schema import Config
from icone.errors import UserError
from icone.options import parse_value

METHOD_OPTIONS = "method_options"


def field_type(parts: list[str]) -> Any:
    """The annotation of the :class:`Config` field at ``parts`` (``["data", "labels"]``); ``Any`` where unknown
    (a method's options, a misspelt key: its value is then checked where it is set)."""
    tp: Any = Config
    for part in parts:
        hints = typing.get_type_hints(tp) if dataclasses.is_dataclass(tp) else {}
        if part not in hints:
            return Any
        tp = hints[part]
    return tp


def key_of(item: str) -> str:
    """The key of a ``KEY=VALUE`` item (``--`` and spaces around it dropped)."""
    return item.split("=", 1)[0].strip().lstrip("-")


def method_key(key: str, method: str | None) -> str:
    """``METHOD.key`` (the chosen method's name as prefix) is a short form of ``method_options.key``."""
    head, _, rest = key.partition(".")
    return f"{METHOD_OPTIONS}.{rest}" if method is not None and head == method and rest else key


def named_method(items: list[str], default: str) -> str:
    """The method a list of ``KEY=VALUE`` items names (``method=...``), else ``default``: it owns ``METHOD.key``."""
    method = default
    for item in items:
        key, _, value = item.partition("=")
        if key.strip() == "method":
            method = value.strip()
    return method


def parse_overrides(items: list[str], method: str | None = None) -> dict[str, Any]:
    """Turn ``["train.epochs=5", "icone.alignment=infonce"]`` into a nested dict; ``method``'s
    ``METHOD.key=value`` items become ``method_options.key`` (:func:`method_key`)."""
    nested: dict[str, Any] = {}
    for item in items:
        key, raw = key_of(item), item.split("=", 1)[1] if "=" in item else None
        parts = key.split(".")
        if raw is None or not key or any(not p for p in parts):
            raise UserError(f"cannot read '{item}': overrides look like key.sub=value, e.g. train.epochs=5")
        parts = method_key(key, method).split(".")
        value = parse_value(raw, field_type(parts))
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"'{key}' conflicts with another override")
        node[parts[-1]] = value
    return nested


def method_flags(method: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """Dotted options of the Python API (``{"icone.diversity": "frame"}``) as typed config flags."""
    return {method_key(key, method): value for key, value in (options or {}).items()}


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"train.epochs": 3}`` -> ``{"train": {"epochs": 3}}`` (``None`` values left out)."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        if value is None:
            continue
        *parents, name = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[name] = value
    return nested


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"epochs": 3}}`` -> ``{"train.epochs": 3}``; a method's options as ``method_options.key``."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and key != METHOD_OPTIONS:
            flat.update(flatten(value, f"{prefix}{key}."))
        elif isinstance(value, dict):
            flat.update({f"{prefix}{key}.{k}": v for k, v in value.items()})
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Nested dicts merged, ``extra`` winning (a new dict; the inputs are untouched)."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def given(
    values: dict[str, Any] | None, flags: dict[str, Any] | None = None, items: list[str] | None = None,
    method: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The options the user gave, nested: a YAML file's, then the flags', then ``KEY=VALUE`` items (``method``
    owns their ``METHOD.key``); ``--resume`` checks them against the run's own."""
    return merge(merge(values or {}, nest(flags or {})), parse_overrides(list(items or []), method))


def refuse_owned(items: list[str], owned: dict[str, str], who: str) -> None:
    """Refuse ``KEY=VALUE`` for the options a flag sets (``owned``: key -> flag)."""
    gave = flatten(parse_overrides(items))
    for key, flag in owned.items():
        if gave.get(key) is not None:
            raise UserError(f"{key} is set by {who}; use {flag} instead of {key}=...")


def for_method(items: list[str], method: str, methods: list[str]) -> list[str]:
    """The items that apply to ``method``: all but the other ``methods``' ``METHOD.option=value``."""
    others = set(methods) - {method}  # "simclr.temperature=..." belongs to simclr only
    return [item for item in items if key_of(item).split(".")[0] not in others]
