"""icone: self-supervised representation learning on 2D images and 3D volumes at small batch sizes.

The Python API (docs/api.md); everything is imported when first used, so ``import icone`` is quick:

- :func:`train`: a run as ``icone train`` makes it, with the same options; returns its folder and evaluation;
- :func:`setup`: what ``icone train`` builds (a :class:`~icone.training.setup.Setup`: the method, its
  optimizer, the train step, schedules, view makers, loaders), for a training loop of your own;
- :func:`load_data`: a data source as ``icone train --data`` reads it;
- :func:`load_backbone`: a trained backbone from a run folder, checkpoint or ``backbone.pt``.

:func:`build_method`, :func:`build_optimizer` and :func:`build_views` are deprecated: :func:`setup` gives all three.
"""

from __future__ import annotations

import copy
import warnings
import weakref
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


def _flags(method: str, options: dict[str, Any] | None, **given: Any) -> dict[str, Any]:
    """The arguments given (``None``: not given) and ``options`` as typed config flags (``METHOD.key``: the method's own)."""
    from icone.config.overrides import method_flags

    flags = {"method": method, **given, **method_flags(method, options)}
    return {k: v for k, v in flags.items() if v is not None}


def train(
    data: str = "digits", method: str = "icone", *, batch_size: int | None = None, epochs: int | None = None,
    backbone: str | None = None, out: str | Path | None = None, seed: int | None = None, options: dict[str, Any] | None = None,
    config: str | Path | dict[str, Any] | None = None, resume: bool = False, overwrite: bool = False, progress: bool = False,
) -> Run:  # fmt: skip
    """Train as ``icone train`` does; ``options`` are its ``KEY=VALUE`` options as a dict (``{"icone.diversity": "frame"}``),
    ``config`` a YAML file or a nested dict. Errors are :class:`icone.errors.UserError` with the CLI's one line."""
    from icone.config import build_config, given, load_yaml
    from icone.runs import train_run

    values = load_yaml(config) if isinstance(config, (str, Path)) else config
    flags = _flags(method, options, **{"data.source": data, "train.batch_size": batch_size, "train.epochs": epochs,
                                       "model.backbone": backbone, "train.seed": seed})  # fmt: skip
    resolved = build_config(values, None, flags)
    explicit = given(values, flags)  # what the caller gave, checked against a resumed run's own
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
    from icone.build import load_data
    from icone.config import build_config

    flags = {"data.source": source, "train.seed": seed, **{f"data.{k}": v for k, v in data_options.items()}}
    return load_data(build_config(None, None, flags))


def setup(
    data: Any = "digits", method: str = "icone", *, batch_size: int | None = None, epochs: int | None = None,
    backbone: str | None = None, seed: int | None = None, options: dict[str, Any] | None = None,
    config: str | Path | dict[str, Any] | None = None,
):  # fmt: skip
    """What ``icone train`` builds for ``data`` (a source, or a :class:`icone.data.Dataset` from
    :func:`load_data`), with the same options: a :class:`~icone.training.setup.Setup` with the method (on
    ``train.device``), its optimizer, ``train_step`` (``loss, metrics = setup.train_step(x, index, views)``:
    schedules, precision, clipping, the optimizer, the after-step hook), the schedules, ``views[epoch]`` and
    the ``loaders``. Errors are :class:`icone.errors.UserError` with the CLI's one line."""
    from icone import build
    from icone.config import build_config, load_yaml

    values = load_yaml(config) if isinstance(config, (str, Path)) else config
    source = data if isinstance(data, str) else data.name
    flags = _flags(method, options, **{"data.source": source, "train.batch_size": batch_size, "train.epochs": epochs,
                                       "model.backbone": backbone, "train.seed": seed})  # fmt: skip
    built = build_config(values, None, flags)
    return build.setup(built, build.load_data(built) if isinstance(data, str) else data)


_BUILT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # the deprecated build_method's resolved configs


def _deprecated(name: str) -> None:
    warnings.warn(
        f"icone.{name} is deprecated; use icone.setup(...), which gives the method, its optimizer, the train "
        "step and the views together (docs/api.md)",
        DeprecationWarning,
        stacklevel=3,
    )


def build_method(
    method: str = "icone", *, num_instances: int, sample_shape: tuple[int, ...], backbone: str = "resnet18",
    options: dict[str, Any] | None = None, seed: int = 0,
):  # fmt: skip
    """Deprecated (:func:`setup`): a method as ``icone train`` builds it for ``num_instances`` samples of
    ``sample_shape`` (``C x spatial``)."""
    from icone.build import build_method as build
    from icone.build import resolve_for_samples
    from icone.config import build_config

    _deprecated("build_method")
    flags = _flags(method, options, **{"model.backbone": backbone, "train.seed": seed, "train.batch_size": 1})
    config = resolve_for_samples(build_config(None, None, flags), tuple(sample_shape), num_instances)
    built = build(config, num_instances)
    _BUILT[built] = config
    return built


def build_optimizer(method, lr: float | None = None, weight_decay: float | None = None, name: str = "adamw"):
    """Deprecated (:func:`setup`): the optimizer ``icone train`` uses for ``method`` at ``lr`` (default the
    method's at batch 64) and ``weight_decay`` (default the method's)."""
    from icone.training.optim import OptimizerSpec
    from icone.training.optim import build_optimizer as build

    _deprecated("build_optimizer")
    cls = type(method)
    lr = cls.default_lr if lr is None else lr
    wd = cls.default_weight_decay if weight_decay is None else weight_decay
    return build(method, OptimizerSpec(lr, wd, name, batch_size=1))


def build_views(method, epoch: int = 0, epochs: int = 1):
    """Deprecated (:func:`setup`): the view maker of ``epoch`` for ``method`` (from :func:`build_method`)."""
    from icone.build import view_maker

    _deprecated("build_views")
    config = copy.deepcopy(_BUILT[method])
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
    "setup",
    "train",
]
