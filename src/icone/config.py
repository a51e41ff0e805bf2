"""Dataclass configs, YAML load/save and ``key.sub=value`` overrides, validated with clear messages.

A resolved config (every ``None`` default filled in from the data, the method and the source) is
written to the run folder and reloads to the same run: ``icone train --config runs/X/config.yaml``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from icone.errors import UserError


@dataclass
class DataConfig:
    """Where the samples come from and how they are prepared."""

    source: str = "digits"
    imbalance_ratio: float = 1.0  # largest / smallest class after long-tailed subsampling (1 = off)
    resize: list[int] | None = None  # spatial size every sample is resized to (allows mixed sizes)
    normalize: str = "percentile"  # percentile | minmax | zscore | none (per dataset)
    test_fraction: float = 0.2  # held-out share when a source has no test split of its own
    num_workers: int = 0


@dataclass
class ViewConfig:
    """Augmentations; ``None`` means "the method's or the source's default"."""

    global_crops: int = 2
    local_crops: int | None = None
    global_size: int | None = None  # None: the input size
    local_size: int | None = None  # None: 3/7 of the global size (96 -> 224 in DINO)
    global_scale: list[float] = field(default_factory=lambda: [0.4, 1.0])
    local_scale: list[float] = field(default_factory=lambda: [0.05, 0.4])
    flip: bool | None = None
    rotate90: bool | None = None
    brightness: float = 0.4
    contrast: float = 0.4
    gamma: float = 0.3
    blur_prob: float = 0.3
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 1.5])
    noise_std: float = 0.05


@dataclass
class ModelConfig:
    """The backbone: the part that is evaluated and exported."""

    backbone: str = "resnet18"  # resnet18 | resnet50 | smallcnn (a -2d / -3d suffix pins the dims)
    norm: str | None = None  # batch | group | instance | layer; None: the method's default
    width: int = 16  # channels of the first stage (64 in the standard ResNet)
    small_stem: bool = True  # 3x3 stride-1 stem without max-pool, for small images
    spatial_dims: int | None = None  # 2 or 3; taken from the data when not set
    in_channels: int | None = None  # taken from the data


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | sgd
    lr: float | None = None  # None: the method's default_lr (stated for batch 64), scaled by lr_scaling
    lr_scaling: str = "sqrt"  # how a method's default lr follows the batch size: sqrt | linear | none
    weight_decay: float | None = None  # None: the method's default
    momentum: float = 0.9  # SGD only
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01  # cosine schedule ends at lr * min_lr_ratio
    grad_clip: float | None = 3.0


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 16
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on CUDA) | fp32 | bf16
    channels_last: bool = False  # channels-last memory format for backbone and views (for CUDA tensor cores; not yet measured, so off)
    log_every: int = 10  # steps between metric lines (and NaN checks)
    save_every: int = 0  # also keep checkpoints/epoch_K.pt every K epochs (0: only last.pt)
    monitor_samples: int = 512  # fixed subset for the per-epoch collapse monitor


@dataclass
class EvalConfig:
    knn_k: int = 20
    after_train: bool = True
    max_train_samples: int = 50000  # embeddings used as kNN memory / probe training set


@dataclass
class Config:
    method: str = "icone"
    method_options: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    views: ViewConfig = field(default_factory=ViewConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (int/float/bool/str/list/dict/Optional)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(value, option, key)
            except UserError as err:
                errors.append(str(err))
        raise UserError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            value = [value] if not isinstance(value, str) else [v for v in value.split(",") if v]
        return [coerce(yaml.safe_load(v) if isinstance(v, str) else v, inner, key) for v in value]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise UserError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
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
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise UserError(f"{key} must be a string, got {value!r}")
        return str(value)
    raise UserError(f"{key}: cannot set a value of type {_type_name(tp)}")


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
                raise UserError(f"'{full}' is a section; set its fields, e.g. {full}.{dataclasses.fields(current)[0].name}=...")
            update_dataclass(current, value, prefix=f"{full}.")
        elif key == "method_options" and isinstance(current, dict):
            current.update(coerce(value, dict, full))
        else:
            setattr(obj, key, coerce(value, hints[key], full))


def parse_overrides(items: list[str], method: str | None = None) -> dict[str, Any]:
    """Turn ``["train.epochs=5", "icone.alignment=infonce"]`` into a nested dict.

    ``METHOD.key=value`` (the chosen method's name as prefix) is a short form of
    ``method_options.key=value``.
    """
    nested: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"cannot read '{item}': overrides look like key.sub=value, e.g. train.epochs=5")
        key, raw = item.split("=", 1)
        key = key.strip().lstrip("-")
        parts = key.split(".")
        if not key or any(not p for p in parts):
            raise UserError(f"cannot read '{item}': overrides look like key.sub=value, e.g. train.epochs=5")
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        if method is not None and parts[0] == method and len(parts) > 1:
            parts = ["method_options", *parts[1:]]
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"'{key}' conflicts with another override")
        node[parts[-1]] = value
    return nested


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file '{path}' does not exist; give the path of a YAML file (e.g. runs/NAME/config.yaml)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"config file '{path}' is not valid YAML ({str(err).splitlines()[0]}); fix or regenerate it") from None
    if not isinstance(data, dict):
        raise UserError(f"config file '{path}' must hold a mapping of sections (data, model, train, ...)")
    return data


def build_config(values: dict[str, Any] | None = None, overrides: list[str] | None = None) -> Config:
    """A :class:`Config` from a nested dict (e.g. a YAML file) and command-line overrides."""
    config = Config()
    if values:
        update_dataclass(config, values)
    if overrides:
        method = config.method
        for item in overrides:  # the method named on the command line owns "METHOD.key" overrides
            key, _, value = item.partition("=")
            if key.strip() == "method":
                method = value.strip()
        update_dataclass(config, parse_overrides(overrides, method=method))
    validate(config)
    return config


CHOICES = {
    "data.normalize": ("percentile", "minmax", "zscore", "none"),
    "model.norm": ("batch", "group", "instance", "layer", None),
    "optim.name": ("adamw", "sgd"),
    "optim.lr_scaling": ("sqrt", "linear", "none"),
    "train.precision": ("auto", "fp32", "bf16"),
}


def validate(config: Config) -> None:
    """Reject values that are out of range, naming the valid ones."""
    for key, choices in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value not in choices:
            valid = ", ".join(str(c) for c in choices if c is not None)
            raise UserError(f"{key}={value!r} is not valid; choose one of: {valid}")
    positive = {
        "train.epochs": config.train.epochs,
        "train.batch_size": config.train.batch_size,
        "train.log_every": config.train.log_every,
        "model.width": config.model.width,
        "eval.knn_k": config.eval.knn_k,
        "views.global_crops": config.views.global_crops,
    }
    for key, value in positive.items():
        if value < 1:
            raise UserError(f"{key} must be at least 1, got {value}")
    if config.data.imbalance_ratio < 1:
        raise UserError(f"data.imbalance_ratio must be >= 1 (largest/smallest class), got {config.data.imbalance_ratio}")
    if config.model.spatial_dims not in (None, 2, 3):
        raise UserError(f"model.spatial_dims must be 2 or 3, got {config.model.spatial_dims}")
    for key in ("global_scale", "local_scale", "blur_sigma"):
        pair = getattr(config.views, key)
        if len(pair) != 2 or not 0 < pair[0] <= pair[1]:
            raise UserError(f"views.{key} must be two numbers 0 < low <= high, got {pair}")
    if config.optim.lr is not None and config.optim.lr <= 0:
        raise UserError(f"optim.lr must be positive, got {config.optim.lr}")
    if not 0 < config.data.test_fraction < 1:
        raise UserError(f"data.test_fraction must be between 0 and 1, got {config.data.test_fraction}")


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
