"""ExCB loss terms against hand-computed values (docs/methods.md "ExCB")."""

import math

import pytest
import torch

from icone.losses import (
    excb_argmax_boost,
    excb_assignment_counts,
    excb_balance,
    excb_pair_cross_entropies,
    excb_pairs,
    excb_teacher_targets,
    excb_update_sizes,
)

REFERENCE_SIZES = torch.tensor([0.5, 0.2, 0.1, 0.1, 0.05, 0.05, 0.0, 0.0])
REFERENCE_OUTPUT = torch.tensor([-0.675, -0.1875, 0.44, 0.44, 0.72, 0.72, 1.0, 1.0])


def test_balance_reference_check():
    z = torch.full((3, 8), 0.3)
    out = excb_balance(z, REFERENCE_SIZES)
    assert torch.allclose(out, REFERENCE_OUTPUT.expand(3, 8), atol=1e-6)


def test_balance_noise_only_on_empty_clusters():
    z = torch.full((64, 8), 0.3)
    out = excb_balance(z, REFERENCE_SIZES, noise=True)
    assert torch.allclose(out[:, :6], REFERENCE_OUTPUT[:6].expand(64, 6), atol=1e-6)
    # empty: 1 - (1 - z) * u with u ~ U(0, 1e-3), the same u for every sample of a step
    assert ((out[:, 6:] <= 1.0) & (out[:, 6:] >= 1.0 - 0.7e-3)).all()
    assert (out[:, 6:] < 1.0).any()


def test_balance_undersized_oversized_balanced_empty():
    sizes = torch.tensor([0.125, 0.25, 0.5, 0.125, 0.0, 0.0, 0.0, 0.0])  # r = 1, 2, 4, 1, 0, ...
    sizes[4:] = 0.0
    z = torch.tensor([[0.2, 0.2, -0.5, -0.3, -1.0, 0.9, 0.2, -0.4]])
    out = excb_balance(z, sizes)[0]
    assert out[0] == pytest.approx(0.2)  # r = 1: unchanged
    assert out[1] == pytest.approx((1 + 0.2) / 2 - 1)  # oversized: -0.4
    assert out[2] == pytest.approx((1 - 0.5) / 4 - 1)  # oversized: -0.875
    assert out[3] == pytest.approx(-0.3)
    assert torch.allclose(out[4:], torch.ones(4))  # empty: pulled to +1
    undersized = torch.tensor([0.0625, 0.1875, 0.25, 0.5])  # r = 0.25, 0.75, 1, 2
    zu = torch.tensor([[-0.2, -0.2, -0.2, -0.2]])
    got = excb_balance(zu, undersized)[0]
    expected = torch.tensor([1 - 1.2 * 0.25, 1 - 1.2 * 0.75, -0.2, 0.8 / 2 - 1])
    assert torch.allclose(got, expected, atol=1e-6)


def test_balance_uniform_sizes_is_identity():
    z = torch.rand(5, 16) * 2 - 1
    assert torch.allclose(excb_balance(z, torch.full((16,), 1 / 16)), z, atol=1e-6)


def test_balance_range_and_monotonicity_properties():
    gen = torch.Generator().manual_seed(0)
    for trial in range(200):
        k = int(torch.randint(2, 40, (1,), generator=gen))
        sizes = torch.rand(k, generator=gen) ** 3
        sizes[torch.rand(k, generator=gen) < 0.2] = 0.0  # some empty clusters
        if sizes.sum() == 0:
            sizes[0] = 1.0
        sizes = sizes / sizes.sum()
        z1 = torch.rand(32, k, generator=gen) * 2 - 1
        z2 = (z1 + torch.rand(32, k, generator=gen) * (1 - z1)).clamp(max=1.0)  # z2 >= z1
        b1, b2 = excb_balance(z1, sizes, noise=True), excb_balance(z2, sizes, noise=False)
        for out in (b1, b2):
            assert out.min() >= -1.0 and out.max() <= 1.0, trial
        b1 = excb_balance(z1, sizes)
        assert (b2 >= b1 - 1e-6).all(), trial  # non-decreasing in z_k
        assert (excb_balance(torch.tensor([[-1.0] * k, [1.0] * k]), sizes).abs() <= 1).all()
        # a larger cluster never gets a higher balanced similarity for the same z
        same = torch.full((1, k), float(z1[0, 0]))
        out = excb_balance(same, sizes)[0]
        order = torch.argsort(sizes)
        assert (out[order][1:] <= out[order][:-1] + 1e-6).all(), trial


def test_argmax_boost():
    x = torch.tensor([[0.5, 0.9, -0.2], [0.995, 0.1, 0.0], [-0.5, -0.4, -0.9]])
    out = excb_argmax_boost(x)
    assert torch.allclose(out[0], torch.tensor([0.5, 0.909, -0.2]))
    assert torch.allclose(out[1], torch.tensor([1.0, 0.1, 0.0]))  # clamped to 1
    assert torch.allclose(out[2], torch.tensor([-0.5, -0.404, -0.9]))  # as the reference: a negative max moves down


def test_assignment_fractions_and_size_update():
    labels = torch.tensor([[0, 0, 1], [3, 0, 1]])
    frac = excb_assignment_counts(labels, 4) / labels.numel()
    assert torch.allclose(frac, torch.tensor([0.5, 2 / 6, 0.0, 1 / 6]))
    sizes = torch.full((4,), 0.25)
    new = excb_update_sizes(sizes, frac, momentum=0.9)
    assert torch.allclose(new, 0.9 * sizes + 0.1 * frac)
    assert new.sum() == pytest.approx(1.0)
    assert torch.equal(excb_update_sizes(sizes, frac, momentum=1.0), sizes)


def test_cross_entropy_hand_computed():
    teacher = torch.tensor([[0.5, -0.5]])
    student = torch.tensor([[0.1, 0.3]])
    p = torch.softmax(torch.tensor([0.5, -0.5]) / 0.04, 0)
    log_q = torch.log_softmax(torch.tensor([0.1, 0.3]) / 0.1, 0)
    expected = float(-(p * log_q).sum())
    targets = excb_teacher_targets(teacher)
    (one_pair,) = excb_pair_cross_entropies(targets[None], student[None], [(0, 0)])
    assert float(one_pair) == pytest.approx(expected, rel=1e-5)
    # by hand: p = (1 / (1 + e^-25), ...), log_q = (-log(1 + e^2), 2 - log(1 + e^2))
    by_hand = (1 / (1 + math.exp(-25))) * math.log(1 + math.exp(2)) + (1 / (1 + math.exp(25))) * (
        math.log(1 + math.exp(2)) - 2
    )
    assert expected == pytest.approx(by_hand, rel=1e-5)


def test_targets_are_detached_and_loss_is_pair_mean():
    gen = torch.Generator().manual_seed(1)
    teacher = (torch.rand(2, 3, 5, generator=gen) * 2 - 1).requires_grad_()
    student = (torch.rand(8, 3, 5, generator=gen) * 2 - 1).requires_grad_()
    pairs = excb_pairs(2, 2)
    targets = excb_teacher_targets(teacher)
    loss = excb_pair_cross_entropies(targets, student, pairs).mean()  # the loss ExCB's step takes
    manual = sum(-(targets[t] * torch.log_softmax(student[s] / 0.1, -1)).sum(-1).mean() for t, s in pairs) / len(pairs)
    assert float(loss.detach()) == pytest.approx(float(manual.detach()), rel=1e-6)
    assert excb_pair_cross_entropies(targets, student, pairs).shape == (len(pairs),)
    loss.backward()
    assert teacher.grad is None  # targets are detached
    assert student.grad is not None


@pytest.mark.parametrize("local", [0, 1, 2, 6])
def test_pairs_count(local):
    pairs = excb_pairs(2, local)
    assert len(pairs) == 2 * (3 + local)  # other global's projector + predictor of all 2 + L views
    views = 2 + local
    for t in (0, 1):
        mine = [s for tt, s in pairs if tt == t]
        assert [s for s in mine if s < views] == [1 - t]  # projector outputs: the other global view only
        assert [s for s in mine if s >= views] == list(range(views, 2 * views))


def test_pairs_explicit_and_without_predictor():
    assert excb_pairs(2, 1) == [(0, 1), (0, 3), (0, 4), (0, 5), (1, 0), (1, 3), (1, 4), (1, 5)]
    assert excb_pairs(2, 2, predictor=False) == [(0, 1), (0, 2), (0, 3), (1, 0), (1, 2), (1, 3)]
