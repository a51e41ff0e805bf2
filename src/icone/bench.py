"""``icone bench``: grids of method x batch size x seed (x imbalance ratio) and their reports.

Every cell is an ordinary run folder (``OUT/cells/<method>-b<B>-r<R>-s<S>``) made by
:func:`icone.runs.train_run`, so it can be re-evaluated with ``icone evaluate`` or resumed. The grid
writes ``results.csv``/``results.json`` after every cell and ``summary.md`` plus PNG plots at the end.

Equal treatment: one source, one backbone, one norm layer (``model.norm=group`` unless overridden),
the same augmentation settings and epoch budget for every method. The learning rate is each
method's ``default_lr`` (or ``optim.lr`` when given), scaled with the batch size by ``lr_scaling``
relative to :data:`REFERENCE_BATCH`: ``sqrt`` (the default, lr * sqrt(B / 64), the rule for
Adam-type optimizers and what ``icone train`` does with a method's default lr), ``linear``
(lr * B / 64, the SGD rule) or ``none``.

This is one module rather than a package on purpose: ``.gitignore`` ignores every ``bench/`` folder.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
import os
import platform
import resource
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from icone.config import Config, build_config, parse_overrides, validate
from icone.errors import TrainingDiverged, UserError
from icone.files import atomic_write_text
from icone.run_folder import LOCK, MARKER, RunLock
from icone.train.setup import REFERENCE_BATCH, scaled_lr

LR_SCALINGS = ("none", "sqrt", "linear")
DEFAULT_NORM = "group"  # batch-free, so batch-size-1 methods are not handicapped; override with model.norm=...
PAPER_METHODS = ["icone", "excb", "simclr", "moco", "byol", "vicreg", "barlow_twins", "dino"]
PRESETS: dict[str, dict[str, Any]] = {
    # about 15 min on 2 idle CPU cores (13 cells; measured per-step times in docs/bench.md), ~40 min on busy ones
    "quick": {"data": "digits", "methods": ["icone", "excb", "simclr", "byol", "vicreg"], "batch_sizes": [1, 4, 16],
              "seeds": 1, "epochs": 2, "imbalance": [1.0], "backbone": "smallcnn", "overrides": ["model.width=16"]},
    # meant for a GPU: 8 methods x 7 batch sizes x 3 seeds, ResNet-18 at full width (512-d features)
    "paper": {"data": "digits", "methods": PAPER_METHODS, "batch_sizes": [1, 2, 4, 8, 16, 32, 64],
              "seeds": 3, "epochs": 20, "imbalance": [1.0], "backbone": "resnet18", "overrides": ["model.width=64"]},
}
# options the grid owns: give them as flags, not as KEY=VALUE
OWNED = {"method": "--methods", "data.source": "--data", "data.imbalance_ratio": "--imbalance", "model.backbone": "--backbone",
         "train.batch_size": "--batch-sizes", "train.seed": "--seeds", "train.epochs": "--epochs"}
METRICS = ["knn_accuracy", "linear_accuracy", "linear_balanced_accuracy", "linear_macro_f1", "rankme", "intrinsic_dimension", "embedding_std"]
BASELINE = ["knn_accuracy", "linear_accuracy", "linear_balanced_accuracy", "rankme", "intrinsic_dimension"]
COLUMNS = (["cell", "method", "batch_size", "seed", "imbalance", "status", "lr", "lr_scaling", *METRICS, "empty_cluster_fraction"]
           + [f"baseline_{k}" for k in BASELINE] + ["epochs", "steps", "train_seconds", "peak_memory_bytes", "memory_kind", "run_dir"])


# ---- the grid: spec, cells, per-cell config -------------------------------------------------


@dataclass
class BenchSpec:
    """One grid: methods x batch sizes x seeds x imbalance ratios on one source and backbone."""

    data: str
    methods: list[str]
    batch_sizes: list[int]
    seeds: int
    epochs: int
    imbalance: list[float]
    backbone: str
    out: Path
    lr_scaling: str = "sqrt"
    overrides: list[str] = field(default_factory=list)  # the preset's, then the user's KEY=VALUE
    preset: str = "quick"
    command: str = ""
    notes: list[str] = field(default_factory=list)

    def settings(self) -> dict[str, Any]:
        """What every cell of OUT must share (methods, batch sizes, seeds and ratios may grow)."""
        return {"data": self.data, "backbone": self.backbone, "epochs": self.epochs, "lr_scaling": self.lr_scaling, "overrides": self.overrides}


@dataclass(frozen=True)
class Cell:
    method: str
    batch_size: int
    seed: int
    imbalance: float

    @property
    def name(self) -> str:
        return f"{self.method}-b{self.batch_size}-r{self.imbalance:g}-s{self.seed}"


def parse_list(text: str | list | None, kind: type, flag: str) -> list | None:
    """``"1,4,16"`` -> ``[1, 4, 16]`` (order kept, duplicates dropped); a clear error otherwise."""
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()] if isinstance(text, str) else list(text)
    try:
        values = [kind(float(v)) if kind is int and float(v) == int(float(v)) else kind(v) for v in items]
    except (TypeError, ValueError):
        raise UserError(f"{flag} takes a comma-separated list of {kind.__name__}s, e.g. {flag} 1,4,16; got {text!r}") from None
    if not values:
        raise UserError(f"{flag} is empty; give a comma-separated list, e.g. {flag} 1,4,16")
    return list(dict.fromkeys(values))


def build_spec(
    preset: str | None = None, data: str | None = None, methods: str | list | None = None, batch_sizes: str | list | None = None,
    seeds: int | None = None, epochs: int | None = None, imbalance: str | list | None = None, backbone: str | None = None,
    out: str | Path | None = None, lr_scaling: str | None = None, overrides: list[str] | None = None, command: str = "",
) -> BenchSpec:
    """The grid from a preset (``quick`` when none) and explicit values, which win; checked up front."""
    from icone.data.sources import resolve
    from icone.methods import registry

    name = preset or "quick"
    if name not in PRESETS:
        raise UserError(f"unknown preset '{name}'; choose one of: {', '.join(PRESETS)}")
    base = PRESETS[name]
    known = registry()
    notes: list[str] = []
    asked = parse_methods(methods)
    if asked is None:
        asked = [m for m in base["methods"] if m in known]
        missing = [m for m in base["methods"] if m not in known]
        if missing:
            notes.append(f"skipped (not in this installation): {', '.join(missing)}")
        if not asked:
            raise UserError(f"none of the {name} preset's methods is installed; give --methods from: {', '.join(known)}")
    spec = BenchSpec(
        data=data or base["data"],
        methods=asked,
        batch_sizes=parse_list(batch_sizes, int, "--batch-sizes") or list(base["batch_sizes"]),
        seeds=base["seeds"] if seeds is None else seeds,
        epochs=base["epochs"] if epochs is None else epochs,
        imbalance=parse_list(imbalance, float, "--imbalance") or list(base["imbalance"]),
        backbone=backbone or base["backbone"],
        out=Path(out) if out is not None else Path("bench") / name,
        lr_scaling=lr_scaling or "sqrt",
        overrides=list(dict.fromkeys(list(base["overrides"]) + list(overrides or []))),  # a preset's override given again is kept once
        preset=name,
        command=command,
        notes=notes,
    )
    if spec.lr_scaling not in LR_SCALINGS:
        raise UserError(f"--lr-scaling {spec.lr_scaling!r} is not valid; choose one of: {', '.join(LR_SCALINGS)}")
    for flag, values in (("--batch-sizes", spec.batch_sizes), ("--seeds", [spec.seeds]), ("--epochs", [spec.epochs])):
        if min(values) < 1:
            raise UserError(f"{flag} must be at least 1, got {min(values)}")
    if min(spec.imbalance) < 1:
        raise UserError(f"--imbalance ratios are largest/smallest class sizes, at least 1; got {min(spec.imbalance):g}")
    refuse_owned(list(overrides or []), OWNED, "the grid")
    resolve(spec.data)
    for method in spec.methods:  # bad KEY=VALUE fails here, before any cell runs
        cell_config(spec, Cell(method, spec.batch_sizes[0], 0, spec.imbalance[0]))
    return spec


def cell_config(spec: BenchSpec, cell: Cell) -> Config:
    """The run config of one cell: the grid's values, the user's overrides, the scaled lr."""
    from icone.methods import get_method

    values = {
        "method": cell.method,
        "data": {"source": spec.data, "imbalance_ratio": cell.imbalance},
        "model": {"backbone": spec.backbone, "norm": DEFAULT_NORM},
        "train": {"batch_size": cell.batch_size, "epochs": spec.epochs, "seed": cell.seed},
    }
    config = build_config(values, overrides_for(spec.overrides, cell.method))
    config.eval.after_train = False  # the grid evaluates after measuring the training alone
    base = config.optim.lr if config.optim.lr is not None else get_method(cell.method).default_lr
    config.optim.lr = scaled_lr(float(base), cell.batch_size, spec.lr_scaling)  # as icone train scales a default lr
    validate(config)
    return config


def parse_methods(text: str | list | None) -> list[str] | None:
    """``--methods`` as a list of registered names (``None`` when not given); unknown names fail."""
    from icone.methods import registry

    asked = parse_list(text, str, "--methods")
    known = registry()
    unknown = [m for m in asked or [] if m not in known]
    if unknown:
        raise UserError(f"unknown method{'s' if len(unknown) > 1 else ''} {', '.join(repr(m) for m in unknown)}; choose from: {', '.join(known)}")
    return asked


def refuse_owned(overrides: list[str], owned: dict[str, str], who: str) -> None:
    """Refuse ``KEY=VALUE`` for the options a flag sets (``owned``: key -> flag)."""
    given = parse_overrides(overrides)
    for key, flag in owned.items():
        node: Any = given
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            raise UserError(f"{key} is set by {who}; use {flag} instead of {key}=...")


def overrides_for(overrides: list[str], method: str) -> list[str]:
    """The overrides that apply to ``method``: all but other methods' ``METHOD.option=value``."""
    from icone.methods import registry

    others = set(registry()) - {method}  # "simclr.temperature=..." belongs to simclr only
    return [o for o in overrides if o.split("=", 1)[0].strip().lstrip("-").split(".")[0] not in others]


def grid_cells(spec: BenchSpec) -> list[Cell]:
    """Run order: seed first, so an interrupted grid has whole seeds rather than whole methods."""
    return [Cell(m, b, s, r) for s in range(spec.seeds) for r in spec.imbalance for m in spec.methods for b in spec.batch_sizes]


# ---- measuring ------------------------------------------------------------------------------


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakMemory:
    """Peak memory of a block: CUDA max allocated on a GPU; on a CPU the growth of the process's
    resident set over its value at the start (sampled every 20 ms from /proc; ru_maxrss elsewhere)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.kind = "cuda_max_allocated" if self.cuda else "cpu_rss_growth"
        self.peak_bytes: int | None = None
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self._start = _rss_bytes()
        self._max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self._peak = self._start or 0
        if self._start is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self._peak = max(self._peak, _rss_bytes() or 0)

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        elif self._start is not None:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(0, max(self._peak, _rss_bytes() or 0) - self._start)
        else:  # ru_maxrss: KiB on Linux, bytes on macOS; only grows, so later cells may read 0
            unit = 1 if platform.system() == "Darwin" else 1024
            self.peak_bytes = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self._max_rss) * unit


def _training_log(run_dir: Path) -> tuple[int | None, int | None, float | None]:
    """(epochs, steps, seconds in the training loop) from ``metrics.jsonl``, robust to resumes."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None, None, None
    epochs: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by an interruption
        if record.get("kind") == "epoch" and record.get("epoch", 0) > 0:
            epochs[int(record["epoch"])] = record
    if not epochs:
        return 0, 0, 0.0
    return max(epochs), max(int(r["step"]) for r in epochs.values()), sum(float(r.get("epoch_seconds", 0.0)) for r in epochs.values())


# ---- running ----------------------------------------------------------------------------------


def _check_out(spec: BenchSpec) -> None:
    """``--out`` is a new or empty folder, or a grid with the same settings."""
    out = spec.out
    grid_file = out / "grid.json"
    if grid_file.is_file():
        saved = json.loads(grid_file.read_text())
        differ = [k for k, v in spec.settings().items() if saved.get(k) != v]
        if differ:
            raise UserError(f"'{out}' holds a grid with other {', '.join(differ)} ({', '.join(f'{k}={saved.get(k)!r}' for k in differ)}); "
                            f"choose another --out or repeat those settings")
    elif out.exists() and (not out.is_dir() or any(p.name != LOCK for p in out.iterdir())):
        raise UserError(f"'{out}' exists and is not a bench folder; choose another --out")


def _prepare_out(spec: BenchSpec) -> Path:
    _check_out(spec)  # again, under the lock
    (spec.out / "cells").mkdir(parents=True, exist_ok=True)
    atomic_write_text(spec.out / "grid.json", json.dumps(spec.settings(), indent=2))
    return spec.out


def _metrics_row(row: dict[str, Any], result: dict[str, Any]) -> None:
    for key in METRICS + ["empty_cluster_fraction"]:
        row[key] = result.get(key)
    for key in BASELINE:
        row[f"baseline_{key}"] = result.get("baseline", {}).get(key)


def run_cell(spec: BenchSpec, cell: Cell, debug: bool = False) -> tuple[dict[str, Any], str]:
    """One cell: refused, read back, resumed or trained; returns its row and how it was obtained."""
    from icone.methods import get_method
    from icone.runs import evaluate_run, train_run
    from icone.train.setup import pick_device

    config = cell_config(spec, cell)
    run_dir = spec.out / "cells" / cell.name
    row: dict[str, Any] = {k: None for k in COLUMNS}
    row.update(cell=cell.name, method=cell.method, batch_size=cell.batch_size, seed=cell.seed, imbalance=cell.imbalance,
               lr=config.optim.lr, lr_scaling=spec.lr_scaling)
    minimum = get_method(cell.method).min_batch_size
    if cell.batch_size < minimum:
        row["status"] = f"refused: below min batch ({minimum})"
        return row, "not run"
    record_file = run_dir / "bench.json"
    record = json.loads(record_file.read_text()) if record_file.is_file() else {}
    evaluated = (run_dir / "eval.json").is_file() and (_training_log(run_dir)[0] or 0) >= spec.epochs
    if evaluated or str(record.get("status", "")).startswith("diverged"):
        how = "read back"
        if evaluated:
            _metrics_row(row, json.loads((run_dir / "eval.json").read_text()))
            record["status"] = "ok"
    else:
        resume = (run_dir / "checkpoints" / "last.pt").is_file()
        how = "resumed" if resume else "trained"
        meter = PeakMemory(pick_device(config.train.device))
        try:
            with meter:
                train_run(config, out=run_dir, resume=resume, overwrite=not resume and run_dir.exists(), progress=False)
            _metrics_row(row, evaluate_run(run_dir))
            status = "ok"
        except TrainingDiverged as err:
            status = "diverged: " + str(err).split(";")[0]
        except UserError as err:
            status = f"refused: {err}"
        except Exception as err:  # noqa: BLE001 - one broken cell must not end a long grid
            if debug:
                raise
            status = f"failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        record = {"status": status, "peak_memory_bytes": meter.peak_bytes, "memory_kind": meter.kind, "lr": config.optim.lr}
        run_dir.mkdir(parents=True, exist_ok=True)  # a cell that stopped before its first checkpoint left no folder
        (run_dir / MARKER).touch()
        atomic_write_text(record_file, json.dumps(record, indent=2))
    row["status"] = record.get("status", "ok")
    row["peak_memory_bytes"], row["memory_kind"] = record.get("peak_memory_bytes"), record.get("memory_kind")
    row["epochs"], row["steps"], row["train_seconds"] = _training_log(run_dir)
    row["run_dir"] = str(run_dir) if run_dir.is_dir() else None
    return row, how


def progress_line(position: int, total: int, row: dict[str, Any], how: str) -> str:
    knn = "-" if row["knn_accuracy"] is None else f"{row['knn_accuracy']:.3f}"
    seconds = "-" if row["train_seconds"] is None else f"{row['train_seconds']:.1f} s"
    return (f"[{position}/{total}] {row['method']} b={row['batch_size']} r={row['imbalance']:g} s={row['seed']}: "
            f"{row['status']}  kNN {knn}  train {seconds}  ({how})")


def _row_order(spec: BenchSpec) -> Callable[[dict[str, Any]], tuple]:
    return lambda r: (spec.methods.index(r["method"]), r["imbalance"], r["batch_size"], r["seed"])


def run_bench(spec: BenchSpec, log: Callable[[str], None] = print, debug: bool = False) -> dict[str, Any]:
    """Run (or continue) the grid in ``spec.out``; write results, summary and plots; return them."""
    _check_out(spec)
    lock = RunLock(spec.out).acquire()  # one grid process per folder
    try:
        return _run_grid(spec, log, debug)
    finally:
        lock.release()


def _run_grid(spec: BenchSpec, log: Callable[[str], None], debug: bool) -> dict[str, Any]:
    out = _prepare_out(spec)
    cells = grid_cells(spec)
    for note in spec.notes:
        log(f"note: {note}")
    log(f"bench: {len(spec.methods)} method(s) x {len(spec.batch_sizes)} batch size(s) x {spec.seeds} seed(s) x "
        f"{len(spec.imbalance)} imbalance ratio(s) = {len(cells)} cells on {spec.data}, {spec.backbone}, {spec.epochs} epoch(s), "
        f"lr scaling {spec.lr_scaling}; into {out}")
    environment = machine_info(spec)
    rows: list[dict[str, Any]] = []
    for position, cell in enumerate(cells, 1):
        try:
            row, how = run_cell(spec, cell, debug)
        except KeyboardInterrupt:
            log(f"interrupted in cell {cell.name}; run the same command again to continue (finished cells are kept, this one resumes)")
            raise
        rows.append(row)
        log(progress_line(position, len(cells), row, how))
        write_results(out, spec, sorted(rows, key=_row_order(spec)), environment)
    rows.sort(key=_row_order(spec))
    atomic_write_text(out / "summary.md", summary_markdown(spec, rows, environment))
    plots = plot_results(rows, out / "plots")
    return {"out": str(out), "rows": rows, "files": ["results.csv", "results.json", "summary.md"] + [str(p.relative_to(out)) for p in plots]}


# ---- reports ----------------------------------------------------------------------------------


def machine_info(spec: BenchSpec) -> dict[str, Any]:
    from icone.train.setup import pick_device

    return environment_of(pick_device(cell_config(spec, Cell(spec.methods[0], spec.batch_sizes[0], 0, spec.imbalance[0])).train.device))


def environment_of(device: torch.device) -> dict[str, Any]:
    """Date, platform, CPU, torch version and threads, and the training device."""
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "platform": platform.platform(),
            "python": platform.python_version(), "cpu": _cpu_model(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "device": f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "cpu"}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_results(out: Path, spec: BenchSpec, rows: list[dict[str, Any]], environment: dict[str, Any]) -> None:
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows({k: "" if r.get(k) is None else r[k] for k in COLUMNS} for r in rows)
    atomic_write_text(out / "results.csv", table.getvalue())
    document = {"command": spec.command, **environment, "settings": {**spec.settings(), "norm_default": DEFAULT_NORM,
                "reference_batch": REFERENCE_BATCH, "methods": spec.methods, "batch_sizes": spec.batch_sizes, "seeds": spec.seeds,
                "imbalance": spec.imbalance, "preset": spec.preset}, "notes": spec.notes, "columns": COLUMNS, "rows": rows}
    atomic_write_text(out / "results.json", json.dumps(document, indent=2))


def _stats(values: list[float]) -> tuple[float, float] | None:
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
    return {g: (*_stats(v), len(v)) for g, v in groups.items()}  # type: ignore[misc]


def _fmt(stats: tuple[float, float, int] | None, digits: int, scale: float = 1.0) -> str:
    if stats is None:
        return "-"
    mean, std, n = stats
    return f"{mean / scale:.{digits}f} ± {std / scale:.{digits}f}" if n > 1 else f"{mean / scale:.{digits}f}"


def _short_status(status: str) -> str:
    """``refused: below min batch (2)`` -> ``refused (min 2)``; ``diverged: ...`` -> ``diverged``."""
    if "min batch (" in status:
        return "refused (min " + status.rsplit("(", 1)[-1]
    return status.split(":")[0]


def summary_markdown(spec: BenchSpec, rows: list[dict[str, Any]], environment: dict[str, Any]) -> str:
    many = len(spec.imbalance) > 1
    columns = [("kNN", "knn_accuracy", 3, 1.0), ("linear", "linear_accuracy", 3, 1.0), ("balanced", "linear_balanced_accuracy", 3, 1.0),
               ("RankMe", "rankme", 1, 1.0), ("ID", "intrinsic_dimension", 1, 1.0)]
    if any(r.get("empty_cluster_fraction") is not None for r in rows):
        columns.append(("empty clusters", "empty_cluster_fraction", 3, 1.0))
    columns += [("train s", "train_seconds", 1, 1.0), ("peak MiB", "peak_memory_bytes", 0, 2**20)]
    stats = {key: aggregate(rows, key) for _, key, _, _ in columns}
    memory = next((r["memory_kind"] for r in rows if r.get("memory_kind")), "cuda_max_allocated or cpu_rss_growth")
    lines = [
        "# icone bench", "",
        f"Command: `{spec.command or '(Python API)'}`", "",
        f"Date: {environment['date']}; machine: {environment['platform']}, {environment['cpu']}, {environment['cpu_count']} CPUs, "
        f"torch {environment['torch']} ({environment['torch_threads']} threads), device {environment['device']}", "",
        f"Grid: data `{spec.data}`, backbone `{spec.backbone}`, {spec.epochs} epoch(s), norm `{DEFAULT_NORM}` unless overridden, "
        f"overrides `{' '.join(spec.overrides) or 'none'}`, lr = method default scaled by `{spec.lr_scaling}` relative to batch {REFERENCE_BATCH}.", "",
    ]
    lines += [f"Note: {note}" for note in spec.notes] + ([""] if spec.notes else [])
    lines += [f"Mean ± sample std over the seeds that finished (n = runs ok / cells); peak memory is {memory}.", ""]
    head = ["method", "batch"] + (["imbalance"] if many else []) + ["runs"] + [c[0] for c in columns]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in spec.methods:
        for ratio in spec.imbalance:
            for batch in spec.batch_sizes:
                group = [r for r in rows if (r["method"], r["imbalance"], r["batch_size"]) == (method, ratio, batch)]
                if not group:
                    continue
                ok = sum(r["status"] == "ok" for r in group)
                runs = f"{ok}/{len(group)}" if ok else _short_status(group[0]["status"])
                cells = [_fmt(stats[key].get((method, ratio, batch)), d, s) for _, key, d, s in columns]
                lines.append("| " + " | ".join([method, str(batch)] + ([f"{ratio:g}"] if many else []) + [runs] + cells) + " |")
    lines += ["", "## kNN accuracy by batch size", "", "| method | " + " | ".join(f"B={b}" for b in spec.batch_sizes) + " |",
              "|---|" + "---|" * len(spec.batch_sizes)]
    for method in spec.methods:
        for ratio in spec.imbalance:
            label = method + (f" (r={ratio:g})" if many else "")
            lines.append(f"| {label} | " + " | ".join(_fmt(stats["knn_accuracy"].get((method, ratio, b)), 3) for b in spec.batch_sizes) + " |")
    for ratio in spec.imbalance:
        base = _baseline(rows, "knn_accuracy", ratio)
        if base:
            where = f" at imbalance {ratio:g}" if many else ""
            lines += ["", f"Untrained encoder (same backbone and seeds){where}: kNN {_fmt(base, 3)}."]
    failed = [r for r in rows if r["status"].startswith(("diverged", "failed", "refused: ")) and "min batch" not in r["status"]]
    if failed:
        lines += ["", "## Cells that did not finish", ""] + [f"- {r['cell']}: {r['status']}" for r in failed]
    return "\n".join(lines) + "\n"


# ---- plots ------------------------------------------------------------------------------------


def _line(ax: Any, points: list[tuple[float, tuple[float, float, int]]], label: str, **style: Any) -> None:
    if points:
        ax.errorbar([x for x, _ in points], [m for _, (m, _, _) in points], yerr=[sd for _, (_, sd, _) in points], marker="o", capsize=3, label=label, **style)


def _baseline(rows: list[dict[str, Any]], key: str, ratio: float) -> tuple[float, float, int] | None:
    """The untrained encoder's ``key`` at one imbalance ratio (it does not depend on the method)."""
    per_seed = {r["seed"]: float(r[f"baseline_{key}"]) for r in rows if r["imbalance"] == ratio and r.get(f"baseline_{key}") is not None}
    values = list(per_seed.values())
    stats = _stats(values)
    return (*stats, len(values)) if stats else None


def _axes_style(ax: Any, xs: list, labels: list[str], base: int | float, xlabel: str, ylabel: str, title: str) -> None:
    from matplotlib.ticker import NullLocator

    ax.set_xscale("log", base=base)
    ax.set_xticks(xs, labels)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)


def _save(fig: Any, axes: Any, path: Path) -> Path:
    """One legend for the figure (methods and the untrained encoder), above the panels."""
    from icone.evaluate.plots import save_figure

    entries: dict[str, Any] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if "untrained encoder" in entries:  # last, after the methods
        entries["untrained encoder"] = entries.pop("untrained encoder")
    if entries:
        per_row = max(1, int(fig.get_figwidth() / 1.35))  # about 1.35 inches per entry, so a narrow figure wraps its legend
        fig.legend(list(entries.values()), list(entries), loc="outside upper center", ncol=min(len(entries), per_row), fontsize=9)
    return save_figure(fig, path, dpi=110)


def plot_results(rows: list[dict[str, Any]], folder: Path) -> list[Path]:
    """accuracy_vs_batch_size.png, collapse_vs_batch_size.png and (several ratios) accuracy_vs_imbalance.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    ratios = sorted({r["imbalance"] for r in rows})
    batches = sorted({r["batch_size"] for r in rows})
    written = []
    figures = [("accuracy_vs_batch_size.png", [("knn_accuracy", "kNN accuracy"), ("linear_accuracy", "linear probe accuracy")]),
               ("collapse_vs_batch_size.png", [("rankme", "RankMe"), ("intrinsic_dimension", "intrinsic dimension (TwoNN)")])]
    for filename, metrics in figures:
        fig, axes = plt.subplots(len(metrics), len(ratios), figsize=(5.5 * len(ratios), 3.8 * len(metrics) + 0.6), squeeze=False, layout="constrained")
        for i, (key, title) in enumerate(metrics):
            stats = aggregate(rows, key)
            for j, ratio in enumerate(ratios):
                ax = axes[i][j]
                for method in methods:
                    _line(ax, [(b, stats[(method, ratio, b)]) for b in batches if (method, ratio, b) in stats], method)
                base = _baseline(rows, key, ratio)
                if base:
                    ax.axhline(base[0], color="gray", linestyle="--", label="untrained encoder")
                _axes_style(ax, batches, [str(b) for b in batches], 2, "batch size", title,
                            title + (f" (imbalance {ratio:g})" if len(ratios) > 1 else ""))
        written.append(_save(fig, axes, folder / filename))
    if len(ratios) > 1:
        metrics = [("knn_accuracy", "kNN accuracy"), ("linear_accuracy", "linear accuracy"), ("linear_balanced_accuracy", "linear balanced accuracy")]
        shown = [b for b in batches if any(r["batch_size"] == b and r["status"] == "ok" for r in rows)] or batches[:1]
        fig, axes = plt.subplots(len(shown), len(metrics), figsize=(5 * len(metrics), 3.5 * len(shown) + 0.6), squeeze=False, layout="constrained")
        for j, (key, title) in enumerate(metrics):
            stats = aggregate(rows, key)
            for i, batch in enumerate(shown):
                ax = axes[i][j]
                for method in methods:
                    _line(ax, [(r, stats[(method, r, batch)]) for r in ratios if (method, r, batch) in stats], method)
                base = [(r, b) for r in ratios if (b := _baseline(rows, key, r))]
                _line(ax, base, "untrained encoder", color="gray", linestyle="--")
                _axes_style(ax, ratios, [f"{r:g}" for r in ratios], 10, "imbalance ratio (largest / smallest class)", title, f"{title}, batch size {batch}")
        written.append(_save(fig, axes, folder / "accuracy_vs_imbalance.png"))
    return written
