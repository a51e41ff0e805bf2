"""The grid of ``icone bench``: methods x batch sizes x seeds x imbalance ratios, and each cell's config.

Equal treatment: one source, one backbone, one norm layer (``model.norm=group`` unless overridden),
the same augmentation settings and epoch budget for every method. Each cell's learning rate is the
one ``icone train`` would use (:func:`icone.build.learning_rate`): ``optim.lr`` as given, else
``optim.base_lr`` or the method's default, stated for batch 64 and scaled by ``optim.lr_scaling``;
with ``--lr-sweep`` times the factor the sweep chose for the method (the same factors for every
method, tried at one reference batch, seed 0; docs/bench.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from icone.build import learning_rate
from icone.config import Config, build_config
from icone.config.overrides import for_method, refuse_owned
from icone.errors import UserError
from icone.methods import get_method, registry
from icone.run_folder import is_inside

DEFAULT_NORM = "group"  # batch-free, so batch-size-1 methods are not handicapped; override with model.norm=...
PAPER_METHODS = ["icone", "excb", "simclr", "moco", "byol", "vicreg", "barlow_twins", "dino"]
PRESETS: dict[str, dict[str, Any]] = {
    # about 15 min on 2 idle CPU cores (13 cells; measured per-step times in docs/bench.md), ~40 min on busy ones
    "quick": {"data": "digits", "methods": ["icone", "excb", "simclr", "byol", "vicreg"], "batch_sizes": [1, 4, 16],
              "seeds": 1, "epochs": 2, "imbalance": [1.0], "backbone": "smallcnn", "overrides": ["model.width=16"]},
    # meant for a GPU: 8 methods x 7 batch sizes x 3 seeds, ResNet-18 at full width (512-d features)
    "paper": {"data": "digits", "methods": PAPER_METHODS, "batch_sizes": [1, 2, 4, 8, 16, 32, 64],
              "seeds": 3, "epochs": 20, "imbalance": [1.0], "backbone": "resnet18", "overrides": ["model.width=64"]},
}  # fmt: skip
# options a flag sets, in the grid and in `icone speed`: give them as flags, not as KEY=VALUE
OWNED = {
    "method": "--methods",
    "data.source": "--data",
    "model.backbone": "--backbone",
    "train.batch_size": "--batch-sizes",
}
GRID_OWNED = {**OWNED, "data.imbalance_ratio": "--imbalance", "train.seed": "--seeds", "train.epochs": "--epochs"}


@dataclass
class BenchSpec:
    """One grid: methods x batch sizes x seeds x imbalance ratios on one source and backbone."""

    data: str
    methods: list[str]
    batch_sizes: list[int]
    seeds: int
    epochs: int
    imbalance: list[float]
    backbone: str
    out: Path
    overrides: list[str] = field(default_factory=list)  # the preset's, then the user's KEY=VALUE
    preset: str = "quick"
    command: str = ""
    lr_sweep: list[float] = field(default_factory=lambda: [1.0])  # factors on each method's lr; one: no sweep
    sweep_batch: int = 8  # the batch size the sweep runs at

    def settings(self) -> dict[str, Any]:
        """What every cell of OUT must share (methods, batch sizes, seeds and ratios may grow)."""
        settings = {"data": self.data, "backbone": self.backbone, "epochs": self.epochs, "overrides": self.overrides}
        if len(self.lr_sweep) > 1:
            settings.update(lr_sweep=self.lr_sweep, sweep_batch=self.sweep_batch)
        return settings


@dataclass(frozen=True)
class Cell:
    method: str
    batch_size: int
    seed: int
    imbalance: float
    lr_factor: float = 1.0  # times the method's lr (the sweep's choice, or a sweep cell's factor)
    sweep: bool = False  # a cell of the lr sweep

    @property
    def name(self) -> str:
        name = f"{self.method}-b{self.batch_size}-r{self.imbalance:g}-s{self.seed}"
        return f"sweep/{name}-lr{self.lr_factor:g}" if self.sweep else name


def parse_list(text: str | list | None, kind: type, flag: str) -> list | None:
    """``"1,4,16"`` -> ``[1, 4, 16]`` (order kept, duplicates dropped); a clear error otherwise."""
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()] if isinstance(text, str) else list(text)
    try:
        values = [kind(float(v)) if kind is int and float(v) == int(float(v)) else kind(v) for v in items]
    except (TypeError, ValueError):
        raise UserError(
            f"{flag} takes a comma-separated list of {kind.__name__}s, e.g. {flag} 1,4,16; got {text!r}"
        ) from None
    if not values:
        raise UserError(f"{flag} is empty; give a comma-separated list, e.g. {flag} 1,4,16")
    return list(dict.fromkeys(values))


def parse_methods(text: str | list | None) -> list[str] | None:
    """``--methods`` as a list of registered names (``None`` when not given); unknown names fail."""
    asked = parse_list(text, str, "--methods")
    known = registry()
    unknown = [m for m in asked or [] if m not in known]
    if unknown:
        names = ", ".join(repr(m) for m in unknown)
        raise UserError(f"unknown method{'s' if len(unknown) > 1 else ''} {names}; choose from: {', '.join(known)}")
    return asked


def build_spec(
    preset: str | None = None, data: str | None = None, methods: str | list | None = None, batch_sizes: str | list | None = None,
    seeds: int | None = None, epochs: int | None = None, imbalance: str | list | None = None, backbone: str | None = None,
    out: str | Path | None = None, overrides: list[str] | None = None, command: str = "",
    lr_sweep: str | list | None = None, sweep_batch: int | None = None,
) -> BenchSpec:  # fmt: skip
    """The grid from a preset (``quick`` when none) and explicit values, which win; checked up front."""
    from icone.data.sources import resolve

    name = preset or "quick"
    if name not in PRESETS:
        raise UserError(f"unknown preset '{name}'; choose one of: {', '.join(PRESETS)}")
    base = PRESETS[name]
    asked = parse_methods(methods if methods is not None else list(base["methods"]))
    spec = BenchSpec(
        data=data or base["data"],
        methods=asked,
        batch_sizes=parse_list(batch_sizes, int, "--batch-sizes") or list(base["batch_sizes"]),
        seeds=base["seeds"] if seeds is None else seeds,
        epochs=base["epochs"] if epochs is None else epochs,
        imbalance=parse_list(imbalance, float, "--imbalance") or list(base["imbalance"]),
        backbone=backbone or base["backbone"],
        out=Path(out) if out is not None else Path("bench") / name,
        overrides=list(
            dict.fromkeys(list(base["overrides"]) + list(overrides or []))
        ),  # a preset's override given again is kept once
        preset=name,
        command=command,
        lr_sweep=parse_list(lr_sweep, float, "--lr-sweep") or [1.0],
        sweep_batch=8 if sweep_batch is None else sweep_batch,
    )
    if min(spec.lr_sweep) <= 0:
        raise UserError(f"--lr-sweep takes factors above 0 (e.g. 0.3,1,3), got {min(spec.lr_sweep):g}")
    if sweep_batch is not None and len(spec.lr_sweep) < 2:
        raise UserError("--sweep-batch goes with --lr-sweep (two or more factors); add --lr-sweep or drop it")
    for flag, values in (
        ("--batch-sizes", spec.batch_sizes), ("--seeds", [spec.seeds]), ("--epochs", [spec.epochs]),
        ("--sweep-batch", [spec.sweep_batch]),
    ):  # fmt: skip
        if min(values) < 1:
            raise UserError(f"{flag} must be at least 1, got {min(values)}")
    if min(spec.imbalance) < 1:
        raise UserError(f"--imbalance ratios are largest/smallest class sizes, at least 1; got {min(spec.imbalance):g}")
    refuse_owned(list(overrides or []), GRID_OWNED, "the grid")
    _, data_path = resolve(spec.data)
    if data_path is not None and data_path.is_dir() and is_inside(spec.out, data_path):
        raise UserError(f"--out '{spec.out}' is inside the data folder '{data_path}'; choose an --out outside it")
    for method in spec.methods:  # bad KEY=VALUE fails here, before any cell runs
        if cell_config(spec, Cell(method, spec.batch_sizes[0], 0, spec.imbalance[0])).optim.lr == "auto":
            raise UserError(
                "optim.lr=auto tunes one run without labels; a grid gives every method the same lr budget with "
                "--lr-sweep F1,F2,... instead (docs/bench.md)"
            )
    return spec


def grid_cells(spec: BenchSpec, lr_factors: dict[str, float] | None = None) -> list[Cell]:
    """Run order: seed first, so an interrupted grid has whole seeds rather than whole methods.
    ``lr_factors``: each method's factor from the sweep (1 when absent)."""
    factors = lr_factors or {}
    return [
        Cell(m, b, s, r, factors.get(m, 1.0))
        for s in range(spec.seeds)
        for r in spec.imbalance
        for m in spec.methods
        for b in spec.batch_sizes
    ]


def sweep_cells(spec: BenchSpec) -> list[Cell]:
    """The lr sweep: every method at ``sweep_batch``, seed 0, the first imbalance ratio, each factor."""
    if len(spec.lr_sweep) < 2:
        return []
    return [Cell(m, spec.sweep_batch, 0, spec.imbalance[0], k, sweep=True) for m in spec.methods for k in spec.lr_sweep]


def choose_lr_factors(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Each method's factor with the best kNN accuracy in the sweep (a tie: the factor nearest 1); the
    sweep's rows are scored on a validation split of the training split (``bench.cells.score_cell``)."""
    best: dict[str, tuple[float, float, float]] = {}
    for row in rows:
        if row["status"] != "ok" or row.get("knn_accuracy") is None:
            continue
        factor = float(row["lr_factor"])
        key = (float(row["knn_accuracy"]), -abs(math.log(factor)), factor)
        if row["method"] not in best or key > best[row["method"]]:
            best[row["method"]] = key
    return {method: key[2] for method, key in best.items()}


def cell_config(spec: BenchSpec, cell: Cell) -> Config:
    """The run config of one cell: the grid's values, then the user's overrides (as ``icone train`` reads them)."""
    values = {
        "method": cell.method,
        "data": {"source": spec.data, "imbalance_ratio": cell.imbalance},
        "model": {"backbone": spec.backbone, "norm": DEFAULT_NORM},
        "train": {"batch_size": cell.batch_size, "epochs": spec.epochs, "seed": cell.seed},
    }
    config = build_config(values, for_method(spec.overrides, cell.method, list(registry())))
    config.eval.after_train = False  # the grid evaluates after measuring the training alone
    if cell.lr_factor != 1.0:
        if config.optim.lr is not None:
            config.optim.lr *= cell.lr_factor
        else:
            config.optim.base_lr = (config.optim.base_lr or get_method(cell.method).default_lr) * cell.lr_factor
    return config


def cell_lr(config: Config) -> float:
    """The learning rate the cell trains with (what ``icone train`` resolves)."""
    return learning_rate(config)[0]
