"""From a config and a loaded dataset to a resolved config, a method and a view maker."""

from __future__ import annotations

import copy
import dataclasses
import math
import random

import numpy as np
import torch

from icone.config import Config, validate
from icone.data.arrays import Dataset
from icone.errors import UserError
from icone.methods import Method, batch_free_methods, get_method
from icone.nets import BackboneSpec, build_backbone, parse_backbone_name
from icone.train import distributed
from icone.views import ViewSpec


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_config(config: Config, dataset: Dataset) -> Config:
    """Fill every ``None`` default from the data, the method and the source; check the fit.

    Returns a copy; the copy is what ``config.yaml`` holds, so re-running it is exact.
    """
    config = copy.deepcopy(config)
    method_cls = get_method(config.method)
    base, backbone_dims = parse_backbone_name(config.model.backbone)
    data_dims = dataset.spatial_dims
    for asked in (backbone_dims, config.model.spatial_dims):
        if asked is not None and asked != data_dims:
            kind = f"{data_dims}D"
            raise UserError(
                f"the data source '{config.data.source}' is {kind} (samples {dataset.spatial_shape}) but a {asked}D backbone "
                f"was asked for; use model.backbone={base}-{data_dims}d or a {asked}D source"
            )
    if config.model.in_channels not in (None, dataset.in_channels):
        raise UserError(f"model.in_channels={config.model.in_channels} but the data has {dataset.in_channels} channel(s); remove the option")
    config.model.spatial_dims = data_dims
    config.model.in_channels = dataset.in_channels
    config.model.norm = config.model.norm or method_cls.default_norm
    if config.optim.lr is None:  # for the whole batch: train.batch_size on each of the processes
        config.optim.lr = scaled_lr(method_cls.default_lr, config.train.batch_size * distributed.world_size(), config.optim.lr_scaling)
    if config.optim.weight_decay is None:
        config.optim.weight_decay = method_cls.default_weight_decay
    views = config.views
    if views.local_crops is None:
        views.local_crops = method_cls.default_local_crops
    for key, value in dataset.view_defaults.items():
        if getattr(views, key) is None:
            setattr(views, key, value)
    views.flip = True if views.flip is None else views.flip
    views.rotate90 = True if views.rotate90 is None else views.rotate90
    if views.global_size is None:
        views.global_size = max(dataset.spatial_shape)
    if views.local_size is None:
        views.local_size = max(4, int(round(views.global_size * 3 / 7)))
    config.method_options = dataclasses.asdict(method_cls.make_options(config.method_options))
    check_batch_size(config, method_cls, len(dataset.train))
    validate(config)
    return config


REFERENCE_BATCH = 64  # the batch size a method's default_lr is stated for


def scaled_lr(lr: float, batch_size: int, rule: str) -> float:
    """``lr`` (stated for :data:`REFERENCE_BATCH`) at ``batch_size``: ``sqrt`` (Adam-type), ``linear`` (SGD) or ``none``."""
    if rule == "sqrt":
        return lr * math.sqrt(batch_size / REFERENCE_BATCH)
    if rule == "linear":
        return lr * batch_size / REFERENCE_BATCH
    return lr


def check_batch_size(config: Config, method_cls: type[Method], num_samples: int) -> None:
    """``train.batch_size`` is per process: at least the method's minimum on each; all processes' batches fit the data."""
    batch, world = config.train.batch_size, distributed.world_size()
    if batch < method_cls.min_batch_size:
        alternatives = ", ".join(n for n in batch_free_methods(batch) if n != method_cls.name)
        raise UserError(
            f"{method_cls.name} needs a batch size of at least {method_cls.min_batch_size} ({method_cls.batch_needs}); "
            f"use --batch-size {method_cls.min_batch_size} or more, or a method defined at batch size {batch}: {alternatives}"
        )
    if batch * world > num_samples:
        if world > 1:
            raise UserError(
                f"batch size {batch} on each of {world} processes ({batch * world} in all) is larger than the training set "
                f"({num_samples} samples); use --batch-size {num_samples // world} or less"
            )
        raise UserError(f"batch size {batch} is larger than the training set ({num_samples} samples); use --batch-size {num_samples} or less")


def backbone_spec(config: Config) -> BackboneSpec:
    model = config.model
    base, _ = parse_backbone_name(model.backbone)
    return BackboneSpec(base, int(model.spatial_dims), int(model.in_channels), str(model.norm), model.width, model.small_stem)


def build_method(config: Config, num_instances: int) -> Method:
    """The method with a freshly initialised backbone (seeded: the same config gives the same weights)."""
    seed_everything(config.train.seed)
    method_cls = get_method(config.method)
    options = method_cls.make_options(config.method_options)
    return method_cls(build_backbone(backbone_spec(config)), options, num_instances)


def view_spec(config: Config) -> ViewSpec:
    v, dims = config.views, int(config.model.spatial_dims)
    return ViewSpec(
        spatial_dims=dims,
        global_shape=(int(v.global_size),) * dims,
        local_shape=(int(v.local_size),) * dims,
        global_crops=v.global_crops,
        local_crops=int(v.local_crops),
        global_scale=tuple(v.global_scale),
        local_scale=tuple(v.local_scale),
        flip=bool(v.flip),
        rotate90=bool(v.rotate90),
        brightness=v.brightness,
        contrast=v.contrast,
        gamma=v.gamma,
        blur_prob=v.blur_prob,
        blur_sigma=tuple(v.blur_sigma),
        noise_std=v.noise_std,
    )


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device={name} but no CUDA device is available; use train.device=cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"train.device={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None


def uses_bf16(config: Config, device: torch.device) -> bool:
    """bf16 autocast: ``train.precision=bf16``, or ``auto`` on a CUDA device."""
    return config.train.precision == "bf16" or (config.train.precision == "auto" and device.type == "cuda")


def memory_format(config: Config) -> torch.memory_format:
    """``train.channels_last``: channels-last (2D) or channels-last-3d (3D); else contiguous."""
    if not config.train.channels_last:
        return torch.contiguous_format
    return torch.channels_last_3d if int(config.model.spatial_dims) == 3 else torch.channels_last
