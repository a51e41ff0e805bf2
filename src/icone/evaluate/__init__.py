"""Evaluation of frozen embeddings: kNN, linear probe, RankMe, TwoNN, cluster occupancy, plots."""

from icone.evaluate.embeddings import embed_samples
from icone.evaluate.metrics import cluster_occupancy, embedding_std, knn_predict, linear_probe, rankme, twonn_dimension

__all__ = [
    "cluster_occupancy",
    "embed_samples",
    "embedding_std",
    "knn_predict",
    "linear_probe",
    "rankme",
    "twonn_dimension",
]
