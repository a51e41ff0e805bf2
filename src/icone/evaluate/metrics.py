"""Metrics of frozen embeddings that show collapse or its absence."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from icone.stats import as_float_tensor, cluster_occupancy, embedding_std, rankme

__all__ = [
    "cluster_occupancy",
    "embedding_std",
    "knn_predict",
    "linear_probe",
    "linear_probe_predictions",
    "probe_scores",
    "rankme",
    "twonn_dimension",
]


def twonn_dimension(embeddings: np.ndarray | torch.Tensor, max_points: int = 5000, seed: int = 0) -> float:
    """TwoNN intrinsic dimension (Facco et al., Sci. Rep. 2017) by maximum likelihood.

    ``mu_i = r2_i / r1_i`` (second over first nearest-neighbour distance) is Pareto with exponent
    ``d``; the estimate is ``(n - 1) / sum_i log mu_i`` (Denti et al.'s unbiased form), on
    L2-normalised embeddings, skipping points with duplicate neighbours. 0 when undefined.
    """
    z = F.normalize(as_float_tensor(embeddings), dim=1)
    if len(z) > max_points:
        z = z[torch.from_numpy(np.random.default_rng(seed).choice(len(z), max_points, replace=False))]
    if len(z) < 3:
        return 0.0
    dist = torch.cdist(z.double(), z.double())
    dist.fill_diagonal_(float("inf"))
    r = dist.topk(2, dim=1, largest=False).values
    keep = r[:, 0] > 1e-9
    mu = r[keep, 1] / r[keep, 0]
    logs = mu.log()
    if len(logs) < 3 or float(logs.sum()) <= 0:
        return 0.0
    return float((len(logs) - 1) / logs.sum())


def knn_predict(
    train: np.ndarray | torch.Tensor,
    train_labels: np.ndarray,
    test: np.ndarray | torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
) -> np.ndarray:
    """Weighted kNN on cosine similarity (Wu et al., CVPR 2018; DINO's evaluation).

    Each of the ``k`` most similar training samples votes for its class with weight ``exp(s / T)``.
    """
    train_n, test_n = F.normalize(as_float_tensor(train), dim=1), F.normalize(as_float_tensor(test), dim=1)
    labels = torch.as_tensor(train_labels).long()
    classes = int(labels.max()) + 1
    k = min(k, len(train_n))
    predictions = []
    for chunk in test_n.split(1024):
        sims, idx = (chunk @ train_n.t()).topk(k, dim=1)
        votes = torch.zeros(len(chunk), classes).scatter_add_(1, labels[idx], (sims / temperature).exp())
        predictions.append(votes.argmax(1))
    return torch.cat(predictions).numpy()


def linear_probe_predictions(
    train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, seed: int = 0
) -> np.ndarray:
    """Predictions of a logistic regression fitted on standardised frozen features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    probe.fit(np.asarray(train, np.float64), train_labels)
    return probe.predict(np.asarray(test, np.float64))


def linear_probe(
    train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray, seed: int = 0
) -> dict[str, float]:
    """Logistic regression on standardised frozen features: accuracy, balanced accuracy, macro-F1."""
    if len(np.unique(train_labels)) < 2:
        return {}
    return probe_scores(test_labels, linear_probe_predictions(train, train_labels, test, seed))


def probe_scores(test_labels: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy and macro-F1 of a probe's predictions."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    return {
        "linear_accuracy": float(accuracy_score(test_labels, predicted)),
        "linear_balanced_accuracy": float(balanced_accuracy_score(test_labels, predicted)),
        "linear_macro_f1": float(f1_score(test_labels, predicted, average="macro")),
    }
