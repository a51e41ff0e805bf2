"""``icone train``, ``evaluate``, ``embed``, ``export``, ``methods``, ``data``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from icone.cli.app import BACKBONE, app, console
from icone.errors import UserError

TRAIN_EXAMPLE = (
    "icone train --data cells/ --method icone train.epochs=50 optim.lr=3e-4 data.channels=0,2 icone.diversity=frame"
)


def train_help() -> str:
    """``icone train --help``: the option groups (the fields of each config section) and an example."""
    import dataclasses

    from icone.config import Config

    lines = ["Train an encoder; ends with kNN and RankMe of the untrained vs the trained encoder.", ""]
    lines.append("Options are KEY=VALUE after the command (or a YAML file, --config), in groups:")
    for section in ("data", "views", "model", "optim", "train", "eval"):
        names = [f.name for f in dataclasses.fields(getattr(Config(), section))]
        lines += ["", f"{section}.*: {', '.join(names)}"]
    lines += [
        "",
        "METHOD.key: the chosen method's options, e.g. icone.diversity=frame (icone methods; docs/methods.md)",
    ]
    lines += ["", f"Example: {TRAIN_EXAMPLE}"]
    return "\n".join(lines)


@app.command(context_settings={"allow_extra_args": False}, help=train_help())
def train(
    overrides: Optional[list[str]] = typer.Argument(
        None,
        metavar="[KEY=VALUE]...",
        help="Config overrides, e.g. optim.lr=1e-4 train.epochs=50 icone.diversity=frame",
    ),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config (e.g. runs/X/config.yaml)."),
    data: Optional[str] = typer.Option(
        None, "--data", help="digits, synthetic3d, a .npz, a folder, a volume; or npz:/folder:/volumes:PATH."
    ),
    method: Optional[str] = typer.Option(
        None,
        "--method",
        help="Method name (see 'icone methods'), or auto: chosen by short trial runs (docs/tuning.md).",
    ),
    backbone: Optional[str] = BACKBONE,
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Samples per step (1 to 64 is the point)."),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default: runs/<method>-<data>-<time>)."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run folder."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Train an encoder (the help text is :func:`train_help`)."""
    from icone.config import build_config, given, load_yaml

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
    explicit = given(values, flags, items, cfg.method)  # what the user gave
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
    table.add_column(
        "init" if str(result.get("baseline_weights", "")).startswith("model.init") else "untrained", justify="right"
    )
    table.add_column("trained", justify="right")
    for row in format_table(result):
        table.add_row(*row)
    console.print(table)
    if result.get("collapse"):
        console.print(result["collapse"]["text"], markup=False, highlight=False, soft_wrap=True)
    tuning = result.get("tuning") or {}
    if "method" in tuning:
        console.print(
            f"method=auto chose {tuning['method']['method']}: {tuning['method']['reason']}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    if "factor" in tuning:
        line = f"optim.lr=auto chose x{tuning['factor']:g} of the default lr ({tuning['base_lr']:.3g} at batch 64): {tuning['reason']}"
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    if result.get("clusters"):
        console.print(
            "cluster occupancy (training set): " + ", ".join(f"{k} {v:.3f}" for k, v in result["clusters"].items())
        )


DATA_OPTIONS = (
    "data.* options of the --data source (its own: not the run's labels or patches), e.g. data.labels=... data.patch=64"
)


@app.command()
def evaluate(
    run: Path = typer.Argument(..., metavar="RUN_DIR_OR_CHECKPOINT"),
    overrides: Optional[list[str]] = typer.Argument(None, metavar="[data.KEY=VALUE]...", help=DATA_OPTIONS),
    data: Optional[str] = typer.Option(None, "--data", help="Evaluate on another source of the same kind."),
    label_fractions: Optional[str] = typer.Option(
        None, "--label-fractions", help="Few-label probes on these shares of the labels, e.g. 0.01,0.1,1."
    ),
    shots: Optional[str] = typer.Option(
        None, "--shots", help="Few-label probes with this many labels per class, e.g. 1,5,10."
    ),
    repeats: Optional[int] = typer.Option(None, "--repeats", help="Stratified draws per few-label budget (default 5)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as one JSON object."),
) -> None:
    """kNN, linear probe, RankMe and intrinsic dimension of a trained encoder and of its starting point; few-label probes."""
    from icone.bench.grid import parse_list
    from icone.runs import evaluate_run

    fractions = parse_list(label_fractions, float, "--label-fractions")
    result = evaluate_run(run, data, fractions, parse_list(shots, int, "--shots"), repeats, list(overrides or []))
    if as_json:
        from icone.files import json_text

        print(json_text(result, indent=None))
        return
    _print_eval(result, f"{result['method']} on {result['data']}")
    if "few_label" in result:
        _print_few_label(result)


def few_label_lines(result: dict) -> list[str]:
    """The few-label table as plain lines: balanced accuracy of the linear probe and kNN accuracy, mean ± std over draws."""
    baseline = result["baseline"].get("few_label", {})
    head = ("labels", "per draw", "untrained linear", "trained linear", "untrained kNN", "trained kNN")
    widths = (15, 8, 16, 16, 14, 14)

    def cell(entry: dict | None, key: str) -> str:
        return "-" if entry is None else f"{entry[key]['mean']:.3f} ± {entry[key]['std']:.3f}"

    rows = [head]
    for group, label in (("fractions", "{} of labels"), ("shots", "{} per class")):
        for budget, entry in result["few_label"][group].items():
            before = baseline.get(group, {}).get(budget)
            name = label.format(f"{float(budget):.0%}" if group == "fractions" else budget)
            rows.append((name, str(entry["labels_used"]), cell(before, "linear_balanced_accuracy"), cell(entry, "linear_balanced_accuracy"),
                         cell(before, "knn_accuracy"), cell(entry, "knn_accuracy")))  # fmt: skip
    return [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
        for row in rows
    ]


def _print_few_label(result: dict) -> None:
    for line in few_label_lines(result):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


@app.command()
def embed(
    checkpoint: Path = typer.Argument(..., metavar="CHECKPOINT"),
    overrides: Optional[list[str]] = typer.Argument(None, metavar="[data.KEY=VALUE]...", help=DATA_OPTIONS),
    data: str = typer.Option(..., "--data", help="The source to embed (any source the backbone fits)."),
    out: Path = typer.Option(..., "--out", help="FILE.parquet (streamed), FILE.h5ad (AnnData), FILE.npz or FILE.npy."),
    plot: bool = typer.Option(
        False, "--plot", help="Also a 2D map of the embeddings (UMAP, or PCA without umap-learn): OUT.png."
    ),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """One row per sample: index, source file, patch position, split, label and embedding."""
    from icone.runs import embed_run

    summary = embed_run(checkpoint, data, out, overwrite, plot, list(overrides or []))
    console.print(
        f"{summary['rows']} embeddings written to {summary['out']}"
        + (f"; map: {summary['plot']}" if "plot" in summary else "")
    )


@app.command()
def export(
    checkpoint: Path = typer.Argument(..., metavar="CHECKPOINT"),
    out: Path = typer.Option(..., "--out"),
    format: str = typer.Option(
        "icone",
        "--format",
        help="icone (backbone.pt), torchscript, onnx (checked with onnxruntime), safetensors, monai.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """The evaluated backbone in a format: icone's, TorchScript, ONNX, safetensors + JSON, or a MONAI ResNet state dict + JSON."""
    from icone.runs import export_run

    files = export_run(checkpoint, out, format, overwrite)
    console.print(f"backbone written to {', '.join(str(f) for f in files)}")


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
    console.print(
        "--method auto: the best of method_candidates (default icone, excb, moco, byol, dino) by short "
        "trial runs scored without labels (docs/tuning.md)"
    )


@app.command("data")
def data_command(
    source: str = typer.Argument(..., metavar="SOURCE"),
    overrides: Optional[list[str]] = typer.Argument(
        None, metavar="[KEY=VALUE]...", help="data.* options, e.g. data.patch=64 data.axes=CZYX data.channels=0,2"
    ),
) -> None:
    """Inspect a data source: kind, axes, shape, channels, dtype, spacing, patches, sampler, memory, splits."""
    from icone.build import load_data
    from icone.config import build_config
    from icone.data import resolve

    config = build_config(None, list(overrides or []), flags={"data.source": source})
    kind, _ = resolve(source)
    dataset = load_data(config)
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
