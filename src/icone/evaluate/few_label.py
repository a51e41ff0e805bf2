"""Few-label evaluation: how good are frozen features with 1% of the labels, or 5 per class?

For each label budget, ``repeats`` stratified draws of the training labels (each class
represented in proportion, at least one sample; or exactly ``shots`` per class), a class-balanced
linear probe and a kNN classifier trained on the drawn samples only, scored on the whole test
split; mean and sample std over the draws. Draws are reproducible by seed and the same for the
trained and the untrained encoder.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from icone.errors import UserError
from icone.evaluate.metrics import knn_predict


def check_budgets(fractions: list[float], shots: list[int], labels: np.ndarray) -> None:
    """Fractions in (0, 1]; shots no more than the smallest class has."""
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
        raise UserError(f"--label-fractions must lie in (0, 1], got {bad[0]:g}; e.g. --label-fractions 0.01,0.1,1")
    if shots:
        smallest = int(np.bincount(labels[labels >= 0]).min())
        if max(shots) > smallest:
            raise UserError(
                f"--shots {max(shots)} is more than the smallest class has ({smallest} training samples); use --shots {smallest} or less"
            )
        if min(shots) < 1:
            raise UserError(f"--shots must be at least 1, got {min(shots)}")


def stratified_draw(
    labels: np.ndarray, rng: np.random.Generator, fraction: float | None = None, shots: int | None = None
) -> np.ndarray:
    """Sorted rows of a draw: per class ``max(1, round(fraction x n_c))`` samples, or ``shots`` samples."""
    rows = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        take = shots if shots is not None else max(1, int(round(float(fraction) * len(members))))
        rows.append(rng.choice(members, size=min(take, len(members)), replace=False))
    return np.sort(np.concatenate(rows))


def balanced_probe(train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, seed: int = 0) -> np.ndarray:
    """Predictions of a class-balanced logistic regression on standardised features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(
        StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced", random_state=seed)
    )
    probe.fit(np.asarray(train, np.float64), train_labels)
    return probe.predict(np.asarray(test, np.float64))


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}


def few_label_metrics(
    train: torch.Tensor, train_labels: np.ndarray, test: torch.Tensor, test_labels: np.ndarray,
    fractions: list[float], shots: list[int], repeats: int, knn_k: int = 20, seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """``{"fractions": {"0.01": ...}, "shots": {"5": ...}}``, each with ``linear_balanced_accuracy`` and
    ``knn_accuracy`` as ``{"mean", "std"}``, ``labels_used`` (per draw) and ``repeats``."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    train_np, test_np = train.numpy(), test.numpy()
    result: dict[str, Any] = {"fractions": {}, "shots": {}}
    budgets = [("fractions", f"{f:g}", {"fraction": f}) for f in fractions] + [
        ("shots", str(k), {"shots": k}) for k in shots
    ]
    for group, key, budget in budgets:
        rng = np.random.default_rng(seed)
        linear, knn, used = [], [], 0
        for _ in range(repeats if budget.get("fraction") != 1 else 1):  # all labels: one draw is every draw
            rows = stratified_draw(train_labels, rng, **budget)
            predicted = balanced_probe(train_np[rows], train_labels[rows], test_np, seed)
            linear.append(balanced_accuracy_score(test_labels, predicted))
            neighbours = knn_predict(train_np[rows], train_labels[rows], test_np, k=min(knn_k, len(rows)))
            knn.append(accuracy_score(test_labels, neighbours))
            used = len(rows)
        result[group][key] = {
            "linear_balanced_accuracy": _mean_std(linear), "knn_accuracy": _mean_std(knn), "labels_used": used, "repeats": len(linear),
        }  # fmt: skip
    return result


def per_class_recall(
    test_labels: np.ndarray, predicted: np.ndarray, num_classes: int
) -> tuple[list[float], np.ndarray]:
    """Recall of each class and the confusion matrix (rows: true class, columns: predicted)."""
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(test_labels, predicted, labels=list(range(num_classes)))
    totals = matrix.sum(axis=1)
    recall = [float(matrix[c, c] / totals[c]) if totals[c] else 0.0 for c in range(num_classes)]
    return recall, matrix
