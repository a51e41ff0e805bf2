"""The ``icone`` command: train, evaluate, embed, export, methods, data."""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from icone.errors import Interrupted, TrainingDiverged, UserError

app = typer.Typer(
    add_completion=False,
    help="Self-supervised representation learning on 2D images and 3D volumes that does not collapse at small batch sizes.",
)
console = Console()
err_console = Console(stderr=True)
DEBUG = {"on": bool(os.environ.get("ICONE_DEBUG"))}
ARGV: list[str] = []  # the arguments of this invocation (recorded in bench and speed reports)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks.")) -> None:
    DEBUG["on"] = DEBUG["on"] or debug


@app.command(context_settings={"allow_extra_args": False})
def train(
    overrides: Optional[list[str]] = typer.Argument(
        None, metavar="[KEY=VALUE]...", help="Config overrides, e.g. train.lr=1e-4 icone.diversity=frame"
    ),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config (e.g. runs/X/config.yaml)."),
    data: Optional[str] = typer.Option(
        None, "--data", help="digits, synthetic3d, a .npz, a folder, a volume; or npz:/folder:/volumes:PATH."
    ),
    method: Optional[str] = typer.Option(None, "--method", help="Method name (see 'icone methods')."),
    backbone: Optional[str] = typer.Option(
        None, "--backbone", help="resnet18, resnet50 or smallcnn (optionally -2d/-3d)."
    ),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Samples per step (1 to 64 is the point)."),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default: runs/<method>-<data>-<time>)."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run folder."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Train an encoder; ends with kNN and RankMe of the untrained vs the trained encoder."""
    from icone.config import build_config, load_yaml, merge, nest, parse_overrides

    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other; pass one")
    flags = {
        "data.source": data,
        "method": method,
        "model.backbone": backbone,
        "train.batch_size": batch_size,
        "train.epochs": epochs,
        "train.seed": seed,
    }
    items = list(overrides or [])
    values = load_yaml(config) if config is not None else None
    cfg = build_config(values, items, flags)  # a bad option fails here, before torch is imported
    explicit = merge(merge(values or {}, nest(flags)), parse_overrides(items, cfg.method))  # what the user gave
    from icone.runs import train_run

    summary = train_run(cfg, out=out, resume=resume, overwrite=overwrite, progress=progress, explicit=explicit)
    if "eval" in summary:
        _print_eval(summary["eval"], f"{summary['eval']['method']} on {summary['eval']['data']}")
    if "run_dir" in summary:
        console.print(f"run folder: [bold]{summary['run_dir']}[/bold] (backbone.pt, eval.json, metrics.jsonl, plots/)")


def _print_eval(result: dict, title: str) -> None:
    from icone.evaluate.report import format_table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("untrained", justify="right")
    table.add_column("trained", justify="right")
    for row in format_table(result):
        table.add_row(*row)
    console.print(table)
    if result.get("clusters"):
        console.print(
            "cluster occupancy (training set): " + ", ".join(f"{k} {v:.3f}" for k, v in result["clusters"].items())
        )


@app.command()
def evaluate(
    run: Path = typer.Argument(..., metavar="RUN_DIR_OR_CHECKPOINT"),
    data: Optional[str] = typer.Option(None, "--data", help="Evaluate on another source of the same kind."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as one JSON object."),
) -> None:
    """kNN, linear probe, RankMe and intrinsic dimension of a trained encoder (and of the untrained one)."""
    from icone.runs import evaluate_run

    result = evaluate_run(run, data)
    if as_json:
        print(json.dumps(result))
    else:
        _print_eval(result, f"{result['method']} on {result['data']}")


@app.command()
def embed(
    checkpoint: Path = typer.Argument(..., metavar="CHECKPOINT"),
    data: str = typer.Option(..., "--data"),
    out: Path = typer.Option(..., "--out", help="A .npz (features, indices, labels, splits) or .npy (records) file."),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Features of every sample of a source, with indices, labels and splits."""
    from icone.runs import embed_run

    console.print(f"embeddings written to {embed_run(checkpoint, data, out, overwrite)}")


@app.command()
def export(
    checkpoint: Path = typer.Argument(..., metavar="CHECKPOINT"),
    out: Path = typer.Option(..., "--out"),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Backbone weights plus the config to rebuild them (load with icone.load_backbone)."""
    from icone.runs import export_run

    console.print(f"backbone written to {export_run(checkpoint, out, overwrite)}")


@app.command()
def methods() -> None:
    """The methods, what they need from the batch and their smallest batch size."""
    from icone.methods import registry

    table = Table()
    for column in ("name", "family", "needs from the batch", "min batch", "paper"):
        table.add_column(column)
    for name, cls in registry().items():
        table.add_row(name, cls.family, cls.batch_needs, str(cls.min_batch_size), cls.paper)
    console.print(table)


@app.command("data")
def data_command(
    source: str = typer.Argument(..., metavar="SOURCE"),
    overrides: Optional[list[str]] = typer.Argument(
        None, metavar="[KEY=VALUE]...", help="data.* options, e.g. data.patch=64 data.axes=CZYX data.channels=0,2"
    ),
) -> None:
    """Inspect a data source: kind, axes, shape, channels, dtype, spacing, patches, sampler, memory, splits."""
    from icone.config import build_config
    from icone.data import load_dataset, resolve

    config = build_config(None, list(overrides or []), flags={"data.source": source})
    kind, _ = resolve(source)
    dataset = load_dataset(config.data, seed=config.train.seed)
    console.print(
        f"source: {source} ({kind}), {dataset.spatial_dims}D, {dataset.in_channels} channel(s), sample shape {dataset.spatial_shape}"
    )
    for key, value in dataset.info.items():
        console.print(f"{key}: {value}", soft_wrap=True, markup=False, highlight=False)
    for name, split in (("train", dataset.train), ("test", dataset.test)):
        if split is None:
            continue
        counts = {int(c): int((split.labels == c).sum()) for c in sorted(set(split.labels.tolist()))}
        console.print(f"{name}: {len(split)} samples; per class: {counts if split.labelled else 'unlabelled'}")


@app.command()
def bench(
    overrides: Optional[list[str]] = typer.Argument(
        None,
        metavar="[KEY=VALUE]...",
        help="Config overrides for every cell, e.g. model.norm=batch optim.lr_scaling=linear",
    ),
    data: Optional[str] = typer.Option(None, "--data", help="One source for the whole grid (default: digits)."),
    methods: Optional[str] = typer.Option(
        None, "--methods", help="Comma-separated method names, e.g. icone,excb,simclr."
    ),
    batch_sizes: Optional[str] = typer.Option(None, "--batch-sizes", help="Comma-separated, e.g. 1,2,4,8."),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="Seeds per cell (0..N-1)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epoch budget, the same for every method."),
    imbalance: Optional[str] = typer.Option(
        None, "--imbalance", help="Comma-separated largest/smallest class ratios, e.g. 1,10,50."
    ),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="One backbone for every method."),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Grid folder (default: bench/quick or bench/paper); run again to continue a grid."
    ),
    quick: bool = typer.Option(False, "--quick", help="Preset: a small grid for 2 CPU cores (the default)."),
    paper: bool = typer.Option(
        False, "--paper", help="Preset: the papers' methods at batch sizes 1-64, 3 seeds (for a GPU)."
    ),
    speed: bool = typer.Option(
        False, "--speed", help="Time training steps instead: the same as 'icone speed' (its options go after --speed)."
    ),
    instances: Optional[str] = typer.Option(None, "--instances", help="With --speed: see 'icone speed --help'."),
    input_size: Optional[int] = typer.Option(None, "--input-size", help="With --speed."),
    spatial_dims: Optional[int] = typer.Option(None, "--spatial-dims", help="With --speed."),
    repeats: Optional[int] = typer.Option(None, "--repeats", help="With --speed."),
    warmup: Optional[int] = typer.Option(None, "--warmup", help="With --speed."),
) -> None:
    """Grid of methods x batch sizes x seeds (x imbalance ratios): results.csv/json, summary.md, plots."""
    grid_only = {
        "--seeds": seeds,
        "--epochs": epochs,
        "--imbalance": imbalance,
        "--quick": quick or None,
        "--paper": paper or None,
    }
    speed_only = {
        "--instances": instances,
        "--input-size": input_size,
        "--spatial-dims": spatial_dims,
        "--repeats": repeats,
        "--warmup": warmup,
    }
    if speed:
        given = [flag for flag, value in grid_only.items() if value is not None]
        if given:
            raise UserError(
                f"{', '.join(given)} belong{'s' if len(given) == 1 else ''} to the accuracy grid, not to --speed; drop {'it' if len(given) == 1 else 'them'}"
            )
        return speed_command(
            overrides, methods, batch_sizes, instances, backbone, data, input_size, spatial_dims, repeats, warmup, out
        )
    given = [flag for flag, value in speed_only.items() if value is not None]
    if given:
        raise UserError(
            f"{', '.join(given)} only go{'es' if len(given) == 1 else ''} with --speed; add --speed or drop {'it' if len(given) == 1 else 'them'}"
        )
    if quick and paper:
        raise UserError("--quick and --paper are two presets; pass one")
    from icone.bench import build_spec, run_bench

    spec = build_spec(
        preset="paper" if paper else "quick",
        data=data,
        methods=methods,
        batch_sizes=batch_sizes,
        seeds=seeds,
        epochs=epochs,
        imbalance=imbalance,
        backbone=backbone,
        out=out,
        overrides=list(overrides or []),
        command=_command_line(),
    )
    result = run_bench(spec, log=_log, debug=DEBUG["on"])
    _log(f"bench folder: {result['out']} ({', '.join(result['files'])})")


@app.command("speed")
def speed_command(
    overrides: Optional[list[str]] = typer.Argument(
        None, metavar="[KEY=VALUE]...", help="Config overrides for every record."
    ),
    methods: Optional[str] = typer.Option(
        None, "--methods", help="Comma-separated method names (default: the papers' methods)."
    ),
    batch_sizes: Optional[str] = typer.Option(None, "--batch-sizes", help="Comma-separated, e.g. 1,4,16."),
    instances: Optional[str] = typer.Option(
        None, "--instances", help="Table sizes for methods whose cost grows with N, e.g. 1000,1000000."
    ),
    backbone: Optional[str] = typer.Option(
        None, "--backbone", help="One backbone for every method (default smallcnn)."
    ),
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
        methods=methods,
        batch_sizes=batch_sizes,
        instances=instances,
        backbone=backbone,
        data=data,
        input_size=input_size,
        spatial_dims=spatial_dims,
        repeats=repeats,
        warmup=warmup,
        out=out,
        overrides=list(overrides or []),
        command=_command_line(),
    )
    result = run_speed(spec, log=_log, debug=DEBUG["on"])
    _log(f"speed folder: {result['out']} ({', '.join(result['files'])})")


def _command_line() -> str:
    import shlex

    return "icone " + shlex.join(ARGV)


def _log(line: str) -> None:
    console.print(line, markup=False, highlight=False, soft_wrap=True)


def _is_main_process() -> bool:
    """Rank 0 under ``torchrun`` (read from the environment: no torch import for an error line)."""
    return int(os.environ.get("RANK", "0")) == 0


def _print_error(line: str) -> None:
    """One line on stderr; under ``torchrun`` from rank 0 only (every process raises the same error)."""
    if _is_main_process():
        err_console.print(line, markup=False, highlight=False, soft_wrap=True)


class _OneLineWarnings(logging.Handler):
    """icone's warnings as ``warning: ...`` lines on stderr (rank 0 only)."""

    def emit(self, record: logging.LogRecord) -> None:
        _print_error(f"warning: {record.getMessage()}")


def _usage_line(err: Exception) -> str:
    """Typer's usage error (with its "did you mean") as one line, naming the command's --help."""
    message = " ".join(str(err.format_message()).split())  # type: ignore[attr-defined]
    ctx = getattr(err, "ctx", None)
    command = getattr(ctx, "command_path", None) or "icone"
    return f"error: {message}; see '{command} --help'"


def _os_error_line(err: OSError) -> str:
    where = f" '{err.filename}'" if err.filename else ""
    if err.errno == errno.ENOSPC:
        return f"error: the disk is full (writing{where}); free some space and run the command again"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"error: no permission to write{where} ({err.strerror}); choose another --out"
    return f"error: {err.strerror or type(err).__name__}{where}"


def _is_out_of_memory(err: BaseException) -> bool:
    return (
        isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError" or "out of memory" in str(err).lower()
    )


def run(argv: list[str] | None = None) -> int:
    """Run the ``icone`` command; returns the exit code. Every error is one line (``--debug``: the traceback).

    2: usage, input or I/O; 1: a failure during training (a diverged loss, out of memory, an internal
    error); 130: Ctrl-C.
    """
    logger = logging.getLogger("icone")
    if not any(isinstance(h, _OneLineWarnings) for h in logger.handlers):
        logger.addHandler(_OneLineWarnings())
        logger.propagate = False
    DEBUG["on"] = bool(os.environ.get("ICONE_DEBUG"))
    args = list(sys.argv[1:] if argv is None else argv)
    ARGV[:] = args
    leading = args[: next((i for i, a in enumerate(args) if not a.startswith("-")), len(args))]
    debug = DEBUG["on"] or "--debug" in leading
    try:
        code = app(args=argv, prog_name="icone", standalone_mode=False)
        if code == 130:  # Typer turns a Ctrl-C outside a run into this return value
            _print_error("interrupted")
        return code if isinstance(code, int) else 0
    except Interrupted as err:
        if debug:
            raise
        _print_error(str(err))
        return 130
    except KeyboardInterrupt:
        _print_error("interrupted")
        return 130
    except UserError as err:
        if debug:
            raise
        _print_error(f"error: {err}")
        return 2
    except TrainingDiverged as err:
        if debug:
            raise
        _print_error(f"training stopped: {err}")
        return 1
    except typer.Exit as err:
        return int(err.exit_code)
    except typer.Abort:
        _print_error("aborted")
        return 1
    except Exception as err:
        if debug:
            raise
        if hasattr(err, "format_message") and isinstance(
            getattr(err, "exit_code", None), int
        ):  # Typer's (or click's) usage errors
            _print_error(_usage_line(err))
            return int(err.exit_code) if err.exit_code else 2  # type: ignore[attr-defined]
        if _is_out_of_memory(err):
            _print_error(
                "error: out of memory; lower --batch-size, the sample or patch size (data.resize=...), "
                "or the backbone (model.width=..., --backbone smallcnn)"
            )
            return 1
        if isinstance(err, OSError):
            _print_error(_os_error_line(err))
            return 2
        first = str(err).splitlines()[0] if str(err) else ""
        _print_error(
            f"internal error: {type(err).__name__}: {first}; run 'icone --debug ...' for the traceback and report it"
        )
        return 1


def main() -> None:
    """Entry point of the ``icone`` command."""
    sys.exit(run())


if __name__ == "__main__":
    main()
