"""``icone export --format``: the backbone in other libraries' formats, each checked where it can be.

- ``icone`` (default): ``backbone.pt`` for ``icone.load_backbone``;
- ``torchscript``: a traced module that ``torch.jit.load`` runs without icone installed;
- ``onnx``: verified against PyTorch with onnxruntime on a random input at export time (a
  mismatch fails the export and writes nothing); batch and spatial sizes are dynamic;
- ``safetensors``: the weights, and ``NAME.json`` naming the architecture (``model.*``);
- ``monai``: a state dict that ``monai.networks.nets.ResNet(**kwargs)`` loads with ``strict=True``,
  and ``NAME.json`` with those ``kwargs`` (ResNet backbones only). MONAI's ResNet (1.3-1.6) hands
  its ``norm`` to the stem only, its residual blocks keep BatchNorm; for a backbone with another
  norm the JSON also names ``block_norm``, and :data:`MONAI_SWAP` (plain torch, also in the JSON)
  swaps the blocks' BatchNorm for it before loading.
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
from icone.files import atomic_write, atomic_write_text
from icone.nets import parse_backbone_name
from icone.weights import require

FORMATS = ("icone", "torchscript", "onnx", "safetensors", "monai")
# the names each format's file may have (the first is suggested): a file's suffix says what it holds
SUFFIXES = {"icone": (".pt", ".pth"), "torchscript": (".pt", ".pth", ".ts"), "onnx": (".onnx",),
            "safetensors": (".safetensors",), "monai": (".pt", ".pth")}  # fmt: skip


def check_suffix(out: Path, format: str) -> None:
    """``--out`` ends in a suffix of ``format`` (an ONNX file named ``.pt`` is read as a torch file, and fails)."""
    allowed = SUFFIXES[format]
    if out.suffix.lower() not in allowed:
        raise UserError(
            f"--out '{out}' does not end in {' or '.join(allowed)}, the suffix of --format {format}; name it "
            f"{out.with_suffix(allowed[0])}"
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
    safetensors = require("safetensors.torch", "safetensors")
    state = {k: v.detach().contiguous().clone() for k, v in backbone.state_dict().items()}
    data = safetensors.save(state, metadata={"format": "icone-backbone"})  # bytes, written by Python
    atomic_write(out, lambda handle: handle.write(data))
    atomic_write_text(out.with_suffix(".json"), json.dumps(describe(config, backbone), indent=2))
    return out


def monai_resnet_kwargs(config: Config, backbone: nn.Module) -> dict[str, Any]:
    """The arguments of ``monai.networks.nets.ResNet`` that build this backbone's network."""
    base, _ = parse_backbone_name(config.model.backbone)
    if base == "smallcnn":
        raise UserError(
            "--format monai is for the resnet18 and resnet50 backbones; export a smallcnn as safetensors or torchscript"
        )
    norm = str(config.model.norm)
    if norm in ("group", "layer"):
        groups = {m.num_groups for m in backbone.modules() if isinstance(m, nn.GroupNorm)}
        if len(groups) != 1:
            raise UserError(
                f"this backbone's GroupNorm layers have {sorted(groups)} groups, which MONAI's ResNet (one group count "
                f"for every layer) cannot rebuild; use model.width divisible by 8, or export as safetensors"
            )
        norm_spec: Any = ["group", {"num_groups": groups.pop()}]
    elif norm == "instance":
        norm_spec = ["instance", {"affine": True}]
    else:
        norm_spec = "batch"
    width, small = int(config.model.width), bool(config.model.small_stem)
    return {
        "block": "basic" if base == "resnet18" else "bottleneck", "layers": [2, 2, 2, 2] if base == "resnet18" else [3, 4, 6, 3],
        "block_inplanes": [width, 2 * width, 4 * width, 8 * width], "spatial_dims": int(config.model.spatial_dims),
        "n_input_channels": int(config.model.in_channels), "conv1_t_size": 3 if small else 7, "conv1_t_stride": 1 if small else 2,
        "no_max_pool": small, "feed_forward": False, "norm": norm_spec,
    }  # fmt: skip


MONAI_SWAP = """\
import torch
def swap_block_norm(net, block_norm):  # MONAI's ResNet gives its blocks BatchNorm whatever `norm` says
    name, args = block_norm if isinstance(block_norm, (list, tuple)) else (block_norm, {})
    for parent in list(net.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.modules.batchnorm._BatchNorm):
                c, dims = child.num_features, 3 if isinstance(child, torch.nn.BatchNorm3d) else 2
                new = (torch.nn.GroupNorm(args["num_groups"], c) if name == "group"
                       else (torch.nn.InstanceNorm2d, torch.nn.InstanceNorm3d)[dims - 2](c, affine=True))
                setattr(parent, child_name, new)
    return net
"""


def export_monai(backbone: nn.Module, config: Config, out: Path) -> Path:
    kwargs = monai_resnet_kwargs(config, backbone)
    state = {k[len("net.") :]: v for k, v in backbone.state_dict().items() if k.startswith("net.")}
    atomic_write(out, lambda handle: torch.save(state, handle))
    sidecar: dict[str, Any] = {
        "monai.networks.nets.ResNet": kwargs,
        "note": "pass norm as a tuple: kwargs['norm'] = tuple(kwargs['norm'])",
    }
    if kwargs["norm"] != "batch":
        sidecar["block_norm"] = kwargs["norm"]
        sidecar["before_loading"] = MONAI_SWAP + "net = swap_block_norm(net, block_norm)"
    atomic_write_text(out.with_suffix(".json"), json.dumps(sidecar, indent=2))
    return out


WRITERS = {
    "torchscript": export_torchscript,
    "onnx": export_onnx,
    "safetensors": export_safetensors,
    "monai": export_monai,
}
