"""Spherical k-means: cosine assignments, normalised means (ExCB's centroid initialisation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from icone.errors import UserError


def nearest_centroid(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
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
            centroids = _mean_directions(x, nearest_centroid(x, centroids), centroids)
        assign = nearest_centroid(x, centroids)
        if bool((torch.bincount(assign, minlength=k) > 0).all()):
            return centroids, assign
    return _seed_empty(x, centroids, assign)
