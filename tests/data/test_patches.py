"""Patch sampling from lazy volumes: the grid, stable instances, offsets reproducible across epochs,
workers and --resume, patches per epoch, labels from a label volume with a held-out region, the
foreground sampler, and IConE's sparse table on 10^5 patches."""

import numpy as np
import pytest
import torch

from helpers import blob_volume, make_trainer, write_ome_zarr, write_zarr
from icone.build import build_method, resolve_config
from icone.config import DataConfig, build_config
from icone.data import IndexedDataset, load_dataset
from icone.data.patches import Grid, box_fractions, otsu
from icone.training.checkpoint import load_checkpoint
from icone.training.loader import EpochOrder, train_loader


def load(source, seed=0, **kw):
    return load_dataset(DataConfig(source=str(source), **kw), seed=seed)


@pytest.fixture
def store(tmp_path):
    volume, labels = blob_volume()
    return write_zarr(tmp_path / "blobs.zarr", volume, name="raw", labels=labels)


def test_grid_cells_and_offsets():
    grid = Grid((8, 8), (8, 8), (0, 0), (20, 36))
    assert grid.counts == (2, 4) and grid.size == 8
    assert grid.origins(np.arange(8)).tolist()[:5] == [[0, 0], [0, 8], [0, 16], [0, 24], [8, 0]]
    rng = np.random.default_rng(0)
    for cell in range(8):
        canonical = grid.origins(np.asarray([cell]))[0]
        for _ in range(50):
            moved = grid.jittered(cell, rng)
            assert (np.abs(moved - canonical) <= 4).all()  # the centre stays in the cell
            assert (moved >= 0).all() and (moved + 8 <= np.asarray([20, 36])).all()  # the patch in the region


def test_a_volume_becomes_stable_patch_instances(store):
    data = load(f"{store}#raw", patch=[16], normalize="none")
    samples = data.train.samples
    assert samples.shape == (2 * 3 * 3, 1, 16, 16, 16) and data.test is None
    assert samples.position(4) == (0, 16, 16) and samples.source(4) == f"{store}#raw"
    again = load(f"{store}#raw", patch=[16], normalize="none").train.samples
    assert np.array_equal(samples[4], again[4])  # canonical reads: the cell's own patch


def test_offsets_change_with_the_epoch_and_are_reproducible(store):
    a = IndexedDataset(load(f"{store}#raw", patch=[16]).train)
    b = IndexedDataset(load(f"{store}#raw", patch=[16]).train)
    origins = {}
    for epoch in (0, 1):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        assert torch.equal(a[5][0], b[5][0])
        origins[epoch] = a.samples.origin(5, epoch)
    assert origins[0] != origins[1]
    grid = load(f"{store}#raw", patch=[16], sampler="grid").train.samples
    assert grid.origin(5, 0) == grid.origin(5, 1) == grid.position(5)  # the grid sampler reads cells as they are
    other_seed = load(f"{store}#raw", seed=1, patch=[16]).train.samples
    assert other_seed.origin(5, 0) != a.samples.origin(5, 0) or other_seed.origin(5, 1) != a.samples.origin(5, 1)


def test_workers_read_what_the_main_process_reads(store):
    data = load(f"{store}#raw", patch=[16])
    train = IndexedDataset(data.train)
    train.set_epoch(3)
    batches = []
    for workers in (0, 2):
        loader = train_loader(train, 4, seed=0, epoch=3, num_workers=workers)
        batches.append([(x, i) for x, i, _ in loader])
    for (x0, i0), (x2, i2) in zip(*batches):
        assert torch.equal(i0, i2) and torch.equal(x0, x2)


def EpochDraw(n: int, num_samples: int, seed: int, epoch: int) -> EpochOrder:
    return EpochOrder(n, seed, epoch, batch_size=1, num_samples=num_samples)


def test_patches_per_epoch_draws_every_instance_before_repeating():
    draws = [list(EpochDraw(10, 4, seed=0, epoch=e)) for e in range(5)]
    assert all(len(d) == 4 for d in draws)
    first = draws[0] + draws[1] + draws[2][:2]
    assert sorted(first) == list(range(10))  # epochs 0-2 walk one permutation of the 10 rows
    assert draws == [list(EpochDraw(10, 4, seed=0, epoch=e)) for e in range(5)]


def test_patches_per_epoch_are_shared_between_processes():
    shares = []
    for rank in range(3):
        draw = EpochDraw(20, 10, seed=0, epoch=1)
        draw.rank, draw.world = rank, 3
        shares.append(list(draw))
    assert [len(s) for s in shares] == [3, 3, 3] and len(
        set([row for share in shares for row in share])
    ) == 9  # disjoint, tail dropped
    assert sorted([row for share in shares for row in share]) == sorted(list(EpochDraw(20, 10, seed=0, epoch=1))[:9])


def _config(store, tmp, *extra):
    items = [
        "model.backbone=smallcnn",
        "model.width=4",
        "train.batch_size=4",
        "train.epochs=2",
        "train.monitor_samples=8",
        "optim.warmup_epochs=0",
        "data.patch=16",
        "data.patches_per_epoch=8",
        *extra,
    ]
    config = build_config(None, items, flags={"data.source": f"{store}#raw"})
    data = load_dataset(config.data, seed=config.train.seed)
    return resolve_config(config, data), data


def test_resume_on_patches_equals_the_uninterrupted_run(store, tmp_path):
    config, data = _config(store, tmp_path)
    full = make_trainer(config, data, tmp_path / "full")
    assert full.steps_per_epoch == 2  # data.patches_per_epoch=8 at batch 4, of 18 instances
    full.fit()
    half = make_trainer(config, load_dataset(config.data, seed=0), tmp_path / "half")
    half.fit(until_epoch=1)
    resumed = make_trainer(config, load_dataset(config.data, seed=0), tmp_path / "half")
    resumed.restore(load_checkpoint(tmp_path / "half"))
    resumed.fit()
    assert resumed.step == full.step == 4
    for (name, a), b in zip(full.method.state_dict().items(), resumed.method.state_dict().values()):
        assert torch.equal(a, b), name


def test_labels_are_majority_classes_and_the_test_region_is_held_out(store):
    data = load(f"{store}#raw", patch=[8], labels=f"{store}#labels", normalize="none")
    _, labels = blob_volume()
    train, test = data.train.samples, data.test.samples
    for split, samples in ((data.train, train), (data.test, test)):
        for row in range(0, len(samples), 7):
            z, y, x = samples.position(row)
            patch = labels[z : z + 8, y : y + 8, x : x + 8]
            assert split.labels[row] == np.bincount(patch.reshape(-1), minlength=2).argmax()
    assert set(np.unique(data.train.labels)) == {0, 1}
    # held out along the longest axis (x, 56): the last 20% (at least a patch); no voxel in both splits
    cut = min(test.position(r)[2] for r in range(len(test)))
    assert cut == 45 and all(test.position(r)[2] >= cut for r in range(len(test)))
    for epoch in range(3):
        for row in range(len(train)):
            assert train.origin(row, epoch)[2] + 8 <= cut


def test_ome_zarr_labels_are_read_at_the_images_level(tmp_path):
    volume, labels = blob_volume((16, 64, 64))
    store = write_ome_zarr(tmp_path / "embryo.ome.zarr", volume[None], labels=labels)
    data = load(store, level=1, patch=[8], labels=f"zarr:{store}#labels/cells", normalize="none")
    assert data.train.samples.volumes[0].spatial_shape == (16, 32, 32)
    z, y, x = data.test.samples.position(0)
    coarse = labels[:, ::2, ::2][z : z + 8, y : y + 8, x : x + 8]
    assert data.test.labels[0] == np.bincount(coarse.reshape(-1), minlength=2).argmax()


def test_foreground_sampler_skips_empty_patches(store):
    every = load(f"{store}#raw", patch=[8], sampler="random", normalize="none")
    foreground = load(f"{store}#raw", patch=[8], sampler="foreground", normalize="none")
    _, labels = blob_volume()
    assert 0 < len(foreground.train) < len(every.train)
    for row in range(len(foreground.train)):
        z, y, x = foreground.train.samples.position(row)
        assert labels[z : z + 8, y : y + 8, x : x + 8].mean() > 0.02  # every kept patch holds part of a blob
    assert "cells kept" in foreground.info["sampler"]


def test_otsu_and_box_fractions():
    values = np.concatenate([np.full(100, 1.0), np.full(50, 9.0)])
    assert 1 < otsu(values) < 9
    mask = np.zeros((4, 6), bool)
    mask[:2, :3] = True
    assert box_fractions(mask, np.asarray([[0, 0], [0, 0]]), np.asarray([[2, 3], [4, 6]])).tolist() == [1.0, 0.25]


def test_a_hundred_thousand_patches_take_the_sparse_table(tmp_path):
    store = write_zarr(tmp_path / "big.zarr", np.random.default_rng(0).integers(0, 255, (100, 256, 256), np.uint8))
    config = build_config(
        None,
        [
            "model.backbone=smallcnn",
            "model.width=4",
            "train.batch_size=8",
            "train.epochs=1",
            "train.monitor_samples=8",
            "data.patch=4",
            "data.patches_per_epoch=16",
            "icone.table_init=normal",
            "eval.after_train=false",
        ],
        flags={"data.source": str(store)},
    )
    data = load_dataset(config.data)
    assert len(data.train) == 25 * 64 * 64 > 10**5
    config = resolve_config(config, data)
    method = build_method(config, num_instances=len(data.train))
    assert method.describe()["table_path"] == "sparse" and method.table.shape[0] == len(data.train)
    trainer = make_trainer(config, data, tmp_path / "run")
    trainer.fit()
    assert trainer.step == 2


def test_a_folder_with_data_patch_cuts_every_file_and_holds_out_files(tmp_path):
    import tifffile

    for c in ("a", "b"):
        (tmp_path / "big" / c).mkdir(parents=True)
        for i in range(5):
            image = np.random.default_rng(i).integers(0, 999, (2, 100 + 10 * i, 130), dtype=np.uint16)
            tifffile.imwrite(tmp_path / "big" / c / f"{i}.tif", image, metadata={"axes": "CYX"})
    data = load(tmp_path / "big", patch=[32], normalize="none")
    assert data.spatial_dims == 2 and data.in_channels == 2 and data.class_names == ["a", "b"]
    train, test = data.train.samples, data.test.samples
    train_files = {train.source(r) for r in range(len(train))}
    test_files = {test.source(r) for r in range(len(test))}
    assert len(train_files) == 8 and len(test_files) == 2 and not train_files & test_files
    assert sorted(set(data.train.labels)) == [0, 1]
    first = train.volumes[0]
    assert first.spatial_shape == (100, 130) and train.grids[0].counts == (3, 4)
