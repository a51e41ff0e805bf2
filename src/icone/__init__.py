"""icone: self-supervised representation learning on 2D images and 3D volumes at small batch sizes.

The Python API (docs/api.md); everything is imported when first used, so ``import icone`` is quick:

- :func:`train`: a run as ``icone train`` makes it, with the same options; returns its folder and evaluation;
- :func:`build_method`, :func:`build_optimizer`, :func:`build_views`: a method (an ``nn.Module``:
  ``loss, metrics = method(views, index)``), its optimizer (the row-sparse table included) and a view
  maker, for a training loop of your own;
- :func:`load_data`: a data source as ``icone train --data`` reads it;
- :func:`load_backbone`: a trained backbone from a run folder, checkpoint or ``backbone.pt``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

__version__ = "0.1.0"


@dataclass
class Run:
    """A finished run: its folder, its evaluation (``eval.json``; empty with ``eval.after_train=false``) and its resolved config."""

    folder: Path
    eval: dict[str, Any]
    config: Any
    epochs: int
    steps: int


def _flags(method: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """Dotted options as typed config flags; ``METHOD.key`` is the method's own option."""
    flags = {}
    for key, value in (options or {}).items():
        head, _, rest = key.partition(".")
        flags[f"method_options.{rest}" if head == method and rest else key] = value
    return flags


def train(
    data: str = "digits", method: str = "icone", *, batch_size: int | None = None, epochs: int | None = None,
    backbone: str | None = None, out: str | Path | None = None, seed: int | None = None, options: dict[str, Any] | None = None,
    config: str | Path | dict[str, Any] | None = None, resume: bool = False, overwrite: bool = False, progress: bool = False,
) -> Run:  # fmt: skip
    """Train as ``icone train`` does; ``options`` are its ``KEY=VALUE`` options as a dict (``{"icone.diversity": "frame"}``),
    ``config`` a YAML file or a nested dict. Errors are :class:`icone.errors.UserError` with the CLI's one line."""
    from icone.config import build_config, load_yaml, merge, nest
    from icone.runs import train_run

    values = load_yaml(config) if isinstance(config, (str, Path)) else config
    flags = {"data.source": data, "method": method, "train.batch_size": batch_size, "train.epochs": epochs,
             "model.backbone": backbone, "train.seed": seed, **_flags(method, options)}  # fmt: skip
    flags = {k: v for k, v in flags.items() if v is not None}
    resolved = build_config(values, None, flags)
    explicit = merge(values or {}, nest(flags))  # what the caller gave, checked against a resumed run's own
    summary = train_run(resolved, out=out, resume=resume, overwrite=overwrite, progress=progress, explicit=explicit)
    folder = Path(summary["run_dir"])
    return Run(
        folder,
        summary.get("eval", {}),
        build_config(load_yaml(folder / "config.yaml")),
        summary["epochs"],
        summary["steps"],
    )


def load_data(source: str = "digits", seed: int = 0, **data_options: Any):
    """A data source as ``icone train --data SOURCE data.KEY=VALUE`` reads it: a :class:`icone.data.Dataset`."""
    from icone.config import DataConfig, update_dataclass
    from icone.data import load_dataset

    config = DataConfig(source=source)
    update_dataclass(config, data_options, prefix="data.")
    return load_dataset(config, seed=seed)


def build_method(
    method: str = "icone", *, num_instances: int, sample_shape: tuple[int, ...], backbone: str = "resnet18",
    options: dict[str, Any] | None = None, seed: int = 0,
):  # fmt: skip
    """A method as ``icone train`` builds it for ``num_instances`` samples of ``sample_shape`` (``C x spatial``),
    e.g. IConE with its instance table: ``loss, metrics = method(views, index)`` (``index``: the samples'
    rows in ``[0, num_instances)``). ``options``: ``KEY=VALUE`` options as a dict (``model.width``, ``icone.diversity``...)."""
    from icone.build import build_method as build
    from icone.build import resolve_for_samples
    from icone.config import build_config

    flags = {
        "method": method,
        "model.backbone": backbone,
        "train.seed": seed,
        "train.batch_size": 1,
        **_flags(method, options),
    }
    config = resolve_for_samples(build_config(None, None, flags), tuple(sample_shape), num_instances)
    built = build(config, num_instances)
    built.config = config  # the resolved options, for build_optimizer and build_views
    return built


def build_optimizer(method, lr: float | None = None, weight_decay: float | None = None, name: str = "adamw"):
    """The optimizer ``icone train`` uses for ``method`` (from :func:`build_method`): AdamW or SGD over its
    dense groups, a row-sparse AdamW over an instance table on the sparse path. ``lr`` defaults to the
    method's at batch 64; every group's lr is ``lr x group["lr_scale"]`` (a learning-rate schedule of yours
    multiplies both)."""
    from icone.training.optim import build_optimizer as build

    config = method.config
    config.optim.name = name
    config.optim.lr = lr if lr is not None else type(method).default_lr
    config.optim.weight_decay = weight_decay if weight_decay is not None else config.optim.weight_decay
    optimizer = build(method, config)
    for group in optimizer.param_groups:
        group["lr"] = config.optim.lr * group["lr_scale"]
    return optimizer


def build_views(method, epoch: int = 0, epochs: int = 1):
    """The view maker for ``method`` (from :func:`build_method`): ``views = maker(x)`` for a batch
    ``B x C x spatial`` on any device; the method's view checks and schedules applied for ``epoch``."""
    from icone.build import view_maker

    config = method.config
    config.train.epochs = epochs
    return view_maker(config, method, epoch)


def load_backbone(path, device="cpu"):
    """A ready backbone ``nn.Module`` (eval mode) from ``backbone.pt``, a checkpoint or a run folder."""
    from icone.export import load_backbone as _load

    return _load(path, device)


__all__ = [
    "Run",
    "__version__",
    "build_method",
    "build_optimizer",
    "build_views",
    "load_backbone",
    "load_data",
    "train",
]
