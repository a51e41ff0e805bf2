"""``icone bench`` (grids of runs) and ``icone speed`` (step timings)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional

import typer

from icone.cli.app import ARGV, BACKBONE, DEBUG, app, console
from icone.errors import UserError

# the options both commands take
OVERRIDES = typer.Argument(
    None, metavar="[KEY=VALUE]...", help="Config overrides for every cell or record, e.g. model.norm=batch"
)
METHODS = typer.Option(
    None,
    "--methods",
    help="Comma-separated method names, e.g. icone,excb,simclr (default: the preset's; speed: the papers').",
)
BATCH_SIZES = typer.Option(None, "--batch-sizes", help="Comma-separated, e.g. 1,4,16.")


@app.command()
def bench(
    overrides: Optional[list[str]] = OVERRIDES,
    data: Optional[str] = typer.Option(None, "--data", help="One source for the whole grid (default: digits)."),
    methods: Optional[str] = METHODS,
    batch_sizes: Optional[str] = BATCH_SIZES,
    seeds: Optional[int] = typer.Option(None, "--seeds", help="Seeds per cell (0..N-1)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epoch budget, the same for every method."),
    imbalance: Optional[str] = typer.Option(
        None, "--imbalance", help="Comma-separated largest/smallest class ratios, e.g. 1,10,50."
    ),
    backbone: Optional[str] = BACKBONE,
    out: Optional[Path] = typer.Option(
        None, "--out", help="Grid folder (default: bench/quick or bench/paper); run again to continue a grid."
    ),
    lr_sweep: Optional[str] = typer.Option(
        None, "--lr-sweep", help="Factors on every method's lr, tried at --sweep-batch first, e.g. 0.3,1,3."
    ),
    sweep_batch: Optional[int] = typer.Option(None, "--sweep-batch", help="Batch size of the lr sweep (default 8)."),
    quick: bool = typer.Option(False, "--quick", help="Preset: a small grid for 2 CPU cores (the default)."),
    paper: bool = typer.Option(
        False, "--paper", help="Preset: the papers' methods at batch sizes 1-64, 3 seeds (for a GPU)."
    ),
) -> None:
    """Grid of methods x batch sizes x seeds (x imbalance ratios): results.csv/json, summary.md, plots.
    Step timings: 'icone speed'."""
    if quick and paper:
        raise UserError("--quick and --paper are two presets; pass one")
    from icone.bench import build_spec, run_bench

    spec = build_spec(
        preset="paper" if paper else "quick", data=data, methods=methods, batch_sizes=batch_sizes, seeds=seeds,
        epochs=epochs, imbalance=imbalance, backbone=backbone, out=out, overrides=list(overrides or []),
        command=_command_line(), lr_sweep=lr_sweep, sweep_batch=sweep_batch,
    )  # fmt: skip
    result = run_bench(spec, log=_log, debug=DEBUG["on"])
    _log(f"bench folder: {result['out']} ({', '.join(result['files'])})")


@app.command("speed")
def speed_command(
    overrides: Optional[list[str]] = OVERRIDES,
    methods: Optional[str] = METHODS,
    batch_sizes: Optional[str] = BATCH_SIZES,
    instances: Optional[str] = typer.Option(
        None, "--instances", help="Table sizes for methods whose cost grows with N, e.g. 1000,1000000."
    ),
    backbone: Optional[str] = BACKBONE,
    data: Optional[str] = typer.Option(
        None, "--data", help="A source for the input shape and the loader (default: random samples)."
    ),
    input_size: Optional[int] = typer.Option(None, "--input-size", help="Side of the random input (default 28)."),
    spatial_dims: Optional[int] = typer.Option(
        None, "--spatial-dims", help="2 or 3 (default 2, or the backbone's -2d/-3d)."
    ),
    repeats: Optional[int] = typer.Option(None, "--repeats", help="Timed steps per record (median; default 10)."),
    warmup: Optional[int] = typer.Option(None, "--warmup", help="Untimed steps before them (default 3)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for speed.json and speed.md (default bench/speed)."),
) -> None:
    """Time each method's training step against the backbone alone (speed.json, speed.md; docs/speed.md)."""
    from icone.bench import build_speed_spec, run_speed

    spec = build_speed_spec(
        methods=methods, batch_sizes=batch_sizes, instances=instances, backbone=backbone, data=data,
        input_size=input_size, spatial_dims=spatial_dims, repeats=repeats, warmup=warmup, out=out,
        overrides=list(overrides or []), command=_command_line(),
    )  # fmt: skip
    result = run_speed(spec, log=_log, debug=DEBUG["on"])
    _log(f"speed folder: {result['out']} ({', '.join(result['files'])})")


def _command_line() -> str:
    return "icone " + shlex.join(ARGV)


def _log(line: str) -> None:
    console.print(line, markup=False, highlight=False, soft_wrap=True)
