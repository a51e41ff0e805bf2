"""GPU checks: training images/s and peak memory of a ResNet-18 under each precision, with and without
activation checkpointing, in 2D (224^2) and 3D (64^3). One IConE training step (two views, the
table, AdamW) through icone's own train step (``setup.train_step``), median of timed steps after warm-up, CUDA-synchronised.

    python benchmarks/gpu_checks.py --out OUT [--smoke]

Writes OUT/gpu_checks.json and OUT/gpu_checks.md. ``--smoke`` runs tiny sizes on whatever device is
there (the test suite uses it on the CPU, to keep this script working between GPU sessions).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from icone import build
from icone.bench.measure import describe_device, environment_of
from icone.config import build_config
from icone.data import Dataset, Split
from icone.runtime import native_bf16

CASES = [  # (spatial dims, side, batch)
    (2, 224, 64),
    (3, 64, 8),
]
PRECISIONS = ["fp32", "bf16", "fp16"]


def time_case(
    dims: int,
    side: int,
    batch: int,
    precision: str,
    checkpointing: bool,
    device: torch.device,
    repeats: int,
    warmup: int,
    width: int,
) -> dict:
    torch.manual_seed(0)
    samples = np.random.default_rng(0).standard_normal((4 * batch, 1, *(side,) * dims), dtype=np.float32)
    dataset = Dataset("random", Split(samples, np.full(len(samples), -1)), None)
    config = build_config(None, [
        "method=icone", "model.backbone=resnet18", f"model.width={width}", "icone.table_path=dense",
        f"train.batch_size={batch}", f"train.precision={precision}", f"train.activation_checkpointing={checkpointing}",
        f"train.device={device}", "optim.lr=1e-4", "optim.grad_clip=3.0",
    ])  # fmt: skip
    setup = build.setup(config, dataset, steps=warmup + repeats)
    step, views = setup.train_step, setup.views[0]
    x = torch.randn(batch, 1, *(side,) * dims, device=device)
    index = torch.arange(batch, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        step(x, index, views)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"dims": dims, "input": f"{side}^{dims}", "batch": batch, "precision": step.precision, "activation_checkpointing": checkpointing,
            "step_seconds": median, "images_per_second": batch / median, "peak_memory_mib": peak, "skipped_steps": step.skipped_steps}  # fmt: skip


def markdown(records: list[dict], info: dict) -> str:
    lines = ["# GPU checks: ResNet-18 training throughput and memory", "",
             f"Date {info['date']}; device {info['device']}; torch {info['torch']}.", "",
             "| input | batch | precision | activation checkpointing | step ms | images/s | peak MiB |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in records:
        peak = "-" if r.get("peak_memory_mib") is None else f"{r['peak_memory_mib']:.0f}"
        if "error" in r:
            lines.append(
                f"| {r['input']} | {r['batch']} | {r['precision']} | {r['activation_checkpointing']} | {r['error']} | - | - |"
            )
        else:
            lines.append(f"| {r['input']} | {r['batch']} | {r['precision']} | {r['activation_checkpointing']} | "
                         f"{r['step_seconds'] * 1e3:.1f} | {r['images_per_second']:.0f} | {peak} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, any device")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cases = [(2, 16, 2), (3, 8, 2)] if args.smoke else CASES
    width, repeats, warmup = (8, 2, 1) if args.smoke else (64, 10, 3)
    precisions = PRECISIONS if device.type == "cuda" else ["fp32", "bf16"]
    args.out.mkdir(parents=True, exist_ok=True)
    info = {**environment_of(device), "device": describe_device(device), "bf16_native": native_bf16(device)}
    records = []
    for dims, side, batch in cases:
        for precision in precisions:
            for checkpointing in (False, True):
                try:
                    record = time_case(dims, side, batch, precision, checkpointing, device, repeats, warmup, width)
                except torch.cuda.OutOfMemoryError as err:
                    record = {"dims": dims, "input": f"{side}^{dims}", "batch": batch, "precision": precision,
                              "activation_checkpointing": checkpointing, "error": f"out of memory ({str(err).splitlines()[0][:60]})"}  # fmt: skip
                records.append(record)
                print(json.dumps(record), flush=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    (args.out / "gpu_checks.json").write_text(json.dumps({"info": info, "records": records}, indent=2))
    (args.out / "gpu_checks.md").write_text(markdown(records, info))


if __name__ == "__main__":
    main()
