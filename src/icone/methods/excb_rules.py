"""ExCB's scale rules: K from the data size, the head width, and the size and teacher momenta that keep
the paper's ImageNet setting (Metaxas et al. 2024; official code ManiadisG/ExCB) at any batch and data
size (docs/excb.md, "The K rule and the size-momentum rule")."""

from __future__ import annotations

import math

MAX_CLUSTERS = 65536  # the paper's K on ImageNet
SAMPLES_PER_CLUSTER = 20  # the K rule: N / 20 (ImageNet's 1.28 M samples -> 64,000, the paper's 65,536)
# The paper's ImageNet setting (configs/main_config.yaml of the official code): K = 65536, size
# momentum 0.999, batch 1024 over all processes, 2 global views -> 2048 assignments per step.
# One assignment moves a cluster's relative size r_k = K s_k by K (1 - m) / A = 0.032.
PAPER_SIZE_STEP = 65536 * (1 - 0.999) / (2 * 1024)


def default_num_clusters(num_instances: int) -> int:
    """Our rule for K: ``round(N / 20)``, at least 2, at most 65536 and never more than N.

    With the size-momentum rule (:func:`default_size_momentum`) the running sizes average over
    ``K / (0.032 x 2 N)`` epochs of assignments; ``K = N / 20`` makes that 0.8 epochs at every
    batch size, as in the paper's ImageNet setting (65536 / (0.032 x 2 x 1.28 M)), and gives about
    the paper's K on ImageNet-size data.
    """
    return max(1, min(num_instances, MAX_CLUSTERS, max(2, round(num_instances / SAMPLES_PER_CLUSTER))))


def default_hidden_dim(feature_dim: int) -> int:
    """Our rule for the head width: ``min(2048, 4 d)`` (2048 for ResNet-50 / full-width ResNet-18)."""
    return min(2048, 4 * feature_dim)


def default_size_momentum(
    num_clusters: int, batch_size: int, world_size: int = 1, global_views: int = 2, step: float = PAPER_SIZE_STEP
) -> float:
    """Our rule for the size momentum ``m_s``: keep the paper's per-step change of a cluster's size.

    One assignment moves a cluster's relative size ``r_k = K s_k`` by ``K (1 - m_s) / A``, with
    ``A = global_views x batch_size x world_size`` assignments per step. Keeping that at the paper's
    ImageNet value (``step`` = 65536 x 0.001 / 2048 = 0.032) gives ``m_s = 1 - step x A / K``
    (0.999 in the paper's setting), at least 0: the running sizes then always average about
    ``1 / step`` = 31 assignments per cluster, whatever the batch size.
    """
    assignments = global_views * batch_size * world_size
    return max(0.0, 1.0 - step * assignments / max(num_clusters, 1))


PAPER_TEACHER_EPOCHS = (1024 / 1_281_167) / (1 - 0.996)  # the paper's teacher averages over 0.2 epochs of ImageNet


def default_ema_momentum(num_instances: int, batch_size: int, world_size: int = 1) -> float:
    """The teacher's EMA momentum that averages over the paper's share of an epoch (0.2) at any batch
    size and data size: ``1 - (B x world / N) / 0.2`` (0.996 in the paper's ImageNet setting), at least 0."""
    return max(0.0, 1.0 - batch_size * world_size / max(num_instances, 1) / PAPER_TEACHER_EPOCHS)


def crop_min_scale(epoch: int, epochs: int, start: float = 0.26, end: float = 0.14) -> float:
    """Minimum global crop scale by epoch: cosine from ``start`` (epoch 0) towards ``end``."""
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * epoch / max(epochs, 1)))
