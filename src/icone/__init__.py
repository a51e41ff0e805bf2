"""icone: self-supervised representation learning on 2D images and 3D volumes at small batch sizes."""

__version__ = "0.1.0"


def load_backbone(path, device="cpu"):
    """A ready backbone ``nn.Module`` (eval mode) from ``backbone.pt``, a checkpoint or a run folder."""
    from icone.export import load_backbone as _load

    return _load(path, device)


__all__ = ["__version__", "load_backbone"]
