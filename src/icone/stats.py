"""Statistics of embeddings and cluster assignments that show collapse or its absence.

Pure tensor functions, used by the methods (health of IConE's table, ExCB's cluster occupancy),
the trainer's collapse monitor and the evaluation.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def as_float_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x).float()


def rankme(embeddings: np.ndarray | torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al., ICML 2023, eq. 1): ``exp(-sum_k p_k log p_k)``, ``p_k = s_k / ||s||_1 + eps``.

    ``s`` are the singular values of the ``N x d`` embedding matrix; 1 means full collapse, ``min(N, d)``
    the largest possible rank.
    """
    z = as_float_tensor(embeddings)
    if z.numel() == 0:
        return 0.0
    s = torch.linalg.svdvals(z.double())
    if float(s.sum()) == 0:
        return 0.0
    p = s / s.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))


def embedding_std(embeddings: np.ndarray | torch.Tensor) -> float:
    """Mean per-dimension std of L2-normalised embeddings, times ``sqrt(d)``.

    About 1 for embeddings spread over the sphere, 0 at full collapse (Jing et al. / SimSiam §4.1).
    """
    z = F.normalize(as_float_tensor(embeddings), dim=1)
    if len(z) < 2:
        return 0.0
    return float(z.std(0).mean() * math.sqrt(z.shape[1]))


def occupancy(counts: torch.Tensor) -> dict[str, float]:
    """Empty fraction, largest/smallest share and normalised entropy of cluster counts ``(K,)``."""
    counts = counts.double()
    shares = counts / counts.sum().clamp(min=1)
    nonzero = shares[shares > 0]
    k = len(counts)
    entropy = max(0.0, float(-(nonzero * nonzero.log()).sum()))
    return {
        "empty_cluster_fraction": float((counts == 0).double().mean()),
        "largest_cluster_share": float(shares.max()),
        "smallest_cluster_share": float(shares.min()),
        "cluster_entropy": entropy / math.log(k) if k > 1 else 0.0,
    }


def cluster_occupancy(assignments: np.ndarray | torch.Tensor, num_clusters: int) -> dict[str, float]:
    """:func:`occupancy` of hard assignments to ``num_clusters`` clusters."""
    return occupancy(torch.bincount(torch.as_tensor(assignments).long().reshape(-1), minlength=num_clusters))
