"""Evaluate a backbone (and the untrained encoder beside it) on a dataset's train and test splits."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score
from torch import nn

from icone.config import EvalConfig
from icone.data import Dataset
from icone.evaluate.embeddings import embed_samples
from icone.evaluate.metrics import cluster_occupancy, embedding_std, knn_predict, linear_probe, rankme, twonn_dimension
from icone.methods import Method

KEYS = (
    "knn_accuracy",
    "linear_accuracy",
    "linear_balanced_accuracy",
    "linear_macro_f1",
    "rankme",
    "intrinsic_dimension",
    "embedding_std",
)


def evaluate_features(
    train: torch.Tensor,
    train_labels: np.ndarray,
    test: torch.Tensor | None,
    test_labels: np.ndarray | None,
    config: EvalConfig,
) -> dict[str, Any]:
    """All metrics of frozen features; classification metrics only where labels exist."""
    result: dict[str, Any] = {k: None for k in KEYS}
    result["rankme"] = rankme(train)
    result["intrinsic_dimension"] = twonn_dimension(train)
    result["embedding_std"] = embedding_std(train)
    labelled = (
        (train_labels >= 0).all()
        and test is not None
        and test_labels is not None
        and len(test)
        and (test_labels >= 0).all()
    )
    if labelled and len(np.unique(train_labels)) > 1:
        predicted = knn_predict(train, train_labels, test, k=config.knn_k)
        result["knn_accuracy"] = float(accuracy_score(test_labels, predicted))
        result.update(linear_probe(train.numpy(), train_labels, test.numpy(), test_labels))
    return result


def evaluate_backbone(
    backbone: nn.Module, dataset: Dataset, config: EvalConfig, device: torch.device
) -> dict[str, Any]:
    train_split = dataset.train
    if len(train_split) > config.max_train_samples:
        rows = np.random.default_rng(0).choice(len(train_split), config.max_train_samples, replace=False)
        train_split = train_split.subset(np.sort(rows))
    train = embed_samples(backbone, train_split.samples, device)
    test = embed_samples(backbone, dataset.test.samples, device) if dataset.test is not None else None
    return evaluate_features(
        train, train_split.labels, test, dataset.test.labels if dataset.test is not None else None, config
    )


@torch.no_grad()
def occupancy_on_train(method: Method, dataset: Dataset, device: torch.device) -> dict[str, float]:
    """Cluster occupancy of a clustering method's assignments over the training set (``{}`` for other methods)."""
    if method.num_clusters is None:
        return {}
    chunks = dataset.train.samples.chunks(256)
    labels = torch.cat([method.cluster_assignments(torch.from_numpy(chunk).to(device)).cpu() for chunk in chunks])
    return cluster_occupancy(labels, int(method.num_clusters))


def format_table(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows ``(metric, untrained, trained)`` for printing."""
    baseline = result.get("baseline", {})
    rows = []
    for key in KEYS:
        value, before = result.get(key), baseline.get(key)
        if value is None and before is None:
            continue
        fmt = "{:.3f}" if key != "rankme" and key != "intrinsic_dimension" else "{:.1f}"
        rows.append((key, "-" if before is None else fmt.format(before), "-" if value is None else fmt.format(value)))
    return rows
