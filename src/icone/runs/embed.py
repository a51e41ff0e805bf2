"""``icone embed``: one row per sample of a source, with where it came from and its embedding.

Columns: ``index`` (the row in its split), ``source`` (a file, or ``source:split[row]`` for
built-in and array sources), ``position`` (a patch's origin in its source; empty for a whole
image), ``split``, ``label`` (``-1`` unknown) and ``embedding``. Formats by suffix:

- ``.parquet`` (pyarrow; the ``parquet`` extra): written chunk by chunk, so a source larger than
  memory streams to the file;
- ``.h5ad`` (AnnData; the ``anndata`` extra): ``X`` the embeddings, ``obs`` the other columns, for
  scanpy and napari;
- ``.npz`` (``features``, ``indices``, ``labels``, ``splits``, ``sources``, ``positions``) and
  ``.npy`` (structured records), as before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from icone.config import build_config
from icone.data import Dataset, load_dataset
from icone.data.sources import resolve
from icone.errors import UserError
from icone.export import load_backbone
from icone.files import atomic_path, atomic_write
from icone.runs.evaluate import check_fit, data_for
from icone.runtime import pick_device
from icone.training.checkpoint import load_checkpoint
from icone.weights import require

FORMATS = (".parquet", ".h5ad", ".npz", ".npy")
CHUNK = 256  # samples per forward pass and per row group


@dataclasses.dataclass
class Rows:
    """A chunk of rows: the provenance columns and the embeddings."""

    index: np.ndarray
    source: list[str]
    position: list[list[int]]
    split: list[str]
    label: np.ndarray
    embedding: np.ndarray


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
            yield Rows(
                index=rows,
                source=[samples.source(int(r)) for r in rows],
                position=[list(samples.position(int(r))) for r in rows],
                split=[name] * len(rows),
                label=split.labels[rows],
                embedding=features.numpy(),
            )


def _write_parquet(out: Path, chunks: Iterator[Rows]) -> None:
    pa = require("pyarrow", "parquet")
    pq = require("pyarrow.parquet", "parquet")
    writer = None
    with atomic_path(out) as tmp:
        try:
            for rows in chunks:
                d = rows.embedding.shape[1]
                table = pa.table({
                    "index": pa.array(rows.index, pa.int64()),
                    "source": pa.array(rows.source, pa.string()),
                    "position": pa.array(rows.position, pa.list_(pa.int64())),
                    "split": pa.array(rows.split, pa.string()),
                    "label": pa.array(rows.label, pa.int64()),
                    "embedding": pa.FixedSizeListArray.from_arrays(pa.array(rows.embedding.reshape(-1), pa.float32()), d),
                })  # fmt: skip
                if writer is None:
                    writer = pq.ParquetWriter(str(tmp), table.schema)
                writer.write_table(table)
        finally:
            if writer is not None:
                writer.close()


def _collect(chunks: Iterator[Rows]) -> Rows:
    parts = list(chunks)
    return Rows(
        index=np.concatenate([p.index for p in parts]),
        source=[s for p in parts for s in p.source],
        position=[q for p in parts for q in p.position],
        split=[s for p in parts for s in p.split],
        label=np.concatenate([p.label for p in parts]),
        embedding=np.concatenate([p.embedding for p in parts]),
    )


def _write_h5ad(out: Path, rows: Rows) -> None:
    anndata = require("anndata", "anndata")
    pandas = require("pandas", "anndata")
    obs = pandas.DataFrame({
        "index": rows.index, "source": rows.source, "position": [",".join(map(str, p)) for p in rows.position],
        "split": pandas.Categorical(rows.split), "label": rows.label,
    })  # fmt: skip
    obs.index = [f"{s}:{i}" for s, i in zip(rows.split, rows.index)]
    adata = anndata.AnnData(X=rows.embedding, obs=obs)
    with atomic_path(out) as tmp:
        adata.write_h5ad(tmp)


def _write_numpy(out: Path, rows: Rows) -> None:
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


def write_table(out: Path, chunks: Iterator[Rows], keep: bool) -> Rows | None:
    """The rows to ``out`` in the format its suffix names; ``keep``: collect them (returned) rather than stream."""
    if out.suffix == ".parquet" and not keep:
        _write_parquet(out, chunks)
        return None
    collected = _collect(chunks)
    if out.suffix == ".parquet":
        _write_parquet(out, iter([collected]))
    elif out.suffix == ".h5ad":
        _write_h5ad(out, collected)
    else:
        _write_numpy(out, collected)
    return collected


def embed_run(
    path: str | Path, data: str, out: str | Path, overwrite: bool = False, plot: bool = False,
    data_options: list[str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Embed every sample of ``data`` with the backbone of a run, checkpoint or export; write ``out``
    (and with ``plot`` a map of the embeddings beside it, ``OUT.png``). ``data`` starts from its own
    data options (:func:`icone.runs.evaluate.data_for`: the run's labels or patches are not its own),
    then ``data_options`` (``data.KEY=VALUE``)."""
    out = Path(out)
    if out.suffix not in FORMATS:
        raise UserError(f"--out '{out}' must end in one of {', '.join(FORMATS)} (the format is taken from the suffix)")
    if out.exists() and not overwrite:
        raise UserError(f"'{out}' already exists; choose another --out or pass --overwrite")
    if out.suffix == ".parquet":
        require("pyarrow", "parquet")
    elif out.suffix == ".h5ad":
        require("anndata", "anndata")
    item = load_checkpoint(path)
    config = build_config(item["config"])
    resolve(data)
    config = dataclasses.replace(config, data=data_for(config, data, data_options))
    dataset = load_dataset(config.data)
    check_fit(config, dataset)
    device = pick_device(config.train.device)
    backbone = load_backbone(path, device)
    collected = write_table(out, embedded_rows(backbone, dataset, device), keep=plot)
    summary: dict[str, Any] = {
        "out": str(out),
        "rows": len(dataset.train) + (len(dataset.test) if dataset.test is not None else 0),
    }
    if plot:
        from icone.evaluate.plots import plot_map

        labelled = (collected.label >= 0).all()
        colours = collected.label if labelled else np.asarray([s == "test" for s in collected.split], int)
        summary["plot"] = str(plot_map(collected.embedding, colours, out.with_suffix(".png"), f"{config.method} embeddings of {dataset.name}",
                                       "label" if labelled else "test split"))  # fmt: skip
    return summary
