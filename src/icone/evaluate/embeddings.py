"""Frozen-backbone embeddings of in-memory samples."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def embed_samples(
    backbone: nn.Module, samples: torch.Tensor | np.ndarray, device: torch.device, batch_size: int = 256
) -> torch.Tensor:
    """Pooled features ``N x d`` (float32, on the CPU) of un-augmented samples, in eval mode."""
    samples = torch.as_tensor(samples)
    was_training = backbone.training
    backbone.eval()
    try:
        chunks = [backbone(chunk.to(device).float()).float().cpu() for chunk in samples.split(batch_size)]
    finally:
        backbone.train(was_training)
    return torch.cat(chunks) if chunks else torch.zeros(0, getattr(backbone, "feature_dim", 0))
