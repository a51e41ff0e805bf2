"""Evaluation metrics against known answers."""

import math

import numpy as np
import pytest
import torch

from icone.evaluate.metrics import cluster_occupancy, embedding_std, knn_predict, linear_probe, rankme, twonn_dimension


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
