"""IConE loss terms (Almpanakis & Kreshuk, arXiv 2603.15263; docs/methods.md "IConE").

Notation: ``z`` view embeddings, ``e`` instance-table rows, ``B`` the batch size, ``V`` the number
of views, ``N`` the number of table rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def icone_view_instance_alignment(z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """``L_vi = mean_{i, v} (1 - <normalize(z_{i,v}), normalize(e_i)>)``.

    ``z``: ``B x V x d`` view embeddings; ``e``: ``B x d`` the table rows of the batch's instances.
    """
    cos = (F.normalize(z, dim=-1) * F.normalize(e, dim=-1)[:, None, :]).sum(-1)
    return (1 - cos).mean()


def icone_view_view_alignment(z: torch.Tensor) -> torch.Tensor:
    """``L_vv = mean_{i, v < w} (1 - <z_{i,v}, z_{i,w}>)`` over the ``V (V-1) / 2`` view pairs."""
    v = z.shape[1]
    if v < 2:
        return z.new_zeros(())
    zn = F.normalize(z, dim=-1)
    gram = zn @ zn.transpose(1, 2)  # B x V x V
    rows, cols = torch.triu_indices(v, v, offset=1, device=z.device)
    return (1 - gram[:, rows, cols]).mean()


def _cosines_and_self_pairs(
    rows: torch.Tensor,
    table: torch.Tensor,
    rows_index: torch.Tensor | None = None,
    table_index: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosines of ``rows`` against ``table`` and the mask of self-pairs.

    Without indices ``rows`` is the table itself (self-pairs: the diagonal); otherwise a pair is a
    self-pair where the two rows' instance indices are equal. Masks avoid boolean indexing, which
    costs a host sync and a copy of the whole matrix.
    """
    cos = F.normalize(rows, dim=-1) @ F.normalize(table, dim=-1).t()
    if rows_index is None:
        same = torch.eye(len(rows), dtype=torch.bool, device=rows.device)
    else:
        if table_index is None:
            table_index = torch.arange(len(table), device=rows.device)
        same = rows_index[:, None] == table_index[None, :]
    return cos, same


def icone_hinge_diversity(
    table: torch.Tensor,
    rows: torch.Tensor | None = None,
    rows_index: torch.Tensor | None = None,
    table_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """``L_div = mean_{j != k} relu(<e_j, e_k>)^2`` over the table's rows.

    With ``rows`` (instance indices ``rows_index``) the mean runs over pairs of each row against
    the rows of ``table`` (instance indices ``table_index``, default ``0..len-1``), self-pairs
    removed: with ``table`` a uniform sample of the full table this is an unbiased estimate of the
    full-table mean at a cost independent of N.
    """
    cos, same = _cosines_and_self_pairs(table if rows is None else rows, table, rows_index, table_index)
    pairs = (same.numel() - same.sum()).clamp(min=1)
    return F.relu(cos).pow(2).masked_fill(same, 0.0).sum() / pairs


def icone_frame_diversity(table: torch.Tensor) -> torch.Tensor:
    """``mean_{j != k} <e_j, e_k>^2 = (||E_n^T E_n||_F^2 - N) / (N (N - 1))`` (the frame potential).

    Computed from the ``d x d`` matrix ``E_n^T E_n``, so memory is O(d^2), not O(N^2). A table of one
    row has no pairs: the term is 0 (with a zero gradient), not 0 / 0.
    """
    n = table.shape[0]
    if n < 2:
        return table.sum() * 0.0
    en = F.normalize(table, dim=-1)
    gram = en.t() @ en
    return (gram.pow(2).sum() - n) / (n * (n - 1))


def icone_uniformity(
    table: torch.Tensor,
    t: float = 2.0,
    rows: torch.Tensor | None = None,
    rows_index: torch.Tensor | None = None,
    table_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """``log mean_{j != k} exp(-t ||e_j - e_k||^2)`` on normalised rows (Wang & Isola, 2020).

    ``rows``, ``rows_index``, ``table_index``: pairs of ``rows`` against ``table`` as in
    :func:`icone_hinge_diversity`.
    """
    cos, same = _cosines_and_self_pairs(table if rows is None else rows, table, rows_index, table_index)
    if bool(same.all()):  # no pairs (a table of one row): 0, not log of an empty mean (-inf)
        return cos.sum() * 0.0
    sq = (2 - 2 * cos).clamp(min=0)  # squared distance of unit vectors
    pairs = (same.numel() - same.sum()).clamp(min=1)
    return torch.logsumexp((-t * sq).masked_fill(same, float("-inf")).reshape(-1), dim=0) - torch.log(
        pairs.to(cos.dtype)
    )


def icone_batch_diversity(
    rows: torch.Tensor,
    rows_index: torch.Tensor,
    sample: torch.Tensor,
    sample_index: torch.Tensor,
    diversity: str = "hinge",
    t: float = 2.0,
) -> torch.Tensor:
    """An N-independent estimate of ``L_div`` (``hinge`` or ``uniformity``) from the batch's rows.

    The batch's ``rows`` (instances ``rows_index``) against a uniform ``sample`` of table rows
    (instances ``sample_index``) held fixed: for a uniformly drawn batch the value estimates the
    full-table mean. Each pair counts twice in the full mean, as ``(j, k)`` and ``(k, j)``, so the
    gradient at the batch's rows is doubled: for ``hinge`` it is then ``N / B`` times the full-table
    gradient at those rows in expectation (unbiased for a step that moves only the batch's rows).
    """
    sample = sample.detach()
    if diversity == "hinge":
        estimate = icone_hinge_diversity(sample, rows=rows, rows_index=rows_index, table_index=sample_index)
    else:
        estimate = icone_uniformity(sample, t=t, rows=rows, rows_index=rows_index, table_index=sample_index)
    return estimate + (estimate - estimate.detach())


def icone_frame_diversity_from_gram(gram: torch.Tensor, rows: torch.Tensor, num_rows: int) -> torch.Tensor:
    """The frame diversity of an N-row table from its ``d x d`` matrix ``G = E_n^T E_n``, with a
    gradient for a batch of its rows; O(B d^2), independent of N.

    The value is exact: ``(||G||_F^2 - N) / (N (N - 1))`` (``G`` is taken as a constant). The
    gradient reaches ``rows`` (the batch's B rows, whose current values ``G`` includes): the exact
    gradient of the full-table term at each of them, ``4 G e_i / (N (N - 1))``, times ``N / B``, so
    that over a uniformly drawn batch it is an unbiased estimate of the full-table gradient
    (which moves every row on every step).
    """
    n, b = num_rows, rows.shape[0]
    if n < 2:  # no pairs: 0, as for the dense term
        return rows.sum() * 0.0
    g = gram.detach()
    value = ((g.pow(2).sum() - n) / (n * (n - 1))).to(rows.dtype)
    e = F.normalize(rows, dim=-1)
    surrogate = 2 * ((e @ g.to(e.dtype)) * e).sum() / (b * (n - 1))
    return value + surrogate - surrogate.detach()


def icone_infonce_alignment(
    z: torch.Tensor,
    table: torch.Tensor,
    index: torch.Tensor,
    negatives: torch.Tensor | None = None,
    temperature: float = 0.1,
    sparse_grad: bool = False,
) -> torch.Tensor:
    """Cross-entropy of ``<z_v, e_j> / tau`` over table rows, the own row ``e_i`` the positive.

    ``z``: ``B x V x d``; ``index``: ``B`` rows of the positives; ``negatives``: row indices used
    as negatives (all rows when ``None``); a negative equal to the own row is masked out.
    ``sparse_grad``: the table's gradient as a sparse tensor of the rows used.
    """
    b, v, _ = z.shape
    rows = torch.arange(table.shape[0], device=z.device) if negatives is None else negatives
    candidates = torch.cat([index, rows])  # positives first
    rows = F.embedding(candidates, table, sparse=sparse_grad).to(z.dtype)
    logits = F.normalize(z, dim=-1) @ F.normalize(rows, dim=-1).t() / temperature  # B x V x (B + M)
    own = torch.zeros(b, len(candidates), dtype=torch.bool, device=z.device)
    own[torch.arange(b), torch.arange(b)] = True
    # every other candidate that is the same row as the positive (or another positive) is not a negative
    clash = (candidates[None, :] == index[:, None]) & ~own
    clash[:, :b] = True
    clash[torch.arange(b), torch.arange(b)] = False
    logits = logits.masked_fill(clash[:, None, :], float("-inf"))
    target = torch.arange(b, device=z.device)[:, None].expand(b, v)
    return F.cross_entropy(logits.reshape(b * v, -1), target.reshape(-1))
