"""Fixtures; the functions they use live in helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import tiny_dataset, write_tiny_npz
from icone.data.arrays import Dataset

torch.set_num_threads(1)  # tiny tensors: one thread is faster, and CI shares 2 cores


@pytest.fixture
def tiny2d() -> Dataset:
    return tiny_dataset(2)


@pytest.fixture
def tiny3d() -> Dataset:
    return tiny_dataset(3)


@pytest.fixture
def npz2d(tmp_path) -> Path:
    return write_tiny_npz(tmp_path / "tiny2d.npz", 2)


@pytest.fixture
def npz3d(tmp_path) -> Path:
    return write_tiny_npz(tmp_path / "tiny3d.npz", 3)


@pytest.fixture(autouse=True, scope="session")
def _temporary_files_under_pytest(tmp_path_factory):
    """Run folders that tests make with tempfile go under pytest's own (self-cleaning) temp tree."""
    import tempfile

    previous = tempfile.tempdir
    tempfile.tempdir = str(tmp_path_factory.mktemp("tempfile"))
    yield
    tempfile.tempdir = previous
