"""The audit of issue 19 on the command line: every fault is one true line (exit 2 for input, 1 for a
failure during training, 130 for Ctrl-C), and its advice leads somewhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import FAST, expect_error, write_tiny_npz

TRAIN = ["--epochs", "1", "--batch-size", "8", *FAST, "eval.after_train=false"]


@pytest.fixture
def npz(tmp_path) -> Path:
    return write_tiny_npz(tmp_path / "tiny.npz", 2)


def test_a_hash_in_a_path_value_is_part_of_the_path(capsys, tmp_path, npz):
    (tmp_path / "exp").mkdir()  # 'exp #2' cut at ' #' named this folder
    expect_error(
        capsys,
        ["train", "--data", npz, "--out", tmp_path / "run", *TRAIN, f"model.init={tmp_path / 'exp #2'}"],
        r"model.init: '.*/exp #2' does not exist",
    )
    assert not (tmp_path / "run").exists()
