"""Peak resident memory of ``icone train`` on a large uint16 Zarr volume (issue 13).

Usage:
    python benchmarks/data_memory.py make STORE GIB          # write a GIB GiB uint16 volume (64^3 chunks, zstd)
    python benchmarks/data_memory.py train STORE [KEY=VALUE ...]   # run icone train on it, sample its memory

``train`` runs ``icone train --data STORE --backbone smallcnn --epochs 1 data.patch=32
data.patches_per_epoch=256 eval.after_train=false icone.table_init=normal`` (plus the options
given) in a subprocess, samples the resident memory of it and its DataLoader workers every 50 ms,
and prints one JSON line: the peak of the main process, the peak of the whole process tree, the
volume's size and the number of instances. Appends it to benchmarks/results/data_memory.jsonl.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHUNK = 64


def make(store: Path, gib: float) -> None:
    """A volume ``D x 1024 x 1024`` (2 GiB: D = 1024) of noise around 100 with brighter slabs, written slab by slab."""
    import zarr

    depth = int(round(gib * 2**30 / (2 * 1024 * 1024) / CHUNK)) * CHUNK
    shape = (depth, 1024, 1024)
    z = zarr.create_array(str(store), shape=shape, chunks=(CHUNK,) * 3, dtype="uint16", overwrite=True)
    rng = np.random.default_rng(0)
    base = rng.poisson(100, (CHUNK, 1024, 1024)).astype(np.uint16)
    for k, start in enumerate(range(0, depth, CHUNK)):
        slab = np.roll(base, k * 7, axis=2)
        if k % 3 == 0:
            slab[:, 256:512, 256:768] += 400  # something to see: every third slab has a bright block
        z[start : start + CHUNK] = slab
    print(json.dumps({"store": str(store), "shape": shape, "gib": 2 * np.prod(shape) / 2**30}))


def tree_rss(process) -> tuple[int, int]:
    import psutil

    try:
        main = process.memory_info().rss
        children = sum(c.memory_info().rss for c in process.children(recursive=True))
    except psutil.Error:
        return 0, 0
    return main, main + children


def train(store: Path, extra: list[str]) -> None:
    import psutil
    import zarr

    shape = zarr.open(str(store), mode="r").shape
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            sys.executable,
            "-m",
            "icone",
            "train",
            "--data",
            str(store),
            "--backbone",
            "smallcnn",
            "--epochs",
            "1",
            "--out",
            f"{tmp}/run",
            "--no-progress",
            "data.patch=32",
            "data.patches_per_epoch=256",
            "eval.after_train=false",
            "icone.table_init=normal",
            *extra,
        ]
        started = time.time()
        child = subprocess.Popen(args, env={**os.environ, "OMP_NUM_THREADS": "1"})
        process = psutil.Process(child.pid)
        peak_main = peak_tree = 0
        while child.poll() is None:
            main, total = tree_rss(process)
            peak_main, peak_tree = max(peak_main, main), max(peak_tree, total)
            time.sleep(0.05)
        seconds = time.time() - started
    record = {
        "store": str(store),
        "volume_gib": round(2 * float(np.prod(shape)) / 2**30, 2),
        "instances": int(np.prod([s // 32 for s in shape])),
        "options": extra,
        "peak_rss_main_mib": round(peak_main / 2**20),
        "peak_rss_tree_mib": round(peak_tree / 2**20),
        "seconds": round(seconds, 1),
        "exit": child.returncode,
    }
    print(json.dumps(record))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    with (out / "data_memory.jsonl").open("a") as handle:
        handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    command, store = sys.argv[1], Path(sys.argv[2])
    if command == "make":
        make(store, float(sys.argv[3]))
    else:
        train(store, sys.argv[3:])
