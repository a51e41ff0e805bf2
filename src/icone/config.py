"""Dataclass configs, YAML load/save and ``key.sub=value`` overrides, validated with clear messages.

A resolved config (every ``None`` default filled in from the data, the method and the source) is
written to the run folder and reloads to the same run: ``icone train --config runs/X/config.yaml``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from icone.errors import UserError
from icone.files import atomic_write_text
from icone.options import check_options, option

YAML_NULLS = ("null", "Null", "NULL", "~")
ONE_PIXEL = "a view of one pixel has no image in it, and its contrast is undefined"


@dataclass
class DataConfig:
    """Where the samples come from and how they are prepared."""

    source: str = "digits"
    imbalance_ratio: float = option(1.0, low=1, hint="largest/smallest class; 1 = off")  # after long-tailed subsampling
    resize: list[int] | None = option(None, low=1)  # spatial size every sample is resized to (allows mixed sizes)
    normalize: str = option("percentile", choices=("percentile", "minmax", "zscore", "none"))  # per dataset
    test_fraction: float = option(0.2, above=0, below=1)  # held-out share when a source has no test split of its own
    num_workers: int = option(0, low=0)
    load: str = option("auto", choices=("auto", "memory", "lazy"))  # folders: stacked in memory, or read per sample
    # volumes (and large 2D images) as patches: docs/data.md
    patch: list[int] | None = option(
        None, low=1
    )  # patch size (one number: every axis); None: 32^3 / 64^2 for one volume
    stride: list[int] | None = option(None, low=1)  # distance between grid cells; None: the patch size
    sampler: str = option("random", choices=("grid", "random", "foreground"))
    patches_per_epoch: int | None = option(None, low=1)  # samples drawn per epoch; None: every instance once
    order: str | None = option(
        None, choices=("shuffle", "window")
    )  # window: instances revisited in bursts (sliding windows); None: the method's default
    window_size: int | None = option(
        None, low=1
    )  # order=window: instances per window; None: an eighth of the training set
    window_stride: int | None = option(None, low=1)  # order=window: window start advance; None: a quarter of the window
    foreground_threshold: float | None = None  # sampler=foreground: intensity threshold; None: Otsu's
    foreground_fraction: float = option(0.1, above=0, high=1)  # share of a patch above the threshold to keep it
    labels: str | None = None  # a label volume of the volume's shape: a patch's label is its majority class
    labels_ignore: int | None = None  # a class left out of the majority (e.g. 0: background); all-ignored: no label
    axes: str | None = None  # the stored axes, e.g. CZYX or YXC (default: metadata, else a guess)
    channels: list[int | str] | None = option(None, low=0)  # channels to keep: numbers or metadata names (default: all)
    level: int = option(0, low=0)  # OME-Zarr resolution level
    spacing: list[float] | None = option(None, above=0)  # resample patches to this voxel spacing (z,y,x)
    series: str | None = None  # DICOM: the SeriesInstanceUID (or its start) of a folder with several series
    timepoint: int | None = option(None, low=0)  # the time point read from an array with a T axis of several


@dataclass
class ViewConfig:
    """Augmentations; ``None`` means "the method's or the source's default"."""

    global_crops: int = option(2, low=1)
    local_crops: int | None = option(None, low=0)
    global_size: int | None = option(None, low=2, hint=ONE_PIXEL)  # None: the input size
    local_size: int | None = option(None, low=2, hint=ONE_PIXEL)  # None: 3/7 of the global size (96 -> 224 in DINO)
    global_scale: list[float] = option(
        factory=lambda: [0.4, 1.0], above=0, high=1
    )  # share of the area/volume a crop covers
    local_scale: list[float] = option(factory=lambda: [0.05, 0.4], above=0, high=1)
    aspect: float = option(4 / 3, low=1)  # largest ratio between two sides of a crop (1: no jitter)
    flip: bool | None = None
    rotate90: bool | None = None
    brightness: float = option(0.4, low=0)
    contrast: float = option(0.4, low=0, high=1)
    gamma: float = option(0.3, low=0)
    blur_prob: float = option(0.3, low=0, high=1)
    blur_sigma: list[float] = option(factory=lambda: [0.1, 1.5], above=0)
    noise_std: float = option(0.05, low=0)


@dataclass
class ModelConfig:
    """The backbone: the part that is evaluated and exported."""

    backbone: str = "resnet18"  # resnet18 | resnet50 | smallcnn (a -2d / -3d suffix pins the dims)
    norm: str | None = option(None, choices=("batch", "group", "instance", "layer"))  # None: the method's default
    width: int = option(16, low=1)  # channels of the first stage (64 in the standard ResNet)
    small_stem: bool = True  # 3x3 stride-1 stem without max-pool, for small images
    spatial_dims: int | None = option(None, choices=(2, 3))  # taken from the data when not set
    in_channels: int | None = option(None, low=1)  # taken from the data
    init: str | None = (
        None  # start from these weights: a run folder, backbone.pt, checkpoint, .safetensors or MONAI ResNet state dict
    )


@dataclass
class OptimConfig:
    name: str = option("adamw", choices=("adamw", "sgd"))
    lr: float | None = option(None, above=0)  # the lr itself; None: base_lr scaled to the batch size by lr_scaling
    base_lr: float | None = option(None, above=0)  # the lr stated for batch 64; None: the method's default_lr
    lr_scaling: str = option("sqrt", choices=("sqrt", "linear", "none"))  # how base_lr follows the batch size
    weight_decay: float | None = option(None, low=0)  # None: the method's default
    momentum: float = option(0.9, low=0, below=1)  # SGD only
    warmup_epochs: float = option(1.0, low=0)
    min_lr_ratio: float = option(0.01, low=0, high=1)  # cosine schedule ends at lr * min_lr_ratio
    grad_clip: float | None = option(3.0, low=0, hint="0 or null: no clipping")
    fused: bool = True  # AdamW's fused kernel where torch has one for the device (false: the per-parameter loop)


@dataclass
class TrainConfig:
    epochs: int = option(10, low=1)
    batch_size: int = option(16, low=1)
    seed: int = option(0, low=0)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = option(
        "auto", choices=("auto", "fp32", "bf16", "fp16")
    )  # auto: bf16 on GPUs that have it, fp16 + loss scaling on older ones, fp32 on CPU
    activation_checkpointing: bool = (
        False  # recompute the backbone's activations in the backward pass: less memory, ~30% more time
    )
    checkpoint_every_steps: int = option(
        0, low=0
    )  # also checkpoint every N steps (0: per epoch only); --resume continues mid-epoch
    checkpoint_every_minutes: float = option(0.0, low=0)  # also checkpoint every M minutes (0: off)
    logger: str = option(
        "none", choices=("none", "tensorboard", "mlflow")
    )  # mirror metrics.jsonl there (the tensorboard / mlflow extra)
    channels_last: bool = (
        False  # channels-last memory format for backbone and views (for CUDA tensor cores; not yet measured, so off)
    )
    log_every: int = option(10, low=1)  # steps between metric lines (and NaN checks)
    save_every: int = option(0, low=0)  # also keep checkpoints/epoch_K.pt every K epochs (0: only last.pt)
    monitor_samples: int = option(512, low=1)  # fixed subset for the per-epoch collapse monitor
    dist_timeout_minutes: float = option(
        30.0, above=0
    )  # torchrun: how long a process waits for a silent peer before failing


@dataclass
class EvalConfig:
    knn_k: int = option(20, low=1)
    after_train: bool = True
    max_train_samples: int = option(50000, low=1)  # embeddings used as kNN memory / probe training set
    label_fractions: list[float] = option(
        factory=list, above=0, high=1
    )  # few-label probes: shares of the training labels
    shots: list[int] = option(factory=list, low=1)  # few-label probes: labelled samples per class
    repeats: int = option(5, low=1)  # draws per few-label budget (mean and std over them)


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
        return [coerce(parse_value(v, inner) if isinstance(v, str) else v, inner, key) for v in value]
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
            with contextlib.suppress(ValueError):
                value = float(value)
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
                raise UserError(
                    f"'{full}' is a section; set its fields, e.g. {full}.{dataclasses.fields(current)[0].name}=..."
                )
            update_dataclass(current, value, prefix=f"{full}.")
        elif key == "method_options" and isinstance(current, dict):
            current.update(coerce(value, dict, full))
        else:
            setattr(obj, key, coerce(value, hints[key], full))


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


def parse_value(raw: str, tp: Any = Any) -> Any:
    """A ``KEY=VALUE`` value for a field of type ``tp``, the one rule of the CLI and the API: a string or path
    field takes it verbatim (``#`` included; ``null`` or nothing unsets an optional one); a typed field (number,
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
        if method is not None and parts[0] == method and len(parts) > 1:
            parts = ["method_options", *parts[1:]]
        value = parse_value(raw, field_type(parts))
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


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Nested dicts merged, ``extra`` winning (a new dict; the inputs are untouched)."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


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
    if overrides:
        method = config.method
        for item in overrides:  # the method named on the command line owns "METHOD.key" overrides
            key, _, value = item.partition("=")
            if key.strip() == "method":
                method = value.strip()
        update_dataclass(config, parse_overrides(overrides, method=method))
    validate(config)
    return config


def _check_pair(key: str, pair: list[float]) -> None:
    if len(pair) != 2 or not pair[0] <= pair[1]:
        raise UserError(f"{key} must be two numbers low,high with low <= high, got {pair}")


def validate(config: Config) -> None:
    """Reject values that are out of range, naming the valid ones."""
    check_options(config)
    for key in ("global_scale", "local_scale", "blur_sigma"):
        _check_pair(f"views.{key}", getattr(config.views, key))


def save_config(config: Config, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
