"""``icone export --format monai``: a ResNet backbone for MONAI, with no code inside a JSON.

- ``--out NAME.pt``: the state dict under MONAI's ResNet names and ``NAME.json`` with the arguments of
  ``monai.networks.nets.ResNet``; loads with ``strict=True`` into the stock ResNet. MONAI's ResNet
  (1.3-1.6) gives its residual blocks BatchNorm whatever ``norm`` says, so this form is for
  ``model.norm=batch``; other norms are refused with a pointer to the bundle.
- ``--out FOLDER``: a MONAI bundle (``configs/metadata.json``, ``configs/inference.json`` whose
  ``network_def`` builds the network, ``models/model.pt``). For a norm other than batch,
  ``network_def`` names ``scripts.networks.ResNet``: MONAI's ResNet with ``norm`` handed to every
  block, a small module in the bundle's ``scripts/`` (MONAI bundles carry code there, not in JSON).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from icone.config import Config
from icone.errors import UserError
from icone.files import atomic_write, atomic_write_text
from icone.nets import parse_backbone_name

BLOCK_NORM_RESNET = '''"""MONAI's ResNet with its `norm` in every residual block (MONAI 1.3-1.6 hand it to the stem only)."""

from monai.networks.nets import resnet


class ResNet(resnet.ResNet):
    def __init__(self, *args, norm="batch", **kwargs):
        object.__setattr__(self, "_block_norm", norm)
        super().__init__(*args, norm=norm, **kwargs)

    def _make_layer(self, *args, **kwargs):
        kwargs["norm"] = self._block_norm
        return super()._make_layer(*args, **kwargs)
'''


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


def monai_state(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's tensors under MONAI's ResNet names (icone's ``net.conv1.weight`` is ``conv1.weight``)."""
    return {
        k[len("net.") :]: v.detach().contiguous().clone()
        for k, v in backbone.state_dict().items()
        if k.startswith("net.")
    }


def export_monai(backbone: nn.Module, config: Config, out: Path) -> Path:
    """``NAME.pt`` + ``NAME.json`` for the stock ResNet (batch norm), or a bundle folder (any suffix-less ``out``)."""
    kwargs = monai_resnet_kwargs(config, backbone)
    if not out.suffix:
        return export_bundle(backbone, config, out, kwargs)
    if kwargs["norm"] != "batch":
        raise UserError(
            f"MONAI's stock ResNet gives its blocks BatchNorm, so this {config.model.norm}-norm backbone cannot load into it; "
            f"export a MONAI bundle instead: --out {out.with_suffix('')} (a folder)"
        )
    state = monai_state(backbone)
    atomic_write(out, lambda handle: torch.save(state, handle))  # through Python: a full disk is one line
    atomic_write_text(out.with_suffix(".json"), json.dumps({"monai.networks.nets.ResNet": kwargs}, indent=2))
    return out


def _metadata(config: Config, backbone: nn.Module) -> dict[str, Any]:
    import monai

    dims, channels = int(config.model.spatial_dims), int(config.model.in_channels)
    return {
        "version": "0.1.0", "monai_version": monai.__version__, "pytorch_version": torch.__version__.split("+")[0],
        "task": "self-supervised feature extraction", "description": f"{config.model.backbone} encoder trained by icone ({config.method})",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "num_channels": channels, "dtype": "float32",
                                 "spatial_shape": ["*"] * dims, "value_range": [], "is_patch_data": dims == 3, "channel_def": {}}},
            "outputs": {"features": {"type": "tensor", "format": "features", "num_channels": int(backbone.feature_dim),
                                     "dtype": "float32", "spatial_shape": [], "value_range": [], "is_patch_data": False}},
        },
    }  # fmt: skip


def export_bundle(backbone: nn.Module, config: Config, out: Path, kwargs: dict[str, Any]) -> Path:
    """A MONAI bundle folder whose ``network_def`` loads ``models/model.pt`` with ``strict=True``; written
    into a hidden folder beside ``out`` and renamed into place, so a failure leaves no half bundle."""
    if out.exists() and any(out.iterdir()):
        raise UserError(f"'{out}' is a folder with files in it; choose a new folder for the bundle")
    target = "monai.networks.nets.ResNet" if kwargs["norm"] == "batch" else "scripts.networks.ResNet"
    inference = {"network_def": {"_target_": target, **kwargs}, "network": "@network_def"}
    files = [
        ("configs/inference.json", json.dumps(inference, indent=2)),
        ("configs/metadata.json", json.dumps(_metadata(config, backbone), indent=2)),
    ]
    if target.startswith("scripts"):
        files += [("scripts/__init__.py", ""), ("scripts/networks.py", BLOCK_NORM_RESNET)]
    building = out.parent / f".{out.name}.bundle-{os.getpid()}"
    try:
        for name, text in files:
            (building / name).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(building / name, text)
        (building / "models").mkdir(parents=True, exist_ok=True)
        state = monai_state(backbone)
        atomic_write(building / "models" / "model.pt", lambda handle: torch.save(state, handle))
        if out.exists():
            out.rmdir()  # empty, checked above
        building.rename(out)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return out
