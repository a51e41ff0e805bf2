"""Evaluate a backbone (and the untrained encoder beside it) on a dataset's train and test splits."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from icone.config import EvalConfig
from icone.data import Dataset
from icone.evaluate.embeddings import embed_samples
from icone.evaluate.few_label import few_label_metrics, per_class_recall
from icone.evaluate.metrics import (
    cluster_occupancy,
    embedding_std,
    knn_predict,
    linear_probe_predictions,
    probe_scores,
    rankme,
    twonn_dimension,
)
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


@dataclass
class Features:
    """Frozen features of a dataset's training split (up to ``eval.max_train_samples``) and test split."""

    train: torch.Tensor
    train_labels: np.ndarray
    test: torch.Tensor | None
    test_labels: np.ndarray | None

    @property
    def labelled(self) -> bool:
        """Labels on the whole test split and on training samples of at least two classes (training samples
        without a label, e.g. patches of an ignored class only, are left out of kNN and the probe)."""
        test_ok = (
            self.test is not None and self.test_labels is not None and len(self.test) and (self.test_labels >= 0).all()
        )
        known = self.train_labels[self.train_labels >= 0]
        return bool(test_ok and len(np.unique(known)) > 1)

    def one_class_test(self) -> bool:
        """A labelled test split holding a single class: its accuracies do not tell encoders apart."""
        return self.labelled and len(np.unique(self.test_labels)) == 1


def embed_dataset(backbone: nn.Module, dataset: Dataset, config: EvalConfig, device: torch.device) -> Features:
    train_split = dataset.train
    if len(train_split) > config.max_train_samples:
        rows = np.random.default_rng(0).choice(len(train_split), config.max_train_samples, replace=False)
        train_split = train_split.subset(np.sort(rows))
    train = embed_samples(backbone, train_split.samples, device)
    test = embed_samples(backbone, dataset.test.samples, device) if dataset.test is not None else None
    return Features(train, train_split.labels, test, dataset.test.labels if dataset.test is not None else None)


def evaluate_features(features: Features, config: EvalConfig) -> dict[str, Any]:
    """All metrics of frozen features; classification metrics (and ``per_class_recall`` of the
    full-label probe, few-label budgets when ``eval.label_fractions`` / ``eval.shots`` ask) only where labels exist."""
    result: dict[str, Any] = {k: None for k in KEYS}
    result["rankme"] = rankme(features.train)
    result["intrinsic_dimension"] = twonn_dimension(features.train)
    result["embedding_std"] = embedding_std(features.train)
    if not features.labelled:
        return result
    with warnings.catch_warnings():  # scikit-learn's notes on a one-class test split: stated once by the caller
        warnings.simplefilter("ignore", UserWarning)
        result.update(_classification(features, config))
    return result


def _classification(features: Features, config: EvalConfig) -> dict[str, Any]:
    """kNN and linear-probe scores, per-class recall, confusion matrix and few-label budgets."""
    result: dict[str, Any] = {}
    known = features.train_labels >= 0
    train, train_labels, test = features.train[torch.from_numpy(known)], features.train_labels[known], features.test
    predicted = knn_predict(train, train_labels, test, k=config.knn_k)
    result["knn_accuracy"] = float(np.mean(np.asarray(predicted) == features.test_labels))  # no sklearn import to train
    probed = linear_probe_predictions(train.numpy(), train_labels, test.numpy())
    result.update(probe_scores(features.test_labels, probed))
    classes = int(max(train_labels.max(), features.test_labels.max())) + 1
    result["per_class_recall"], result["confusion_matrix"] = per_class_recall(features.test_labels, probed, classes)
    result["confusion_matrix"] = result["confusion_matrix"].tolist()
    if config.label_fractions or config.shots:
        result["few_label"] = few_label_metrics(
            train, train_labels, test, features.test_labels, config.label_fractions, config.shots,
            config.repeats, knn_k=config.knn_k,
        )  # fmt: skip
    return result


def evaluate_backbone(
    backbone: nn.Module, dataset: Dataset, config: EvalConfig, device: torch.device
) -> dict[str, Any]:
    return evaluate_features(embed_dataset(backbone, dataset, config, device), config)


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
