"""IConE trains end to end in 2D and 3D, including at batch size 1."""

import math

import pytest
import torch

from helpers import train_steps


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_icone_trains_finite(dims, batch_size):
    trainer, steps = train_steps("icone", dims, batch_size=batch_size)
    assert steps and all(math.isfinite(s["loss"]) for s in steps)
    assert all(torch.isfinite(p).all() for p in trainer.method.parameters())
