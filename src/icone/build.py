"""Policy in one place: a config and a loaded dataset become a resolved config, and a resolved
config becomes a method (backbone, heads, loss state), an optimizer and a view maker.

Applied once, the same way, for ``icone train``, every cell of ``icone bench`` and ``icone speed``:
the method's defaults, the learning-rate rule, the view defaults of the source, the refusal of a
batch below the method's minimum.
"""

from __future__ import annotations

import copy
import dataclasses

from icone import distributed
from icone.config import Config, validate
from icone.data.arrays import Dataset
from icone.errors import UserError
from icone.methods import Method, batch_free_methods, get_method
from icone.nets import build_backbone, parse_backbone_name
from icone.runtime import pick_device, resolve_precision, seed_everything
from icone.training.optim import scaled_lr
from icone.views import ViewMaker
from icone.weights import load_initial_weights


def learning_rate(config: Config) -> tuple[float, float | None]:
    """``(lr, base_lr)`` of a config: ``optim.lr`` as given, else ``optim.base_lr`` (or the method's
    ``default_lr``), stated for batch 64, scaled to the whole batch (``train.batch_size`` x processes)
    by ``optim.lr_scaling``."""
    if config.optim.lr is not None:
        return float(config.optim.lr), config.optim.base_lr
    base = config.optim.base_lr or get_method(config.method).default_lr
    return scaled_lr(base, config.train.batch_size * distributed.world_size(), config.optim.lr_scaling), base


def resolve_config(config: Config, dataset: Dataset) -> Config:
    """Fill every ``None`` default from the data, the method and the source; check the fit.

    Returns a copy; the copy is what ``config.yaml`` holds, so re-running it is exact. The learning
    rate is :func:`learning_rate`'s.
    """
    check_instances(config, dataset)
    shape = (dataset.in_channels, *dataset.spatial_shape)
    return resolve_for_samples(config, shape, len(dataset.train), dataset.view_defaults)


def check_instances(config: Config, dataset: Dataset) -> None:
    """Enough training instances for a method that tells them apart (``min_instances``): with fewer, its
    objective is met by a constant encoder, and the run would learn nothing (refused before anything is written)."""
    method_cls, count = get_method(config.method), len(dataset.train)
    if count >= method_cls.min_instances:
        return
    samples, size = dataset.train.samples, "x".join(map(str, dataset.spatial_shape))
    what = f"one patch of {size}" if count == 1 and samples.position(0) else f"{count} sample(s) of {size}"
    raise UserError(
        f"{method_cls.name} tells training instances apart and needs at least {method_cls.min_instances}, but "
        f"'{config.data.source}' gives {count} ({what}); make more with a smaller data.patch or data.stride, or give more images"
    )


def resolve_for_samples(
    config: Config, sample_shape: tuple[int, ...], num_samples: int, view_defaults: dict | None = None
) -> Config:
    """:func:`resolve_config` for ``num_samples`` training samples of ``sample_shape`` (``C x spatial``)."""
    config = copy.deepcopy(config)
    method_cls = get_method(config.method)
    base, backbone_dims = parse_backbone_name(config.model.backbone)
    channels, spatial_shape = int(sample_shape[0]), tuple(int(s) for s in sample_shape[1:])
    data_dims = len(spatial_shape)
    for asked in (backbone_dims, config.model.spatial_dims):
        if asked is not None and asked != data_dims:
            raise UserError(
                f"the data source '{config.data.source}' is {data_dims}D (samples {spatial_shape}) but a {asked}D backbone "
                f"was asked for; use model.backbone={base}-{data_dims}d or a {asked}D source"
            )
    if config.model.in_channels not in (None, channels):
        raise UserError(
            f"model.in_channels={config.model.in_channels} but the data has {channels} channel(s); remove the option"
        )
    config.model.spatial_dims = data_dims
    config.model.in_channels = channels
    config.model.norm = config.model.norm or method_cls.default_norm
    config.optim.lr, config.optim.base_lr = learning_rate(config)
    if config.optim.weight_decay is None:
        config.optim.weight_decay = method_cls.default_weight_decay
    views = config.views
    if views.local_crops is None:
        views.local_crops = method_cls.default_local_crops
    for key, value in (view_defaults or {}).items():
        if getattr(views, key) is None:
            setattr(views, key, value)
    views.flip = True if views.flip is None else views.flip
    views.rotate90 = True if views.rotate90 is None else views.rotate90
    if views.global_size is None:
        views.global_size = max(spatial_shape)
    if views.local_size is None:
        views.local_size = max(4, int(round(views.global_size * 3 / 7)))
    config.train.precision = resolve_precision(
        config.train.precision, pick_device(config.train.device)
    )  # the choice, saved
    options = method_cls.make_options(config.method_options)
    config.data.order = config.data.order or method_cls.order_for(options)
    resolve_windows(config, num_samples)
    config.method_options = dataclasses.asdict(options)
    check_batch_size(config, method_cls, num_samples)
    validate(config)
    return config


def resolve_windows(config: Config, num_samples: int) -> None:
    """``data.order=window``: the window (default an eighth of the training set, at least one batch)
    and its stride (default a quarter of the window: each instance in four windows running)."""
    data = config.data
    if data.order != "window":
        return
    size = data.window_size or max(config.train.batch_size * distributed.world_size(), -(-num_samples // 8))
    data.window_size = min(size, num_samples)
    data.window_stride = min(data.window_stride or max(1, data.window_size // 4), data.window_size)


def check_batch_size(config: Config, method_cls: type[Method], num_samples: int) -> None:
    """``train.batch_size`` is per process: at least the method's minimum on each; all processes' batches fit the data."""
    batch, world = config.train.batch_size, distributed.world_size()
    if batch < method_cls.min_batch_size:
        alternatives = ", ".join(n for n in batch_free_methods(batch) if n != method_cls.name)
        raise UserError(
            f"{method_cls.name} needs a batch size of at least {method_cls.min_batch_size} ({method_cls.batch_needs}); "
            f"use --batch-size {method_cls.min_batch_size} or more, or a method defined at batch size {batch}: {alternatives}"
        )
    drawn = config.data.patches_per_epoch
    if drawn is not None and batch * world > drawn:
        raise UserError(
            f"batch size {batch}{f' x {world} processes' if world > 1 else ''} is larger than the {drawn} samples drawn "
            f"per epoch (data.patches_per_epoch={drawn}); use --batch-size {max(1, drawn // world)} or less, or raise "
            "data.patches_per_epoch"
        )
    if batch * world > num_samples:
        if world > 1:
            raise UserError(
                f"batch size {batch} on each of {world} processes ({batch * world} in all) is larger than the training set "
                f"({num_samples} samples); use --batch-size {num_samples // world} or less"
            )
        raise UserError(
            f"batch size {batch} is larger than the training set ({num_samples} samples); use --batch-size {num_samples} or less"
        )


def build_method(config: Config, num_instances: int, initial_weights: bool = True) -> Method:
    """The method of a resolved config with a freshly initialised backbone (seeded: the same config gives
    the same weights), or with the weights of ``model.init`` (before the method copies the backbone
    into its teachers). ``initial_weights=False``: skip ``model.init`` (weights follow from a checkpoint)."""
    seed_everything(config.train.seed)
    method_cls = get_method(config.method)
    options = method_cls.make_options(config.method_options)
    backbone = build_backbone(config.model)
    if initial_weights and config.model.init:
        load_initial_weights(backbone, config.model.init)
    return method_cls(backbone, options, num_instances)


def view_maker(config: Config, method: Method, epoch: int = 0) -> ViewMaker:
    """The views of ``epoch``: the resolved view options as the method adjusts them (checks, schedules)."""
    spec = method.adjust_views(copy.deepcopy(config.views), epoch, config.train.epochs)
    return ViewMaker(spec, int(config.model.spatial_dims))
