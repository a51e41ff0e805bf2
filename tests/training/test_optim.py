"""The row-sparse AdamW of instance tables: AdamW where every row is touched, lazy and exact elsewhere."""

import math

import pytest
import torch
import torch.nn.functional as F

from icone.training.optim import OptimizerSet, RowSparseAdamW, clip_grad_norm

LRS = [1e-2, 5e-3, 2e-2, 1e-2]


def _sparse_grad(table: torch.nn.Parameter, rows: torch.Tensor, seed: int) -> None:
    """Back-propagate a fixed function of some rows through a sparse lookup."""
    weights = torch.randn(len(rows), table.shape[1], generator=torch.Generator().manual_seed(seed), dtype=table.dtype)
    (F.embedding(rows, table, sparse=True) * weights).pow(2).sum().backward()


def test_equals_adamw_when_every_row_is_touched_every_step():
    start = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    dense, sparse = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    reference = torch.optim.AdamW([dense], lr=LRS[0], weight_decay=0.1)
    lazy = RowSparseAdamW([sparse], lr=LRS[0], weight_decay=0.1)
    rows = torch.tensor([3, 0, 4, 1, 2])
    for step, lr in enumerate(LRS):
        for opt, p in ((reference, dense), (lazy, sparse)):
            opt.param_groups[0]["lr"] = lr
            opt.zero_grad(set_to_none=True)
            _sparse_grad(p, rows, seed=step)
            assert p.grad.is_sparse
            if p is dense:
                p.grad = p.grad.to_dense()
            opt.step()
    assert torch.allclose(dense, sparse, atol=1e-6)
    assert not torch.allclose(dense, start)


def test_untouched_rows_stay_and_catch_up_with_the_exact_decay_when_touched():
    start = torch.randn(4, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    table = torch.nn.Parameter(start.clone())
    wd = 0.3
    opt = RowSparseAdamW([table], lr=LRS[0], weight_decay=wd)
    for step, lr in enumerate(LRS[:3]):  # rows 0 and 1 only
        opt.param_groups[0]["lr"] = lr
        opt.zero_grad(set_to_none=True)
        _sparse_grad(table, torch.tensor([0, 1]), seed=step)
        opt.step()
    assert torch.equal(table[2:], start[2:])  # nothing is written to rows that were not touched
    # the fourth step touches row 2 for the first time: three missed decays plus this step's, then a
    # first Adam step, whose bias-corrected size is lr * g / (|g| + eps) per coordinate
    lr = LRS[3]
    opt.param_groups[0]["lr"] = lr
    opt.zero_grad(set_to_none=True)
    _sparse_grad(table, torch.tensor([2]), seed=9)
    grad = table.grad.coalesce().values()[0].clone()
    opt.step()
    decay = math.prod(1 - r * wd for r in LRS)
    expected = start[2] * decay - lr * grad / (grad.abs() + 1e-8)
    assert torch.allclose(table[2], expected, atol=1e-9)
    assert torch.equal(table[3], start[3])
    assert opt.state[table]["row_step"].tolist() == [3, 3, 1, 0]


def test_state_survives_a_checkpoint_round_trip():
    def run(split: bool) -> torch.Tensor:
        table = torch.nn.Parameter(
            torch.randn(6, 2, generator=torch.Generator().manual_seed(2))
        )  # float32: its decay marks stay float64
        opt = OptimizerSet(RowSparseAdamW([table], lr=1e-2, weight_decay=0.1))
        for step in range(4):
            if split and step == 2:
                state = opt.state_dict()
                table = torch.nn.Parameter(table.detach().clone())
                opt = OptimizerSet(RowSparseAdamW([table], lr=1e-2, weight_decay=0.1))
                opt.load_state_dict(state)
            opt.zero_grad()
            _sparse_grad(table, torch.tensor([step % 3, 5]), seed=step)
            opt.step()
        return table.detach()

    assert torch.equal(run(False), run(True))


def test_clip_grad_norm_takes_sparse_gradients_like_their_dense_twins():
    dense_p = torch.nn.Parameter(torch.randn(3, 2, dtype=torch.float64))
    table = torch.nn.Parameter(torch.randn(5, 2, dtype=torch.float64))
    (dense_p.pow(2).sum() * 10).backward()
    _sparse_grad(table, torch.tensor([1, 1, 4]), seed=0)  # a repeated row: duplicates must be summed first
    dense_twin = [dense_p.grad.clone(), table.grad.to_dense()]
    expected_norm = torch.sqrt(sum(g.pow(2).sum() for g in dense_twin))
    total = clip_grad_norm([dense_p, table], max_norm=1.0)
    assert float(total) == pytest.approx(float(expected_norm), rel=1e-5)
    assert table.grad.is_sparse
    clipped = torch.sqrt(dense_p.grad.pow(2).sum() + table.grad.to_dense().pow(2).sum())
    assert float(clipped) == pytest.approx(1.0, rel=1e-4)
    assert torch.allclose(table.grad.to_dense(), dense_twin[1] / float(expected_norm), atol=1e-6)
