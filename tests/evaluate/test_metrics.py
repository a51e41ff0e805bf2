"""Evaluation metrics against known answers."""

import math

import numpy as np
import pytest
import torch

from icone.evaluate.metrics import cluster_occupancy, embedding_std, knn_predict, linear_probe, rankme, twonn_dimension
from icone.stats import alpha_req, view_agreement, view_retrieval


def test_rankme_of_known_spectrum():
    # singular values 3, 1 (diagonal matrix): p = (0.75, 0.25) -> exp(entropy)
    z = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    p = np.array([0.75, 0.25]) + 1e-7
    assert rankme(z) == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-6)


def test_rankme_collapsed_is_one_and_isotropic_is_full():
    assert rankme(torch.ones(50, 8)) == pytest.approx(1.0, abs=1e-4)
    assert rankme(torch.eye(8)) == pytest.approx(8.0, rel=1e-4)


def test_embedding_std_collapsed_and_spread():
    assert embedding_std(torch.ones(20, 4)) == pytest.approx(0.0, abs=1e-6)
    assert embedding_std(torch.randn(5000, 16, generator=torch.Generator().manual_seed(0))) == pytest.approx(
        1.0, abs=0.05
    )


@pytest.mark.parametrize("d", [2, 5])
def test_twonn_recovers_dimension_of_a_linear_subspace(d):
    rng = np.random.default_rng(0)
    points = rng.uniform(size=(2000, d)) @ rng.normal(size=(d, 32)) + 5.0  # offset keeps points off the origin
    assert twonn_dimension(points) == pytest.approx(d, rel=0.25)


def test_twonn_of_identical_points_is_zero():
    assert twonn_dimension(np.ones((10, 3))) == 0.0


def test_knn_on_separated_clusters_is_perfect_and_weights_votes():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    labels = np.array([0, 0, 1, 1])
    assert knn_predict(train, labels, torch.tensor([[1.0, 0.05], [0.05, 1.0]]), k=3).tolist() == [0, 1]


def test_linear_probe_reports_three_scores():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = (x[:, 0] > 0).astype(int)
    scores = linear_probe(x[:150], y[:150], x[150:], y[150:])
    assert scores["linear_accuracy"] > 0.9 and set(scores) == {
        "linear_accuracy",
        "linear_balanced_accuracy",
        "linear_macro_f1",
    }


def test_cluster_occupancy_numbers():
    occ = cluster_occupancy(np.array([0, 0, 0, 1]), 4)
    assert occ["empty_cluster_fraction"] == 0.5
    assert occ["largest_cluster_share"] == 0.75 and occ["smallest_cluster_share"] == 0.0
    expected = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(4)
    assert occ["cluster_entropy"] == pytest.approx(expected)


def _retrieval_by_loops(a: np.ndarray, b: np.ndarray) -> float:
    """Independent of icone.stats: centre on the mean of both views, normalise, count own nearest."""
    centre = np.concatenate([a, b]).mean(0)
    a = (a - centre) / np.linalg.norm(a - centre, axis=1, keepdims=True)
    b = (b - centre) / np.linalg.norm(b - centre, axis=1, keepdims=True)
    forward = sum(int(np.argmax([a[i] @ b[j] for j in range(len(b))]) == i) for i in range(len(a)))
    backward = sum(int(np.argmax([b[i] @ a[j] for j in range(len(a))]) == i) for i in range(len(b)))
    return (forward + backward) / (2 * len(a))


def test_view_retrieval_matches_its_definition_and_its_bounds():
    rng = np.random.default_rng(0)
    samples = rng.normal(size=(60, 8))
    first, second = samples + 0.6 * rng.normal(size=samples.shape), samples + 0.6 * rng.normal(size=samples.shape)
    value = view_retrieval(first, second)
    assert value == pytest.approx(_retrieval_by_loops(first, second))
    assert 0.2 < value < 1.0  # noisy views: some, not all, find each other
    assert view_retrieval(samples, samples * 3.0) == 1.0  # views coincide up to scale
    assert view_retrieval(np.ones((50, 8)), np.ones((50, 8))) == pytest.approx(1 / 50)  # collapse
    noise = view_retrieval(rng.normal(size=(400, 8)), rng.normal(size=(400, 8)))
    assert noise < 0.02  # unrelated views: chance, 1 / 400


def test_view_agreement_is_one_for_equal_views_and_near_zero_for_unrelated_ones():
    rng = np.random.default_rng(1)
    samples = rng.normal(size=(500, 16)) + 5.0  # the shared offset is removed before the cosine
    assert view_agreement(samples, samples) == pytest.approx(1.0, abs=1e-5)
    assert abs(view_agreement(samples, rng.normal(size=(500, 16)) + 5.0)) < 0.05


def test_alpha_req_recovers_the_decay_of_a_power_law_spectrum():
    rng = np.random.default_rng(2)
    for alpha in (0.5, 1.0, 2.0):
        scales = np.arange(1, 33, dtype=float) ** (-alpha / 2)  # eigenvalue k ~ k^-alpha
        z = rng.normal(size=(20000, 32)) * scales
        assert alpha_req(z) == pytest.approx(alpha, abs=0.1)
    assert alpha_req(np.ones((10, 4))) == float("inf")  # one direction left, or none: collapsed
