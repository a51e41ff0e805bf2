"""ExCB loss terms (Metaxas, Tzimiropoulos & Patras, ECCV 2024, arXiv 2407.11168; docs/methods.md "ExCB").

Notation: ``z`` cosine similarities of projections to ``K`` unit centroids (``... x K``, in
[-1, 1]), ``s`` the running cluster sizes (``K``, summing to 1), ``r_k = K s_k`` the relative size
of cluster ``k`` (1 for a cluster of exactly average size).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from icone.losses.common import pair_cross_entropies

NOISE_SCALE = 1e-3  # uniform noise added to a balancing factor that is exactly 0 (reference code)


def excb_balance_factors(sizes: torch.Tensor, noise: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, b)`` with ``a_k = min(r_k, 1)`` (undersized) and ``b_k = min(1 / r_k, 1)`` (oversized).

    ``r_k = K s_k / sum(s)``. With ``noise`` a factor that is exactly 0 gets ``U(0, 1e-3)`` added,
    so an empty cluster is pulled to just below +1 instead of exactly +1.
    """
    sizes = sizes.float()
    r = sizes * sizes.numel() / sizes.sum().clamp(min=torch.finfo(sizes.dtype).tiny)
    a = r.clamp(max=1.0)
    b = torch.where(r > 1, 1.0 / r, torch.ones_like(r))
    if noise:
        a = a + torch.rand_like(a) * NOISE_SCALE * (a == 0)
        b = b + torch.rand_like(b) * NOISE_SCALE * (b == 0)
    return a, b


def excb_balance(similarities: torch.Tensor, sizes: torch.Tensor, noise: bool = False) -> torch.Tensor:
    """The balancing operator ``B(z; s)`` of ExCB (paper §3.2), per cluster ``k``:

    - ``r_k < 1`` (undersized): ``z_k -> 1 - (1 - z_k) r_k``  (pulled towards +1)
    - ``r_k > 1`` (oversized):  ``z_k -> (1 + z_k) / r_k - 1``  (pushed towards -1)
    - ``r_k = 1``: unchanged.

    Both branches are one expression ``(1 - (1 - z) a + 1) b - 1`` with the factors of
    :func:`excb_balance_factors`. ``z`` is clamped to [-1, 1] first (cosines can exceed 1 by
    rounding), so the output lies in [-1, 1] and is non-decreasing in ``z_k`` (strictly where
    ``r_k > 0``). No argmax boost (see :func:`excb_argmax_boost`).
    """
    a, b = excb_balance_factors(sizes.to(similarities.device), noise=noise)
    z = similarities.float().clamp(-1.0, 1.0)
    pulled = 1 - (1 - z) * a
    return (pulled + 1) * b - 1


def excb_argmax_boost(balanced: torch.Tensor, factor: float = 1.01) -> torch.Tensor:
    """Reference-code extra: multiply each row's value at its argmax by ``factor``, clamp to [-1, 1].

    As in the reference, the multiplication is applied to the value as it is: a negative maximum
    moves away from +1.
    """
    scale = torch.ones_like(balanced).scatter_(-1, balanced.argmax(-1, keepdim=True), factor)
    return (balanced * scale).clamp(-1.0, 1.0)


def excb_assignment_counts(labels: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """Float counts ``(K,)`` of hard assignments (any shape of ``labels``); no host sync."""
    flat = labels.reshape(-1)
    counts = torch.zeros(num_clusters, device=labels.device, dtype=torch.float32)
    return counts.index_add_(0, flat, torch.ones_like(flat, dtype=torch.float32))


def excb_update_sizes(sizes: torch.Tensor, fractions: torch.Tensor, momentum: float = 0.999) -> torch.Tensor:
    """Running cluster sizes: ``s <- m s + (1 - m) f`` with ``f`` the batch's assignment fractions (§3.2)."""
    return sizes * momentum + fractions.to(sizes.dtype) * (1 - momentum)


def excb_teacher_targets(balanced: torch.Tensor, temperature: float = 0.04) -> torch.Tensor:
    """Teacher targets ``p_t = softmax(B(z_t; s) / tau_t)``, detached."""
    return F.softmax(balanced.detach().float() / temperature, dim=-1)


def excb_pairs(global_views: int, local_views: int, predictor: bool = True) -> list[tuple[int, int]]:
    """Matched ``(teacher view, student output)`` pairs of ExCB's multi-crop loss.

    Student outputs are numbered: ``0 .. V-1`` the projector outputs of the ``V = G + L`` views
    (globals first), ``V .. 2V-1`` the predictor outputs of the same views. Each teacher global
    view ``t`` is matched with the projector output of every other global view and with the
    predictor outputs of all ``V`` views: ``G (G - 1 + V)`` pairs (``2 (3 + L)`` for ``G = 2``).
    Without a predictor, ``t`` is matched with the projector outputs of every other view.
    """
    views = global_views + local_views
    pairs = []
    for t in range(global_views):
        if predictor:
            pairs += [(t, s) for s in range(global_views) if s != t]
            pairs += [(t, views + s) for s in range(views)]
        else:
            pairs += [(t, s) for s in range(views) if s != t]
    return pairs


def excb_pair_cross_entropies(
    targets: torch.Tensor, student: torch.Tensor, pairs: list[tuple[int, int]], temperature: float = 0.1
) -> torch.Tensor:
    """Cross-entropy of every matched pair, ``(P,)``: ``mean_i sum_k -p_t[i, k] log_softmax(z_s[i] / tau_s)_k``
    with ``targets`` ``T x B x K`` teacher targets (:func:`excb_teacher_targets`), ``student`` ``S x B x K``
    student similarities, ``pairs`` from :func:`excb_pairs`. ExCB's loss is their mean."""
    return pair_cross_entropies(targets, F.log_softmax(student.float() / temperature, dim=-1), pairs)
