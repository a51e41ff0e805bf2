"""Redundancy-reduction / regularisation losses: VICReg and Barlow Twins.

Both use statistics over the batch (variance, covariance, cross-correlation), so both need at
least two samples. Notation: ``B`` the batch size, ``D`` the embedding width.
"""

from __future__ import annotations

import torch

from icone.losses.common import check_pair


def off_diagonal_square_sum(matrix: torch.Tensor) -> torch.Tensor:
    """``sum_{i != j} M_ij^2`` of a square matrix, as the total minus the diagonal.

    No boolean-mask indexing: that costs a host sync and a copy of the matrix (docs/speed.md).
    """
    return matrix.pow(2).sum() - torch.diagonal(matrix).pow(2).sum()


def vicreg_variance(z: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """VICReg eq. 1-2: ``v(Z) = mean_j relu(1 - sqrt(Var(z_j) + eps))``, unbiased variance."""
    std = torch.sqrt(z.var(dim=0) + eps)
    return torch.relu(1 - std).mean()


def vicreg_covariance(z: torch.Tensor) -> torch.Tensor:
    """VICReg eq. 3-4: ``c(Z) = sum_{i != j} C(Z)_ij^2 / D`` with ``C(Z) = Z_c^T Z_c / (B - 1)``."""
    b, d = z.shape
    centred = z - z.mean(dim=0)
    cov = centred.t() @ centred / (b - 1)
    return off_diagonal_square_sum(cov) / d


def vicreg_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    eps: float = 1e-4,
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """VICReg (Bardes et al. 2022, arXiv 2105.04906, eq. 6), combined as in the official code.

    ``L = lambda s(Z, Z') + mu [v(Z) + v(Z')] / 2 + nu [c(Z) + c(Z')]`` with ``s`` the mean squared
    error (eq. 5), ``v`` the variance hinge and ``c`` the covariance term (each view's variance
    terms averaged, covariance terms summed). ``z1``, ``z2``: ``B x D``, B >= 2. ``return_terms``:
    ``(L, terms)`` with the unweighted terms of :func:`vicreg_terms`.
    """
    terms = vicreg_terms(z1, z2, eps)
    loss = sim_coeff * terms["invariance"] + std_coeff * terms["variance"] + cov_coeff * terms["covariance"]
    return (loss, terms) if return_terms else loss


def vicreg_terms(z1: torch.Tensor, z2: torch.Tensor, eps: float = 1e-4) -> dict[str, torch.Tensor]:
    """The unweighted terms of :func:`vicreg_loss`: invariance ``s``, variance ``[v(Z) + v(Z')] / 2``, covariance ``c(Z) + c(Z')``."""
    check_pair(z1, z2, "vicreg_loss: z1 and z2", min_batch=2)
    return {
        "invariance": (z1 - z2).pow(2).mean(),
        "variance": (vicreg_variance(z1, eps) + vicreg_variance(z2, eps)) / 2,
        "covariance": vicreg_covariance(z1) + vicreg_covariance(z2),
    }


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 5e-3) -> torch.Tensor:
    """Barlow Twins (Zbontar et al. 2021, arXiv 2103.03230, eq. 1-2).

    Each dimension is standardised over the batch (biased variance, eps 1e-5, as a BatchNorm
    without affine parameters); ``C = z1_n^T z2_n / B``;
    ``L = sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2``. ``z1``, ``z2``: ``B x D``, B >= 2.
    """
    check_pair(z1, z2, "barlow_twins_loss: z1 and z2", min_batch=2)
    b = z1.shape[0]
    c = _standardise(z1).t() @ _standardise(z2) / b
    on_diagonal = (1 - torch.diagonal(c)).pow(2).sum()
    return on_diagonal + lambd * off_diagonal_square_sum(c)


def _standardise(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return (z - z.mean(dim=0)) / torch.sqrt(z.var(dim=0, unbiased=False) + eps)
