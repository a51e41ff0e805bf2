"""``icone embed``: one row per sample of a source, with where it came from and its embedding.

The columns and metadata are :mod:`icone.runs.embed_table`'s (numeric ``z``, ``y``, ``x`` of patches in
stored voxels and physical units, a categorical ``label`` with the class names). Formats by suffix:

- ``.parquet`` (pyarrow; the ``parquet`` extra): written chunk by chunk, so a source larger than
  memory streams to the file;
- ``.h5ad`` (AnnData; the ``anndata`` extra): ``X`` the embeddings, ``obs`` the other columns,
  ``obsm`` the 2D map (``--plot``), ``uns["icone"]`` the metadata, for scanpy and napari;
- ``.npz`` (``features``, ``indices``, ``labels``, ``splits``, ``sources``, ``positions``) and
  ``.npy`` (structured records), as before.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from icone.config import build_config
from icone.data import load_dataset
from icone.data.sources import resolve
from icone.errors import UserError
from icone.export import load_backbone
from icone.runs.embed_table import embedded_rows, table_of, write_table
from icone.runs.evaluate import check_fit, data_for
from icone.runtime import pick_device
from icone.training.checkpoint import load_checkpoint
from icone.weights import require

FORMATS = (".parquet", ".h5ad", ".npz", ".npy")


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
    summary = write_table(out, embedded_rows(backbone, dataset, device), table_of(dataset, config, path), plot)
    summary["rows"] = len(dataset.train) + (len(dataset.test) if dataset.test is not None else 0)
    if plot:
        from icone.evaluate.plots import plot_map

        rows, mapped = summary.pop("collected")
        labelled = (rows.label >= 0).all()
        colours = rows.label if labelled else np.asarray([s == "test" for s in rows.split], int)
        summary["plot"] = str(plot_map(rows.embedding, colours, out.with_suffix(".png"), f"{config.method} embeddings of {dataset.name}",
                                       "label" if labelled else "test split", mapped=mapped))  # fmt: skip
    return summary
