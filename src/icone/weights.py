"""Backbone weights from files: icone's exports and checkpoints, safetensors, plain MONAI ResNet state dicts.

Everything is read with ``torch.load(weights_only=True)`` (tensors and plain containers only) or
safetensors, so opening a file someone sent can never run code in it. Keys are mapped to a
backbone's own names strictly: a missing or unexpected key, or a tensor of another shape, is one
line naming the first of them.
"""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from icone.errors import UserError
from icone.run_folder import settle_before_use

EXPORT_FORMAT = "icone-backbone-1"
EVALUATED = "evaluated_backbone"  # checkpoint key: the module path of the method's evaluated backbone


def load_torch_file(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with one-line errors."""
    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing a foreign file
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "global" not in str(err).lower():  # a byte stream that is no pickle at all
            raise UserError(f"cannot read checkpoint '{path}' (not a PyTorch file, or a corrupt one)") from None
        raise UserError(
            f"'{path}' holds objects other than tensors and plain containers; icone does not open files that "
            "can run code when loaded, and its own checkpoints and exports hold none"
        ) from None
    except Exception as err:
        raise UserError(
            f"cannot read checkpoint '{path}' ({type(err).__name__}); it is corrupt or not a PyTorch file"
        ) from None


def require(module: str, extra: str) -> Any:
    """Import an optional package, or one line naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"this needs the optional package '{module.split('.')[0]}': pip install 'icone[{extra}]'"
        ) from None


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """The backbone tensors a file holds, under the backbone's own key names, and what the file was.

    Accepts an icone ``backbone.pt`` export, a run folder (its ``backbone.pt``), an icone training
    checkpoint (its evaluated backbone), a safetensors export, or a plain MONAI ResNet state dict
    (a classifier's ``fc.*`` is left out).
    """
    path = Path(path)
    if path.is_dir() or not path.exists():
        settle_before_use(path)  # a run an interrupted --overwrite hid is put back first
    if path.is_dir():
        if not (path / "backbone.pt").is_file():
            raise UserError(
                f"model.init: '{path}' is a folder without backbone.pt; give a run folder, a backbone.pt or a .safetensors file"
            )
        path = path / "backbone.pt"
    if not path.is_file():
        raise UserError(
            f"model.init: '{path}' does not exist; give a run folder, a checkpoint, a backbone.pt or a .safetensors file"
        )
    if path.suffix == ".safetensors":
        loader = require("safetensors.torch", "safetensors")
        try:
            return dict(loader.load_file(str(path))), "safetensors export"
        except Exception as err:  # safetensors raises its own error types for a corrupt header or data
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise UserError(
                f"model.init: cannot read '{path}' as safetensors ({reason}); give a run folder, a backbone.pt "
                "or an intact .safetensors file"
            ) from None
    item = load_torch_file(path)
    if not isinstance(item, dict):
        raise UserError(f"model.init: '{path}' holds no state dict")
    if item.get("format") == EXPORT_FORMAT:
        return dict(item["state_dict"]), "icone backbone export"
    if "model" in item and "config" in item:
        prefix = str(item.get(EVALUATED, "backbone")) + "."
        return {k[len(prefix) :]: v for k, v in item["model"].items() if k.startswith(prefix)}, "icone checkpoint"
    state = item.get("state_dict", item)
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"model.init: '{path}' is not a state dict of tensors")
    return {k: v for k, v in state.items() if not k.startswith("fc.")}, "state dict"


def match_keys(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` under ``target``'s names: as they are, or with MONAI's plain ResNet names (``conv1...``
    for icone's ``net.conv1...``)."""
    if set(state) & set(target):
        return state
    prefixed = {f"net.{k}": v for k, v in state.items()}
    return prefixed if set(prefixed) & set(target) else state


def load_initial_weights(backbone: nn.Module, path: str | Path) -> str:
    """Load ``path`` into ``backbone`` strictly (``model.init``); returns what the file was."""
    state, kind = read_weights(path)
    target = backbone.state_dict()
    state = match_keys(state, target)
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {missing[0]!r}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
        if unexpected:
            parts.append(
                f"unexpected {unexpected[0]!r}" + (f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else "")
            )
        raise UserError(
            f"model.init: the {kind} '{path}' does not fit this backbone ({', '.join(parts)}); "
            "give weights of the same model.backbone, model.width and model.norm"
        )
    for key, value in target.items():
        if state[key].shape != value.shape:
            raise UserError(
                f"model.init: '{path}' has {key} of shape {tuple(state[key].shape)}, this backbone {tuple(value.shape)}; "
                "the weights come from another architecture, spatial dimension or channel count"
            )
    backbone.load_state_dict(state, strict=True)
    return kind


def read_sidecar(path: Path) -> dict[str, Any] | None:
    """The JSON that names a safetensors export's architecture (``NAME.json`` beside ``NAME.safetensors``)."""
    sidecar = path.with_suffix(".json")
    return json.loads(sidecar.read_text()) if sidecar.is_file() else None
