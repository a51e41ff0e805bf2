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
    figures = [
        (
            "accuracy_vs_batch_size.png",
            [("knn_accuracy", "kNN accuracy"), ("linear_accuracy", "linear probe accuracy")],
        ),
        ("collapse_vs_batch_size.png", [("rankme", "RankMe"), ("intrinsic_dimension", "intrinsic dimension (TwoNN)")]),
    ]
    for filename, metrics in figures:
        fig, axes = plt.subplots(
            len(metrics),
            len(ratios),
            figsize=(5.5 * len(ratios), 3.8 * len(metrics) + 0.6),
            squeeze=False,
            layout="constrained",
        )
        for i, (key, title) in enumerate(metrics):
            stats = aggregate(rows, key)
            for j, ratio in enumerate(ratios):
                ax = axes[i][j]
                for method in methods:
                    _line(ax, [(b, stats[(method, ratio, b)]) for b in batches if (method, ratio, b) in stats], method)
                base = baseline_stats(rows, key, ratio)
                if base:
                    ax.axhline(base[0], color="gray", linestyle="--", label="untrained encoder")
                _axes_style(
                    ax,
                    batches,
                    [str(b) for b in batches],
                    2,
                    "batch size",
                    title,
                    title + (f" (imbalance {ratio:g})" if len(ratios) > 1 else ""),
                )
        written.append(_save(fig, axes, folder / filename))
    if len(ratios) > 1:
        metrics = [
            ("knn_accuracy", "kNN accuracy"),
            ("linear_accuracy", "linear accuracy"),
            ("linear_balanced_accuracy", "linear balanced accuracy"),
        ]
        shown = [b for b in batches if any(r["batch_size"] == b and r["status"] == "ok" for r in rows)] or batches[:1]
        fig, axes = plt.subplots(
            len(shown),
            len(metrics),
            figsize=(5 * len(metrics), 3.5 * len(shown) + 0.6),
            squeeze=False,
            layout="constrained",
        )
        for j, (key, title) in enumerate(metrics):
            stats = aggregate(rows, key)
            for i, batch in enumerate(shown):
                ax = axes[i][j]
                for method in methods:
                    _line(ax, [(r, stats[(method, r, batch)]) for r in ratios if (method, r, batch) in stats], method)
                base = [(r, b) for r in ratios if (b := baseline_stats(rows, key, r))]
                _line(ax, base, "untrained encoder", color="gray", linestyle="--")
                _axes_style(
                    ax,
                    ratios,
                    [f"{r:g}" for r in ratios],
                    10,
                    "imbalance ratio (largest / smallest class)",
                    title,
                    f"{title}, batch size {batch}",
                )
        written.append(_save(fig, axes, folder / "accuracy_vs_imbalance.png"))
    return written
