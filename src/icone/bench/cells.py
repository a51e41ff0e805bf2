"""Running a grid: each cell a run folder, refused, read back, resumed or trained, then the reports."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from icone.bench.grid import BenchSpec, Cell, cell_config, cell_lr, choose_lr_factors, grid_cells, sweep_cells
from icone.bench.measure import PeakMemory, environment_of, forward_passes, training_log
from icone.bench.plots import plot_results
from icone.bench.report import BASELINE, COLUMNS, METRICS, summary_markdown, write_results
from icone.errors import Interrupted, TrainingDiverged, UserError
from icone.files import atomic_write_text
from icone.methods import get_method
from icone.run_folder import LOCK, RunLock, record_written
from icone.runtime import pick_device


def _grid_record(path: Path) -> dict[str, Any]:
    """A grid folder's ``grid.json``; one line when it is not one (cut short, edited, another file)."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(
            f"'{path}' is not a grid record ({type(err).__name__}: {str(err).splitlines()[0]}); choose another --out "
            "(or repair the file: it holds the grid's settings)"
        ) from None
    if not isinstance(saved, dict):
        raise UserError(f"'{path}' is not a grid record (no settings in it); choose another --out")
    return saved


def _check_out(spec: BenchSpec) -> None:
    """``--out`` is a new or empty folder, or a grid with the same settings."""
    out = spec.out
    grid_file = out / "grid.json"
    if grid_file.is_file():
        saved = _grid_record(grid_file)
        differ = [k for k, v in spec.settings().items() if saved.get(k) != v]
        if differ:
            raise UserError(
                f"'{out}' holds a grid with other {', '.join(differ)} ({', '.join(f'{k}={saved.get(k)!r}' for k in differ)}); "
                f"choose another --out or repeat those settings"
            )
    elif out.exists() and (not out.is_dir() or any(p.name != LOCK for p in out.iterdir())):
        raise UserError(f"'{out}' exists and is not a bench folder; choose another --out")


def _prepare_out(spec: BenchSpec) -> Path:
    _check_out(spec)  # again, under the lock
    (spec.out / "cells").mkdir(parents=True, exist_ok=True)
    atomic_write_text(spec.out / "grid.json", json.dumps(spec.settings(), indent=2))
    return spec.out


def metrics_row(row: dict[str, Any], result: dict[str, Any]) -> None:
    for key in METRICS:
        row[key] = result.get(key)
    row["empty_cluster_fraction"] = result.get("clusters", {}).get("empty_cluster_fraction")
    for key in BASELINE:
        row[f"baseline_{key}"] = result.get("baseline", {}).get(key)


# a sweep cell is scored on a validation split carved from the training split, a grid cell on the test split
SCORES = {True: "eval_validation.json", False: "eval.json"}


def score_cell(run_dir: Path, cell: Cell) -> dict[str, Any]:
    """The cell's evaluation (a sweep cell's on the validation split, kept in ``eval_validation.json``)."""
    from icone.runs import evaluate_run

    if not cell.sweep:
        return evaluate_run(run_dir)
    result = evaluate_run(run_dir, split="validation")
    atomic_write_text(run_dir / SCORES[True], json.dumps(result, indent=2))
    return result


def run_cell(spec: BenchSpec, cell: Cell, debug: bool = False) -> tuple[dict[str, Any], str]:
    """One cell: refused, read back, resumed or trained; returns its row and how it was obtained."""
    from icone.runs import train_run

    config = cell_config(spec, cell)
    run_dir = spec.out / "cells" / cell.name
    row: dict[str, Any] = {k: None for k in COLUMNS}
    row.update(
        cell=cell.name,
        method=cell.method,
        batch_size=cell.batch_size,
        seed=cell.seed,
        imbalance=cell.imbalance,
        lr=cell_lr(config),
        lr_scaling=config.optim.lr_scaling,
        lr_factor=cell.lr_factor,
    )
    minimum = get_method(cell.method).min_batch_size
    if cell.batch_size < minimum:
        row["status"] = f"refused: below min batch ({minimum})"
        return row, "not run"
    record_file = run_dir / "bench.json"
    record = json.loads(record_file.read_text()) if record_file.is_file() else {}
    scores = run_dir / SCORES[cell.sweep]
    evaluated = scores.is_file() and (training_log(run_dir)[0] or 0) >= spec.epochs
    if evaluated or str(record.get("status", "")).startswith("diverged"):
        how = "read back"
        if evaluated:
            metrics_row(row, json.loads(scores.read_text()))
            record["status"] = "ok"
    else:
        resume = (run_dir / "checkpoints" / "last.pt").is_file()
        how = "resumed" if resume else "trained"
        meter = PeakMemory(pick_device(config.train.device))
        try:
            with meter:
                train_run(config, out=run_dir, resume=resume, overwrite=not resume and run_dir.exists(), progress=False)
            metrics_row(row, score_cell(run_dir, cell))
            status = "ok"
        except Interrupted:
            raise  # Ctrl-C stops the grid (the cell keeps its checkpoint, and resumes from it next time)
        except TrainingDiverged as err:
            status = "diverged: " + str(err).split(";")[0]
        except UserError as err:
            status = f"refused: {err}"
        except Exception as err:
            if debug:
                raise
            status = f"failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        record = {"status": status, "peak_memory_bytes": meter.peak_bytes, "memory_kind": meter.kind, "lr": row["lr"]}
        run_dir.mkdir(parents=True, exist_ok=True)  # a cell that stopped before its first checkpoint left no folder
        atomic_write_text(record_file, json.dumps(record, indent=2))
        record_written(run_dir, ["bench.json"])  # the cell's own file: --overwrite of the cell may replace it
    row["status"] = record.get("status", "ok")
    row["peak_memory_bytes"], row["memory_kind"] = record.get("peak_memory_bytes"), record.get("memory_kind")
    row["epochs"], row["steps"], row["train_seconds"] = training_log(run_dir)
    row["forward_passes"] = forward_passes(run_dir)
    row["run_dir"] = str(run_dir) if run_dir.is_dir() else None
    return row, how


def progress_line(position: int, total: int, row: dict[str, Any], how: str) -> str:
    knn = "-" if row["knn_accuracy"] is None else f"{row['knn_accuracy']:.3f}"
    seconds = "-" if row["train_seconds"] is None else f"{row['train_seconds']:.1f} s"
    return (
        f"[{position}/{total}] {row['method']} b={row['batch_size']} r={row['imbalance']:g} s={row['seed']}"
        f"{'' if row.get('lr_factor', 1.0) == 1.0 else ' lr x' + format(row['lr_factor'], 'g')}: "
        f"{row['status']}  kNN {knn}  train {seconds}  ({how})"
    )


def row_order(spec: BenchSpec) -> Callable[[dict[str, Any]], tuple]:
    return lambda r: (spec.methods.index(r["method"]), r["imbalance"], r["batch_size"], r["seed"])


def run_bench(spec: BenchSpec, log: Callable[[str], None] = print, debug: bool = False) -> dict[str, Any]:
    """Run (or continue) the grid in ``spec.out``; write results, summary and plots; return them."""
    _check_out(spec)
    lock = RunLock(spec.out).acquire()  # one grid process per folder
    try:
        return _run_grid(spec, log, debug)
    finally:
        lock.release()


def _run_cells(
    spec: BenchSpec, cells: list[Cell], log: Callable[[str], None], debug: bool, write: Callable[[list], None]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for position, cell in enumerate(cells, 1):
        try:
            row, how = run_cell(spec, cell, debug)
        except (KeyboardInterrupt, Interrupted):
            saved = (spec.out / "cells" / cell.name / "checkpoints" / "last.pt").is_file()
            again = "resumes from its last checkpoint" if saved else "starts again (it had no checkpoint yet)"
            raise Interrupted(
                f"interrupted in cell {cell.name}; the finished cells are kept and this one {again}: "
                f"continue with '{spec.command or 'the same icone bench command'}'"
            ) from None
        rows.append(row)
        log(progress_line(position, len(cells), row, how))
        write(rows)
    return rows


def _run_sweep(
    spec: BenchSpec, log: Callable[[str], None], debug: bool, environment: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """The lr sweep (when asked), then each method's factor; saved in ``lr_choice.json``."""
    cells = sweep_cells(spec)
    if not cells:
        return [], {}
    log(
        f"lr sweep: {len(spec.methods)} method(s) x factors {', '.join(f'{k:g}' for k in spec.lr_sweep)} "
        f"at batch {spec.sweep_batch}, seed 0"
    )
    rows = _run_cells(spec, cells, log, debug, lambda done: write_results(spec.out, spec, done, environment, "sweep"))
    chosen = choose_lr_factors(rows)
    atomic_write_text(spec.out / "lr_choice.json", json.dumps(chosen, indent=2))
    log("lr factors chosen: " + ", ".join(f"{m} x{k:g}" for m, k in chosen.items()))
    return rows, chosen


def _run_grid(spec: BenchSpec, log: Callable[[str], None], debug: bool) -> dict[str, Any]:
    out = _prepare_out(spec)
    for note in spec.notes:
        log(f"note: {note}")
    environment = machine_info(spec)
    sweep, chosen = _run_sweep(spec, log, debug, environment)
    cells = grid_cells(spec, chosen)
    log(
        f"bench: {len(spec.methods)} method(s) x {len(spec.batch_sizes)} batch size(s) x {spec.seeds} seed(s) x "
        f"{len(spec.imbalance)} imbalance ratio(s) = {len(cells)} cells on {spec.data}, {spec.backbone}, {spec.epochs} epoch(s); into {out}"
    )
    rows = _run_cells(
        spec, cells, log, debug, lambda done: write_results(out, spec, sorted(done, key=row_order(spec)), environment)
    )
    rows.sort(key=row_order(spec))
    atomic_write_text(out / "summary.md", summary_markdown(spec, rows, environment, sweep, chosen))
    plots = plot_results(rows, out / "plots")
    return {
        "out": str(out),
        "rows": rows,
        "files": ["results.csv", "results.json", "summary.md"]
        + (["sweep.csv", "sweep.json", "lr_choice.json"] if sweep else [])
        + [str(p.relative_to(out)) for p in plots],
    }


def machine_info(spec: BenchSpec) -> dict[str, Any]:
    return environment_of(
        pick_device(cell_config(spec, Cell(spec.methods[0], spec.batch_sizes[0], 0, spec.imbalance[0])).train.device)
    )
