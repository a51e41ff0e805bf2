"""ExCB small-batch study: train ExCB over batch sizes and seeds, evaluate student and teacher.

Usage::

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/excb_study.py NAME \
        --data digits --batch-sizes 1,2,4,8,64 --seeds 0,1,2 --epochs 10 [KEY=VALUE ...]

Every run uses the bench's setting (``smallcnn``, width 16, ``model.norm=group``) plus the given
overrides, trains with ``eval.after_train=false`` and is then evaluated here: the student's and the
teacher's backbone (kNN, linear probe, RankMe, ...) beside the untrained encoder, the final
teacher's cluster occupancy on the un-augmented training set, and the training-time occupancy
and step health of the last epoch from ``metrics.jsonl``. One JSON line per run is appended to
``benchmarks/results/excb-study/NAME.jsonl``; ``--summary`` prints a table of a file's runs
(mean ± sample std over seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from icone.build import build_method, eval_options, load_data
from icone.config import build_config
from icone.evaluate.report import evaluate_backbone, occupancy_on_train
from icone.export import method_from_checkpoint
from icone.methods.base import HEALTH_PREFIX
from icone.nets import RunningNorm
from icone.runs import train_run
from icone.training.checkpoint import load_checkpoint

RESULTS = Path(__file__).parent / "results" / "excb-study"
BENCH = ["method=excb", "model.backbone=smallcnn", "model.width=16", "model.norm=group"]
STEP_KEYS = (
    "balance_changed_labels",
    "teacher_confidence",
    "teacher_student_agreement",
    "teacher_distinct_labels",
    "size_momentum",
)
EVAL_KEYS = ("knn_accuracy", "linear_accuracy", "rankme", "intrinsic_dimension", "embedding_std")


def _round(values: dict[str, Any], keys: tuple[str, ...] = EVAL_KEYS) -> dict[str, Any]:
    return {k: (round(float(values[k]), 4) if values.get(k) is not None else None) for k in keys}


def _last_epoch_health(run_dir: Path) -> dict[str, Any]:
    """Training-time occupancy of the last epoch and the mean step metrics of its logged steps."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    last = epochs[-1]["epoch"]
    steps = [r for r in records if r["kind"] == "step" and r["epoch"] == last]
    occupancy = {
        k: epochs[-1].get(f"{HEALTH_PREFIX}{k}", epochs[-1].get(k))
        for k in ("empty_cluster_fraction", "largest_cluster_share", "cluster_entropy")
    }
    health = {
        f"train_{k}": round(float(v), 4) for k, v in occupancy.items() if v is not None
    }  # health/ since the method contract
    health["train_monitor_rankme"] = round(float(epochs[-1].get("monitor_rankme", float("nan"))), 3)
    for key in STEP_KEYS:
        vals = [float(r[key]) for r in steps if key in r]
        if vals:
            health[f"last_epoch_{key}"] = round(statistics.fmean(vals), 5)
    return health


def run_one(
    name: str, data: str, batch: int, seed: int, epochs: int, overrides: list[str], keep: Path | None
) -> dict[str, Any]:
    config = build_config(
        None,
        [
            *BENCH,
            f"data.source={data}",
            f"train.batch_size={batch}",
            f"train.epochs={epochs}",
            f"train.seed={seed}",
            "eval.after_train=false",
            *overrides,
        ],
    )
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = (keep / f"{name}-{data}-b{batch}-s{seed}") if keep else Path(tmp) / "run"
        summary = train_run(config, out=run_dir, progress=False, overwrite=True)
        train_seconds = time.time() - started
        checkpoint = load_checkpoint(run_dir / "checkpoints" / "last.pt")
        method = method_from_checkpoint(checkpoint)
        resolved = build_config(checkpoint["config"])
        dataset, options = load_data(resolved), eval_options(resolved)
        device = torch.device("cpu")
        student = evaluate_backbone(method.backbone, dataset, options, device)
        teacher = evaluate_backbone(method.teacher["backbone"], dataset, options, device)
        untrained = evaluate_backbone(
            build_method(resolved, num_instances=len(dataset.train)).backbone, dataset, options, device
        )
        occupancy = occupancy_on_train(method, dataset, device)
        health = _last_epoch_health(run_dir)
        statistics_used = sorted(
            {"batch" if bool(m.batch_statistics) else "running" for m in method.modules() if isinstance(m, RunningNorm)}
        )
    opts = resolved.method_options
    record = {
        "name": name,
        "data": data,
        "batch_size": batch,
        "seed": seed,
        "epochs": epochs,
        "steps": summary["steps"],
        "overrides": overrides,
        "resolved": {
            k: opts.get(k) for k in ("num_clusters", "head_norm", "predictor_norm", "size_momentum", "crop_schedule")
        },
        "num_clusters": int(method.num_clusters),
        "head_statistics": "/".join(statistics_used) or None,  # what head_norm=auto (or running) used in training
        "lr": resolved.optim.lr,
        "train_seconds": round(train_seconds, 1),
        "seconds": round(time.time() - started, 1),
        "student": _round(student),
        "teacher": _round(teacher),
        "untrained": _round(untrained),
        "final_teacher_empty_cluster_fraction": round(occupancy.get("empty_cluster_fraction", float("nan")), 4),
        "final_teacher_largest_cluster_share": round(occupancy.get("largest_cluster_share", float("nan")), 4),
        **health,
        "code": os.environ.get("EXCB_STUDY_CODE", ""),  # the commit the run was made with
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    return record


def _fmt(values: list[float], digits: int) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _heads(record: dict[str, Any]) -> str:
    """The head statistics a run trained with: recorded, or (older records) read from its options."""
    if record.get("head_statistics"):
        return record["head_statistics"]
    norm = record["resolved"].get("head_norm")
    if norm != "auto":
        return str(norm)
    threshold = next((int(o.split("=", 1)[1]) for o in record["overrides"] if o.startswith("excb.auto_batch_size=")), 8)
    return "batch (auto)" if record["batch_size"] >= threshold else "running (auto)"  # one process


COLUMNS = (
    "name | B | seeds | heads | kNN teacher | linear teacher | RankMe teacher | kNN student | RankMe student "
    "| kNN untrained | linear untrained | RankMe untrained | empty (train, last epoch) | empty (final teacher) "
    "| changed labels | train s"
)


def _row(name: str, batch: int, runs: list[dict[str, Any]]) -> str:
    def col(part: str, key: str, digits: int = 3) -> str:
        return _fmt([r[part][key] for r in runs if r[part].get(key) is not None], digits)

    def top(key: str, digits: int = 3) -> str:
        return _fmt([r[key] for r in runs if r.get(key) is not None], digits)

    cells = [
        name, str(batch), str(len(runs)), "/".join(sorted({_heads(r) for r in runs})),
        col("teacher", "knn_accuracy"), col("teacher", "linear_accuracy"), col("teacher", "rankme", 1),
        col("student", "knn_accuracy"), col("student", "rankme", 1),
        col("untrained", "knn_accuracy"), col("untrained", "linear_accuracy"), col("untrained", "rankme", 1),
        top("train_empty_cluster_fraction"), top("final_teacher_empty_cluster_fraction"),
        top("last_epoch_balance_changed_labels", 2), top("train_seconds", 0),
    ]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def summary(paths: list[Path], data: str | None = None) -> None:
    """Markdown tables of the runs in ``paths``, one per data source: mean ± sample std over seeds
    per (name, B)."""
    rows = [json.loads(line) for path in paths for line in path.read_text().splitlines() if line.strip()]
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in rows:
        if data is None or r["data"] == data:
            groups.setdefault((r["data"], r["name"], r["batch_size"]), []).append(r)
    for source in sorted({key[0] for key in groups}):
        print(f"{source}:\n")
        print(f"| {COLUMNS} |")
        print("|" + " --- |" * len(COLUMNS.split(" | ")))
        for (_, name, batch), runs in sorted(item for item in groups.items() if item[0][0] == source):
            print(_row(name, batch, runs))
        print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="results file stem (with --summary: several, comma-separated)")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument(
        "--data", default="digits", help="data source (with --summary: only its runs; all: every source)"
    )
    parser.add_argument("--batch-sizes", default="1,2,4,8,64")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--keep", type=Path, default=None, help="keep run folders under this folder")
    parser.add_argument(
        "--summary",
        action="store_true",
        help="print the table of results/excb-study/NAME.jsonl (NAME,NAME2: several) and exit",
    )
    args = parser.parse_intermixed_args()
    if args.summary:
        summary([RESULTS / f"{n}.jsonl" for n in args.name.split(",")], None if args.data == "all" else args.data)
        return
    path = RESULTS / f"{args.name}.jsonl"
    RESULTS.mkdir(parents=True, exist_ok=True)
    for seed in [int(s) for s in args.seeds.split(",")]:
        for batch in [int(b) for b in args.batch_sizes.split(",")]:
            record = run_one(args.name, args.data, batch, seed, args.epochs, args.overrides, args.keep)
            print(json.dumps(record), flush=True)
            with path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    sys.exit(main())
