"""``metrics.jsonl`` (the ground truth) and its mirrors in TensorBoard or MLflow (``train.logger``).

Every record is one JSON object with ``kind`` (``step``, ``epoch``, ``resume``, ``eval``), ``epoch``
and ``step``; a mirror gets each numeric field as a scalar named ``<kind>/<field>`` at ``step``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from icone import distributed
from icone.errors import UserError
from icone.files import atomic_write_text, disk_full


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a record, but its bookkeeping (kind, epoch, step, time)."""
    out = {}
    for key, value in record.items():
        if key in ("kind", "epoch", "step", "time") or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


class TensorBoardMirror:
    """Scalars in ``RUN/tensorboard`` (``tensorboard --logdir RUN/tensorboard``)."""

    def __init__(self, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError(
                "train.logger=tensorboard needs the tensorboard package: pip install 'icone[tensorboard]'"
            ) from None
        self.writer_class, self.folder = SummaryWriter, str(run_dir / "tensorboard")
        self.writer = SummaryWriter(log_dir=self.folder)

    def resume_at(self, step: int) -> None:
        """Hide what an interrupted run logged after its checkpoint (``purge_step``): a resumed run logs it again."""
        self.writer.close()
        self.writer = self.writer_class(log_dir=self.folder, purge_step=step + 1)

    def write(self, record: dict[str, Any]) -> None:
        for key, value in scalars(record).items():
            self.writer.add_scalar(
                f"{record.get('kind', 'record')}/{key}", value, global_step=int(record.get("step", 0))
            )
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MLflowMirror:
    """Metrics in an MLflow run (``MLFLOW_TRACKING_URI``, or ``RUN/mlruns``), named after the run folder."""

    def __init__(self, run_dir: Path) -> None:
        try:
            import mlflow
        except ImportError:
            raise UserError("train.logger=mlflow needs the mlflow package: pip install 'icone[mlflow]'") from None
        import os

        self.mlflow = mlflow
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            mlflow.set_tracking_uri((run_dir / "mlruns").resolve().as_uri())
        self.run = mlflow.start_run(run_name=run_dir.name)

    def write(self, record: dict[str, Any]) -> None:
        values = {f"{record.get('kind', 'record')}/{k}": v for k, v in scalars(record).items()}
        if values:
            self.mlflow.log_metrics(values, step=int(record.get("step", 0)))

    def close(self) -> None:
        self.mlflow.end_run()


MIRRORS = {"tensorboard": TensorBoardMirror, "mlflow": MLflowMirror}


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl`` and mirrors it (main process only)."""

    def __init__(self, path: Path, logger: str = "none") -> None:
        self.path = path
        self.mirror = MIRRORS[logger](path.parent) if logger != "none" and distributed.is_main_process() else None

    def write(self, record: dict[str, Any]) -> None:
        if not distributed.is_main_process():
            return
        try:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
        except OSError as err:
            raise disk_full(err, self.path) or err from None
        if self.mirror is not None:
            self.mirror.write(record)

    def close(self) -> None:
        if self.mirror is not None:
            self.mirror.close()
            self.mirror = None

    def resume_at(self, epoch: int, step: int) -> None:
        """Drop the records a resumed run will write again (after its checkpoint), then mark the resume."""
        if not distributed.is_main_process():
            return
        kept = []
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill
                if int(record.get("step", 0)) <= step:
                    kept.append(line)
        kept.append(json.dumps({"kind": "resume", "epoch": epoch, "step": step, "time": time.time()}))
        atomic_write_text(self.path, "\n".join(kept) + "\n")
        if hasattr(self.mirror, "resume_at"):
            self.mirror.resume_at(step)
