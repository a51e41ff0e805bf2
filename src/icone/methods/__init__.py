"""Methods, one module each, in an explicit registry (IConE and ExCB first)."""

from __future__ import annotations

from icone.errors import UserError
from icone.methods.barlow_twins import BarlowTwins
from icone.methods.base import HEALTH_PREFIX, Method, ViewRequirements
from icone.methods.byol import BYOL
from icone.methods.dino import DINO
from icone.methods.excb import ExCB
from icone.methods.icone import IConE
from icone.methods.moco import MoCo
from icone.methods.simclr import SimCLR
from icone.methods.simsiam import SimSiam
from icone.methods.swav import SwAV
from icone.methods.vicreg import VICReg

METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (IConE, ExCB, BarlowTwins, BYOL, DINO, MoCo, SimCLR, SimSiam, SwAV, VICReg)
}


def registry() -> dict[str, type[Method]]:
    """All methods by name, in a stable order (IConE and ExCB first)."""
    return dict(METHODS)


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        raise UserError(f"unknown method '{name}'; choose one of: {', '.join(METHODS)}")
    return METHODS[name]


def batch_free_methods(batch_size: int) -> list[str]:
    """Methods defined at this batch size."""
    return [n for n, m in METHODS.items() if m.min_batch_size <= batch_size]


__all__ = [
    "HEALTH_PREFIX",
    "METHODS",
    "Method",
    "ViewRequirements",
    "batch_free_methods",
    "get_method",
    "registry",
]
