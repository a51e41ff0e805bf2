"""Plots of a run: loss curves, the collapse monitor and a 2D view of the embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from icone.files import atomic_path
from icone.methods import HEALTH_PREFIX


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(path: Path) -> list[dict]:
    """The records of ``metrics.jsonl`` (a line cut by a kill is skipped)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def save_figure(fig, path: Path, dpi: int = 100) -> Path:
    """``fig.savefig`` to a temporary file, renamed to ``path`` (PNG); closes the figure."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return path


def plot_training(run_dir: Path) -> list[Path]:
    """``plots/loss.png`` (loss terms per logged step) and ``plots/collapse.png`` (per epoch)."""
    plt = _pyplot()
    records = read_metrics(run_dir / "metrics.jsonl")
    steps = [r for r in records if r.get("kind") == "step"]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    written = []
    if steps:
        keys = [k for k in steps[-1] if k.startswith("loss")]
        fig, ax = plt.subplots(figsize=(6, 4))
        for key in keys:
            ax.plot([r["step"] for r in steps if key in r], [r[key] for r in steps if key in r], label=key)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend()
        fig.tight_layout()
        written.append(save_figure(fig, out / "loss.png"))
    monitored = [k for k in (epochs[-1] if epochs else {}) if k.startswith(("monitor_", HEALTH_PREFIX))]
    if epochs and monitored:
        fig, axes = plt.subplots(1, len(monitored), figsize=(3.2 * len(monitored), 3), squeeze=False)
        for ax, key in zip(axes[0], monitored):
            ax.plot([r["epoch"] for r in epochs if key in r], [r[key] for r in epochs if key in r], marker="o")
            ax.set_title(key, fontsize=9)
            ax.set_xlabel("epoch")
        fig.tight_layout()
        written.append(save_figure(fig, out / "collapse.png"))
    return written


def map_2d(features: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """Two coordinates per sample: UMAP (McInnes et al. 2018; the ``umap`` extra) where installed, else PCA."""
    features = np.asarray(features, np.float64)
    if len(features) < 3:
        return np.zeros((len(features), 2)), "PCA"
    try:
        import umap
    except ImportError:
        umap = None
    if umap is not None and len(features) > 10:
        reducer = umap.UMAP(n_neighbors=min(15, len(features) - 1), random_state=seed)
        return np.asarray(reducer.fit_transform(features)), "UMAP"
    from sklearn.decomposition import PCA

    return PCA(n_components=2).fit_transform(features), "PCA"


def plot_map(
    features: np.ndarray, colours: np.ndarray, path: Path, title: str = "", legend: str = "label", mapped=None
) -> Path:
    """A 2D map of the embeddings (:func:`map_2d`, or ``mapped``: its result computed already), each point
    coloured by its label (or cluster)."""
    plt = _pyplot()
    coords, how = mapped if mapped is not None else map_2d(features)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    points = ax.scatter(
        coords[:, 0], coords[:, 1], c=colours, s=5, cmap="tab10" if len(np.unique(colours)) <= 10 else "tab20"
    )
    if len(np.unique(colours)) <= 20:
        ax.legend(*points.legend_elements(), title=legend, fontsize=7, loc="best", markerscale=0.8)
    ax.set_title(f"{title} ({how})" if title else how)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    return save_figure(fig, path)


def plot_confusion(matrix: np.ndarray, path: Path, class_names: list[str] | None = None, title: str = "") -> Path:
    """The full-label probe's confusion matrix, rows normalised (recall on the diagonal)."""
    plt = _pyplot()
    matrix = np.asarray(matrix, np.float64)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    names = class_names or [str(c) for c in range(len(matrix))]
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * len(names), 1.0 + 0.45 * len(names)))
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    for i in range(len(names)):
        for j in range(len(names)):
            if matrix[i, j]:
                ax.text(
                    j,
                    i,
                    f"{shares[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if shares[i, j] > 0.5 else "black",
                )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "linear probe, test split")
    fig.tight_layout()
    return save_figure(fig, path)
