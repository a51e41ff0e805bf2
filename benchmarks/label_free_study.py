"""Label-free scores of the cells of ``icone bench`` grids, against the labelled choice of the lr sweep.

    python benchmarks/label_free_study.py score GRID_DIR [GRID_DIR ...] --out FILE.jsonl
    python benchmarks/label_free_study.py summary FILE.jsonl [FILE.jsonl ...]

``score`` computes, for every finished cell of each grid (the sweep's cells included), the label-free
scores of ``icone.evaluate.label_free`` on the evaluated backbone (RankMe, view agreement, alpha-ReQ,
the score), beside the cell's kNN on the validation split (sweep cells) or the test split, one JSON
line per cell (cells already in the file are skipped). ``summary`` prints, per grid, method and
batch size, the lr factor the labelled validation kNN picks and the one the label-free score picks,
with the kNN each gives and the gap.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _cell_record(grid: Path, cell: Path) -> dict[str, Any] | None:
    from icone import build
    from icone.config import build_config
    from icone.evaluate.label_free import label_free_scores
    from icone.export import method_from_checkpoint
    from icone.runs.tune import scoring_views
    from icone.runtime import Runtime
    from icone.training.checkpoint import load_checkpoint

    bench = json.loads((cell / "bench.json").read_text()) if (cell / "bench.json").is_file() else {}
    scores = cell / ("eval_validation.json" if "sweep" in cell.parts else "eval.json")
    if not scores.is_file() or not (cell / "checkpoints" / "last.pt").is_file():
        return None
    checkpoint = load_checkpoint(cell / "checkpoints" / "last.pt")
    config = build_config(checkpoint["config"])
    backbone = method_from_checkpoint(checkpoint).evaluation_backbone()
    dataset = build.load_data(config)
    device = Runtime.resolve("cpu").device
    free = label_free_scores(backbone, dataset.train.samples, scoring_views(config), device)
    labelled = json.loads(scores.read_text())
    return {
        "grid": str(grid), "cell": str(cell.relative_to(grid / "cells")), "method": config.method,
        "batch_size": config.train.batch_size, "seed": config.train.seed, "sweep": "sweep" in cell.parts,
        "lr": config.optim.lr, "status": bench.get("status", "ok"), "knn": labelled.get("knn_accuracy"),
        "linear": labelled.get("linear_accuracy"), **free,
    }  # fmt: skip


def score(args: argparse.Namespace) -> None:
    out = Path(args.out)
    done = {(r["grid"], r["cell"]) for r in _read([out])} if out.is_file() else set()
    for grid in map(Path, args.grids):
        for cell in sorted(p for p in (grid / "cells").rglob("*") if (p / "config.yaml").is_file()):
            if (str(grid), str(cell.relative_to(grid / "cells"))) in done:
                continue
            record = _cell_record(grid, cell)
            if record is not None:
                print(json.dumps(record), flush=True)
                with out.open("a") as handle:
                    handle.write(json.dumps(record) + "\n")


def _read(files: list[Path]) -> list[dict[str, Any]]:
    return [json.loads(line) for f in files for line in Path(f).read_text().splitlines() if line.strip()]


def _factor(cell: str) -> float:
    return float(cell.rsplit("-lr", 1)[1])


def summary(args: argparse.Namespace) -> None:
    records = [r for r in _read(args.files) if r["sweep"] and r.get("knn") is not None]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((Path(r["grid"]).name, r["method"], r["batch_size"]), []).append(r)
    print("| grid | method | B | labelled pick | its kNN | label-free pick | its kNN | gap | scores (factor: score) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (grid, method, batch), rows in sorted(groups.items()):
        by_knn = max(rows, key=lambda r: (r["knn"], -abs(_factor(r["cell"]) - 1)))
        by_free = max(rows, key=lambda r: (r["score"], -abs(_factor(r["cell"]) - 1)))
        scores = ", ".join(
            f"x{_factor(r['cell']):g}: {r['score']:.2f}" for r in sorted(rows, key=lambda r: _factor(r["cell"]))
        )
        gap = by_knn["knn"] - by_free["knn"]
        print(f"| {grid} | {method} | {batch} | x{_factor(by_knn['cell']):g} | {by_knn['knn']:.3f} | "
              f"x{_factor(by_free['cell']):g} | {by_free['knn']:.3f} | {gap:.3f} | {scores} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    s = commands.add_parser("score")
    s.add_argument("grids", nargs="+")
    s.add_argument("--out", required=True)
    m = commands.add_parser("summary")
    m.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args()
    score(args) if args.command == "score" else summary(args)


if __name__ == "__main__":
    main()
