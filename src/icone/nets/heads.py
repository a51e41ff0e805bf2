"""Heads: MLP projectors/predictors with a norm choice, and a centroid (prototype) layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from icone.nets.norms import norm_layer


class MLP(nn.Module):
    """``in -> hidden (-> hidden ...) -> out``; norm + ReLU after every layer but the last."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2, norm: str = "layer") -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (layers - 1) + [out_dim]
        modules: list[nn.Module] = []
        for i in range(layers):
            last = i == layers - 1
            modules.append(nn.Linear(dims[i], dims[i + 1], bias=last or norm == "none"))
            if not last:
                modules += [norm_layer(norm, dims[i + 1], dims=1), nn.ReLU(inplace=True)]
        self.net = nn.Sequential(*modules)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CentroidLayer(nn.Module):
    """K unit-norm centroids: cosine similarities of L2-normalised inputs to each centroid.

    Weight-normalised linear layer without bias with the gain fixed to 1 (ExCB, DINO's last layer).
    """

    def __init__(self, dim: int, num_centroids: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(F.normalize(torch.randn(num_centroids, dim), dim=1))

    def forward(self, x: torch.Tensor, detach_centroids: bool = False) -> torch.Tensor:
        weight = self.weight.detach() if detach_centroids else self.weight
        return F.normalize(x, dim=-1) @ F.normalize(weight, dim=-1).t()
