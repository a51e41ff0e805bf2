"""The table ``icone embed`` writes, one row per sample, ready for scanpy, napari and pandas.

Columns: ``index`` (the row in its split), ``source`` (a file, or ``source:split[row]``), ``split``,
``label`` (categorical: the class names, i.e. folder names or label-volume ids; missing where
unknown) and ``label_id`` (``-1`` unknown); for patches ``z``, ``y``, ``x`` (the patch's first voxel,
in stored voxels) and ``z_physical``... (times the voxel spacing, in ``unit``); the embedding.
What the rows share (source, run, method, backbone, patch, stride, spacing, unit, resolution
level) is AnnData's ``uns["icone"]`` and the Parquet schema's ``icone`` metadata (JSON); a 2D map
(``--plot``) is ``obsm["X_umap"]`` or ``obsm["X_pca"]``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from icone.config import Config
from icone.data import Dataset
from icone.data.samples import Samples
from icone.files import atomic_path, atomic_write
from icone.weights import require

CHUNK = 256  # samples per forward pass and per row group
AXES = {2: ("y", "x"), 3: ("z", "y", "x")}


@dataclasses.dataclass
class Rows:
    """A chunk of rows: the provenance columns, the patch positions and the embeddings."""

    index: np.ndarray
    source: list[str]
    position: list[list[int]]
    split: list[str]
    label: np.ndarray
    embedding: np.ndarray
    voxels: np.ndarray | None = None  # N x dims: patch origins in stored voxels
    physical: np.ndarray | None = None  # N x dims: the same times the spacing (NaN where unknown)


@dataclasses.dataclass
class Table:
    """What every chunk shares: the position axes, the class names, the metadata."""

    axes: tuple[str, ...]
    class_names: list[str]
    metadata: dict[str, Any]


def _positions(samples: Samples, rows: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    dims = len(samples.sample_shape) - 1
    voxels, physical = np.zeros((len(rows), dims)), np.zeros((len(rows), dims))
    for i, row in enumerate(rows):
        geometry = samples.geometry(int(row))
        if geometry is None:
            return None, None
        factor, spacing, _ = geometry
        origin = np.asarray(samples.position(int(row)), float)
        voxels[i] = origin / np.asarray(factor)
        physical[i] = [np.nan if s is None else o * s for o, s in zip(origin, spacing)]
    return voxels, physical


@torch.no_grad()
def embedded_rows(backbone: torch.nn.Module, dataset: Dataset, device: torch.device) -> Iterator[Rows]:
    """Every sample of the training split, then the test split, in chunks."""
    backbone.eval()
    for name, split in (("train", dataset.train), ("test", dataset.test)):
        if split is None:
            continue
        samples = split.samples
        for start in range(0, len(samples), CHUNK):
            rows = np.arange(start, min(start + CHUNK, len(samples)))
            features = backbone(torch.from_numpy(samples[rows]).to(device).float()).float().cpu()
            voxels, physical = _positions(samples, rows)
            yield Rows(
                index=rows,
                source=[samples.source(int(r)) for r in rows],
                position=[list(samples.position(int(r))) for r in rows],
                split=[name] * len(rows),
                label=split.labels[rows],
                embedding=features.numpy(),
                voxels=voxels,
                physical=physical,
            )


def table_of(dataset: Dataset, config: Config, run: str | Path) -> Table:
    """The table's shared metadata for ``dataset`` embedded by the backbone of ``run`` (``config``: the run's)."""
    samples = dataset.train.samples
    model = config.model
    metadata: dict[str, Any] = {
        "source": config.data.source, "run": str(run), "method": config.method,
        "backbone": f"{model.backbone} (width {model.width}, norm {model.norm}, {model.spatial_dims}D, {model.in_channels} channel(s))",
        "sample_shape": list(samples.sample_shape),
    }  # fmt: skip
    geometry = samples.geometry(0) if len(samples) else None
    axes = AXES[dataset.spatial_dims] if geometry is not None else ()
    if geometry is not None:
        factor, spacing, unit = geometry
        patch = [int(p) for p in samples.sample_shape[1:]]
        stride = config.data.stride or patch
        metadata.update({
            "axes": "".join(axes), "position": "z, y, x: each patch's first voxel, in stored voxels",
            "patch": patch, "stride": [int(s) for s in (stride * len(patch) if len(stride) == 1 else stride)],
            "spacing": [float("nan") if s is None else float(s) * f for s, f in zip(spacing, factor)],
            "read_spacing": [float("nan") if s is None else float(s) for s in spacing], "unit": unit or "",
            "level": int(config.data.level), "resampled": bool(any(f != 1 for f in factor)),
        })  # fmt: skip
    names = list(dataset.class_names)
    labels = np.concatenate([dataset.train.labels] + ([] if dataset.test is None else [dataset.test.labels]))
    top = int(np.max(labels, initial=-1))
    names += [str(c) for c in range(len(names), top + 1)]
    metadata["class_names"] = names
    return Table(axes, names, metadata)


def collect(chunks: Iterator[Rows]) -> Rows:
    """Every chunk as one :class:`Rows`."""
    parts = list(chunks)

    def stack(key: str) -> np.ndarray | None:
        values = [getattr(p, key) for p in parts]
        return None if any(v is None for v in values) else np.concatenate(values)

    return Rows(
        index=np.concatenate([p.index for p in parts]), source=[s for p in parts for s in p.source],
        position=[q for p in parts for q in p.position], split=[s for p in parts for s in p.split],
        label=np.concatenate([p.label for p in parts]), embedding=np.concatenate([p.embedding for p in parts]),
        voxels=stack("voxels"), physical=stack("physical"),
    )  # fmt: skip


def _position_columns(rows: Rows, table: Table) -> dict[str, np.ndarray]:
    if rows.voxels is None or not table.axes:
        return {}
    whole = bool(np.all(rows.voxels == np.round(rows.voxels)))
    columns = {a: rows.voxels[:, i].astype(np.int64 if whole else np.float64) for i, a in enumerate(table.axes)}
    columns.update({f"{a}_physical": rows.physical[:, i] for i, a in enumerate(table.axes)})
    return columns


def write_parquet(out: Path, chunks: Iterator[Rows], table: Table) -> None:
    """Streamed chunk by chunk (a source larger than memory fits); the metadata in the schema as ``icone``."""
    pa = require("pyarrow", "parquet")
    pq = require("pyarrow.parquet", "parquet")
    writer = None
    names = pa.array(table.class_names, pa.string())
    with atomic_path(out) as tmp:
        try:
            for rows in chunks:
                codes = pa.array(rows.label, pa.int32(), mask=rows.label < 0)
                columns = {
                    "index": pa.array(rows.index, pa.int64()), "source": pa.array(rows.source, pa.string()),
                    "split": pa.array(rows.split, pa.string()), "label": pa.DictionaryArray.from_arrays(codes, names),
                    "label_id": pa.array(rows.label, pa.int64()),
                    **{k: pa.array(v) for k, v in _position_columns(rows, table).items()},
                    "position": pa.array(rows.position, pa.list_(pa.int64())),
                    "embedding": pa.FixedSizeListArray.from_arrays(
                        pa.array(rows.embedding.reshape(-1), pa.float32()), rows.embedding.shape[1]
                    ),
                }  # fmt: skip
                batch = pa.table(columns).replace_schema_metadata({"icone": json.dumps(table.metadata)})
                if writer is None:
                    writer = pq.ParquetWriter(str(tmp), batch.schema)
                writer.write_table(batch)
        finally:
            if writer is not None:
                writer.close()


def _uns(value: Any) -> Any:
    """AnnData's ``uns`` holds no ``None``: an empty string stands for it."""
    if isinstance(value, dict):
        return {k: _uns(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_uns(v) for v in value]
    return "" if value is None else value


def write_h5ad(out: Path, rows: Rows, table: Table, mapped: tuple[np.ndarray, str] | None = None) -> None:
    """``X`` the embeddings, ``obs`` the columns, ``obsm`` the 2D map, ``uns["icone"]`` the metadata."""
    anndata = require("anndata", "anndata")
    pandas = require("pandas", "anndata")
    label = pandas.Categorical.from_codes(np.where(rows.label < 0, -1, rows.label), categories=table.class_names)
    obs = pandas.DataFrame({
        "index": rows.index, "source": rows.source, "split": pandas.Categorical(rows.split), "label": label,
        "label_id": rows.label, **_position_columns(rows, table),
    })  # fmt: skip
    obs.index = [f"{s}:{i}" for s, i in zip(rows.split, rows.index)]
    adata = anndata.AnnData(X=rows.embedding, obs=obs, uns={"icone": _uns(table.metadata)})
    if mapped is not None:
        adata.obsm[f"X_{mapped[1].lower()}"] = np.asarray(mapped[0], np.float32)
    with atomic_path(out) as tmp:
        adata.write_h5ad(tmp)


def write_table(out: Path, chunks: Iterator[Rows], table: Table, plot: bool = False) -> dict[str, Any]:
    """Write the rows to ``out`` by its suffix; with ``plot`` the 2D map too (in the ``.h5ad``'s ``obsm``).
    Returns ``{"out": ...}``, and with ``plot`` ``"collected"``: the rows and the map."""
    summary: dict[str, Any] = {"out": str(out)}
    if out.suffix == ".parquet" and not plot:
        write_parquet(out, chunks, table)
        return summary
    rows = collect(chunks)
    mapped = None
    if plot:
        from icone.evaluate.plots import map_2d

        mapped = map_2d(rows.embedding)
        summary["collected"] = (rows, mapped)
    if out.suffix == ".parquet":
        write_parquet(out, iter([rows]), table)
    elif out.suffix == ".h5ad":
        write_h5ad(out, rows, table, mapped)
    else:
        write_numpy(out, rows)
    return summary


def write_numpy(out: Path, rows: Rows) -> None:
    """``.npz`` (``features``, ``indices``, ``labels``, ``splits``, ``sources``, ``positions``) or ``.npy`` records."""
    positions = np.asarray([",".join(map(str, p)) for p in rows.position], dtype=str)
    if out.suffix == ".npz":
        arrays = {"features": rows.embedding, "indices": rows.index, "labels": rows.label, "splits": np.asarray(rows.split),
                  "sources": np.asarray(rows.source), "positions": positions}  # fmt: skip
        atomic_write(out, lambda handle: np.savez(handle, **arrays))
        return
    width = max([len(s) for s in rows.source] + [1])
    record = np.zeros(
        len(rows.index),
        dtype=[("index", "i8"), ("source", f"U{width}"), ("position", f"U{max(len(p) for p in positions) if len(positions) else 1}"),
               ("split", "U5"), ("label", "i8"), ("feature", "f4", (rows.embedding.shape[1],))],
    )  # fmt: skip
    record["index"], record["source"], record["position"] = rows.index, rows.source, positions
    record["split"], record["label"], record["feature"] = rows.split, rows.label, rows.embedding
    atomic_write(out, lambda handle: np.save(handle, record))
