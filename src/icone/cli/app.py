"""The Typer application shared by the command modules, and the console it prints to."""

from __future__ import annotations

import os

import typer
from rich.console import Console

app = typer.Typer(
    add_completion=False,
    help="Self-supervised representation learning on 2D images and 3D volumes that does not collapse at small batch sizes.",
)
console = Console()
err_console = Console(stderr=True)
DEBUG = {"on": bool(os.environ.get("ICONE_DEBUG"))}
# an option the training commands share (train, bench, speed)
BACKBONE = typer.Option(
    None,
    "--backbone",
    help="resnet18, resnet50 or smallcnn (optionally -2d/-3d); bench and speed: one for every method.",
)
ARGV: list[str] = []  # the arguments of this invocation (recorded in bench and speed reports)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks.")) -> None:
    DEBUG["on"] = DEBUG["on"] or debug
