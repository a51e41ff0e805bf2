"""Baseline losses against their papers' formulas, written out here with plain numpy and loops.

Each reference below is an independent transcription of the paper equation (never a call into
``icone.losses``), evaluated on small fixed tensors; then invariances and argument checks.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from icone.losses import (
    barlow_twins_loss,
    byol_loss,
    dino_loss,
    moco_infonce,
    nt_xent,
    simsiam_loss,
    sinkhorn,
    swav_loss,
    vicreg_loss,
    vicreg_variance,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors gain nothing from threads, and threads spin when other test runs share the cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def fixed(*shape: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, scale, shape)


def t(array: np.ndarray) -> torch.Tensor:
    return torch.tensor(array, dtype=torch.float64)


def unit(v: np.ndarray) -> np.ndarray:
    return v / math.sqrt(sum(x * x for x in v))


def log_softmax(row: np.ndarray) -> np.ndarray:
    top = max(row)
    return row - top - math.log(sum(math.exp(x - top) for x in row))


def softmax(row: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(row))


# ---- SimCLR -------------------------------------------------------------------------------


def nt_xent_reference(z1: np.ndarray, z2: np.ndarray, tau: float) -> float:
    """SimCLR eq. 1: l(i, j) = -log exp(s_ij / tau) / sum_{k != i} exp(s_ik / tau), mean over 2B anchors."""
    views = [unit(v) for v in list(z1) + list(z2)]
    b = len(z1)
    total = 0.0
    for i in range(2 * b):
        j = (i + b) % (2 * b)
        sim = [float(np.dot(views[i], views[k])) / tau for k in range(2 * b)]
        denominator = sum(math.exp(sim[k]) for k in range(2 * b) if k != i)
        total += -math.log(math.exp(sim[j]) / denominator)
    return total / (2 * b)


def test_nt_xent_matches_formula():
    z1, z2 = fixed(4, 5, seed=1), fixed(4, 5, seed=2)
    for tau in (0.2, 0.5):
        assert nt_xent(t(z1), t(z2), temperature=tau).item() == pytest.approx(nt_xent_reference(z1, z2, tau), rel=1e-9)
    assert nt_xent(t(z1), t(z2)).item() == pytest.approx(nt_xent_reference(z1, z2, 0.2), rel=1e-9)  # default tau 0.2


def test_nt_xent_invariances():
    z1, z2 = t(fixed(6, 3, seed=3)), t(fixed(6, 3, seed=4))
    loss = nt_xent(z1, z2)
    assert nt_xent(z2, z1).item() == pytest.approx(loss.item(), rel=1e-12)  # symmetric in its views
    assert nt_xent(3 * z1, 0.5 * z2).item() == pytest.approx(loss.item(), rel=1e-9)  # cosine: scale-free
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    assert nt_xent(z1[perm], z2[perm]).item() == pytest.approx(loss.item(), rel=1e-9)  # order of the batch
    aligned = nt_xent(z1, z1 + 1e-3 * z2)
    assert aligned < loss  # matching views score better


def test_nt_xent_refuses_one_sample_and_bad_arguments():
    with pytest.raises(ValueError, match="at least 2"):
        nt_xent(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match="same shape"):
        nt_xent(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(torch.randn(3, 4), torch.randn(3, 4), temperature=0)


# ---- MoCo ---------------------------------------------------------------------------------


def moco_reference(
    q: np.ndarray, k: np.ndarray, queue: np.ndarray, tau: float, mask: np.ndarray | None = None
) -> float:
    """MoCo eq. 1: -log exp(q.k+ / tau) / (exp(q.k+ / tau) + sum_queue exp(q.k- / tau)), mean over the batch."""
    total = 0.0
    for i in range(len(q)):
        qi = unit(q[i])
        positive = math.exp(float(np.dot(qi, unit(k[i]))) / tau)
        negatives = sum(
            math.exp(float(np.dot(qi, unit(n))) / tau) for j, n in enumerate(queue) if mask is None or not mask[i, j]
        )
        total += -math.log(positive / (positive + negatives))
    return total / len(q)


def test_moco_infonce_matches_formula():
    q, k, queue = fixed(3, 4, seed=5), fixed(3, 4, seed=6), fixed(7, 4, seed=7)
    assert moco_infonce(t(q), t(k), t(queue)).item() == pytest.approx(moco_reference(q, k, queue, 0.2), rel=1e-9)
    assert moco_infonce(t(q), t(k), t(queue), temperature=0.07).item() == pytest.approx(
        moco_reference(q, k, queue, 0.07), rel=1e-9
    )


def test_moco_infonce_mask_removes_negatives():
    q, k, queue = fixed(2, 4, seed=8), fixed(2, 4, seed=9), fixed(5, 4, seed=10)
    mask = np.zeros((2, 5), dtype=bool)
    mask[0, 1] = mask[1, 3] = True
    got = moco_infonce(t(q), t(k), t(queue), mask=torch.tensor(mask)).item()
    assert got == pytest.approx(moco_reference(q, k, queue, 0.2, mask), rel=1e-9)
    # masking entry j for every query equals dropping it from the queue
    all_one = np.zeros((2, 5), dtype=bool)
    all_one[:, 2] = True
    dropped = np.delete(queue, 2, axis=0)
    assert moco_infonce(t(q), t(k), t(queue), mask=torch.tensor(all_one)).item() == pytest.approx(
        moco_infonce(t(q), t(k), t(dropped)).item(), rel=1e-9
    )


def test_moco_infonce_keys_get_no_gradient():
    q, k, queue = (torch.randn(3, 4, requires_grad=True) for _ in range(3))
    moco_infonce(q, k, queue).backward()
    assert q.grad is not None and k.grad is None and queue.grad is None
    with pytest.raises(ValueError, match="queue"):
        moco_infonce(torch.randn(2, 4), torch.randn(2, 4), torch.randn(5, 3))


# ---- BYOL and SimSiam -----------------------------------------------------------------------


def test_byol_loss_matches_formula():
    p, z = fixed(4, 6, seed=11), fixed(4, 6, seed=12)
    # eq. 2: || p / ||p|| - z / ||z|| ||^2, mean over the batch
    reference = sum(sum((a - b) ** 2 for a, b in zip(unit(p[i]), unit(z[i]))) for i in range(4)) / 4
    assert byol_loss(t(p), t(z)).item() == pytest.approx(reference, rel=1e-9)
    assert byol_loss(t(p), t(3 * p)).item() == pytest.approx(0.0, abs=1e-12)
    assert byol_loss(t(p), t(-p)).item() == pytest.approx(4.0, rel=1e-12)


def test_simsiam_loss_matches_formula_and_stops_gradient():
    p, z = fixed(4, 6, seed=13), fixed(4, 6, seed=14)
    reference = -sum(float(np.dot(unit(p[i]), unit(z[i]))) for i in range(4)) / 4  # eq. 1: D(p, z) = -cos
    assert simsiam_loss(t(p), t(z)).item() == pytest.approx(reference, rel=1e-9)
    assert simsiam_loss(t(p), t(2 * p)).item() == pytest.approx(-1.0, rel=1e-12)
    pt, zt = t(p).requires_grad_(), t(z).requires_grad_()
    (simsiam_loss(pt, zt) + byol_loss(pt, zt)).backward()
    assert pt.grad is not None and zt.grad is None  # stop-gradient on the target branch


def test_pair_losses_check_shapes():
    with pytest.raises(ValueError):
        byol_loss(torch.randn(2, 3), torch.randn(2, 4))
    with pytest.raises(ValueError):
        simsiam_loss(torch.randn(2, 3), torch.randn(3, 3))


# ---- DINO ---------------------------------------------------------------------------------


def dino_reference(student: np.ndarray, teacher: np.ndarray, center: np.ndarray, tau_s: float, tau_t: float) -> float:
    """DINO eq. 3: sum over teacher views t and student views s != t of H(P_t, P_s), averaged over pairs."""
    total, pairs = 0.0, 0
    for ti in range(len(teacher)):
        for si in range(len(student)):
            if si == ti:
                continue
            batch = 0.0
            for n in range(student.shape[1]):
                target = softmax((teacher[ti, n] - center) / tau_t)
                log_p = log_softmax(student[si, n] / tau_s)
                batch += -sum(target[k] * log_p[k] for k in range(len(center)))
            total += batch / student.shape[1]
            pairs += 1
    return total / pairs


def test_dino_loss_matches_formula():
    student, teacher, center = (
        fixed(4, 3, 5, seed=15, scale=0.3),
        fixed(2, 3, 5, seed=16, scale=0.3),
        fixed(5, seed=17, scale=0.1),
    )
    got = dino_loss(t(student), t(teacher), t(center)).item()
    assert got == pytest.approx(dino_reference(student, teacher, center, 0.1, 0.04), rel=1e-9)
    got = dino_loss(list(t(student)), list(t(teacher)), t(center), student_temp=0.2, teacher_temp=0.07).item()
    assert got == pytest.approx(dino_reference(student, teacher, center, 0.2, 0.07), rel=1e-9)


def test_dino_loss_invariances():
    student, teacher, center = t(fixed(3, 2, 6, seed=18)), t(fixed(2, 2, 6, seed=19)), t(fixed(6, seed=20))
    loss = dino_loss(student, teacher, center)
    assert dino_loss(student + 5.0, teacher - 3.0, center).item() == pytest.approx(
        loss.item(), rel=1e-9
    )  # softmax shifts
    assert dino_loss(student, teacher + center, 2 * center).item() == pytest.approx(
        loss.item(), rel=1e-9
    )  # only t - c matters
    teacher_grad = teacher.clone().requires_grad_()
    dino_loss(student.clone().requires_grad_(), teacher_grad, center).backward()
    assert teacher_grad.grad is None  # the teacher is a target
    with pytest.raises(ValueError):
        dino_loss(student, teacher, torch.zeros(5))
    with pytest.raises(ValueError):
        dino_loss(student[:1], teacher[:1], center)  # no pair of different views


# ---- VICReg -------------------------------------------------------------------------------


def vicreg_reference(
    z1: np.ndarray, z2: np.ndarray, lam: float = 25.0, mu: float = 25.0, nu: float = 1.0, eps: float = 1e-4
) -> float:
    """VICReg eq. 1-6 with the official combination: lam * mse + mu * (v1 + v2) / 2 + nu * (c1 + c2)."""
    n, d = z1.shape

    def variance(z):
        total = 0.0
        for j in range(d):
            mean = sum(z[i, j] for i in range(n)) / n
            var = sum((z[i, j] - mean) ** 2 for i in range(n)) / (n - 1)
            total += max(0.0, 1 - math.sqrt(var + eps))
        return total / d

    def covariance(z):
        means = [sum(z[i, j] for i in range(n)) / n for j in range(d)]
        total = 0.0
        for a in range(d):
            for b in range(d):
                if a != b:
                    cov = sum((z[i, a] - means[a]) * (z[i, b] - means[b]) for i in range(n)) / (n - 1)
                    total += cov**2
        return total / d

    mse = sum((z1[i, j] - z2[i, j]) ** 2 for i in range(n) for j in range(d)) / (n * d)
    return lam * mse + mu * (variance(z1) + variance(z2)) / 2 + nu * (covariance(z1) + covariance(z2))


def test_vicreg_loss_matches_formula():
    z1, z2 = fixed(5, 4, seed=21, scale=0.7), fixed(5, 4, seed=22, scale=0.7)
    assert vicreg_loss(t(z1), t(z2)).item() == pytest.approx(vicreg_reference(z1, z2), rel=1e-9)
    got = vicreg_loss(t(z1), t(z2), sim_coeff=1.0, std_coeff=2.0, cov_coeff=3.0, eps=1e-2).item()
    assert got == pytest.approx(vicreg_reference(z1, z2, 1.0, 2.0, 3.0, 1e-2), rel=1e-9)


def test_vicreg_variance_term_zero_above_unit_std_positive_below():
    wide = t(fixed(16, 6, seed=23, scale=1.0))
    wide = (wide - wide.mean(0)) / wide.std(0) * 1.5  # every dimension has std 1.5
    assert vicreg_variance(wide).item() == 0.0
    assert vicreg_variance(wide / 3).item() > 0  # std 0.5
    assert vicreg_variance(torch.zeros(4, 3)).item() == pytest.approx(
        1 - math.sqrt(1e-4)
    )  # collapse: the eps keeps it finite
    # identical, decorrelated views with std >= 1: only the covariance term (zero here) remains
    square = t(np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]]) * 2)
    assert vicreg_loss(square, square).item() == pytest.approx(0.0, abs=1e-12)


def test_vicreg_refuses_one_sample():
    with pytest.raises(ValueError, match="at least 2"):
        vicreg_loss(torch.randn(1, 4), torch.randn(1, 4))


# ---- Barlow Twins -------------------------------------------------------------------------


def barlow_reference(z1: np.ndarray, z2: np.ndarray, lambd: float = 5e-3) -> float:
    """Barlow Twins eq. 1-2 with batch-standardised dimensions (biased variance, eps 1e-5)."""
    n, d = z1.shape

    def standardise(z):
        out = np.zeros_like(z)
        for j in range(d):
            mean = sum(z[:, j]) / n
            var = sum((z[i, j] - mean) ** 2 for i in range(n)) / n
            out[:, j] = [(z[i, j] - mean) / math.sqrt(var + 1e-5) for i in range(n)]
        return out

    a, b = standardise(z1), standardise(z2)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[k, i] * b[k, j] for k in range(n)) / n
            loss += (1 - c) ** 2 if i == j else lambd * c**2
    return loss


def test_barlow_twins_matches_formula():
    z1, z2 = fixed(6, 4, seed=24), fixed(6, 4, seed=25)
    assert barlow_twins_loss(t(z1), t(z2)).item() == pytest.approx(barlow_reference(z1, z2), rel=1e-9)
    assert barlow_twins_loss(t(z1), t(z2), lambd=0.1).item() == pytest.approx(barlow_reference(z1, z2, 0.1), rel=1e-9)


def test_barlow_twins_zero_for_identical_decorrelated_views():
    z = t(
        np.array([[1.0, 1.0, 1.0], [1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])
    )  # mean 0, var 1, orthogonal
    assert barlow_twins_loss(z, z).item() == pytest.approx(0.0, abs=1e-8)  # C = I up to the eps
    assert barlow_twins_loss(3 * z + 1, z).item() == pytest.approx(0.0, abs=1e-8)  # standardised: affine per dimension
    assert barlow_twins_loss(z, -z).item() == pytest.approx(3 * 4.0, rel=1e-4)  # anti-correlated: (1 - (-1))^2 per dim
    with pytest.raises(ValueError, match="at least 2"):
        barlow_twins_loss(torch.randn(1, 3), torch.randn(1, 3))


# ---- SwAV ---------------------------------------------------------------------------------


def sinkhorn_reference(scores: np.ndarray, eps: float, iterations: int) -> np.ndarray:
    """SwAV's Sinkhorn-Knopp: Q = exp(S^T / eps) normalised to total 1, then rows to 1/K and columns to 1/B."""
    b, k = scores.shape
    q = [[math.exp(scores[i, j] / eps) for i in range(b)] for j in range(k)]  # K x B
    total = sum(sum(row) for row in q)
    q = [[x / total for x in row] for row in q]
    for _ in range(iterations):
        q = [[x / sum(row) / k for x in row] for row in q]
        columns = [sum(q[j][i] for j in range(k)) for i in range(b)]
        q = [[q[j][i] / columns[i] / b for i in range(b)] for j in range(k)]
    return np.array([[q[j][i] * b for j in range(k)] for i in range(b)])


def test_sinkhorn_matches_formula():
    scores = fixed(6, 4, seed=26, scale=0.5)
    got = sinkhorn(t(scores)).numpy()
    np.testing.assert_allclose(got, sinkhorn_reference(scores, 0.05, 3), rtol=1e-7, atol=1e-12)
    got = sinkhorn(t(scores), epsilon=0.5, iterations=5).numpy()
    np.testing.assert_allclose(got, sinkhorn_reference(scores, 0.5, 5), rtol=1e-7, atol=1e-12)


def test_sinkhorn_marginals():
    scores = torch.tensor(fixed(12, 4, seed=27, scale=0.3), dtype=torch.float32)
    codes = sinkhorn(scores)
    torch.testing.assert_close(codes.sum(1), torch.ones(12))  # each sample's code is a distribution
    assert (codes >= 0).all()
    converged = sinkhorn(scores, epsilon=0.5, iterations=200)
    torch.testing.assert_close(converged.sum(0), torch.full((4,), 12 / 4), rtol=1e-4, atol=1e-4)  # equipartition B / K
    torch.testing.assert_close(sinkhorn(scores + 0.7), codes)  # a constant shift of the scores changes nothing
    assert sinkhorn(torch.zeros(1, 5))[0].tolist() == pytest.approx([0.2] * 5)  # one sample alone: uniform code


def swav_reference(scores: np.ndarray, codes: np.ndarray, tau: float) -> float:
    """SwAV eq. 1-2 with multi-crop: for each coded view i, mean over views v != i of -sum_k q_ik log p_vk."""
    total = 0.0
    for i in range(len(codes)):
        sub = 0.0
        others = [v for v in range(len(scores)) if v != i]
        for v in others:
            for n in range(scores.shape[1]):
                log_p = log_softmax(scores[v, n] / tau)
                sub += -sum(codes[i, n, k] * log_p[k] for k in range(scores.shape[2])) / scores.shape[1]
        total += sub / len(others)
    return total / len(codes)


def test_swav_loss_matches_formula():
    scores = fixed(3, 4, 5, seed=28, scale=0.4)
    codes = np.abs(fixed(2, 4, 5, seed=29))
    codes /= codes.sum(-1, keepdims=True)
    assert swav_loss(t(scores), t(codes)).item() == pytest.approx(swav_reference(scores, codes, 0.1), rel=1e-9)
    got = swav_loss(list(t(scores)), list(t(codes)), temperature=0.3).item()
    assert got == pytest.approx(swav_reference(scores, codes, 0.3), rel=1e-9)
    with pytest.raises(ValueError):
        swav_loss(t(scores), t(codes[:, :, :4]))
    with pytest.raises(ValueError, match="temperature"):
        swav_loss(t(scores), t(codes), temperature=-1)
