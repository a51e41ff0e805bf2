"""``metrics.jsonl`` (the ground truth) and its mirrors in TensorBoard or MLflow (``train.logger``;
:mod:`icone.training.mirrors`).

Every record is one JSON object with ``kind`` (``step``, ``epoch``, ``resume``, ``eval``), ``epoch``
and ``step``; a mirror gets each numeric field as a scalar named ``<kind>/<field>`` at ``step``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from icone import distributed
from icone.files import atomic_write_text, disk_full
from icone.training.mirrors import MIRRORS, scalars

__all__ = ["MIRRORS", "MetricsLog", "scalars"]


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl`` and mirrors it (main process only)."""

    def __init__(self, path: Path, logger: str = "none", config: dict[str, Any] | None = None) -> None:
        self.path, self.last_step = path, 0
        main = distributed.is_main_process()
        self.mirror = MIRRORS[logger](path.parent, config) if logger != "none" and main else None

    def write(self, record: dict[str, Any]) -> None:
        if not distributed.is_main_process():
            return
        try:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
        except OSError as err:
            raise disk_full(err, self.path) or err from None
        self.last_step = int(record.get("step", self.last_step))
        if self.mirror is not None:
            self.mirror.write(record)

    def close(self) -> None:
        """Close the mirror, handing it what the run left (plots, backbone.pt)."""
        if self.mirror is not None:
            self.mirror.close(self.last_step)
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
