"""The IConE study: runs of one method and one setting across batch sizes and seeds, one JSON line each.

Usage::

    python benchmarks/icone_study.py run --tag NAME [--data synthetic2d] [--method icone]
        [--batch-sizes 1,2,4,8,64] [--seeds 0] [--epochs 20] [--lr 2e-4] [--lr-scaling sqrt]
        [--out benchmarks/results/icone-study/FILE.jsonl] [KEY=VALUE ...]
    python benchmarks/icone_study.py summary FILE.jsonl [FILE.jsonl ...] [--by tag,data,method,batch_size]

``run`` trains one run per (batch size, seed), one after another in this process, with the grid's
shared settings (``smallcnn`` width 16, ``model.norm=group``, as ``icone bench`` does) plus the
given ``KEY=VALUE`` overrides. ``--lr`` is stated for batch 64 and scaled to each batch size by
``--lr-scaling`` (sqrt / linear / none), as ``icone bench`` scales a cell's lr; without ``--lr``
the method's own ``default_lr`` is scaled the same way. Each finished run appends one JSON line
(config, seed, steps, wall seconds, metrics of the trained and the untrained encoder, the last
epoch's method health) to ``--out``. A run whose (tag, data, method, batch size, seed, epochs,
lr, overrides) is already in the file is skipped, so an interrupted call can simply be repeated.

``summary`` prints mean ± sample std over seeds per group as a markdown table.

Run one at a time with ``OMP_NUM_THREADS=1 MKL_NUM_THREADS=1`` on a shared CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from icone.evaluate.report import KEYS

RESULTS = Path(__file__).parent / "results" / "icone-study"
SHARED = ["model.backbone=smallcnn", "model.width=16", "model.norm=group"]
METRICS = list(KEYS)  # what evaluation reports
HEALTH = ["table_rankme", "table_mean_cosine", "table_max_cosine", "monitor_rankme", "monitor_std"]


def _key(record: dict[str, Any]) -> tuple:
    return (
        record["tag"],
        record["data"],
        record["method"],
        record["batch_size"],
        record["seed"],
        record["epochs"],
        round(record["lr"], 12),
        tuple(record["overrides"]),
    )


def _existing(path: Path) -> set[tuple]:
    if not path.is_file():
        return set()
    keys = set()
    for line in path.read_text().splitlines():
        try:
            keys.add(_key(json.loads(line)))
        except (json.JSONDecodeError, KeyError):
            continue
    return keys


def _last_epoch(run_dir: Path) -> dict[str, Any]:
    last: dict[str, Any] = {}
    seconds = 0.0
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "epoch" and record.get("epoch", 0) > 0:
            last = record
            seconds += float(record.get("epoch_seconds", 0.0))
    health = {}
    for key in HEALTH:  # method health is logged under "health/" (the Method contract)
        value = last.get(key, last.get(f"health/{key}"))
        if value is not None:
            health[key] = round(float(value), 4)
    health["train_seconds"] = round(seconds, 1)
    return health


def run(args: argparse.Namespace) -> None:
    from icone.bench.measure import forward_passes
    from icone.build import scaled_lr
    from icone.config import build_config
    from icone.methods import get_method
    from icone.runs import evaluate_run, train_run

    out = Path(args.out) if args.out else RESULTS / f"{args.data}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _existing(out)
    base_lr = args.lr if args.lr is not None else get_method(args.method).default_lr
    for seed in [int(s) for s in args.seeds.split(",")]:
        for batch in [int(b) for b in args.batch_sizes.split(",")]:
            lr = scaled_lr(float(base_lr), batch, args.lr_scaling)
            record: dict[str, Any] = {
                "tag": args.tag,
                "data": args.data,
                "method": args.method,
                "batch_size": batch,
                "seed": seed,
                "epochs": args.epochs,
                "lr": lr,
                "lr_base_at_64": base_lr,
                "lr_scaling": args.lr_scaling,
                "overrides": list(args.overrides),
            }
            if _key(record) in done:
                print(f"skip (done): {args.tag} {args.data} b={batch} s={seed}", flush=True)
                continue
            values = [
                f"method={args.method}",
                f"data.source={args.data}",
                f"train.batch_size={batch}",
                f"train.epochs={args.epochs}",
                f"train.seed={seed}",
                f"optim.lr={lr}",
                *SHARED,
                *args.overrides,
            ]
            config = build_config(None, values)
            started = time.time()
            with tempfile.TemporaryDirectory() as tmp:
                run_dir = (
                    Path(args.keep) / f"{args.tag}-{args.data}-b{batch}-s{seed}" if args.keep else Path(tmp) / "run"
                )
                try:
                    summary = train_run(config, out=run_dir, overwrite=True, progress=False)
                except Exception as err:
                    record.update(
                        status=f"failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
                        wall_seconds=round(time.time() - started, 1),
                    )
                    print(json.dumps(record), flush=True)
                    with out.open("a") as handle:
                        handle.write(json.dumps(record) + "\n")
                    continue
                health = _last_epoch(run_dir)
                health["forward_passes"] = forward_passes(run_dir)
                validation = evaluate_run(run_dir, split="validation")
                health.update({f"val_{k}": validation.get(k) for k in ("knn_accuracy", "linear_accuracy")})
            result = summary["eval"]
            record.update(status="ok", steps=summary["steps"], wall_seconds=round(time.time() - started, 1), **health)
            record.update({k: (None if result.get(k) is None else round(float(result[k]), 4)) for k in METRICS})
            record.update(
                {
                    f"untrained_{k}": (
                        None if result["baseline"].get(k) is None else round(float(result["baseline"][k]), 4)
                    )
                    for k in METRICS
                }
            )
            record.update(date=time.strftime("%Y-%m-%d %H:%M"), machine=platform.processor() or platform.machine())
            print(json.dumps(record), flush=True)
            with out.open("a") as handle:
                handle.write(json.dumps(record) + "\n")


def _fmt(values: list[float], digits: int) -> str:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def summary(args: argparse.Namespace) -> None:
    records = []
    for name in args.files:
        for line in Path(name).read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    if args.tags:
        wanted = args.tags.split(",")
        records = [
            r
            for r in records
            if any(r["tag"] == t or (t.endswith("*") and r["tag"].startswith(t[:-1])) for t in wanted)
        ]
    by = args.by.split(",")
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(tuple(record.get(k) for k in by), []).append(record)
    columns = [
        "seeds",
        "steps",
        "lr",
        "val kNN",
        "val linear",
        "kNN",
        "linear",
        "bal. acc",
        "RankMe",
        "ID",
        "table RankMe",
        "untrained kNN",
        "passes",
        "s/run",
    ]
    print("| " + " | ".join(by + columns) + " |")
    print("|" + "---|" * (len(by) + len(columns)))
    for key, rows in sorted(groups.items(), key=lambda kv: tuple(str(k) for k in kv[0])):
        ok = [r for r in rows if r.get("status") == "ok"]
        if not ok:
            print("| " + " | ".join(str(k) for k in key) + f" | {rows[0].get('status')} |")
            continue
        cells = [
            str(len(ok)),
            str(ok[0].get("steps")),
            f"{ok[0]['lr']:.2g}",
            _fmt([r.get("val_knn_accuracy") for r in ok], 3),
            _fmt([r.get("val_linear_accuracy") for r in ok], 3),
            _fmt([r["knn_accuracy"] for r in ok], 3),
            _fmt([r["linear_accuracy"] for r in ok], 3),
            _fmt([r["linear_balanced_accuracy"] for r in ok], 3),
            _fmt([r["rankme"] for r in ok], 1),
            _fmt([r["intrinsic_dimension"] for r in ok], 1),
            _fmt([r.get("table_rankme") for r in ok], 1),
            _fmt([r["untrained_knn_accuracy"] for r in ok], 3),
            str(ok[0].get("forward_passes", "-")),
            _fmt([r["wall_seconds"] for r in ok], 0),
        ]
        print("| " + " | ".join(str(k) for k in key) + " | " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    r = commands.add_parser("run")
    r.add_argument("--tag", required=True)
    r.add_argument("--data", default="synthetic2d")
    r.add_argument("--method", default="icone")
    r.add_argument("--batch-sizes", default="1,2,4,8,64")
    r.add_argument("--seeds", default="0")
    r.add_argument("--epochs", type=int, default=20)
    r.add_argument("--lr", type=float, default=None, help="lr at batch 64 (default: the method's default_lr)")
    r.add_argument("--lr-scaling", default="sqrt", choices=["sqrt", "linear", "none"])
    r.add_argument("--out", default=None)
    r.add_argument("--keep", default=None, help="keep each run folder under this directory (default: a temporary one)")
    r.add_argument("overrides", nargs="*")
    s = commands.add_parser("summary")
    s.add_argument("files", nargs="+")
    s.add_argument("--by", default="tag,data,method,batch_size,lr")
    s.add_argument("--tags", default=None, help="comma-separated tags (a trailing * matches a prefix)")
    args = parser.parse_args(argv)
    run(args) if args.command == "run" else summary(args)


if __name__ == "__main__":
    main(sys.argv[1:])
