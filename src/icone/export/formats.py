"""``icone export --format``: the backbone in other libraries' formats, each checked where it can be.

- ``icone`` (default): ``backbone.pt`` for ``icone.load_backbone``;
- ``torchscript``: a traced module that ``torch.jit.load`` runs without icone installed;
- ``onnx``: verified against PyTorch with onnxruntime on a random input at export time (a
  mismatch fails the export and writes nothing); batch and spatial sizes are dynamic;
- ``safetensors``: the weights (a ResNet's under MONAI's ResNet names), and ``NAME.json`` naming the
  architecture (``model.*``, and for a ResNet the arguments of ``monai.networks.nets.ResNet``);
- ``monai``: a state dict for the stock ``monai.networks.nets.ResNet`` (batch norm), or a MONAI
  bundle folder (:mod:`icone.export.monai`).
"""

from __future__ import annotations

import dataclasses
import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from icone.config import Config
from icone.errors import UserError
from icone.export.monai import export_monai, monai_resnet_kwargs, monai_state
from icone.files import atomic_write, atomic_write_text
from icone.nets import parse_backbone_name
from icone.weights import require

FORMATS = ("icone", "torchscript", "onnx", "safetensors", "monai")
# the names each format's file may have (the first is suggested): a file's suffix says what it holds;
# --format monai also writes a bundle into a folder (no suffix)
SUFFIXES = {"icone": (".pt", ".pth"), "torchscript": (".pt", ".pth", ".ts"), "onnx": (".onnx",),
            "safetensors": (".safetensors",), "monai": ("", ".pt", ".pth")}  # fmt: skip


def check_suffix(out: Path, format: str) -> None:
    """``--out`` ends in a suffix of ``format`` (an ONNX file named ``.pt`` is read as a torch file, and fails)."""
    allowed = SUFFIXES[format]
    if out.suffix.lower() not in allowed:
        named = " or ".join(a or "no suffix (a folder)" for a in allowed)
        raise UserError(
            f"--out '{out}' does not end in {named}, the suffix of --format {format}; name it "
            f"{out.with_suffix(next(a for a in allowed if a))}"
        )


TOLERANCE = 1e-4  # largest difference between an export's features and PyTorch's


def example_input(config: Config, batch: int = 2, side: int = 16) -> torch.Tensor:
    """A random input ``batch x C x side^dims`` (seeded)."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(
        batch, int(config.model.in_channels), *(side,) * int(config.model.spatial_dims), generator=generator
    )


def describe(config: Config, backbone: nn.Module) -> dict[str, Any]:
    """What an export's JSON says: the backbone's ``model.*``, its output width, its input layout."""
    axes = "B x C x D x H x W" if int(config.model.spatial_dims) == 3 else "B x C x H x W"
    return {
        "format": "icone-backbone",
        "model": dataclasses.asdict(config.model),
        "feature_dim": int(backbone.feature_dim),
        "input": axes,
    }


def export_torchscript(backbone: nn.Module, config: Config, out: Path) -> Path:
    with (
        torch.no_grad(),
        warnings.catch_warnings(),
    ):  # torch marks TorchScript deprecated; it is still what runs anywhere
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(backbone.eval(), example_input(config), check_trace=False)
        # through a Python handle: torch.jit.save to a path writes in C++, which aborts the process on a full disk
        atomic_write(out, lambda handle: torch.jit.save(traced, handle))
    return out


def export_onnx(backbone: nn.Module, config: Config, out: Path) -> Path:
    require("onnx", "onnx")
    ort = require("onnxruntime", "onnx")
    x = example_input(config)
    dims = int(config.model.spatial_dims)
    spatial = {2 + i: f"size{i}" for i in range(dims)}
    model = io.BytesIO()  # in memory, checked, then written by Python (a C++ writer fails silently on a full disk)
    with warnings.catch_warnings():  # torch announces its newer exporter; this one is the stable path for convnets
        warnings.simplefilter("ignore")
        torch.onnx.export(
            backbone.eval(), (x,), model, dynamo=False, input_names=["input"], output_names=["features"],
            dynamic_axes={"input": {0: "batch", **spatial}, "features": {0: "batch"}},
        )  # fmt: skip
    check = example_input(config, batch=3, side=20)  # another batch and size than the traced one
    session = ort.InferenceSession(model.getvalue(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": check.numpy()})[0]
    with torch.no_grad():
        expected = backbone(check).numpy()
    worst = float(np.abs(got - expected).max())
    if not worst <= TOLERANCE:
        raise UserError(
            f"the ONNX export differs from PyTorch by {worst:.2e} (more than {TOLERANCE:g}); nothing was written"
        )
    atomic_write(out, lambda handle: handle.write(model.getvalue()))
    return out


def export_safetensors(backbone: nn.Module, config: Config, out: Path) -> Path:
    """The tensors (a ResNet's under MONAI's names: ``monai.networks.nets.ResNet(**kwargs)`` loads them
    with ``strict=True`` for batch norm, the bundle's ResNet for the others) and ``NAME.json``."""
    safetensors = require("safetensors.torch", "safetensors")
    described = describe(config, backbone)
    if parse_backbone_name(config.model.backbone)[0] == "smallcnn":
        state = {k: v.detach().contiguous().clone() for k, v in backbone.state_dict().items()}
    else:
        state, described["monai.networks.nets.ResNet"] = monai_state(backbone), monai_resnet_kwargs(config, backbone)
        described["keys"] = "MONAI's ResNet names (model.init maps them back)"
    data = safetensors.save(state, metadata={"format": "icone-backbone"})  # bytes, written by Python
    atomic_write(out, lambda handle: handle.write(data))
    atomic_write_text(out.with_suffix(".json"), json.dumps(described, indent=2))
    return out


WRITERS = {
    "torchscript": export_torchscript,
    "onnx": export_onnx,
    "safetensors": export_safetensors,
    "monai": export_monai,
}
