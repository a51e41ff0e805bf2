"""Plots of a grid: accuracy and collapse against batch size, accuracy against class imbalance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from icone.bench.report import aggregate, baseline_stats
from icone.evaluate.plots import save_figure


def _line(ax: Any, points: list[tuple[float, tuple[float, float, int]]], label: str, **style: Any) -> None:
    if points:
        ax.errorbar(
            [x for x, _ in points],
            [m for _, (m, _, _) in points],
            yerr=[sd for _, (_, sd, _) in points],
            marker="o",
            capsize=3,
            label=label,
            **style,
        )


def _axes_style(ax: Any, xs: list, labels: list[str], base: int | float, xlabel: str, ylabel: str, title: str) -> None:
    from matplotlib.ticker import NullLocator

    ax.set_xscale("log", base=base)
    ax.set_xticks(xs, labels)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)


def _save(fig: Any, axes: Any, path: Path) -> Path:
    """One legend for the figure (methods and the untrained encoder), above the panels."""
    entries: dict[str, Any] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if "untrained encoder" in entries:  # last, after the methods
        entries["untrained encoder"] = entries.pop("untrained encoder")
    if entries:
        per_row = max(
            1, int(fig.get_figwidth() / 1.35)
        )  # about 1.35 inches per entry, so a narrow figure wraps its legend
        fig.legend(
            list(entries.values()),
            list(entries),
            loc="outside upper center",
            ncol=min(len(entries), per_row),
            fontsize=9,
        )
    return save_figure(fig, path, dpi=110)


BATCH_FIGURES = {
    "accuracy_vs_batch_size.png": [("knn_accuracy", "kNN accuracy"), ("linear_accuracy", "linear probe accuracy")],
    "collapse_vs_batch_size.png": [("rankme", "RankMe"), ("intrinsic_dimension", "intrinsic dimension (TwoNN)")],
}
IMBALANCE_METRICS = [
    ("knn_accuracy", "kNN accuracy"),
    ("linear_accuracy", "linear accuracy"),
    ("linear_balanced_accuracy", "linear balanced accuracy"),
]


def _panel(ax: Any, rows: list[dict[str, Any]], key: str, title: str, fixed: float, across: str) -> None:
    """One metric against the batch size at a ``fixed`` imbalance ratio (``across="batch"``), or against the
    imbalance ratio at a ``fixed`` batch size; a line per method and the untrained encoder's."""
    stats, methods = aggregate(rows, key), list(dict.fromkeys(r["method"] for r in rows))
    ratios, batches = sorted({r["imbalance"] for r in rows}), sorted({r["batch_size"] for r in rows})
    by_batch = across == "batch"
    xs = batches if by_batch else ratios
    for method in methods:
        cells = [(x, (method, fixed, x) if by_batch else (method, x, fixed)) for x in xs]
        _line(ax, [(x, stats[cell]) for x, cell in cells if cell in stats], method)
    if by_batch:
        base = baseline_stats(rows, key, fixed)
        if base:
            ax.axhline(base[0], color="gray", linestyle="--", label="untrained encoder")
        name = title + (f" (imbalance {fixed:g})" if len(ratios) > 1 else "")
        _axes_style(ax, xs, [str(b) for b in xs], 2, "batch size", title, name)
        return
    _line(
        ax,
        [(r, b) for r in ratios if (b := baseline_stats(rows, key, r))],
        "untrained encoder",
        color="gray",
        linestyle="--",
    )
    xlabel = "imbalance ratio (largest / smallest class)"
    _axes_style(ax, xs, [f"{r:g}" for r in xs], 10, xlabel, title, f"{title}, batch size {fixed}")


def _figure(
    rows: list[dict[str, Any]], panels: list[list[tuple[str, str, float]]], across: str, size: tuple, path: Path
) -> Path:
    """A figure of ``panels`` (rows of ``(metric, title, fixed value)``, each :func:`_panel`), ``size`` inches per panel."""
    import matplotlib.pyplot as plt

    shape = (len(panels), len(panels[0]))
    figsize = (size[0] * shape[1], size[1] * shape[0] + 0.6)
    fig, axes = plt.subplots(*shape, figsize=figsize, squeeze=False, layout="constrained")
    for i, line in enumerate(panels):
        for j, (key, title, fixed) in enumerate(line):
            _panel(axes[i][j], rows, key, title, fixed, across)
    return _save(fig, axes, path)


def plot_results(rows: list[dict[str, Any]], folder: Path) -> list[Path]:
    """accuracy_vs_batch_size.png, collapse_vs_batch_size.png and (several ratios) accuracy_vs_imbalance.png."""
    import matplotlib

    matplotlib.use("Agg")
    folder.mkdir(parents=True, exist_ok=True)
    ratios, batches = sorted({r["imbalance"] for r in rows}), sorted({r["batch_size"] for r in rows})
    written = [
        _figure(rows, [[(key, title, r) for r in ratios] for key, title in metrics], "batch", (5.5, 3.8), folder / name)
        for name, metrics in BATCH_FIGURES.items()
    ]
    if len(ratios) > 1:
        shown = [b for b in batches if any(r["batch_size"] == b and r["status"] == "ok" for r in rows)] or batches[:1]
        panels = [[(key, title, b) for key, title in IMBALANCE_METRICS] for b in shown]
        written.append(_figure(rows, panels, "imbalance", (5, 3.5), folder / "accuracy_vs_imbalance.png"))
    return written
