"""The GPU benchmark scripts stay runnable between GPU sessions: tiny sizes on the CPU."""

import json
import subprocess
import sys
from pathlib import Path

from helpers import write_tiny_npz

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_gpu_checks_smoke_writes_every_precision_and_checkpointing_case(tmp_path):
    done = run("benchmarks/gpu_checks.py", "--out", str(tmp_path), "--smoke")
    assert done.returncode == 0, done.stderr[-2000:]
    records = json.loads((tmp_path / "gpu_checks.json").read_text())
    records = records["records"] if isinstance(records, dict) else records
    assert {(r["dims"], r["activation_checkpointing"]) for r in records} == {
        (2, False),
        (2, True),
        (3, False),
        (3, True),
    }
    assert {r["precision"] for r in records} >= {"fp32"}  # bf16/fp16 only where the device runs them
    assert (tmp_path / "gpu_checks.md").is_file()


def test_gpu_bench_runs_a_tiny_grid_in_parallel_processes(tmp_path):
    npz = write_tiny_npz(tmp_path / "tiny.npz", 2)
    done = run(
        "benchmarks/gpu_bench.py", "--out", str(tmp_path / "grid"), "--data", str(npz), "--methods", "icone",
        "--batch-sizes", "4", "--seeds", "1", "--epochs", "1", "--backbone", "smallcnn", "--workers", "1",
        "model.width=4", "train.monitor_samples=16", "eval.knn_k=5",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((tmp_path / "grid" / "results.json").read_text())["rows"]
    assert sorted((r["method"], r["status"]) for r in rows) == [("icone", "ok")]
    assert (tmp_path / "grid" / "summary.md").is_file()
