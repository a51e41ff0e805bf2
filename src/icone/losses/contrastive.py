"""Contrastive losses: SimCLR's NT-Xent and MoCo's InfoNCE against a queue of keys.

Notation: ``B`` the batch size, ``d`` the embedding width, ``Q`` the queue length, ``tau`` the
temperature. Inputs are normalised here, so raw projector outputs can be passed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from icone.losses.common import check_pair, check_positive


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """NT-Xent (SimCLR, Chen et al. 2020, arXiv 2002.05709, eq. 1), averaged over all ``2B`` anchors.

    ``l(i, j) = -log exp(s_ij / tau) / sum_{k != i} exp(s_ik / tau)`` with ``s`` the cosine
    similarity; each of the ``2B`` views is an anchor whose positive is the other view of its
    sample and whose negatives are the other ``2B - 2`` views. ``z1``, ``z2``: ``B x d``, B >= 2.
    """
    check_pair(z1, z2, "nt_xent: z1 and z2", min_batch=2)  # the other samples are the negatives
    check_positive(temperature=temperature)
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    logits = z @ z.t() / temperature
    self_pairs = torch.eye(2 * b, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_pairs, float("-inf"))
    positives = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(logits, positives)


def moco_infonce(
    q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """InfoNCE against a queue (MoCo, He et al. 2020, arXiv 1911.05722, eq. 1; MoCo v2 arXiv 2003.04297).

    ``L = -log exp(q.k+ / tau) / (exp(q.k+ / tau) + sum_{k- in queue} exp(q.k- / tau))``, mean over
    the batch. ``q``: ``B x d`` queries, ``k``: ``B x d`` keys (positives, no gradient), ``queue``:
    ``Q x d`` negative keys. ``mask`` (``B x Q``, optional, ours): ``True`` removes a queue entry
    from a query's negatives (e.g. an older key of the same instance).
    """
    check_pair(q, k, "q and k")
    check_positive(temperature=temperature)
    if queue.ndim != 2 or queue.shape[1] != q.shape[1]:
        raise ValueError(f"queue must be Q x d with d = {q.shape[1]}, got {tuple(queue.shape)}")
    q = F.normalize(q, dim=-1)
    k = F.normalize(k.detach(), dim=-1)
    queue = F.normalize(queue.detach(), dim=-1)
    positive = (q * k).sum(-1, keepdim=True)  # B x 1
    negatives = q @ queue.t()  # B x Q
    if mask is not None:
        if mask.shape != negatives.shape:
            raise ValueError(f"mask must be B x Q = {tuple(negatives.shape)}, got {tuple(mask.shape)}")
        negatives = negatives.masked_fill(mask, float("-inf"))
    logits = torch.cat([positive, negatives], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))
