"""The run config: dataclass sections (:mod:`icone.config.schema`), YAML load/save, and the config built
from a YAML file, flags and ``KEY=VALUE`` overrides (:mod:`icone.config.overrides`), validated with clear messages.

A resolved config (every ``None`` default filled in from the data, the method and the source by
:func:`icone.build.resolve`) is written to the run folder and reloads to the same run:
``icone train --config runs/X/config.yaml``. Only :mod:`icone.build` and the layers above it read a config.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from icone.config.overrides import field_type, flatten, given, key_of, merge, named_method, nest, parse_overrides
from icone.config.schema import (
    Config,
    DataConfig,
    EvalConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    ViewConfig,
)
from icone.errors import UserError
from icone.files import atomic_write_text
from icone.options import check_options, coerce, parse_value, update_dataclass


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"config file '{path}' does not exist; give the path of a YAML file (e.g. runs/NAME/config.yaml)"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise UserError(
            f"config file '{path}' is not UTF-8 text (byte {err.object[err.start]:#x} at position {err.start}); save it as UTF-8"
        ) from None
    except yaml.YAMLError as err:
        raise UserError(
            f"config file '{path}' is not valid YAML ({str(err).splitlines()[0]}); fix or regenerate it"
        ) from None
    if not isinstance(data, dict):
        raise UserError(f"config file '{path}' must hold a mapping of sections (data, model, train, ...)")
    return data


def build_config(
    values: dict[str, Any] | None = None, overrides: list[str] | None = None, flags: dict[str, Any] | None = None
) -> Config:
    """A :class:`Config` from a nested dict (e.g. a YAML file), typed flags (``{"data.source": "my scans #2"}``,
    set as given: no YAML parsing) and ``KEY=VALUE`` overrides, in that order of precedence."""
    config = Config()
    if values:
        update_dataclass(config, values)
    if flags:
        update_dataclass(config, nest(flags))
    if overrides:  # the method named on the command line owns "METHOD.key" overrides
        method = named_method(overrides, config.method)
        if method == "auto":
            _refuse_method_options(overrides)
        update_dataclass(config, parse_overrides(overrides, method=method))
    validate(config)
    return config


def _refuse_method_options(overrides: list[str]) -> None:
    sections = {f.name for f in dataclasses.fields(Config)}
    own = [key_of(item) for item in overrides if key_of(item).partition(".")[0] not in sections]
    if own:
        raise UserError(
            f"method=auto chooses the method, so options of one method (METHOD.key: {', '.join(own)}) cannot be "
            "given with it; choose the method first, then give its options"
        )


def _check_pair(key: str, pair: list[float]) -> None:
    if len(pair) != 2 or not pair[0] <= pair[1]:
        raise UserError(f"{key} must be two numbers low,high with low <= high, got {pair}")


def validate(config: Config) -> None:
    """Reject values that are out of range, naming the valid ones."""
    check_options(config)
    if isinstance(config.optim.lr, str) and config.optim.lr != "auto":
        raise UserError(f"optim.lr must be a number or auto (chosen by short trial runs), got {config.optim.lr!r}")
    if config.method == "auto" and config.optim.lr not in (None, "auto"):
        raise UserError(
            f"method=auto tries each method at its own default lr, so optim.lr={config.optim.lr} fits none of them; "
            "drop optim.lr, or give optim.lr=auto to tune the chosen method's lr after"
        )
    if config.method == "auto" and config.method_options:
        raise UserError(
            "method=auto chooses the method, so options of one method (method_options) cannot be given with it; "
            "choose the method first, then give its options"
        )
    if len(set(config.optim.lr_factors)) < 2:
        raise UserError(
            f"optim.lr_factors needs two or more different factors to choose from, got {config.optim.lr_factors}"
        )
    for key in ("global_scale", "local_scale", "blur_sigma"):
        _check_pair(f"views.{key}", getattr(config.views, key))


def save_config(config: Config, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


__all__ = [
    "Config",
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "ViewConfig",
    "build_config",
    "coerce",
    "field_type",
    "flatten",
    "given",
    "load_yaml",
    "merge",
    "nest",
    "parse_overrides",
    "parse_value",
    "save_config",
    "update_dataclass",
    "validate",
]
