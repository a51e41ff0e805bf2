"""Inputs of the 133-case audit (issue 19) that a library used to report as an internal error, or
with advice that led nowhere: each is one line naming the input and what to do, exit code 2."""

from __future__ import annotations

import numpy as np

from helpers import FAST, expect_error, run_cli, write_zarr

TRAIN = ["--epochs", "1", "--batch-size", "4", *FAST, "eval.after_train=false"]


def refused(capsys, tmp_path, source, pattern, *extra):
    """``icone train`` and ``icone data`` both refuse with one line; the run folder is not made."""
    run = tmp_path / "run"
    line = expect_error(capsys, ["train", "--data", source, "--out", run, *TRAIN, *extra], pattern)
    assert line.startswith("error: ") and not run.exists()
    expect_error(capsys, ["data", source, *extra], pattern)
    return line


def test_a_named_array_in_a_store_that_is_one_array(capsys, tmp_path):
    store = write_zarr(tmp_path / "one.zarr", np.zeros((16, 16, 16), np.uint8))
    refused(capsys, tmp_path, f"zarr:{store}#nosuch", r"'.*one\.zarr' is a single array, not a group; drop '#nosuch'")
