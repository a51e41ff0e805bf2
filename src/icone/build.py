"""The one composition root: a config and a loaded dataset become a resolved config, and a resolved config
becomes a :class:`~icone.training.setup.Setup` (runtime, method, optimizer, train step, schedules, view
makers, loaders), built once and then only consumed.

Applied the same way for ``icone train``, every cell of ``icone bench``, ``icone speed`` and the Python
API: the method's defaults, the learning-rate rule, the view defaults of the source, the refusals of a
batch below the method's minimum and of views the method cannot use. Nothing below this module reads
the config: the readers get :class:`~icone.data.ReadOptions`, the view maker a
:class:`~icone.views.ViewSpec`, backbones a :class:`~icone.nets.BackboneSpec`, methods their own options.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from icone import distributed
from icone.config import Config, validate
from icone.data import Dataset, IndexedDataset, ReadOptions, load_dataset
from icone.errors import UserError
from icone.evaluate.report import EvalOptions
from icone.methods import Method, ViewRequirements, batch_free_methods, get_method, registry
from icone.nets import BackboneSpec, build_backbone, parse_backbone_name, set_activation_checkpointing
from icone.runtime import Runtime, seed_everything
from icone.training.loader import Loaders, Revisits
from icone.training.optim import OptimizerSpec, build_optimizer, row_sparse_parameter_names, scaled_lr
from icone.training.setup import Plan, Setup
from icone.training.step import Schedule, Schedules, TrainStep
from icone.views import ViewMaker, ViewSpec
from icone.weights import load_initial_weights


@dataclass(frozen=True)
class Resolved:
    """A config resolved for its data: ``config`` (every default filled: what ``config.yaml`` holds), the
    method's class and its ``options`` (coerced and checked once), and the ``runtime``."""

    config: Config
    method_cls: type[Method]
    options: Any
    runtime: Runtime


# ---- the config, resolved -------------------------------------------------------------------------


def learning_rate(config: Config, method_cls: type[Method] | None = None) -> tuple[float, float | None]:
    """``(lr, base_lr)`` of a config: ``optim.lr`` as given, else ``optim.base_lr`` (or the method's
    ``default_lr``), stated for batch 64, scaled to the whole batch (``train.batch_size`` x processes)
    by ``optim.lr_scaling``."""
    base = config.optim.base_lr or (method_cls or get_method(config.method)).default_lr
    if config.optim.lr == "auto":  # chosen later by trial runs around the default (icone.runs.tune)
        return "auto", base  # type: ignore[return-value]
    if config.optim.lr is not None:
        return float(config.optim.lr), config.optim.base_lr
    return scaled_lr(base, config.train.batch_size * distributed.world_size(), config.optim.lr_scaling), base


def resolve(config: Config, dataset: Dataset) -> Resolved:
    """Fill every ``None`` default from the data, the method and the source; check the fit (refused before
    anything is written). The config is a copy; re-running it is exact."""
    method_cls = get_method(config.method)
    check_instances(config, dataset, method_cls)
    shape = (dataset.in_channels, *dataset.spatial_shape)
    return _resolve(config, method_cls, shape, len(dataset.train), dataset.view_defaults)


def resolve_config(config: Config, dataset: Dataset) -> Config:
    """:func:`resolve`'s config."""
    return resolve(config, dataset).config


def resolve_for_samples(
    config: Config, sample_shape: tuple[int, ...], num_samples: int, view_defaults: dict | None = None
) -> Config:
    """:func:`resolve_config` for ``num_samples`` training samples of ``sample_shape`` (``C x spatial``)."""
    return _resolve(config, get_method(config.method), sample_shape, num_samples, view_defaults).config


def _resolve(
    config: Config, method_cls: type[Method], sample_shape: tuple[int, ...], num_samples: int,
    view_defaults: dict | None,
) -> Resolved:  # fmt: skip
    config = copy.deepcopy(config)
    _fill_model(config, method_cls, sample_shape)
    config.optim.lr, config.optim.base_lr = learning_rate(config, method_cls)
    if config.optim.weight_decay is None:
        config.optim.weight_decay = method_cls.default_weight_decay
    _fill_views(config, method_cls, tuple(int(s) for s in sample_shape[1:]), view_defaults or {})
    train = config.train
    runtime = Runtime.resolve(train.device, train.precision, train.channels_last, config.model.spatial_dims, train.seed)
    train.precision = runtime.precision  # the choice, saved
    options = method_cls.make_options(config.method_options)
    config.data.order = config.data.order or method_cls.order_for(options)
    resolve_windows(config, num_samples)
    config.method_options = dataclasses.asdict(options)
    check_batch_size(config, method_cls, num_samples)
    check_views(config, method_cls, options)
    validate(config)
    return Resolved(config, method_cls, options, runtime)


def _fill_model(config: Config, method_cls: type[Method], sample_shape: tuple[int, ...]) -> None:
    """The backbone's dimensions and channels from the samples (a pinned ``-2d``/``-3d`` must agree), its norm."""
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


def _fill_views(
    config: Config, method_cls: type[Method], spatial_shape: tuple[int, ...], view_defaults: dict[str, Any]
) -> None:
    """The method's local crops, the source's view defaults, flips and rotations on, crop sizes from the samples."""
    views = config.views
    if views.local_crops is None:
        views.local_crops = method_cls.default_local_crops
    for key, value in view_defaults.items():
        if getattr(views, key) is None:
            setattr(views, key, value)
    views.flip = True if views.flip is None else views.flip
    views.rotate90 = True if views.rotate90 is None else views.rotate90
    if views.global_size is None:
        views.global_size = max(spatial_shape)
    if views.local_size is None:
        views.local_size = max(4, int(round(views.global_size * 3 / 7)))


def check_instances(config: Config, dataset: Dataset, method_cls: type[Method]) -> None:
    """Enough training instances for a method that tells them apart (``min_instances``): with fewer, its
    objective is met by a constant encoder, and the run would learn nothing (refused before anything is written)."""
    count = len(dataset.train)
    if count >= method_cls.min_instances:
        return
    samples, size = dataset.train.samples, "x".join(map(str, dataset.spatial_shape))
    what = f"one patch of {size}" if count == 1 and samples.position(0) else f"{count} sample(s) of {size}"
    raise UserError(
        f"{method_cls.name} tells training instances apart and needs at least {method_cls.min_instances}, but "
        f"'{config.data.source}' gives {count} ({what}); make more with a smaller data.patch or data.stride, or give more images"
    )


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


def check_views(config: Config, method_cls: type[Method], options: Any) -> None:
    """The views fit what the method needs (:meth:`Method.view_requirements`); else its refusal, with the
    ``views.*`` options that would fit."""
    views, needs = config.views, method_cls.view_requirements(options)
    problem = needs.problem(method_cls.name, views.global_crops, int(views.local_crops))
    if problem is None:
        return
    global_crops, local_crops = needs.nearest(views.global_crops, int(views.local_crops))
    advice = f"views.global_crops={global_crops}"
    if local_crops != views.local_crops or needs.local_crops[1] is not None:
        takes_local = [n for n, cls in registry().items() if cls.view_requirements(cls.Options()).local_crops[1] != 0]
        advice += f" views.local_crops={local_crops} (methods that take local crops: {', '.join(takes_local)})"
    raise UserError(f"{problem}; use {advice}")


# ---- what the layers below are told --------------------------------------------------------------


def load_data(config: Config, seed: int | None = None) -> Dataset:
    """The run's data source, read as ``data.*`` says (seeded by ``seed``, default ``train.seed``)."""
    return load_dataset(ReadOptions.of(config.data), seed=config.train.seed if seed is None else seed)


def device(config: Config) -> torch.device:
    """This process's device for ``train.device`` (:meth:`Runtime.resolve`)."""
    return Runtime.resolve(config.train.device).device


def eval_options(config: Config) -> EvalOptions:
    return EvalOptions.of(config.eval)


def backbone_spec(model: Any) -> BackboneSpec:
    """The backbone ``model.*`` describes (resolved: dims, channels and norm set)."""
    if model.spatial_dims is None or model.in_channels is None or model.norm is None:
        raise ValueError("model.spatial_dims, in_channels and norm must be resolved (icone.build.resolve fills them)")
    return BackboneSpec(
        model.backbone, int(model.spatial_dims), int(model.in_channels), str(model.norm), model.width, model.small_stem
    )


def view_spec(config: Config) -> ViewSpec:
    """The resolved ``views.*`` as the view maker's spec."""
    views = config.views
    return ViewSpec(
        global_size=int(views.global_size), local_size=int(views.local_size), global_crops=views.global_crops,
        local_crops=int(views.local_crops), global_scale=tuple(views.global_scale), local_scale=tuple(views.local_scale),
        aspect=views.aspect, flip=bool(views.flip), rotate90=bool(views.rotate90), brightness=views.brightness,
        contrast=views.contrast, gamma=views.gamma, blur_prob=views.blur_prob, blur_sigma=tuple(views.blur_sigma),
        noise_std=views.noise_std,
    )  # fmt: skip


def view_makers(config: Config, needs: ViewRequirements, epochs: int) -> tuple[ViewMaker, ...]:
    """The view maker of every epoch: the resolved views, as the method's schedule changes them."""
    spec, dims = view_spec(config), int(config.model.spatial_dims)
    if needs.schedule is None:
        return (ViewMaker(spec, dims),) * max(epochs, 1)
    return tuple(ViewMaker(needs.schedule(spec, epoch, epochs), dims) for epoch in range(max(epochs, 1)))


def view_maker(config: Config, method: Method, epoch: int = 0) -> ViewMaker:
    """The view maker of ``epoch`` for ``method`` (built from the resolved ``config``)."""
    needs = type(method).view_requirements(method.options)
    return view_makers(config, needs, config.train.epochs)[min(epoch, max(config.train.epochs, 1) - 1)]


def optimizer_spec(config: Config) -> OptimizerSpec:
    optim = config.optim
    whole_batch = config.train.batch_size * distributed.world_size()
    return OptimizerSpec(
        float(optim.lr), float(optim.weight_decay), optim.name, optim.momentum, optim.fused, whole_batch
    )


# ---- the objects --------------------------------------------------------------------------------------


def build_method(config: Config, num_instances: int, initial_weights: bool = True) -> Method:
    """The method of a resolved config (evaluation, exports: no data at hand), as :func:`setup` builds it."""
    method_cls = get_method(config.method)
    return _method(config, method_cls, method_cls.make_options(config.method_options), num_instances, initial_weights)


def _method(
    config: Config, method_cls: type[Method], options: Any, num_instances: int, initial_weights: bool
) -> Method:
    """A freshly initialised backbone (seeded: the same config gives the same weights), or with the weights
    of ``model.init`` (before the method copies the backbone into its teachers; ``initial_weights=False``:
    skip them, the weights follow from a checkpoint), in the method built for ``num_instances``."""
    seed_everything(config.train.seed)
    backbone = build_backbone(backbone_spec(config.model))
    if initial_weights and config.model.init:
        load_initial_weights(backbone, config.model.init)
    return method_cls(backbone, options, num_instances, global_crops=config.views.global_crops)


def _plan(config: Config, num_samples: int, steps: int | None) -> Plan:
    train = config.train
    per_epoch = config.data.patches_per_epoch or num_samples
    steps_per_epoch = steps or per_epoch // (train.batch_size * distributed.world_size())
    return Plan(
        1 if steps else train.epochs, steps_per_epoch, train.batch_size, train.log_every, train.save_every,
        train.checkpoint_every_steps, train.checkpoint_every_minutes, train.monitor_samples,
    )  # fmt: skip


def _schedules(config: Config, plan: Plan, method: Method, optimizer: Any, timing: bool) -> Schedules:
    """lr (warm-up, cosine), the weight-decay ramps of the optimizer's groups, the teacher's momentum."""
    total, optim = plan.total_steps, config.optim
    warmup = 0 if timing else int(round(optim.warmup_epochs * plan.steps_per_epoch))
    schedule = Schedule(total, warmup, 0.01 if timing else optim.min_lr_ratio)
    starts = {g["weight_decay_start_scale"] for g in optimizer.param_groups if g.get("weight_decay_start_scale")}
    teacher = None
    if method.teacher_momentum(1, total, plan.batch_size) is not None:  # after step s + 1, at index s
        teacher = np.array([method.teacher_momentum(step, total, plan.batch_size) for step in range(1, total + 1)])
    return Schedules.make(schedule, float(optim.lr), sorted(starts), teacher)


def _on_device(config: Config, method: Method, runtime: Runtime) -> Method:
    method = method.to(runtime.device, memory_format=runtime.memory_format)
    method = distributed.sync_batch_norm(method, runtime.device)  # before the optimizer and DDP see it
    set_activation_checkpointing(method, config.train.activation_checkpointing)
    return method


def _parallel(method: Method, optimizer: Any, device: torch.device) -> torch.nn.Module:
    """The method, or under ``torchrun`` its DDP wrapper (row-sparse tables kept in step by their optimizer)."""
    if not distributed.is_distributed():
        return method
    distributed.ddp_ignore(method, row_sparse_parameter_names(method, optimizer))
    return torch.nn.parallel.DistributedDataParallel(
        method, device_ids=[device.index] if device.type == "cuda" else None
    )


def setup(
    config: Config | Resolved, dataset: Dataset, *, num_instances: int | None = None, method: Method | None = None,
    steps: int | None = None, initial_weights: bool = True,
) -> Setup:  # fmt: skip
    """Everything a run is made of, built once from ``config`` (resolved here unless it is a
    :class:`Resolved`) and ``dataset``: the method (for ``num_instances``, default the training set's size;
    or ``method`` as given), on the device, its optimizer, the train step, the schedules, the view maker of
    every epoch, the loaders and the loop's plan. ``steps``: a run of exactly that many steps without
    warm-up (timing); ``initial_weights=False``: skip ``model.init`` (a checkpoint follows)."""
    resolved = config if isinstance(config, Resolved) else resolve(config, dataset)
    config, runtime, train_set = resolved.config, resolved.runtime, IndexedDataset(dataset.train)
    if method is None:
        count = len(train_set) if num_instances is None else num_instances
        method = _method(config, resolved.method_cls, resolved.options, count, initial_weights)
    method = _on_device(config, method, runtime)
    optimizer = build_optimizer(method, optimizer_spec(config))
    plan = _plan(config, len(train_set), steps)
    schedules = _schedules(config, plan, method, optimizer, timing=steps is not None)
    model = _parallel(method, optimizer, runtime.device)
    step = TrainStep(method, optimizer, schedules, runtime.device, config.optim.grad_clip, runtime.precision,
                     runtime.memory_format, model)  # fmt: skip
    data = config.data
    revisits = Revisits(int(data.window_size), int(data.window_stride)) if data.order == "window" else None
    loaders = Loaders(train_set, plan.batch_size, runtime.seed, runtime.device, data.num_workers,
                      data.patches_per_epoch, revisits)  # fmt: skip
    views = view_makers(config, type(method).view_requirements(method.options), plan.epochs)
    return Setup(config, runtime, method, optimizer, step, schedules, views, loaders, plan)
