"""Patches per second read from Zarr, HDF5 and TIFF with 0, 2 and 4 DataLoader workers, against the
training step's rate (issue 13).

Usage: python benchmarks/data_throughput.py [FOLDER] [--batches N] [--readers zarr,hdf5,tiff]

Writes one 256 x 512 x 512 uint16 volume (128 MiB) as a Zarr store (64^3 chunks, zstd), an HDF5
dataset (64^3 chunks, uncompressed) and an uncompressed TIFF (memory-mapped) under FOLDER (a
temporary folder by default, removed afterwards), then reads 32^3 patches the way ``icone train``
does (random sampler: a seeded offset inside each cell; batch 16) and times N batches per reader
and worker count. The training step rate is IConE with the small CNN at batch 16 on 32^3 patches,
timed by icone's own TrainStep. Prints a table and appends JSON lines to
benchmarks/results/data_throughput.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SHAPE = (256, 512, 512)
BATCH = 16


def write_files(folder: Path) -> dict[str, str]:
    import h5py
    import tifffile
    import zarr

    rng = np.random.default_rng(0)
    volume = rng.poisson(100, SHAPE).astype(np.uint16)
    volume[64:192, 128:384, 128:384] += 400
    z = zarr.create_array(str(folder / "v.zarr"), shape=SHAPE, chunks=(64, 64, 64), dtype="uint16", overwrite=True)
    z[:] = volume
    with h5py.File(folder / "v.h5", "w") as f:
        f.create_dataset("raw", data=volume, chunks=(64, 64, 64))
    tifffile.imwrite(folder / "v.tif", volume)
    return {"zarr": str(folder / "v.zarr"), "hdf5": f"h5:{folder / 'v.h5'}#raw", "tiff": str(folder / "v.tif")}


def read_rate(source: str, workers: int, batches: int) -> float:
    from icone.config import DataConfig
    from icone.data import IndexedDataset, load_dataset
    from icone.training.loader import train_loader

    data = load_dataset(DataConfig(source=source, patch=[32], sampler="random"))
    train = IndexedDataset(data.train)
    train.set_epoch(1)
    loader = train_loader(train, BATCH, seed=0, epoch=1, num_workers=workers)
    iterator = iter(loader)
    next(iterator)  # workers started, files opened
    started = time.perf_counter()
    done = 0
    for _ in range(batches):
        try:
            next(iterator)
        except StopIteration:
            break
        done += 1
    return done * BATCH / (time.perf_counter() - started)


def step_rate(steps: int = 10) -> float:
    from icone.build import build_method, resolve_config, view_maker
    from icone.config import build_config
    from icone.data.arrays import Dataset, Split
    from icone.training.optim import build_optimizer
    from icone.training.step import Schedule, TrainStep

    samples = np.random.default_rng(0).normal(size=(64, 1, 32, 32, 32)).astype(np.float32)
    dataset = Dataset("patches", Split(samples, np.full(64, -1)), None)
    config = build_config(None, ["model.backbone=smallcnn", f"train.batch_size={BATCH}", "icone.table_init=normal"])
    config = resolve_config(config, dataset)
    method = build_method(config, num_instances=64)
    device = torch.device("cpu")
    step = TrainStep(
        method, build_optimizer(method, config), Schedule(1000), float(config.optim.lr), device, spatial_dims=3
    )
    views = view_maker(config, method, 0)
    x, index = torch.from_numpy(samples[:BATCH]), torch.arange(BATCH)
    step(x, index, views)
    started = time.perf_counter()
    for _ in range(steps):
        step(x, index, views)
    return steps * BATCH / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", nargs="?")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--readers", default="zarr,hdf5,tiff", help="which readers to time")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    folder = Path(args.folder) if args.folder else Path(tempfile.mkdtemp(prefix="icone-throughput-"))
    folder.mkdir(parents=True, exist_ok=True)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    records = []
    try:
        sources = write_files(folder)
        for name, source in sources.items():
            if name not in args.readers.split(","):
                continue
            for workers in (0, 2, 4):
                rate = read_rate(source, workers, args.batches)
                records.append({"reader": name, "workers": workers, "patches_per_s": round(rate, 1)})
                print(json.dumps(records[-1]), flush=True)
        records.append(
            {"reader": "train step (icone, smallcnn, batch 16, 32^3)", "patches_per_s": round(step_rate(), 1)}
        )
        print(json.dumps(records[-1]), flush=True)
    finally:
        if not args.folder:
            shutil.rmtree(folder, ignore_errors=True)
    with (out / "data_throughput.jsonl").open("a") as handle:
        for record in records:
            handle.write(json.dumps({**record, "time": time.strftime("%Y-%m-%d %H:%M")}) + "\n")


if __name__ == "__main__":
    main()
