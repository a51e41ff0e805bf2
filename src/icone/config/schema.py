"""The run config's sections as dataclasses; each field made with :func:`icone.options.option` declares
its valid values. ``None`` means "filled in by :func:`icone.build.resolve`" (from the data, the method, the source)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from icone.options import option

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
    lr: float | str | None = option(
        None, above=0
    )  # the lr itself; None: base_lr scaled to the batch size by lr_scaling; auto: chosen by trial runs (docs/tuning.md)
    lr_factors: list[float] = option(
        factory=lambda: [0.25, 0.5, 1.0, 2.0, 4.0], above=0
    )  # optim.lr=auto: the factors of the default lr the trials try
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
    method: str = "icone"  # auto: chosen among method_candidates by short trial runs (docs/tuning.md)
    method_options: dict[str, Any] = field(default_factory=dict)
    method_candidates: list[str] = option(
        factory=lambda: ["icone", "excb", "moco", "byol", "dino"]
    )  # method=auto: the methods tried (those that fit the batch size and the data)
    data: DataConfig = field(default_factory=DataConfig)
    views: ViewConfig = field(default_factory=ViewConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tuning: dict[str, Any] = field(default_factory=dict)  # lr/method=auto: the trials' scores and the choice (written)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
