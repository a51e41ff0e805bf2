"""ExCB: teacher/student self-distillation onto K clusters with explicit cluster balancing.

Metaxas, Tzimiropoulos & Patras, "Efficient Unsupervised Visual Representation Learning with
Explicit Cluster Balancing", ECCV 2024, arXiv 2407.11168 (METHODS.md "ExCB"). The teacher's
similarities are rebalanced by the running cluster sizes (``losses.excb_balance``) instead of
using batch statistics, so B = 1 is defined: nothing in the objective depends on the batch.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from icone import losses
from icone.errors import UserError
from icone.methods.base import Method, cosine_momentum, ema_update, split_decay
from icone.nets.heads import HEAD_NORMS, MLP, CentroidLayer, head_norm
from icone.train import distributed
from icone.views import ViewSpec

MAX_CLUSTERS = 65536  # the paper's K on ImageNet
ASSIGNMENTS = ("balanced", "raw")


def default_num_clusters(num_instances: int) -> int:
    """Our rule for K: ``round(N / 4)``, at least 2, at most 65536 and never more than N."""
    return max(1, min(num_instances, MAX_CLUSTERS, max(2, round(num_instances / 4))))


def default_hidden_dim(feature_dim: int) -> int:
    """Our rule for the head width: ``min(2048, 4 d)`` (2048 for ResNet-50 / full-width ResNet-18)."""
    return min(2048, 4 * feature_dim)


def crop_min_scale(epoch: int, epochs: int, start: float = 0.26, end: float = 0.14) -> float:
    """Minimum global crop scale by epoch: cosine from ``start`` (epoch 0) towards ``end``."""
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * epoch / max(epochs, 1)))


@dataclass
class ExCBOptions:
    num_clusters: int | None = None  # K; None: default_num_clusters(N) = round(N / 4) in [2, 65536]
    hidden_dim: int | None = None  # projector/predictor hidden width; None: min(2048, 4 d) (paper 2048, d = 2048)
    bottleneck_dim: int = 256  # projection size the centroids live in (paper 256)
    projector_layers: int = 3  # linear layers: d -> hidden -> hidden -> bottleneck (paper)
    head_norm: str = "layer"  # norm inside projector/predictor MLPs (paper: batch); batch | layer | group | none
    predictor: bool = True  # student predictor on top of the projection (paper: on)
    predictor_norm: str = "layer"  # norm on the projection before the predictor (paper: BN(256))
    balancing: bool = True  # False: plain sharpened teacher softmax(z_t / 0.04), no balancing, no boost
    argmax_boost: bool = True  # reference-code extra: x1.01 at each sample's balanced argmax, clamp
    teacher_temperature: float = 0.04
    student_temperature: float = 0.1
    size_momentum: float = 0.999  # m_s of the running cluster sizes
    ema_momentum: float = 0.996  # teacher EMA momentum, cosine to 1
    centroid_wd_start_scale: float = 10.0  # centroid weight decay falls from this x wd to 1 x wd
    crop_schedule: bool = True  # min global crop scale crop_scale_start -> crop_scale_end over training
    crop_scale_start: float = 0.26
    crop_scale_end: float = 0.14
    eval_assignments: str = "balanced"  # cluster_assignments: argmax of B(z_t; s) (final sizes) | raw argmax of z_t
    kmeans_init: bool = True  # centroids from spherical k-means on untrained projections
    kmeans_iters: int = 50
    kmeans_restarts: int = 10  # reruns while a cluster is empty; then empty clusters are seeded by hand
    kmeans_samples: int = 100_000  # at most this many training samples feed k-means

    def validate(self) -> None:
        if self.eval_assignments not in ASSIGNMENTS:
            raise UserError(f"excb.eval_assignments={self.eval_assignments!r} is not valid; choose one of: {', '.join(ASSIGNMENTS)}")
        for key in ("head_norm", "predictor_norm"):
            if getattr(self, key) not in HEAD_NORMS:
                raise UserError(f"excb.{key}={getattr(self, key)!r} is not valid; choose one of: {', '.join(HEAD_NORMS)}")
        if self.num_clusters is not None and self.num_clusters < 2:
            raise UserError(f"excb.num_clusters must be at least 2 (or null for the rule round(N / 4)), got {self.num_clusters}")
        for key in ("hidden_dim", "bottleneck_dim", "kmeans_samples"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise UserError(f"excb.{key} must be at least 1, got {getattr(self, key)}")
        if self.projector_layers < 1:
            raise UserError(f"excb.projector_layers must be at least 1, got {self.projector_layers}")
        for key in ("teacher_temperature", "student_temperature"):
            if getattr(self, key) <= 0:
                raise UserError(f"excb.{key} must be positive, got {getattr(self, key)}")
        for key in ("size_momentum", "ema_momentum"):
            if not 0 <= getattr(self, key) <= 1:
                raise UserError(f"excb.{key} must be in [0, 1], got {getattr(self, key)}")
        if self.centroid_wd_start_scale <= 0:
            raise UserError(f"excb.centroid_wd_start_scale must be positive, got {self.centroid_wd_start_scale}")
        for key in ("crop_scale_start", "crop_scale_end"):
            if not 0 < getattr(self, key) <= 1:
                raise UserError(f"excb.{key} must be in (0, 1], got {getattr(self, key)}")
        if self.kmeans_iters < 0 or self.kmeans_restarts < 0:
            raise UserError("excb.kmeans_iters and excb.kmeans_restarts must be at least 0")


# ---- spherical k-means (centroid initialisation) -------------------------------------------------


def _nearest(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Index of the most similar centroid for each row of ``x`` (chunked: N x K never held at once)."""
    return torch.cat([(part @ centroids.t()).argmax(-1) for part in x.split(chunk)])


def _mean_directions(x: torch.Tensor, assign: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Normalised mean of each cluster's members; an empty cluster keeps its centroid."""
    sums = torch.zeros_like(centroids).index_add_(0, assign, x)
    counts = torch.bincount(assign, minlength=len(centroids))
    return torch.where((counts > 0)[:, None], F.normalize(sums, dim=-1), centroids)


def _seed_empty(x: torch.Tensor, centroids: torch.Tensor, assign: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Give each empty cluster the worst-fitting point of a cluster with at least two members."""
    centroids, assign = centroids.clone(), assign.clone()
    counts = torch.bincount(assign, minlength=len(centroids))
    for k in torch.nonzero(counts == 0).flatten().tolist():
        fit = (x * centroids[assign]).sum(-1)
        fit[counts[assign] < 2] = float("inf")
        point = int(fit.argmin())
        counts[assign[point]] -= 1
        assign[point], counts[k] = k, 1
        centroids[k] = x[point]
    return centroids, assign


@torch.no_grad()
def spherical_kmeans(
    features: torch.Tensor, k: int, iters: int = 50, restarts: int = 10, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(centroids K x d, assignments N)`` of spherical k-means (cosine assignment, normalised means).

    Starts from ``k`` random points and reruns with a new start while any cluster is empty (at
    most ``restarts`` times, as the reference code does without a bound); if one is still empty,
    it gets the worst-fitting point of a cluster with at least two members. Needs ``N >= k``.
    """
    x = F.normalize(features.float(), dim=-1)
    if len(x) < k:
        raise UserError(f"k-means needs at least as many samples as clusters ({len(x)} < {k}); lower excb.num_clusters")
    for _ in range(restarts + 1):
        centroids = x[torch.randperm(len(x), generator=generator)[:k].to(x.device)].clone()
        for _ in range(iters):
            centroids = _mean_directions(x, _nearest(x, centroids), centroids)
        assign = _nearest(x, centroids)
        if bool((torch.bincount(assign, minlength=k) > 0).all()):
            return centroids, assign
    return _seed_empty(x, centroids, assign)


# ---- the method --------------------------------------------------------------------------------


class ExCB(Method):
    name = "excb"
    family = "clustering"
    batch_needs = "nothing (cluster sizes are running estimates)"
    paper = "Metaxas, Tzimiropoulos & Patras, ECCV 2024, arXiv 2407.11168"
    min_batch_size = 1
    default_lr = 1e-3  # AdamW (ours, measured on digits: docs/excb.md); the paper uses SGD lr 0.6 at batch size 1024
    default_weight_decay = 0.05  # AdamW (ours); the paper uses 1e-4 with SGD
    default_norm = "group"
    default_local_crops = 2  # ours, for cost; the paper uses 6 (views.local_crops=6)
    Options = ExCBOptions

    def __init__(self, backbone: nn.Module, options: ExCBOptions, num_instances: int) -> None:
        super().__init__(backbone, options, num_instances)
        opts = options
        self.num_clusters = opts.num_clusters or default_num_clusters(num_instances)
        self.hidden_dim = opts.hidden_dim or default_hidden_dim(self.feature_dim)
        self.projector = MLP(self.feature_dim, self.hidden_dim, opts.bottleneck_dim, layers=opts.projector_layers, norm=opts.head_norm)
        self.centroids = CentroidLayer(opts.bottleneck_dim, self.num_clusters)
        if opts.predictor:
            self.predictor_norm = head_norm(opts.predictor_norm, opts.bottleneck_dim)
            self.predictor = MLP(opts.bottleneck_dim, self.hidden_dim, opts.bottleneck_dim, layers=2, norm=opts.head_norm)
        self.teacher = nn.ModuleDict({"backbone": copy.deepcopy(backbone), "projector": copy.deepcopy(self.projector), "centroids": copy.deepcopy(self.centroids)})
        self.teacher.requires_grad_(False)
        self.register_buffer("sizes", torch.full((self.num_clusters,), 1.0 / self.num_clusters))
        self.register_buffer("epoch_counts", torch.zeros(self.num_clusters))
        self.global_views = 2  # set from the view spec in adjust_views
        self._pending_fractions: torch.Tensor | None = None

    # ---- forward pieces ------------------------------------------------------------------

    def _project(self, backbone: nn.Module, projector: nn.Module, views: list[torch.Tensor]) -> torch.Tensor:
        """Projections ``(V*B) x D`` (view-major), one backbone pass per run of equally shaped views."""
        runs: list[list[torch.Tensor]] = []
        for view in views:
            if runs and runs[-1][0].shape == view.shape:
                runs[-1].append(view)
            else:
                runs.append([view])
        return torch.cat([projector(backbone(torch.cat(run))) for run in runs])

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

    def _check_views(self, views: list[torch.Tensor]) -> int:
        g = self.global_views
        if g < 2 or len(views) < g:
            raise UserError(f"excb needs at least 2 global crops (views.global_crops), got {min(g, len(views))}")
        return g

    # ---- the step ------------------------------------------------------------------------

    def training_step(self, views: list[torch.Tensor], index: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        opts, g = self.options, self._check_views(views)
        b = views[0].shape[0]
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
        self.epoch_counts += counts

    @torch.no_grad()
    def _step_metrics(
        self, raw: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor, student: torch.Tensor, pairs: list[tuple[int, int]], per_pair: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Detached scalars: distinct teacher labels, confidence, agreement, balancing effect, loss parts."""
        s_labels = student.argmax(-1)
        views = student.shape[0] // 2 if self.options.predictor else student.shape[0]
        on_projector = [i for i, (_, s) in enumerate(pairs) if s < views]
        on_predictor = [i for i, (_, s) in enumerate(pairs) if s >= views]
        metrics = {
            "teacher_distinct_labels": (losses.excb_assignment_counts(labels, self.num_clusters) > 0).sum().float(),
            "teacher_confidence": targets.max(-1).values.mean(),
            "teacher_student_agreement": torch.stack([(labels[t] == s_labels[s]).float().mean() for t, s in pairs]).mean(),
            "balance_changed_labels": (labels != raw.argmax(-1)).float().mean(),
            "loss_projector": per_pair[on_projector].mean(),
        }
        if on_predictor:
            metrics["loss_predictor"] = per_pair[on_predictor].mean()
        return metrics

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """Teacher EMA (0.996 -> 1 by cosine), then the size update from this step's assignments."""
        momentum = cosine_momentum(self.options.ema_momentum, step, total_steps)
        for name in ("backbone", "projector", "centroids"):
            ema_update(self.teacher[name], getattr(self, name), momentum)
        if self._pending_fractions is not None:
            self.sizes.copy_(losses.excb_update_sizes(self.sizes, self._pending_fractions, self.options.size_momentum))
            self._pending_fractions = None

    # ---- initialisation, schedules, optimizer groups ------------------------------------------

    @torch.no_grad()
    def initialize(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Centroids (student and teacher) from spherical k-means on untrained, normalised projections.

        The projections are the teacher's as training computes them (train mode, so a batch-norm
        layer uses batch statistics as it will in the steps); norm buffers are restored afterwards.
        """
        opts = self.options
        if not opts.kmeans_init:
            return
        x = self._initial_projections(batches, opts.kmeans_samples)
        centroids, assign = spherical_kmeans(x, self.num_clusters, opts.kmeans_iters, opts.kmeans_restarts)
        if distributed.is_distributed():  # every process must start from rank 0's centroids
            torch.distributed.broadcast(centroids, src=0)
            assign = _nearest(x, centroids)
        self.centroids.weight.copy_(centroids)
        self.teacher["centroids"].weight.copy_(centroids)
        self.epoch_counts.copy_(torch.bincount(assign, minlength=self.num_clusters).float())  # epoch 0: k-means occupancy

    @torch.no_grad()
    def _initial_projections(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], limit: int) -> torch.Tensor:
        teacher = self.teacher
        saved = {name: b.clone() for name, b in teacher.named_buffers()}
        was_training = teacher.training
        teacher.train()
        features, count = [], 0
        try:
            for x, _ in batches:
                features.append(F.normalize(teacher["projector"](teacher["backbone"](x.float())).float(), dim=-1))
                count += len(x)
                if count >= limit:
                    break
        finally:
            teacher.train(was_training)
            for name, b in teacher.named_buffers():
                b.copy_(saved[name])
        return torch.cat(features)[:limit]

    def adjust_views(self, spec: ViewSpec, epoch: int, epochs: int) -> ViewSpec:
        """Minimum global crop scale 0.26 -> 0.14 (cosine over epochs); local crops span up to it."""
        self.global_views = spec.global_crops
        if spec.global_crops < 2:
            raise UserError(f"excb needs at least 2 global crops; set views.global_crops=2 (now {spec.global_crops})")
        if not self.options.crop_schedule:
            return spec
        low = crop_min_scale(epoch, epochs, self.options.crop_scale_start, self.options.crop_scale_end)
        return dataclasses.replace(spec, global_scale=(low, 1.0), local_scale=(min(spec.local_scale[0], low), low))

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
        """Occupancy of the teacher's balanced assignments over the epoch (both global views, all
        processes), then reset. Same keys and definitions as ``evaluate.metrics.cluster_occupancy``."""
        counts = self.epoch_counts.double()
        total = float(counts.sum())
        if total == 0:
            return {}
        self.epoch_counts.zero_()
        return occupancy_from_counts(counts)

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


def occupancy_from_counts(counts: torch.Tensor) -> dict[str, float]:
    """Empty fraction, largest/smallest share and normalised entropy of cluster counts ``(K,)``."""
    counts = counts.double()
    shares = counts / counts.sum().clamp(min=1)
    nonzero = shares[shares > 0]
    k = len(counts)
    entropy = float(-(nonzero * nonzero.log()).sum())
    return {
        "empty_cluster_fraction": float((counts == 0).double().mean()),
        "largest_cluster_share": float(shares.max()),
        "smallest_cluster_share": float(shares.min()),
        "cluster_entropy": entropy / math.log(k) if k > 1 else 0.0,
    }
