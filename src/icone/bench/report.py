"""Reports of a grid: ``results.csv``, ``results.json`` and ``summary.md`` (mean ± sample std over seeds)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from icone.bench.grid import DEFAULT_NORM, BenchSpec
from icone.evaluate.report import KEYS
from icone.files import atomic_write_text
from icone.training.optim import REFERENCE_BATCH

METRICS = list(KEYS)  # what evaluation reports, for the trained and (baseline_*) the untrained encoder
BASELINE = ["knn_accuracy", "linear_accuracy", "linear_balanced_accuracy", "rankme", "intrinsic_dimension"]
# the row of a cell; empty_cluster_fraction: for methods that cluster (the Method contract)
COLUMNS = (
    [
        "cell",
        "method",
        "batch_size",
        "seed",
        "imbalance",
        "status",
        "lr",
        "lr_scaling",
        "lr_factor",
        *METRICS,
        "empty_cluster_fraction",
    ]
    + [f"baseline_{k}" for k in BASELINE]
    + ["epochs", "steps", "forward_passes", "train_seconds", "peak_memory_bytes", "memory_kind", "run_dir"]
)


def write_results(
    out: Path, spec: BenchSpec, rows: list[dict[str, Any]], environment: dict[str, Any], name: str = "results"
) -> None:
    """``NAME.csv`` and ``NAME.json`` (the grid's ``results``, the lr sweep's ``sweep``)."""
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows({k: "" if r.get(k) is None else r[k] for k in COLUMNS} for r in rows)
    atomic_write_text(out / f"{name}.csv", table.getvalue())
    settings = {
        **spec.settings(),
        "norm_default": DEFAULT_NORM,
        "reference_batch": REFERENCE_BATCH,
        "methods": spec.methods,
        "batch_sizes": spec.batch_sizes,
        "seeds": spec.seeds,
        "imbalance": spec.imbalance,
        "preset": spec.preset,
    }
    document = {"command": spec.command, **environment, "settings": settings, "columns": COLUMNS, "rows": rows}
    atomic_write_text(out / f"{name}.json", json.dumps(document, indent=2))


def report_header(title: str, command: str, environment: dict[str, Any], extra: str = "") -> list[str]:
    """The top of a report (``summary.md``, ``speed.md``): the title, the command, the date, the machine."""
    env = environment
    return [
        f"# {title}",
        "",
        f"Command: `{command or '(Python API)'}`",
        "",
        f"Date: {env['date']}; machine: {env['platform']}, {env['cpu']}, {env['cpu_count']} CPUs, torch {env['torch']} "
        f"({env['torch_threads']} threads), device {env['device']}{extra}",
        "",
    ]


def progress_head(position: int, total: int, method: str, batch: int, more: str = "") -> str:
    """The start of a progress line of a grid or a speed run: ``[3/8] icone b=4 ...: ``."""
    return f"[{position}/{total}] {method} b={batch}{more}: "


def mean_std(values: list[float]) -> tuple[float, float] | None:
    if not values:
        return None
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def aggregate(rows: list[dict[str, Any]], key: str) -> dict[tuple[str, float, int], tuple[float, float, int]]:
    """(method, imbalance, batch) -> (mean, sample std, n) of ``key`` over the seeds that finished."""
    groups: dict[tuple[str, float, int], list[float]] = {}
    for r in rows:
        if r["status"] == "ok" and r.get(key) is not None:
            groups.setdefault((r["method"], r["imbalance"], r["batch_size"]), []).append(float(r[key]))
    return {g: (*mean_std(v), len(v)) for g, v in groups.items()}  # type: ignore[misc]


def format_stats(stats: tuple[float, float, int] | None, digits: int, scale: float = 1.0) -> str:
    if stats is None:
        return "-"
    mean, std, n = stats
    return f"{mean / scale:.{digits}f} ± {std / scale:.{digits}f}" if n > 1 else f"{mean / scale:.{digits}f}"


def short_status(status: str) -> str:
    """``refused: below min batch (2)`` -> ``refused (min 2)``; ``diverged: ...`` -> ``diverged``."""
    if "min batch (" in status:
        return "refused (min " + status.rsplit("(", 1)[-1]
    return status.split(":")[0]


def sweep_markdown(spec: BenchSpec, sweep: list[dict[str, Any]], chosen: dict[str, float]) -> list[str]:
    """The lr sweep's table: kNN of each method at each factor, and the factor the grid used."""
    if not sweep:
        return []
    lines = [
        f"## lr sweep (batch {spec.sweep_batch}, seed 0; kNN on a validation split carved from the training split, "
        "never the test split; the grid uses each method's best factor)",
        "",
        "| method | " + " | ".join(f"x{k:g}" for k in spec.lr_sweep) + " | chosen |",
        "|---|" + "---|" * (len(spec.lr_sweep) + 1),
    ]
    for method in spec.methods:
        by_factor = {float(r["lr_factor"]): r for r in sweep if r["method"] == method}
        cells = []
        for k in spec.lr_sweep:
            r = by_factor.get(k)
            ok = r is not None and r["status"] == "ok" and r.get("knn_accuracy") is not None
            cells.append(
                f"{r['knn_accuracy']:.3f} (lr {r['lr']:.2g})" if ok else short_status(r["status"]) if r else "-"
            )
        choice = f"x{chosen[method]:g}" if method in chosen else "none ran: x1"
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {choice} |")
    return lines + [""]


COLUMNS_SHOWN = [
    ("kNN", "knn_accuracy", 3, 1.0),
    ("linear", "linear_accuracy", 3, 1.0),
    ("balanced", "linear_balanced_accuracy", 3, 1.0),
    ("RankMe", "rankme", 1, 1.0),
    ("ID", "intrinsic_dimension", 1, 1.0),
]
COSTS_SHOWN = [
    ("passes (k)", "forward_passes", 0, 1e3),  # backbone forward passes: views x samples seen
    ("train s", "train_seconds", 1, 1.0),
    ("peak MiB", "peak_memory_bytes", 0, 2**20),
]


def summary_markdown(
    spec: BenchSpec,
    rows: list[dict[str, Any]],
    environment: dict[str, Any],
    sweep: list[dict[str, Any]] | None = None,
    chosen: dict[str, float] | None = None,
) -> str:
    clusters = any(r.get("empty_cluster_fraction") is not None for r in rows)
    columns = COLUMNS_SHOWN + ([("empty clusters", "empty_cluster_fraction", 3, 1.0)] if clusters else []) + COSTS_SHOWN
    stats = {key: aggregate(rows, key) for _, key, _, _ in columns}
    memory = next((r["memory_kind"] for r in rows if r.get("memory_kind")), "cuda_max_allocated or cpu_rss_growth")
    lines = report_header("icone bench", spec.command, environment) + [
        f"Grid: data `{spec.data}`, backbone `{spec.backbone}`, {spec.epochs} epoch(s), norm `{DEFAULT_NORM}` unless overridden, "
        f"overrides `{' '.join(spec.overrides) or 'none'}`; lr per cell: the `lr` column (what `icone train` resolves: a method's "
        f"default or `optim.base_lr`, stated for batch {REFERENCE_BATCH}, scaled by the `lr_scaling` column).",
        "",
    ]
    lines += sweep_markdown(spec, sweep or [], chosen or {})
    lines += [f"Mean ± sample std over the seeds that finished (n = runs ok / cells); peak memory is {memory}.", ""]
    lines += _cell_table(spec, rows, columns, stats) + _knn_table(spec, rows, stats["knn_accuracy"])
    failed = [
        r
        for r in rows
        if r["status"].startswith(("diverged", "failed", "refused: ")) and "min batch" not in r["status"]
    ]
    if failed:
        lines += ["", "## Cells that did not finish", ""] + [f"- {r['cell']}: {r['status']}" for r in failed]
    return "\n".join(lines) + "\n"


def _cell_table(spec: BenchSpec, rows: list[dict[str, Any]], columns: list, stats: dict[str, dict]) -> list[str]:
    """One line per method, imbalance ratio and batch size: runs ok, then mean ± std of each column."""
    many = len(spec.imbalance) > 1
    head = ["method", "batch"] + (["imbalance"] if many else []) + ["runs"] + [c[0] for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in spec.methods:
        for ratio in spec.imbalance:
            for batch in spec.batch_sizes:
                group = [r for r in rows if (r["method"], r["imbalance"], r["batch_size"]) == (method, ratio, batch)]
                if not group:
                    continue
                ok = sum(r["status"] == "ok" for r in group)
                runs = f"{ok}/{len(group)}" if ok else short_status(group[0]["status"])
                cells = [format_stats(stats[key].get((method, ratio, batch)), d, s) for _, key, d, s in columns]
                lines.append(
                    "| " + " | ".join([method, str(batch)] + ([f"{ratio:g}"] if many else []) + [runs] + cells) + " |"
                )
    return lines


def _knn_table(spec: BenchSpec, rows: list[dict[str, Any]], knn: dict) -> list[str]:
    """kNN accuracy by batch size (one line per method and ratio), and the untrained encoder's."""
    many = len(spec.imbalance) > 1
    lines = [
        "",
        "## kNN accuracy by batch size",
        "",
        "| method | " + " | ".join(f"B={b}" for b in spec.batch_sizes) + " |",
        "|---|" + "---|" * len(spec.batch_sizes),
    ]
    for method in spec.methods:
        for ratio in spec.imbalance:
            label = method + (f" (r={ratio:g})" if many else "")
            cells = [format_stats(knn.get((method, ratio, b)), 3) for b in spec.batch_sizes]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for ratio in spec.imbalance:
        base = baseline_stats(rows, "knn_accuracy", ratio)
        if base:
            where = f" at imbalance {ratio:g}" if many else ""
            lines += ["", f"Untrained encoder (same backbone and seeds){where}: kNN {format_stats(base, 3)}."]
    return lines


def baseline_stats(rows: list[dict[str, Any]], key: str, ratio: float) -> tuple[float, float, int] | None:
    """The untrained encoder's ``key`` at one imbalance ratio (it does not depend on the method)."""
    per_seed = {
        r["seed"]: float(r[f"baseline_{key}"])
        for r in rows
        if r["imbalance"] == ratio and r.get(f"baseline_{key}") is not None
    }
    values = list(per_seed.values())
    stats = mean_std(values)
    return (*stats, len(values)) if stats else None
