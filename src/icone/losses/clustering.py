"""Clustering losses: SwAV's swapped prediction with Sinkhorn-Knopp codes.

Notation: ``B`` the batch size, ``K`` the number of prototypes, ``V`` the views, ``G`` the views
whose codes are computed (the global crops).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from icone.losses.common import check_positive, other_view_pairs, pair_cross_entropies, stack_views


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Equipartitioned soft codes (SwAV, Caron et al. 2020, arXiv 2006.09882, eq. 3-4).

    Sinkhorn-Knopp on ``Q = exp(scores^T / epsilon)`` (``K x B``): alternately scale the rows
    (prototypes) to sum to ``1 / K`` and the columns (samples) to ``1 / B``, ``iterations`` times,
    then return ``B * Q^T``: ``B x K`` codes whose rows sum to 1 and whose prototype columns sum to
    about ``B / K`` (exactly in the limit of many iterations). No gradient. Across processes the
    caller gathers the scores first (SwAV does), so every process computes the same codes.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be B x K, got shape {tuple(scores.shape)}")
    if epsilon <= 0 or iterations < 1:
        raise ValueError(f"epsilon must be positive and iterations at least 1, got {epsilon} and {iterations}")
    scores = scores.detach().to(torch.float64 if scores.dtype == torch.float64 else torch.float32)
    q = torch.exp((scores - scores.max()) / epsilon).t()  # K x B; a constant shift cancels in the normalisation
    num_prototypes, num_samples = q.shape
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= num_prototypes
        q /= q.sum(dim=0, keepdim=True)
        q /= num_samples
    return (q * num_samples).t()


def swav_loss(
    scores: torch.Tensor | Sequence[torch.Tensor],
    codes: torch.Tensor | Sequence[torch.Tensor],
    temperature: float = 0.1,
) -> torch.Tensor:
    """Swapped prediction (SwAV, arXiv 2006.09882, eq. 1-2 and multi-crop).

    ``l(z_v, q_i) = -sum_k q_ik log softmax(z_v^T c / tau)_k``, averaged over the batch, over the
    views ``v != i`` and over the coded views ``i``. ``scores``: ``V x B x K`` prototype scores of
    every view (the first ``G`` are the coded views, in the same order); ``codes``: ``G x B x K``
    targets (e.g. from :func:`sinkhorn`, detached here).
    """
    scores, codes = stack_views(scores, "scores"), stack_views(codes, "codes")
    if scores.shape[1:] != codes.shape[1:]:
        raise ValueError(
            f"scores (V x B x K) and codes (G x B x K) must share B and K, got {tuple(scores.shape)} and {tuple(codes.shape)}"
        )
    check_positive(temperature=temperature)
    views, coded = scores.shape[0], codes.shape[0]
    if views < 2 or coded > views:
        raise ValueError(f"need at least 2 views and no more coded views than views, got {views} and {coded}")
    log_probs = F.log_softmax(scores / temperature, dim=-1)
    # every coded view has the same number of other views, so the mean over pairs is the mean over i of the mean over v
    return pair_cross_entropies(codes, log_probs, other_view_pairs(coded, views)).mean()
