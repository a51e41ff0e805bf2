"""IConE loss terms against the formulas of docs/methods.md, computed here with explicit loops."""

import math

import numpy as np
import pytest
import torch

from icone import losses


def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


@pytest.fixture
def fixed():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(3, 2, 4, generator=g, dtype=torch.float64)  # B=3, V=2, d=4
    table = torch.randn(6, 4, generator=g, dtype=torch.float64)
    index = torch.tensor([4, 0, 2])
    return z, table, index


def test_view_instance_alignment_matches_formula(fixed):
    z, table, index = fixed
    expected = np.mean([1 - unit(z[i, v]) @ unit(table[index[i]]) for i in range(3) for v in range(2)])
    assert losses.icone_view_instance_alignment(z, table[index]).item() == pytest.approx(expected, abs=1e-12)


def test_view_view_alignment_matches_formula():
    z = torch.randn(2, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    pairs = [1 - unit(z[i, v]) @ unit(z[i, w]) for i in range(2) for v in range(3) for w in range(v + 1, 3)]
    assert losses.icone_view_view_alignment(z).item() == pytest.approx(np.mean(pairs), abs=1e-12)


def test_view_view_alignment_single_view_is_zero():
    assert losses.icone_view_view_alignment(torch.randn(2, 1, 3)).item() == 0.0


def test_hinge_diversity_matches_formula(fixed):
    _, table, _ = fixed
    n = len(table)
    terms = [max(unit(table[j]) @ unit(table[k]), 0.0) ** 2 for j in range(n) for k in range(n) if j != k]
    assert losses.icone_hinge_diversity(table).item() == pytest.approx(np.mean(terms), abs=1e-12)


def test_sampled_hinge_diversity_matches_formula(fixed):
    _, table, index = fixed
    sample = torch.tensor([0, 1, 3, 4])
    terms = [max(unit(table[i]) @ unit(table[s]), 0.0) ** 2 for i in index.tolist() for s in sample.tolist() if i != s]
    got = losses.icone_hinge_diversity(table[sample], rows=table[index], rows_index=index, table_index=sample)
    assert got.item() == pytest.approx(np.mean(terms), abs=1e-12)


def test_sampled_hinge_over_whole_table_equals_full(fixed):
    _, table, _ = fixed
    everything = torch.arange(len(table))
    sampled = losses.icone_hinge_diversity(table, rows=table, rows_index=everything, table_index=everything)
    assert sampled.item() == pytest.approx(losses.icone_hinge_diversity(table).item(), abs=1e-12)


def test_frame_diversity_equals_pairwise_mean_of_squared_cosines(fixed):
    _, table, _ = fixed
    n = len(table)
    terms = [(unit(table[j]) @ unit(table[k])) ** 2 for j in range(n) for k in range(n) if j != k]
    assert losses.icone_frame_diversity(table).item() == pytest.approx(np.mean(terms), abs=1e-10)


def test_uniformity_matches_formula(fixed):
    _, table, _ = fixed
    n, t = len(table), 2.0
    terms = [
        math.exp(-t * np.sum((unit(table[j]) - unit(table[k])) ** 2)) for j in range(n) for k in range(n) if j != k
    ]
    assert losses.icone_uniformity(table, t=t).item() == pytest.approx(math.log(np.mean(terms)), abs=1e-10)


def test_orthonormal_table_has_zero_diversity():
    table = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))[0] * 3.0  # orthogonal rows, any norm
    assert losses.icone_hinge_diversity(table).item() == pytest.approx(0.0, abs=1e-12)
    assert losses.icone_frame_diversity(table).item() == pytest.approx(0.0, abs=1e-12)


def test_hinge_ignores_negative_cosines_frame_does_not():
    table = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    assert losses.icone_hinge_diversity(table).item() == 0.0
    assert losses.icone_frame_diversity(table).item() == pytest.approx(1.0)


def test_identical_views_equal_to_their_row_give_zero_alignment(fixed):
    _, table, index = fixed
    z = table[index][:, None, :].repeat(1, 3, 1) * 2.5  # three identical views, scaled row
    assert losses.icone_view_instance_alignment(z, table[index]).item() == pytest.approx(0.0, abs=1e-12)
    assert losses.icone_view_view_alignment(z).item() == pytest.approx(0.0, abs=1e-12)


def test_infonce_alignment_matches_formula(fixed):
    z, table, index = fixed
    negatives = torch.tensor([1, 3, 4, 5])
    tau = 0.5
    expected = []
    for i in range(3):
        for v in range(2):
            q = unit(z[i, v])
            own = q @ unit(table[index[i]]) / tau
            others = [q @ unit(table[r]) / tau for r in negatives.tolist() if r != index[i].item()]
            expected.append(-own + math.log(math.exp(own) + sum(math.exp(o) for o in others)))
    got = losses.icone_infonce_alignment(z, table, index, negatives, temperature=tau)
    assert got.item() == pytest.approx(np.mean(expected), abs=1e-10)


def test_losses_have_gradients_at_batch_size_one():
    z = torch.randn(1, 2, 4, requires_grad=True)
    table = torch.randn(5, 4, requires_grad=True)
    index = torch.tensor([2])
    loss = (
        losses.icone_view_instance_alignment(z, table[index])
        + losses.icone_view_view_alignment(z)
        + losses.icone_hinge_diversity(table)
        + losses.icone_infonce_alignment(z, table, index)
    )
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    assert table.grad[2].abs().sum() > 0


def test_a_table_of_one_row_has_no_pairs_so_every_diversity_is_zero():
    """Issue 19: the frame term divided by N (N - 1) = 0 (uniformity: the log of an empty mean)."""
    row = torch.randn(1, 8, dtype=torch.float64, requires_grad=True)
    terms = {
        "frame": losses.icone_frame_diversity(row),
        "frame_from_gram": losses.icone_frame_diversity_from_gram(torch.eye(8, dtype=torch.float64), row, 1),
        "hinge": losses.icone_hinge_diversity(row),
        "uniformity": losses.icone_uniformity(row),
    }
    for name, value in terms.items():
        assert value.item() == 0.0, name
        (grad,) = torch.autograd.grad(value, row)
        assert torch.equal(grad, torch.zeros_like(row)), name
