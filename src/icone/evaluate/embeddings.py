"""Frozen-backbone embeddings of samples (in memory or read from files)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from icone.data.samples import Samples


@torch.no_grad()
def embed_samples(
    backbone: nn.Module, samples: Samples | torch.Tensor | np.ndarray, device: torch.device, batch_size: int = 256
) -> torch.Tensor:
    """Pooled features ``N x d`` (float32, on the CPU) of un-augmented samples, in eval mode."""
    if isinstance(samples, Samples):
        chunks_in = (torch.from_numpy(chunk) for chunk in samples.chunks(batch_size))
    else:
        chunks_in = iter(torch.as_tensor(samples).split(batch_size))
    was_training = backbone.training
    backbone.eval()
    try:
        chunks = [backbone(chunk.to(device).float()).float().cpu() for chunk in chunks_in]
    finally:
        backbone.train(was_training)
    return torch.cat(chunks) if chunks else torch.zeros(0, getattr(backbone, "feature_dim", 0))
