"""Run folders and what the CLI does with them: train into one, evaluate one, embed a source with one.

Exports live in :mod:`icone.export`.
"""

from icone.export import export_run
from icone.runs.embed import embed_run
from icone.runs.evaluate import evaluate_method, evaluate_run
from icone.runs.train import RESUMABLE, prepare_training, resumed_config, train_run

__all__ = [
    "RESUMABLE",
    "embed_run",
    "evaluate_method",
    "evaluate_run",
    "export_run",
    "prepare_training",
    "resumed_config",
    "train_run",
]
