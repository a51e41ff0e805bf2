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


def test_a_garbage_safetensors_for_model_init_is_one_line(capsys, tmp_path, npz):
    (tmp_path / "weights.safetensors").write_bytes(b"\x00\x01 not a safetensors file" * 4)
    expect_error(
        capsys,
        ["train", "--data", npz, "--out", tmp_path / "run", *TRAIN, f"model.init={tmp_path / 'weights.safetensors'}"],
        r"model.init: cannot read '.*weights\.safetensors' as safetensors .*; give a run folder",
    )
    assert not (tmp_path / "run").exists()


def test_a_garbage_grid_json_is_one_line(capsys, tmp_path):
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "grid.json").write_text('{"data": "digits", "epochs": ')  # cut short
    expect_error(
        capsys,
        ["bench", "--out", bench, "--methods", "icone", "--batch-sizes", "4", "--epochs", "1"],
        r"'.*grid\.json' is not a grid record \(JSONDecodeError.*\); choose another --out",
    )
    assert (bench / "grid.json").read_text() == '{"data": "digits", "epochs": '
