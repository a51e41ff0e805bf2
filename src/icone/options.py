"""Option fields that declare their valid values, and the check that reads them (for the run config and
every method's options alike)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import field
from typing import Any

from icone.errors import UserError


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
