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


def alpha_req(embeddings: np.ndarray | torch.Tensor, eps: float = 1e-12) -> float:
    """alpha-ReQ (Agrawal et al., NeurIPS 2022, §3): the decay ``alpha`` of the covariance eigenspectrum,
    ``lambda_k ~ k^-alpha``, fitted by least squares on ``log lambda_k`` against ``log k`` over the
    non-negligible eigenvalues. Near 1 for good representations; well below 1 a white, noise-like
    spectrum; well above it a few dominating directions (towards collapse)."""
    z = as_float_tensor(embeddings).double()
    if len(z) < 3:
        return float("nan")
    z = z - z.mean(0)
    eig = torch.linalg.svdvals(z).pow(2) / (len(z) - 1)
    eig = eig[eig > eig.max() * 1e-6 + eps] if float(eig.max()) > 0 else eig[:0]
    if len(eig) < 2:
        return float("inf")  # one direction left: fully collapsed
    k = torch.arange(1, len(eig) + 1, dtype=torch.float64).log()
    slope = ((k - k.mean()) * (eig.log() - eig.log().mean())).sum() / ((k - k.mean()) ** 2).sum()
    return float(-slope)


def view_agreement(first: np.ndarray | torch.Tensor, second: np.ndarray | torch.Tensor) -> float:
    """Mean cosine between two views' embeddings of the same samples, after removing the mean embedding
    of both: 1 when each sample's views coincide and samples differ, about 0 when the views of a sample
    are no closer than two samples (noise, an untrained or a collapsed encoder)."""
    a, b = as_float_tensor(first), as_float_tensor(second)
    centre = torch.cat([a, b]).mean(0)
    return float(F.cosine_similarity(a - centre, b - centre, dim=1).mean())


def view_retrieval(first: np.ndarray | torch.Tensor, second: np.ndarray | torch.Tensor) -> float:
    """How often a sample's two views find each other: the top-1 accuracy of instance discrimination
    (Wu et al., CVPR 2018) across views, by cosine after removing the mean embedding of both, averaged
    over both directions (first -> second, second -> first). ``1 / N`` for noise or a collapsed encoder,
    1 when every sample's views are nearer to each other than to any other sample's: it asks for
    alignment and uniformity together (Wang & Isola, ICML 2020)."""
    a, b = as_float_tensor(first), as_float_tensor(second)
    centre = torch.cat([a, b]).mean(0)
    similarity = F.normalize(a - centre, dim=1) @ F.normalize(b - centre, dim=1).T
    own = torch.arange(len(a))
    hits = (similarity.argmax(1) == own).float().mean() + (similarity.argmax(0) == own).float().mean()
    return float(hits / 2)


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
