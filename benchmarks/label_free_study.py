"""Label-free scores of the cells of ``icone bench`` grids, against the labelled choice of the lr sweep.

    python benchmarks/label_free_study.py score GRID_DIR [GRID_DIR ...] --out FILE.jsonl
    python benchmarks/label_free_study.py summary FILE.jsonl [FILE.jsonl ...]
    python benchmarks/label_free_study.py methods GRID_DIR [GRID_DIR ...]

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
import math
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
    checkpoint["config"]["method_options"] = _current_options(checkpoint["config"])
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


CANDIDATES = ("icone", "excb", "moco", "byol", "dino")  # method=auto's default method_candidates


def _x1_cell(grid: Path, method: str) -> Path | None:
    found = sorted((grid / "cells" / "sweep").glob(f"{method}-b*-r1-s0-lr1"))
    return found[0] if found and (found[0] / "eval_validation.json").is_file() else None


def methods(args: argparse.Namespace) -> None:
    from icone import build
    from icone.config import build_config, load_yaml
    from icone.evaluate.label_free import label_free_scores
    from icone.export import method_from_checkpoint
    from icone.runs.tune import scoring_views
    from icone.runtime import Runtime
    from icone.training.checkpoint import load_checkpoint

    print("| grid | label-free pick: kNN | labelled pick: kNN | IConE: kNN | scores (retrieval, kNN) |")
    print("|---|---|---|---|---|")
    for grid in map(Path, args.grids):
        cells = {m: c for m in CANDIDATES if (c := _x1_cell(grid, m)) is not None}
        if "icone" not in cells:
            continue
        first = build_config(load_yaml(cells["icone"] / "config.yaml"))
        dataset, views = build.load_data(first), scoring_views(first)
        rows = {}
        for method, cell in cells.items():
            checkpoint = load_checkpoint(cell / "checkpoints" / "last.pt")
            checkpoint["config"]["method_options"] = _current_options(checkpoint["config"])
            backbone = method_from_checkpoint(checkpoint).evaluation_backbone()
            free = label_free_scores(backbone, dataset.train.samples, views, Runtime.resolve("cpu").device)
            knn = json.loads((cell / "eval_validation.json").read_text())["knn_accuracy"]
            rows[method] = (free["score"], knn)
        by_free = max(rows, key=lambda m: rows[m][0])
        by_knn = max(rows, key=lambda m: rows[m][1])
        shown = ", ".join(f"{m} {r:.3f} / {k:.3f}" for m, (r, k) in rows.items())
        print(f"| {grid.name} | {by_free}: {rows[by_free][1]:.3f} | {by_knn}: {rows[by_knn][1]:.3f} | "
              f"{rows['icone'][1]:.3f} | {shown} |", flush=True)  # fmt: skip


def _current_options(config: dict[str, Any]) -> dict[str, Any]:
    """The method options this version knows (the study's grids ran removed ones at neutral values)."""
    from dataclasses import fields

    from icone.methods import get_method

    known = {f.name for f in fields(get_method(config["method"]).Options)}
    return {k: v for k, v in config.get("method_options", {}).items() if k in known}


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


RULES = {"label-free": "score", "retrieval, ties to x1": "rule", "first score": "rank_x_agreement"}


def _pick(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The row with the best ``key`` (a tie: the factor nearest 1); x1's for ``"x1"``; for ``"rule"`` the
    variant we measured and did not keep: retrievals within one binomial standard error of the best are
    ties, won by the factor nearest 1."""
    if key == "x1":
        return next(r for r in rows if _factor(r["cell"]) == 1)
    if key == "rule":
        top = max(r["score"] for r in rows)
        noise = math.sqrt(top * (1 - top) / (2 * rows[0].get("scored_samples", 1024)))
        return min((r for r in rows if r["score"] >= top - noise), key=lambda r: abs(math.log(_factor(r["cell"]))))
    return max(rows, key=lambda r: (r[key], -abs(math.log(_factor(r["cell"])))))


def summary(args: argparse.Namespace) -> None:
    records = [r for r in _read(args.files) if r["sweep"] and r.get("knn") is not None and r["status"] == "ok"]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((Path(r["grid"]).name, r["method"], r["batch_size"]), []).append(r)
    rules = {**RULES, "x1": "x1"}
    print("| grid | method | B | labelled pick: kNN | " + " | ".join(f"{name} pick: kNN" for name in rules) + " |")
    print("|---|---|---|---|" + "---|" * len(rules))
    within = dict.fromkeys(rules, 0)
    gaps: dict[str, list[float]] = {name: [] for name in rules}
    for (grid, method, batch), rows in sorted(groups.items()):
        best = _pick(rows, "knn")
        cells = []
        for name, key in rules.items():
            pick = _pick(rows, key)
            gap = best["knn"] - pick["knn"]
            within[name] += gap <= 0.02 + 1e-9
            gaps[name].append(gap)
            text = f"x{_factor(pick['cell']):g}: {pick['knn']:.3f}"
            cells.append(f"**{text}**" if gap <= 0.02 + 1e-9 else text)
        print(
            f"| {grid} | {method} | {batch} | x{_factor(best['cell']):g}: {best['knn']:.3f} | "
            + " | ".join(cells)
            + " |"
        )
    print()
    for name in rules:
        mean = sum(gaps[name]) / max(len(gaps[name]), 1)
        print(
            f"{name}: within 2 kNN points of the labelled pick in {within[name]} of {len(groups)} cells, mean gap {mean:.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    s = commands.add_parser("score")
    s.add_argument("grids", nargs="+")
    s.add_argument("--out", required=True)
    m = commands.add_parser("summary")
    m.add_argument("files", nargs="+", type=Path)
    c = commands.add_parser("methods")
    c.add_argument("grids", nargs="+")
    args = parser.parse_args()
    {"score": score, "summary": summary, "methods": methods}[args.command](args)


if __name__ == "__main__":
    main()
