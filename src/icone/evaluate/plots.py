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


def plot_embeddings(features: np.ndarray, labels: np.ndarray, path: Path, title: str = "") -> Path:
    """First two principal components of the embeddings, coloured by label."""
    from sklearn.decomposition import PCA

    plt = _pyplot()
    coords = (
        PCA(n_components=2).fit_transform(np.asarray(features, np.float64))
        if len(features) > 2
        else np.zeros((len(features), 2))
    )
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(coords[:, 0], coords[:, 1], c=labels if (labels >= 0).all() else "grey", s=4, cmap="tab10")
    ax.set_title(title or "embeddings (PCA)")
    fig.tight_layout()
    return save_figure(fig, path)
