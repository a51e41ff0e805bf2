"""Short IConE runs on digits over a grid of settings: kNN and RankMe after training.

Usage: python benchmarks/icone_sweep.py BATCH EPOCHS "NAME:KEY=VALUE;KEY=VALUE" ...
Each NAME is one run with those overrides (on top of the shipped defaults); prints one JSON line
per run and appends it to benchmarks/results/icone_sweep.jsonl.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from icone.config import build_config
from icone.runs import train_run


def main() -> None:
    batch, epochs, specs = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    for spec in specs:
        name, _, items = spec.partition(":")
        overrides = [i for i in items.split(";") if i]
        config = build_config(None, ["method=icone", f"train.batch_size={batch}", f"train.epochs={epochs}", *overrides])
        started = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            summary = train_run(config, out=Path(tmp) / "run", progress=False)
        result = summary["eval"]
        record = {
            "name": name,
            "batch_size": batch,
            "epochs": epochs,
            "overrides": overrides,
            "knn": round(result["knn_accuracy"], 4),
            "knn_untrained": round(result["baseline"]["knn_accuracy"], 4),
            "linear": round(result["linear_accuracy"], 4),
            "rankme": round(result["rankme"], 2),
            "rankme_untrained": round(result["baseline"]["rankme"], 2),
            "seconds": round(time.time() - started, 1),
            "date": time.strftime("%Y-%m-%d"),
        }
        print(json.dumps(record), flush=True)
        with (out / "icone_sweep.jsonl").open("a") as handle:
            handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
