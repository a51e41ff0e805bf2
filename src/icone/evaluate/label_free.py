"""Scores of a trained encoder that need no labels, to choose settings (``optim.lr=auto``) without them.

RankMe (Garrido et al., ICML 2023) was proposed for this, but a representation of noise also has a
high rank (an untrained encoder often has the highest), and across learning rates the rank falls as
the lr grows whatever the accuracy does. The score is the **view retrieval**: how often, among a
fixed sample of up to 1,024 training samples, a sample's two augmented views are each other's
nearest neighbour (``icone.stats.view_retrieval``). Noise and collapse both score about ``1 / N``;
it needs alignment and uniformity together (Wang & Isola 2020). RankMe stays the collapse guard
(``icone.evaluate.verdict``); RankMe x view agreement (the first score) and alpha-ReQ (Agrawal et
al., NeurIPS 2022) are reported beside it. docs/tuning.md says how the score was chosen and checked.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from icone.data.samples import Samples
from icone.evaluate.embeddings import embed_samples
from icone.stats import alpha_req, embedding_std, rankme, view_agreement, view_retrieval

SAMPLE = 1024  # samples scored (a fixed, seeded subset)


def fixed_rows(count: int, size: int = SAMPLE, seed: int = 0) -> np.ndarray:
    """The same subset of ``count`` samples for every trial: at most ``size``, seeded."""
    if count <= size:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size, replace=False))


@torch.no_grad()
def label_free_scores(
    backbone: nn.Module, samples: Samples, views: Callable[[torch.Tensor], list[torch.Tensor]], device: torch.device,
    seed: int = 0,
) -> dict[str, float]:  # fmt: skip
    """RankMe, alpha-ReQ and embedding std of un-augmented samples; the agreement and the retrieval of
    two views made by ``views`` (its first two crops, drawn from ``seed``); ``score`` = the retrieval."""
    rows = fixed_rows(len(samples), seed=seed)
    x = torch.from_numpy(np.ascontiguousarray(samples[rows])).float()
    plain = embed_samples(backbone, x, device)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        made = [views(chunk.to(device))[:2] for chunk in x.split(256)]
    finally:
        torch.random.set_rng_state(state)
    first = embed_samples(backbone, torch.cat([m[0].cpu() for m in made]), device)
    second = embed_samples(backbone, torch.cat([m[1].cpu() for m in made]), device)
    rank, agreement, retrieval = rankme(plain), view_agreement(first, second), view_retrieval(first, second)
    return {
        "rankme": rank,
        "agreement": agreement,
        "retrieval": retrieval,
        "rank_x_agreement": rank * max(agreement, 0.0),
        "alpha": alpha_req(plain),
        "embedding_std": embedding_std(plain),
        "score": retrieval,
        "scored_samples": len(rows),
    }
