"""ExCB: teacher/student self-distillation onto K clusters with explicit cluster balancing.

Metaxas, Tzimiropoulos & Patras, "Efficient Unsupervised Visual Representation Learning with
Explicit Cluster Balancing", ECCV 2024, arXiv 2407.11168 (docs/methods.md, docs/excb.md). The teacher's
similarities are rebalanced by the running cluster sizes (``losses.excb_balance``) instead of
using batch statistics, so B = 1 is defined: nothing in the objective depends on the batch.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from icone import distributed, losses
from icone.methods import excb_start
from icone.methods.base import Method, ViewRequirements, split_decay
from icone.methods.excb_rules import (
    crop_min_scale,
    default_ema_momentum,
    default_hidden_dim,
    default_num_clusters,
    default_size_momentum,
)
from icone.methods.parts import cosine_momentum, ema_update, forward_by_shape, frozen_copy
from icone.nets import HEAD_NORMS, MLP, CentroidLayer, RunningNorm, norm_layer
from icone.options import option
from icone.stats import occupancy
from icone.views import ViewSpec

ASSIGNMENTS = ("balanced", "raw")
EVAL_NETWORKS = ("teacher", "student")
EXCB_HEAD_NORMS = ("auto", *HEAD_NORMS)  # auto: batch statistics from excb.auto_batch_size up, running below


@dataclass
class ExCBOptions:
    num_clusters: int | None = option(None, low=2)  # K; None: default_num_clusters(N) = round(N / 20) in [2, 65536]
    hidden_dim: int | None = option(None, low=1)  # head width; None: min(2048, 4 d) (paper 2048, d = 2048)
    bottleneck_dim: int = option(256, low=1)  # projection size the centroids live in (paper 256)
    projector_layers: int = option(3, low=1)  # linear layers: d -> hidden -> hidden -> bottleneck (paper)
    head_norm: str = option("auto", choices=EXCB_HEAD_NORMS)  # norm inside projector/predictor MLPs (paper: batch)
    predictor: bool = True  # student predictor on top of the projection (paper: on)
    predictor_norm: str = option("auto", choices=EXCB_HEAD_NORMS)  # norm before the predictor (paper: BN(256))
    auto_batch_size: int = option(1, low=1)  # auto: BatchNorm from this batch per process up, running below
    running_window: float = option(1024.0, low=1)  # rows the statistics of head_norm=running average over
    balancing: bool = True  # False: plain sharpened teacher softmax(z_t / 0.04), no balancing, no boost
    argmax_boost: bool = True  # reference-code extra: x1.01 at each sample's balanced argmax, clamp
    teacher_temperature: float = option(0.04, above=0)
    student_temperature: float = option(0.1, above=0)
    size_momentum: float | None = option(None, low=0, high=1)  # m_s; None: default_size_momentum (paper 0.999)
    ema_momentum: float | None = option(
        None, low=0, high=1
    )  # teacher EMA momentum at step 0, cosine to 1; None: the paper's 0.2 epochs at this batch (excb_rules)
    centroid_wd_start_scale: float = option(10.0, above=0)  # centroid weight decay falls from this x wd to 1 x wd
    crop_schedule: bool = False  # min global crop scale crop_scale_start -> crop_scale_end (paper: on)
    crop_scale_start: float | None = option(None, above=0, high=1)  # None: views.global_scale[0] (paper 0.26)
    crop_scale_end: float | None = option(None, above=0, high=1)  # None: start x 0.14 / 0.26 (paper 0.14)
    eval_network: str = option("teacher", choices=EVAL_NETWORKS)  # evaluated and exported (paper: teacher)
    eval_assignments: str = option(
        "balanced", choices=ASSIGNMENTS
    )  # cluster_assignments: argmax of B(z_t; s) (final sizes) | raw argmax of z_t
    kmeans_init: bool = True  # centroids from spherical k-means on untrained projections
    kmeans_iters: int = option(50, low=0)
    kmeans_restarts: int = option(10, low=0)  # reruns while a cluster is empty; then empty clusters are seeded by hand
    kmeans_samples: int = option(100_000, low=1)  # at most this many training samples feed k-means


def crop_schedule(options: ExCBOptions, spec: ViewSpec, epoch: int, epochs: int) -> ViewSpec:
    """``crop_schedule``: minimum global crop scale ``start -> end`` (cosine over epochs), local crops span
    up to it. ``start`` defaults to the views' ``global_scale[0]`` and ``end`` to ``start x 0.14 / 0.26``
    (the paper's 0.26 -> 0.14, relative to the scales every method uses)."""
    start = options.crop_scale_start or spec.global_scale[0]
    end = options.crop_scale_end or start * 0.14 / 0.26
    low = crop_min_scale(epoch, epochs, start, end)
    return dataclasses.replace(spec, global_scale=(low, 1.0), local_scale=(min(spec.local_scale[0], low), low))


class ExCB(Method):
    name = "excb"
    family = "clustering"
    batch_needs = "nothing (cluster sizes are running estimates)"
    paper = "Metaxas, Tzimiropoulos & Patras, ECCV 2024, arXiv 2407.11168"
    min_batch_size = 1
    default_lr = 1e-3  # AdamW (ours: docs/excb.md); the paper uses SGD lr 0.6 at batch size 1024
    default_weight_decay = 0.05  # AdamW (ours); the paper uses 1e-4 with SGD
    default_norm = "group"
    default_local_crops = 2  # ours, for cost; the paper uses 6 (views.local_crops=6)
    Options = ExCBOptions

    def __init__(self, backbone: nn.Module, options: ExCBOptions, num_instances: int, global_crops: int = 2) -> None:
        super().__init__(backbone, options, num_instances, global_crops)
        opts = options
        self.num_clusters = opts.num_clusters or default_num_clusters(num_instances)
        self.hidden_dim = opts.hidden_dim or default_hidden_dim(self.feature_dim)
        # auto: RunningNorm, switched to batch statistics at the first step if the batch allows it
        norm, predictor_norm = ("running" if n == "auto" else n for n in (opts.head_norm, opts.predictor_norm))
        self.projector = MLP(
            self.feature_dim, self.hidden_dim, opts.bottleneck_dim, layers=opts.projector_layers, norm=norm
        )
        self.centroids = CentroidLayer(opts.bottleneck_dim, self.num_clusters)
        if opts.predictor:
            self.predictor_norm = norm_layer(predictor_norm, opts.bottleneck_dim, dims=1)
            self.predictor = MLP(opts.bottleneck_dim, self.hidden_dim, opts.bottleneck_dim, layers=2, norm=norm)
        for module in self.modules():
            if isinstance(module, RunningNorm):
                module.window = float(opts.running_window)
        self.teacher = nn.ModuleDict(
            {name: frozen_copy(getattr(self, name)) for name in ("backbone", "projector", "centroids")}
        )
        self.register_buffer("sizes", torch.full((self.num_clusters,), 1.0 / self.num_clusters))
        self.register_buffer("epoch_counts", torch.zeros(self.num_clusters))
        self._pending_fractions: torch.Tensor | None = None
        self._pending_momentum = 0.999
        self._auto_checked = False
        self._batch_size = 1  # this process's batch, seen at each step
        self._auto_choice: str | None = None  # what auto chose (for describe), once it has

    def evaluation_backbone(self) -> nn.Module:
        """The teacher's backbone, as the paper evaluates (official code: linear_eval config
        ``model_version: teacher``); ``eval_network=student`` for the student's."""
        return self.teacher["backbone"] if self.options.eval_network == "teacher" else self.backbone

    def describe(self) -> dict[str, Any]:
        """What ``head_norm``/``predictor_norm=auto`` chose at the first step: batch or running statistics."""
        return {} if self._auto_choice is None else {"head_statistics": self._auto_choice}

    def _choose_auto_norms(self, batch_size: int) -> None:
        """``auto`` heads, at the first step (when the batch size is known): batch statistics if this
        process's batch is at least ``auto_batch_size``, running statistics below. Per process,
        because batch statistics are each process's own (a batch of 1 on each of 8 processes has
        no statistics to normalise with)."""
        self._auto_checked = True
        opts = self.options
        use_batch = batch_size >= opts.auto_batch_size
        auto: list[nn.Module] = []
        if opts.head_norm == "auto":
            auto += [self.projector, self.teacher["projector"]] + ([self.predictor] if opts.predictor else [])
        if opts.predictor_norm == "auto" and opts.predictor:
            auto.append(self.predictor_norm)
        for module in auto:
            for norm in module.modules():
                if isinstance(norm, RunningNorm):
                    norm.use_batch_statistics(use_batch)
                    self._auto_choice = "batch" if use_batch else "running"

    def size_momentum(self, batch_size: int, global_views: int) -> float:
        """``excb.size_momentum`` if set, else :func:`default_size_momentum` of this step (per-process
        batch, world size, global views: the assignments the size update counts)."""
        if self.options.size_momentum is not None:
            return float(self.options.size_momentum)
        return default_size_momentum(self.num_clusters, batch_size, distributed.world_size(), global_views)

    # ---- forward pieces ------------------------------------------------------------------

    def _project(self, backbone: nn.Module, projector: nn.Module, views: list[torch.Tensor]) -> torch.Tensor:
        """Projections ``(V*B) x D`` (view-major): one backbone pass per run of equally shaped views,
        then one projector pass over all of them, so a batch-norm head normalises global and local
        crops together (as the official ``MLPBottleneckClassifier.forward`` does)."""
        return projector(forward_by_shape(backbone, views))

    @staticmethod
    def _similarities(projections: torch.Tensor, centroids: CentroidLayer, detach: bool = False) -> torch.Tensor:
        """Cosine similarities to the centroids in float32 (outside autocast: tau_t = 0.04 amplifies rounding)."""
        with torch.autocast(projections.device.type, enabled=False):
            return centroids(projections.float(), detach_centroids=detach)

    @torch.no_grad()
    def teacher_similarities(self, views: list[torch.Tensor]) -> torch.Tensor:
        """Raw teacher similarities ``(V*B) x K`` (no balancing)."""
        t = self.teacher
        return self._similarities(self._project(t["backbone"], t["projector"], views), t["centroids"])

    @torch.no_grad()
    def teacher_logits(self, similarities: torch.Tensor) -> torch.Tensor:
        """``B(z_t; s)`` (+ argmax boost) with the current sizes; ``z_t`` itself when balancing is off."""
        if not self.options.balancing:
            return similarities.float()
        balanced = losses.excb_balance(similarities, self.sizes, noise=True)
        return losses.excb_argmax_boost(balanced) if self.options.argmax_boost else balanced

    def student_outputs(self, views: list[torch.Tensor], global_views: int) -> torch.Tensor:
        """Student similarities ``S x B x K``: projector outputs of all views, then predictor outputs.

        Centroid gradients come only from the projector outputs of the global views; local
        projector outputs and all predictor outputs use detached centroids.
        """
        b, n_global = views[0].shape[0], global_views * views[0].shape[0]
        proj = self._project(self.backbone, self.projector, views)
        outputs = [self._similarities(proj[:n_global], self.centroids)]
        if len(proj) > n_global:
            outputs.append(self._similarities(proj[n_global:], self.centroids, detach=True))
        if self.options.predictor:
            outputs.append(self._similarities(self.predictor(self.predictor_norm(proj)), self.centroids, detach=True))
        return torch.cat(outputs).reshape(-1, b, self.num_clusters)

    # ---- the step ------------------------------------------------------------------------

    def training_step(
        self, views: list[torch.Tensor], index: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        opts, g, b = self.options, self.global_crops, views[0].shape[0]
        if not self._auto_checked:
            self._choose_auto_norms(b)
        self._batch_size = b
        student = self.student_outputs(views, g)
        raw = self.teacher_similarities(views[:g]).reshape(g, b, self.num_clusters)
        balanced = self.teacher_logits(raw)  # uses the sizes from before this step
        targets = losses.excb_teacher_targets(balanced, opts.teacher_temperature)
        pairs = losses.excb_pairs(g, len(views) - g, predictor=opts.predictor)
        per_pair = losses.excb_pair_cross_entropies(targets, student, pairs, opts.student_temperature)
        labels = balanced.argmax(-1)  # G x B: the teacher's balanced assignments (= argmax of p_t)
        self._record_assignments(labels)
        return per_pair.mean(), self._step_metrics(raw, labels, targets, student, pairs, per_pair.detach())

    @torch.no_grad()
    def _record_assignments(self, labels: torch.Tensor) -> None:
        """All-reduced assignment counts of this step: the pending size update and the epoch occupancy."""
        counts = losses.excb_assignment_counts(labels, self.num_clusters)
        counts = distributed.all_reduce_mean(counts) * distributed.world_size()
        self._pending_fractions = counts / counts.sum().clamp(min=1)
        self._pending_momentum = self.size_momentum(labels.shape[-1], labels.numel() // max(labels.shape[-1], 1))
        self.epoch_counts += counts

    @torch.no_grad()
    def _step_metrics(
        self,
        raw: torch.Tensor,
        labels: torch.Tensor,
        targets: torch.Tensor,
        student: torch.Tensor,
        pairs: list[tuple[int, int]],
        per_pair: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Detached scalars: distinct teacher labels, confidence, agreement, balancing effect, loss parts."""
        s_labels = student.argmax(-1)
        views = student.shape[0] // 2 if self.options.predictor else student.shape[0]
        on_projector = [i for i, (_, s) in enumerate(pairs) if s < views]
        on_predictor = [i for i, (_, s) in enumerate(pairs) if s >= views]
        metrics = {
            "teacher_distinct_labels": (losses.excb_assignment_counts(labels, self.num_clusters) > 0).sum().float(),
            "teacher_confidence": targets.max(-1).values.mean(),
            "teacher_student_agreement": torch.stack(
                [(labels[t] == s_labels[s]).float().mean() for t, s in pairs]
            ).mean(),
            "balance_changed_labels": (labels != raw.argmax(-1)).float().mean(),
            "loss_projector": per_pair[on_projector].mean(),
            "size_momentum": torch.tensor(self._pending_momentum),
        }
        if on_predictor:
            metrics["loss_predictor"] = per_pair[on_predictor].mean()
        return metrics

    def teacher_momentum(self, step: int, total_steps: int, batch_size: int) -> float:
        """``ema_momentum`` (or :func:`default_ema_momentum` at this batch), rising to 1 by a cosine."""
        base = self.options.ema_momentum
        if base is None:
            base = default_ema_momentum(self.num_instances, batch_size, distributed.world_size())
        return cosine_momentum(base, step, total_steps)

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """Teacher EMA (0.996 -> 1 by cosine), then the size update from this step's assignments.

        The EMA covers parameters only: the teacher's norm statistics are its own, from its own
        (global-view) inputs, as in the official code (``EMAHandler.ema_step`` averages
        ``named_parameters``; the teacher's BatchNorm keeps its own buffers).
        """
        momentum = self.teacher_momentum(step, total_steps, self._batch_size)
        for name in ("backbone", "projector", "centroids"):
            ema_update(self.teacher[name], getattr(self, name), momentum, buffers=False)
        if self._pending_fractions is not None:
            self.sizes.copy_(losses.excb_update_sizes(self.sizes, self._pending_fractions, self._pending_momentum))
            self._pending_fractions = None

    # ---- initialisation, schedules, optimizer groups ------------------------------------------

    def initialize(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Running-norm statistics of the heads, then the centroids from spherical k-means
        (:func:`icone.methods.excb_start.initialize`)."""
        excb_start.initialize(self, batches)

    @classmethod
    def view_requirements(cls, options: ExCBOptions) -> ViewRequirements:
        """At least two global crops (the teacher's); with ``crop_schedule`` the crops' scales by epoch."""
        schedule = functools.partial(crop_schedule, options) if options.crop_schedule else None
        return ViewRequirements(global_crops=(2, None), needs="needs at least 2 global crops", schedule=schedule)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Encoder and heads as usual; centroids in their own group, weight decay 10x -> 1x."""
        others = [(n, p) for n, p in self.named_parameters() if not n.startswith("centroids.")]
        centroid_group: dict[str, Any] = {"params": [self.centroids.weight], "lr": lr, "weight_decay": weight_decay}
        if self.options.centroid_wd_start_scale != 1:
            centroid_group["weight_decay_start_scale"] = self.options.centroid_wd_start_scale
        return split_decay(others, lr, weight_decay) + [centroid_group]

    # ---- monitoring and evaluation ----------------------------------------------------------

    @torch.no_grad()
    def epoch_metrics(self) -> dict[str, float]:
        """:func:`icone.stats.occupancy` of the teacher's balanced assignments over the epoch (both
        global views, all processes), then reset."""
        counts = self.epoch_counts.double()
        total = float(counts.sum())
        if total == 0:
            return {}
        self.epoch_counts.zero_()
        return occupancy(counts)

    @torch.no_grad()
    def cluster_assignments(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher cluster of each un-augmented sample (eval mode): the argmax of the balanced
        similarities ``B(z_t; s)`` with the final sizes (no noise, no boost), or with
        ``eval_assignments=raw`` (and always when balancing is off) the argmax of ``z_t`` itself."""
        was_training = self.training
        self.eval()
        try:
            z = self.teacher_similarities([x.float()])
        finally:
            self.train(was_training)
        if self.options.balancing and self.options.eval_assignments == "balanced":
            z = losses.excb_balance(z, self.sizes)
        return z.argmax(-1)
