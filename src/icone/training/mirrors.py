"""Mirrors of ``metrics.jsonl`` (``train.logger``): TensorBoard and MLflow.

Each gets the run's config when it opens (TensorBoard: as text and hparams; MLflow: as params), every
record's numbers as scalars named ``<kind>/<field>``, and when the run closes what it left in the run
folder (TensorBoard: the plots as images; MLflow: plots, ``backbone.pt``, ``eval.json`` and
``config.yaml`` as artifacts). MLflow writes to ``MLFLOW_TRACKING_URI`` when set, else to a SQLite
file in the run folder (``RUN/mlflow.db``, artifacts in ``RUN/mlartifacts``): MLflow 3 refuses the
plain-folder store.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from icone.errors import UserError

ARTIFACTS = ("backbone.pt", "eval.json", "config.yaml")


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a record, but its bookkeeping (kind, epoch, step, time)."""
    out = {}
    for key, value in record.items():
        if key in ("kind", "epoch", "step", "time") or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"epochs": 3}}`` -> ``{"train.epochs": 3}`` (method options as ``method_options.key``)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _hparam(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool)) else json.dumps(value)


class TensorBoardMirror:
    """Scalars in ``RUN/tensorboard`` (``tensorboard --logdir RUN/tensorboard``); the config as text and
    hparams; the final plots as images."""

    def __init__(self, run_dir: Path, config: dict[str, Any] | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError(
                "train.logger=tensorboard needs the tensorboard package: pip install 'icone[tensorboard]'"
            ) from None
        self.run_dir, self.writer_class = run_dir, SummaryWriter
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        if config:
            text = yaml.safe_dump(config, sort_keys=False)
            self.writer.add_text("config", "\n".join("    " + line for line in text.splitlines()))  # markdown code
            self._hparams(config)

    def _hparams(self, config: dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        values = {k: _hparam(v) for k, v in flat_config(config).items() if v is not None}
        for summary in hparams(values, {"eval/knn_accuracy": float("nan")}):
            self.writer.file_writer.add_summary(summary)

    def resume_at(self, step: int) -> None:
        """Hide what an interrupted run logged after its checkpoint (``purge_step``): a resumed run logs it again."""
        self.writer.close()
        self.writer = self.writer_class(log_dir=str(self.run_dir / "tensorboard"), purge_step=step + 1)

    def write(self, record: dict[str, Any]) -> None:
        for key, value in scalars(record).items():
            self.writer.add_scalar(
                f"{record.get('kind', 'record')}/{key}", value, global_step=int(record.get("step", 0))
            )
        self.writer.flush()

    def close(self, step: int = 0) -> None:
        from PIL import Image

        for path in sorted((self.run_dir / "plots").glob("*.png")):
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
            self.writer.add_image(f"plots/{path.stem}", pixels, global_step=step, dataformats="HWC")
        self.writer.close()


class MLflowMirror:
    """An MLflow run named after the run folder: params, metrics, and the run's files as artifacts."""

    def __init__(self, run_dir: Path, config: dict[str, Any] | None = None) -> None:
        try:
            import mlflow
        except ImportError:
            raise UserError("train.logger=mlflow needs the mlflow package: pip install 'icone[mlflow]'") from None
        self.mlflow, self.run_dir = mlflow, run_dir
        for name in ("mlflow", "alembic"):  # their notes on creating the database are not the user's business
            logging.getLogger(name).setLevel(logging.WARNING)
        experiment = None
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            experiment = self._local_store(run_dir)
        self.run = mlflow.start_run(run_name=run_dir.name, experiment_id=experiment)
        if config:
            params = {k: str(v)[:6000] for k, v in flat_config(config).items()}
            for start in range(0, len(params), 100):  # MLflow takes at most 100 params a call
                mlflow.log_params(dict(list(params.items())[start : start + 100]))

    def _local_store(self, run_dir: Path) -> str:
        """A SQLite store in the run folder (artifacts beside it); the id of its ``icone`` experiment."""
        try:
            import sqlalchemy  # noqa: F401
        except ImportError:
            raise UserError(
                "train.logger=mlflow writes to a SQLite store in the run folder, which needs sqlalchemy: "
                "pip install 'icone[mlflow]' (or set MLFLOW_TRACKING_URI to a tracking server)"
            ) from None
        uri = f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
        self.mlflow.set_tracking_uri(uri)
        client = self.mlflow.MlflowClient(uri)
        found = client.get_experiment_by_name("icone")
        if found is not None:
            return found.experiment_id
        return client.create_experiment("icone", artifact_location=(run_dir / "mlartifacts").resolve().as_uri())

    def write(self, record: dict[str, Any]) -> None:
        values = {f"{record.get('kind', 'record')}/{k}": v for k, v in scalars(record).items()}
        if values:
            self.mlflow.log_metrics(values, step=int(record.get("step", 0)))

    def close(self, step: int = 0) -> None:
        for name in ARTIFACTS:
            if (self.run_dir / name).is_file():
                self.mlflow.log_artifact(str(self.run_dir / name))
        if (self.run_dir / "plots").is_dir():
            self.mlflow.log_artifacts(str(self.run_dir / "plots"), artifact_path="plots")
        self.mlflow.end_run()


MIRRORS = {"tensorboard": TensorBoardMirror, "mlflow": MLflowMirror}
