"""Scores of a trained encoder that need no labels, to choose settings (``optim.lr=auto``) without them.

RankMe (Garrido et al., ICML 2023) tracks downstream accuracy across hyper-parameters, but a
representation of noise also has a high rank (an untrained encoder often has the highest). So the
score pairs it with the agreement of two augmented views of the same samples (an alignment measure,
after Wang & Isola 2020): ``score = RankMe x max(agreement, 0)``. Noise has rank but no agreement;
a collapsed encoder agrees with itself but has no rank; a useful one has both. alpha-ReQ (Agrawal et
al., NeurIPS 2022) is reported beside them. docs/tuning.md says how the score was chosen and checked.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from icone.data.samples import Samples
from icone.evaluate.embeddings import embed_samples
from icone.stats import alpha_req, embedding_std, rankme, view_agreement

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
    """RankMe, alpha-ReQ and embedding std of un-augmented samples, the agreement of two views made by
    ``views`` (its first two crops, drawn from ``seed``), and ``score = RankMe x max(agreement, 0)``."""
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
    rank, agreement = rankme(plain), view_agreement(first, second)
    return {
        "rankme": rank,
        "agreement": agreement,
        "alpha": alpha_req(plain),
        "embedding_std": embedding_std(plain),
        "score": rank * max(agreement, 0.0),
    }
