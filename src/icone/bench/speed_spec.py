"""What ``icone speed`` times: methods x batch sizes (x table sizes), the input, and each method's config."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from icone.bench.grid import DEFAULT_NORM, OWNED, PAPER_METHODS, parse_list, parse_methods
from icone.config import Config, build_config
from icone.config.overrides import for_method, refuse_owned
from icone.data import Dataset, Split
from icone.errors import UserError
from icone.methods import get_method, registry

DEFAULT_METHODS = PAPER_METHODS
DEFAULT_BATCH_SIZES = [1, 4, 16]
DEFAULT_INSTANCES = [1_000, 100_000, 1_000_000]
DEFAULT_BACKBONE = "smallcnn"
DEFAULT_INPUT_SIZE = 28
DEFAULT_REPEATS = 10
DEFAULT_WARMUP = 3
DEFAULT_OUT = Path("bench") / "speed"
SPEED_OWNED = {**OWNED, "model.spatial_dims": "--spatial-dims"}


@dataclass
class SpeedSpec:
    """What to time: methods x batch sizes (x table sizes for instance-table methods) on one input."""

    methods: list[str]
    batch_sizes: list[int]
    instances: list[int]
    backbone: str = DEFAULT_BACKBONE
    data: str | None = None  # a source gives the input shape, view defaults and the DataLoader's samples
    input_size: int = DEFAULT_INPUT_SIZE  # random input without a source: C x S x S (x S)
    spatial_dims: int = 2
    repeats: int = DEFAULT_REPEATS
    warmup: int = DEFAULT_WARMUP
    out: Path = DEFAULT_OUT
    overrides: list[str] = field(default_factory=list)
    command: str = ""


def _positive(values: list[int], flag: str) -> list[int]:
    if min(values) < 1:
        raise UserError(f"{flag} must be at least 1, got {min(values)}")
    return values


def build_speed_spec(
    methods: str | list | None = None,
    batch_sizes: str | list | None = None,
    instances: str | list | None = None,
    backbone: str | None = None,
    data: str | None = None,
    input_size: int | None = None,
    spatial_dims: int | None = None,
    repeats: int | None = None,
    warmup: int | None = None,
    out: str | Path | None = None,
    overrides: list[str] | None = None,
    command: str = "",
) -> SpeedSpec:
    """The spec from explicit values and the defaults; every bad input fails here, before any timing."""
    from icone.data import resolve
    from icone.nets import parse_backbone_name

    if data is not None and (input_size is not None or spatial_dims is not None):
        raise UserError(
            "--data gives the input shape; drop --input-size/--spatial-dims (or resize the source with data.resize=...)"
        )
    name = backbone or DEFAULT_BACKBONE
    _, pinned = parse_backbone_name(name)
    if spatial_dims not in (None, 2, 3):
        raise UserError(f"--spatial-dims must be 2 or 3, got {spatial_dims}")
    if pinned is not None and spatial_dims not in (None, pinned):
        raise UserError(f"--backbone {name} is {pinned}D but --spatial-dims is {spatial_dims}; make them agree")
    spec = SpeedSpec(
        methods=parse_methods(methods) or list(DEFAULT_METHODS),
        batch_sizes=_positive(
            parse_list(batch_sizes, int, "--batch-sizes") or list(DEFAULT_BATCH_SIZES), "--batch-sizes"
        ),
        instances=_positive(parse_list(instances, int, "--instances") or list(DEFAULT_INSTANCES), "--instances"),
        backbone=name,
        data=data,
        input_size=_positive([input_size or DEFAULT_INPUT_SIZE], "--input-size")[0],
        spatial_dims=spatial_dims or pinned or 2,
        repeats=_positive([DEFAULT_REPEATS if repeats is None else repeats], "--repeats")[0],
        warmup=DEFAULT_WARMUP if warmup is None else warmup,
        out=Path(out) if out is not None else DEFAULT_OUT,
        overrides=list(overrides or []),
        command=command,
    )
    if spec.warmup < 0:
        raise UserError(f"--warmup must be 0 or more, got {spec.warmup}")
    if spec.out.exists() and not spec.out.is_dir():
        raise UserError(f"--out '{spec.out}' is a file; give a folder")
    refuse_owned(spec.overrides, SPEED_OWNED, "icone speed")
    if data is not None:
        resolve(data)
    for method in spec.methods:  # bad KEY=VALUE and method options fail here
        get_method(method).make_options(method_config(spec, method, spec.batch_sizes[0]).method_options)
    runnable = [(m, b) for m in spec.methods for b in spec.batch_sizes if b >= get_method(m).min_batch_size]
    if not runnable:
        needs = ", ".join(f"{m} needs {get_method(m).min_batch_size}" for m in spec.methods)
        raise UserError(
            f"nothing to time: every method is below its smallest batch size ({needs}); raise --batch-sizes"
        )
    return spec


def method_config(spec: SpeedSpec, method: str, batch_size: int) -> Config:
    """The config of one method at one batch size: the bench's norm, the user's overrides."""
    values = {
        "method": method,
        "data": {"source": spec.data or "random"},
        "train": {"batch_size": batch_size},
        "model": {"backbone": spec.backbone, "norm": DEFAULT_NORM},
    }
    return build_config(values, for_method(spec.overrides, method, list(registry())))


def input_dataset(spec: SpeedSpec, config: Config) -> Dataset:
    """The source (``--data``) or random samples, enough for a few batches of the largest size."""
    if spec.data is not None:
        from icone.build import load_data

        return load_data(config)
    n = 4 * max(spec.batch_sizes)
    shape = (n, config.model.in_channels or 1) + (spec.input_size,) * spec.spatial_dims
    samples = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    return Dataset(name="random", train=Split(samples, np.full(n, -1)), test=None)
