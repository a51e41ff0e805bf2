"""ExCB's start, before the first step: the running-norm statistics of its heads (calibration), then its
centroids from spherical k-means on the untrained teacher's projections (the official code's
``Trainer.init_centroids``; docs/excb.md). The step itself is :mod:`icone.methods.excb`'s."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from icone import distributed
from icone.methods.kmeans import nearest_centroid, spherical_kmeans
from icone.nets import RunningNorm, calibrate

CALIBRATION_ROWS = 8192  # at most this many training samples set the running-norm statistics at the start
Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def initialize(method: Any, batches: Batches) -> None:
    """Running-norm statistics of ``method``'s heads, then its centroids (student and teacher) from
    spherical k-means on the untrained teacher's normalised projections.

    The projections are the teacher's as training computes them (train mode, so a batch-norm
    layer uses batch statistics as it will in the steps); norm buffers are restored afterwards,
    but for those of the running-norm heads (``head_norm=running|auto``), which are set here from
    the first ``CALIBRATION_ROWS`` samples (:func:`icone.nets.calibrate`) in student and teacher.
    """
    opts = method.options
    calibrating = any(isinstance(m, RunningNorm) for m in method.modules())
    if not opts.kmeans_init and not calibrating:
        return
    batches = iter(batches)
    with _as_in_training(method.teacher):
        features = _calibrate(method, batches) if calibrating else []
        if not opts.kmeans_init:
            return
        x = _projections(method.teacher, features, batches, opts.kmeans_samples)
    centroids, assign = spherical_kmeans(x, method.num_clusters, opts.kmeans_iters, opts.kmeans_restarts)
    if distributed.is_distributed():  # every process starts from rank 0's centroids
        assign = nearest_centroid(x, distributed.broadcast(centroids))
    method.centroids.weight.copy_(centroids)
    method.teacher["centroids"].weight.copy_(centroids)
    method.epoch_counts.copy_(torch.bincount(assign, minlength=method.num_clusters).float())  # epoch 0: k-means


@contextlib.contextmanager
def _as_in_training(teacher: nn.Module) -> Iterator[None]:
    """``teacher`` in train mode (running norms normalise as in training, but are not updated here); its
    other norm buffers put back afterwards."""
    running = {
        f"{n}.{b}" for n, m in teacher.named_modules() if isinstance(m, RunningNorm) for b, _ in m.named_buffers()
    }
    saved = {name: b.clone() for name, b in teacher.named_buffers() if name not in running}
    was_training = teacher.training
    teacher.train()
    for module in teacher.modules():
        if isinstance(module, RunningNorm):
            module.eval()
    try:
        yield
    finally:
        teacher.train(was_training)
        for name, b in teacher.named_buffers():
            if name in saved:
                b.copy_(saved[name])


def _calibrate(method: Any, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    """The teacher backbone's features of the first ``CALIBRATION_ROWS`` samples; from them the running
    statistics of the projector (teacher, copied to the student: the same weights at the start), then of
    the predictor on the calibrated projections."""
    teacher, features, rows = method.teacher, [], 0
    for x, _ in batches:
        features.append(teacher["backbone"](x.float()))
        rows += len(x)
        if rows >= CALIBRATION_ROWS:
            break
    projector = teacher["projector"]
    with calibrate(projector):
        for f in features:
            projector(f)
    method.projector.load_state_dict(projector.state_dict())
    if method.options.predictor:
        with calibrate(nn.ModuleList([method.predictor_norm, method.predictor])):
            for f in features:
                method.predictor(method.predictor_norm(projector(f)))
    return features


def _projections(
    teacher: nn.Module, features: list[torch.Tensor], batches: Iterator[tuple[torch.Tensor, torch.Tensor]], limit: int
) -> torch.Tensor:
    """Normalised teacher projections of up to ``limit`` samples: the calibration's features first, then more batches."""
    projected = [F.normalize(teacher["projector"](f).float(), dim=-1) for f in features]
    rows = sum(len(f) for f in features)
    for x, _ in batches:
        if rows >= limit:
            break
        projected.append(F.normalize(teacher["projector"](teacher["backbone"](x.float())).float(), dim=-1))
        rows += len(x)
    return torch.cat(projected)[:limit]
