"""The papers' scale on one GPU within a wall-clock budget: an ``icone bench`` grid whose cells run in
parallel processes that share the GPU (small models leave most of an H200 idle; one process per
cell keeps it busy), then the grid's usual reports and plots.

    python benchmarks/gpu_bench.py --out OUT --data synthetic2d --methods icone,excb,simclr,... \\
        --batch-sizes 1,2,4,8,16,32,64 --seeds 3 --epochs 10 --backbone resnet18 --workers 12 \\
        --budget-seconds 220 [KEY=VALUE ...]

Every cell is an ordinary run folder under ``OUT/cells`` (``icone evaluate`` works on it); cells not
finished within the budget are reported as such, never silently dropped. Run it again with the same
arguments to continue (finished cells are read back).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from pathlib import Path
from typing import Any


def _worker(spec: Any, cells: Any, results: Any) -> None:
    import torch

    from icone.bench.cells import run_cell

    torch.backends.cudnn.benchmark = True
    while True:
        try:
            cell = cells.get_nowait()
        except Exception:
            return
        started = time.perf_counter()
        row, how = run_cell(spec, cell)
        row["wall_seconds"] = time.perf_counter() - started
        results.put((row, how))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", default="synthetic2d")
    parser.add_argument("--methods", default="icone,excb,simclr,moco,byol,vicreg,barlow_twins,dino")
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32,64")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument(
        "--budget-seconds", type=float, default=220.0, help="stop starting cells after this; end running ones at 1.15x"
    )
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE for every cell")
    args = parser.parse_args()

    from icone.bench.cells import machine_info, row_order
    from icone.bench.grid import build_spec, grid_cells
    from icone.bench.plots import plot_results
    from icone.bench.report import COLUMNS, summary_markdown, write_results
    from icone.files import atomic_write_text

    spec = build_spec(preset="paper", data=args.data, methods=args.methods, batch_sizes=args.batch_sizes, seeds=args.seeds,
                      epochs=args.epochs, backbone=args.backbone, out=args.out, overrides=args.overrides,
                      command="python benchmarks/gpu_bench.py " + " ".join(__import__("shlex").quote(a) for a in __import__("sys").argv[1:]))  # fmt: skip
    (args.out / "cells").mkdir(parents=True, exist_ok=True)
    cells = grid_cells(spec)
    # the slowest cells first (batch 1 has the most steps), so the budget cuts the cheap ones last
    cells.sort(key=lambda c: (c.batch_size, c.seed))
    context = mp.get_context("spawn")
    queue, results = context.Queue(), context.Queue()
    for cell in cells:
        queue.put(cell)
    started = time.monotonic()
    workers = [context.Process(target=_worker, args=(spec, queue, results), daemon=True) for _ in range(args.workers)]
    for worker in workers:
        worker.start()
    rows: list[dict[str, Any]] = []
    environment = machine_info(spec)
    while len(rows) < len(cells):
        elapsed = time.monotonic() - started
        if elapsed > args.budget_seconds:
            while not queue.empty():  # nothing new starts after the budget
                try:
                    queue.get_nowait()
                except Exception:
                    break
        if elapsed > 1.15 * args.budget_seconds or (not any(w.is_alive() for w in workers) and results.empty()):
            break
        try:
            row, how = results.get(timeout=2)
        except Exception:
            continue
        rows.append(row)
        print(
            f"[{len(rows)}/{len(cells)} {elapsed:.0f}s] {row['cell']}: {row['status']} kNN {row['knn_accuracy']} ({how})",
            flush=True,
        )
        write_results(args.out, spec, sorted(rows, key=row_order(spec)), environment)
    for worker in workers:
        worker.terminate()
    done = {r["cell"] for r in rows}
    for cell in cells:
        if cell.name not in done:
            rows.append({**{k: None for k in COLUMNS}, "cell": cell.name, "method": cell.method, "batch_size": cell.batch_size,
                         "seed": cell.seed, "imbalance": cell.imbalance, "status": "not run: out of the time budget"})  # fmt: skip
    rows.sort(key=row_order(spec))
    write_results(args.out, spec, rows, environment)
    atomic_write_text(args.out / "summary.md", summary_markdown(spec, rows, environment))
    plot_results(rows, args.out / "plots")
    print(
        f"{sum(r['status'] == 'ok' for r in rows)}/{len(cells)} cells ok in {time.monotonic() - started:.0f} s; {args.out}/summary.md"
    )


if __name__ == "__main__":
    main()
