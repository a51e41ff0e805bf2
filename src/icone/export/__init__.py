"""Exported backbones: ``backbone.pt`` (weights plus what is needed to rebuild them), ``load_backbone``,
and ``export_run`` to other formats (:mod:`icone.export.formats`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from icone.build import build_method
from icone.config import Config, ModelConfig, build_config
from icone.errors import UserError
from icone.methods import Method
from icone.nets import build_backbone
from icone.training.checkpoint import atomic_save, load_checkpoint
from icone.weights import EXPORT_FORMAT


def export_backbone(backbone: nn.Module, config: Config, path: str | Path) -> Path:
    """Write ``backbone.pt``: ``state_dict``, ``backbone`` (the spec) and the resolved ``config``."""
    path = Path(path)
    atomic_save(
        {
            "format": EXPORT_FORMAT,
            "backbone": dataclasses.asdict(config.model),
            "feature_dim": int(backbone.feature_dim),
            "state_dict": backbone.state_dict(),
            "config": config.to_dict(),
        },
        path,
    )
    return path


def load_backbone(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """A ready backbone (eval mode) from an export, a checkpoint or a run folder."""
    item = load_checkpoint(path)
    if item.get("format") == EXPORT_FORMAT:
        backbone = build_backbone(ModelConfig(**item["backbone"]))
        backbone.load_state_dict(item["state_dict"])
    else:
        backbone = method_from_checkpoint(item).evaluation_backbone()
    return backbone.to(device).eval()


def method_from_checkpoint(checkpoint: dict[str, Any]) -> Method:
    """Rebuild a trained method from a training checkpoint."""
    if "model" not in checkpoint:
        raise UserError(
            f"'{checkpoint['path']}' is a backbone export, not a training checkpoint; give checkpoints/last.pt or the run folder"
        )
    config = build_config(checkpoint["config"])
    method = build_method(config, num_instances=int(checkpoint["num_instances"]), initial_weights=False)
    try:
        method.load_state_dict(checkpoint["model"])
    except RuntimeError as err:
        raise UserError(
            f"checkpoint '{checkpoint['path']}' does not match its config ({str(err).splitlines()[0]}); it was written by another version"
        ) from None
    return method.eval()


def export_run(path: str | Path, out: str | Path, format: str = "icone", overwrite: bool = False) -> list[Path]:
    """``icone export``: the evaluated backbone of a run, checkpoint or export, in ``format``; returns the files written."""
    from icone.export.formats import FORMATS, WRITERS, check_suffix

    if format not in FORMATS:
        raise UserError(f"--format {format!r} is not one of: {', '.join(FORMATS)}")
    out = Path(out)
    check_suffix(out, format)
    sidecar = format == "safetensors" or (format == "monai" and out.suffix)
    targets = [out] + ([out.with_suffix(".json")] if sidecar else [])
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        raise UserError(f"'{existing[0]}' already exists; choose another --out or pass --overwrite")
    checkpoint = load_checkpoint(path)
    config = build_config(checkpoint["config"])
    backbone = load_backbone(path)
    if format == "icone":
        return [export_backbone(backbone, config, out)]
    WRITERS[format](backbone, config, out)
    return targets
