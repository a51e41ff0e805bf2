"""The layers of the package (docs/architecture.md), read from the imports of every module with ``ast``.

A module may import modules of lower layers, and modules of its own package; a module of a layer
imports nothing above it. Losses are pure functions: they import nothing of icone but ``errors``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
LAYERS = {
    "icone.errors": 0,
    "icone.files": 1, "icone.options": 1, "icone.distributed": 1, "icone.runtime": 1, "icone.stats": 1,
    "icone.config": 2, "icone.run_folder": 2,
    "icone.data": 3, "icone.nets": 3, "icone.views": 3, "icone.weights": 3,
    "icone.losses": 4,
    "icone.methods": 5,
    "icone.evaluate": 6,
    "icone.training": 7,
    "icone.build": 8,
    "icone.export": 9,
    "icone.runs": 10,
    "icone.bench": 11,
    "icone.cli": 12,
    "icone": 13,  # the package itself: the public Python API
    "icone.__main__": 14,
}  # fmt: skip
MAX_LINES = 450


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / "icone").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def unit(module: str) -> str:
    """The entry of :data:`LAYERS` a module belongs to (its package, or itself)."""
    candidates = [name for name in LAYERS if module == name or module.startswith(name + ".")]
    return max(candidates, key=len)


def icone_imports(path: Path, module: str) -> set[str]:
    """Every ``icone...`` module this file imports, at the top or inside a function."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            known = modules()
            for alias in node.names:  # a submodule by name, or a name from the module itself
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {name for name in found if name == "icone" or name.startswith("icone.")}


def test_every_module_has_a_layer():
    assert [m for m in modules() if not any(m == n or m.startswith(n + ".") for n in LAYERS)] == []


@pytest.mark.parametrize("module", list(modules()))
def test_no_module_imports_a_layer_above_it(module):
    mine = unit(module)
    for imported in icone_imports(modules()[module], module):
        theirs = unit(imported)
        if theirs == mine:
            continue  # within one package
        assert LAYERS[theirs] < LAYERS[mine], (
            f"{module} (layer {LAYERS[mine]}) imports {imported} (layer {LAYERS[theirs]})"
        )


@pytest.mark.parametrize("module", [m for m in modules() if m.startswith("icone.losses")])
def test_losses_import_nothing_of_icone_but_errors(module):
    imported = {unit(m) for m in icone_imports(modules()[module], module)}
    assert imported <= {"icone.losses", "icone.errors"}, imported


def test_nothing_imports_the_command_line():
    importers = [
        m
        for m, path in modules().items()
        if m not in ("icone.cli", "icone.__main__") and "icone.cli" in icone_imports(path, m)
    ]
    assert importers == []


def test_no_module_is_longer_than_450_lines():
    long = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_checker_catches_an_upward_import(tmp_path):
    """The rule itself: a method importing the trainer would be reported."""
    fake = tmp_path / "fake.py"
    fake.write_text("from icone.training.trainer import Trainer\nimport icone.losses.common\n")
    imported = icone_imports(fake, "icone.methods.fake")
    assert (
        "icone.training.trainer" in imported
        and LAYERS[unit("icone.training.trainer")] > LAYERS[unit("icone.methods.fake")]
    )
