"""``icone embed`` for scanpy and napari (issue 23, item 9): patch positions as numeric z, y, x in stored
voxels and physical units, the label categorical with class names, the metadata in ``uns`` and in the
Parquet schema, the 2D map in ``obsm``; read back by anndata and pyarrow without parsing strings."""

import json

import numpy as np
import pytest

from helpers import FAST, blob_volume, run_cli, write_ome_zarr


@pytest.fixture
def embryo(tmp_path, capsys):
    """An OME-Zarr image (z 2, y 0.5, x 0.5 micrometer) with its labels, and a run trained on it."""
    volume, labels = blob_volume((16, 48, 64))
    store = write_ome_zarr(tmp_path / "embryo.ome.zarr", volume[None], scale=(2.0, 0.5, 0.5), labels=labels)
    args = ["train", "--data", store, f"data.labels={store}#labels/cells", "data.patch=8,16,16", "data.sampler=grid"]
    code, _, err = run_cli(
        [*args, "--epochs", "1", "--batch-size", "4", *FAST, "eval.after_train=false", "--out", tmp_path / "run"],
        capsys,
    )
    assert code == 0, err
    return store, tmp_path / "run"


def test_the_h5ad_places_patches_as_napari_points(embryo, tmp_path, capsys):
    import anndata

    store, run = embryo
    labels = f"data.labels={store}#labels/cells"  # another source's labels are its own options, as the patches are
    code, _, err = run_cli(
        ["embed", run, "--data", store, labels, "data.patch=8,16,16", "--out", tmp_path / "e.h5ad", "--plot"], capsys
    )
    assert code == 0, err
    adata = anndata.read_h5ad(tmp_path / "e.h5ad")
    obs, meta = adata.obs, adata.uns["icone"]
    for axis in ("z", "y", "x", "z_physical", "y_physical", "x_physical"):
        assert np.issubdtype(obs[axis].dtype, np.number), axis
    assert obs["label"].dtype.name == "category" and list(obs["label"].cat.categories) == ["0", "1"]
    assert meta["axes"] == "zyx" and list(meta["patch"]) == [8, 16, 16] and list(meta["spacing"]) == [2.0, 0.5, 0.5]
    assert meta["unit"] == "micrometer" and meta["level"] == 0 and meta["source"] == str(store)
    assert meta["run"] == str(run) and meta["backbone"].startswith("smallcnn")
    points = obs[["z", "y", "x"]].to_numpy()  # napari: Points(points, scale=spacing) over the image
    assert (points % [8, 16, 16] == 0).all() and points[:, 2].max() > 32  # stored voxels, the test region included
    np.testing.assert_allclose(points * np.asarray(meta["spacing"]), obs[["z_physical", "y_physical", "x_physical"]])
    assert adata.obsm["X_pca"].shape == (adata.n_obs, 2)  # the map of --plot (PCA without umap-learn)


def test_the_parquet_carries_the_same_columns_and_metadata(embryo, tmp_path, capsys):
    import pyarrow.parquet as pq

    store, run = embryo
    options = [f"data.labels={store}#labels/cells", "data.patch=8,16,16"]
    assert run_cli(["embed", run, "--data", store, *options, "--out", tmp_path / "e.parquet"], capsys)[0] == 0
    table = pq.read_table(tmp_path / "e.parquet")
    meta = json.loads(table.schema.metadata[b"icone"])
    assert meta["patch"] == [8, 16, 16] and meta["stride"] == [8, 16, 16] and meta["spacing"] == [2.0, 0.5, 0.5]
    frame = table.to_pandas()
    assert frame["label"].dtype.name == "category" and set(frame["label"]) <= {"0", "1"}
    assert frame["z"].dtype == np.int64 and frame["x_physical"].dtype == np.float64
