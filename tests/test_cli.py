"""The CLI commands end to end on a tiny .npz source, and every bad input of the foundation issue."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import icone
from helpers import FAST, expect_error, run_cli, write_tiny_npz


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One small 2D run shared by the CLI tests (2 epochs on a 48-sample .npz)."""
    root = tmp_path_factory.mktemp("cli")
    npz = write_tiny_npz(root / "tiny.npz", 2)
    run = root / "run"

    class NoCapture:  # module-scoped fixtures cannot use capsys
        def readouterr(self):
            return type("Captured", (), {"out": "", "err": ""})()

    code, _, _ = run_cli(
        ["train", "--data", npz, "--epochs", "2", "--batch-size", "8", "--out", run, *FAST, "eval.knn_k=5"], NoCapture()
    )
    assert code == 0
    return npz, run


def test_train_writes_the_run_folder(trained):
    _, run = trained
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "checkpoints/last.pt",
        "backbone.pt",
        "eval.json",
        "plots/loss.png",
        "plots/collapse.png",
        "plots/embeddings.png",
    ):
        assert (run / name).is_file(), name


def test_evaluate_json_has_metrics_and_baseline(trained, capsys):
    _, run = trained
    code, out, _ = run_cli(["evaluate", run, "--json"], capsys)
    assert code == 0
    result = json.loads(out)
    for key in ("knn_accuracy", "linear_accuracy", "linear_balanced_accuracy", "rankme", "intrinsic_dimension"):
        assert isinstance(result[key], float) and isinstance(result["baseline"][key], float)
    assert json.loads((run / "eval.json").read_text())["rankme"] == pytest.approx(result["rankme"])


def test_config_yaml_reruns(trained, tmp_path, capsys):
    _, run = trained
    code, _, err = run_cli(
        [
            "train",
            "--config",
            run / "config.yaml",
            "--epochs",
            "1",
            "--out",
            tmp_path / "again",
            "--no-progress",
            "eval.after_train=false",
        ],
        capsys,
    )
    assert code == 0, err
    assert (tmp_path / "again" / "checkpoints" / "last.pt").is_file()


def test_export_and_load_backbone_give_the_same_features(trained, tmp_path, capsys):
    _, run = trained
    code, _, _ = run_cli(["export", run / "checkpoints" / "last.pt", "--out", tmp_path / "bb.pt"], capsys)
    assert code == 0
    x = torch.randn(3, 1, 16, 16)
    a, b = icone.load_backbone(tmp_path / "bb.pt"), icone.load_backbone(run)
    with torch.no_grad():
        assert torch.allclose(a(x), b(x))


@pytest.mark.parametrize("suffix", [".npz", ".npy"])
def test_embed_writes_features_indices_labels(trained, tmp_path, capsys, suffix):
    npz, run = trained
    out = tmp_path / f"emb{suffix}"
    code, _, err = run_cli(["embed", run / "checkpoints" / "last.pt", "--data", npz, "--out", out], capsys)
    assert code == 0, err
    if suffix == ".npz":
        data = np.load(out)
        assert data["features"].shape == (60, 64) and len(data["indices"]) == len(data["labels"]) == 60
    else:
        data = np.load(out)
        assert data["feature"].shape == (60, 64) and set(data["split"]) == {"train", "test"}


def test_methods_lists_icone(capsys):
    code, out, _ = run_cli(["methods"], capsys)
    assert code == 0 and "icone" in out and "instance-table" in out


def test_data_inspects_a_source(npz2d, capsys):
    code, out, _ = run_cli(["data", npz2d], capsys)
    assert code == 0 and "2D" in out and "48 samples" in out


def test_module_entry_point_prints_one_line_error_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "icone", "train", "--data", str(tmp_path / "nope")], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert "does not exist" in result.stderr


# ---- bad input: one line, exit code 2, nothing written or lost ------------------------------


def test_missing_path(capsys, tmp_path):
    expect_error(capsys, ["train", "--data", tmp_path / "missing", "--out", tmp_path / "r"], "does not exist")
    assert not (tmp_path / "r").exists()


def test_empty_folder(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    expect_error(capsys, ["train", "--data", tmp_path / "empty"], "no images or volumes")


def test_corrupt_image(capsys, tmp_path):
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "imgs" / "ok.png")
    (tmp_path / "imgs" / "bad.png").write_bytes(b"not a png at all")
    expect_error(capsys, ["train", "--data", tmp_path / "imgs"], r"cannot read .*bad\.png")


def test_mixed_sizes_and_channels(capsys, tmp_path):
    (tmp_path / "sizes").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "sizes" / "a.png")
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(tmp_path / "sizes" / "b.png")
    expect_error(capsys, ["train", "--data", tmp_path / "sizes"], "different sizes.*data.resize")
    (tmp_path / "chans").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "chans" / "a.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "chans" / "b.png")
    expect_error(capsys, ["train", "--data", tmp_path / "chans"], "different channel counts")


def test_2d_source_with_3d_backbone_and_vice_versa(capsys, npz2d, npz3d):
    expect_error(capsys, ["train", "--data", npz2d, "--backbone", "resnet18-3d"], "is 2D.*3D backbone.*resnet18-2d")
    expect_error(capsys, ["train", "--data", npz3d, "model.spatial_dims=2"], "is 3D.*2D backbone")


def test_batch_larger_than_dataset(capsys, npz2d):
    expect_error(capsys, ["train", "--data", npz2d, "--batch-size", "500"], "larger than the training set")


def test_unknown_method_and_option(capsys, npz2d):
    expect_error(
        capsys, ["train", "--data", npz2d, "--method", "nosuch"], "unknown method 'nosuch'; choose one of: icone"
    )
    expect_error(capsys, ["train", "--data", npz2d, "train.epoch=3"], "unknown option 'train.epoch'.*epochs")
    expect_error(capsys, ["train", "--data", npz2d, "icone.alignment=magic"], "alignment.*cosine, infonce")
    expect_error(capsys, ["train", "--data", npz2d, "train.batch_size=abc"], "whole number")


def test_existing_run_folder_is_not_touched(capsys, trained):
    npz, run = trained
    before = (run / "checkpoints" / "last.pt").read_bytes()
    expect_error(capsys, ["train", "--data", npz, "--out", run], "already exists.*--resume.*--overwrite")
    assert (run / "checkpoints" / "last.pt").read_bytes() == before


def test_resume_with_another_method_is_refused(capsys, trained):
    npz, run = trained
    before = (run / "checkpoints" / "last.pt").read_bytes()
    expect_error(capsys, ["train", "--data", npz, "--out", run, "--resume", "icone.diversity=hinge", *FAST], "differ")
    assert (run / "checkpoints" / "last.pt").read_bytes() == before


def test_resume_continues_to_more_epochs(capsys, trained, tmp_path):
    import shutil

    npz, run = trained
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    code, _, err = run_cli(
        ["train", "--data", npz, "--out", copy, "--resume", "--epochs", "3", *FAST, "eval.knn_k=5"], capsys
    )
    assert code == 0, err
    assert torch.load(copy / "checkpoints" / "last.pt", weights_only=False)["epoch"] == 3


def test_evaluate_bad_checkpoint(capsys, tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"garbage")
    expect_error(capsys, ["evaluate", tmp_path / "junk.pt"], "cannot read checkpoint")
    expect_error(capsys, ["evaluate", tmp_path], "no checkpoints/last.pt")


def test_evaluate_on_source_of_other_dims(capsys, trained, npz3d):
    _, run = trained
    expect_error(capsys, ["evaluate", run, "--data", npz3d], "takes 2D samples.*3D")


def test_typed_flags_are_taken_as_given(capsys, tmp_path):
    """--data is a path, not YAML: a '#' starts no comment and 'yes' stays a name."""
    folder = tmp_path / "a folder #2"
    (folder / "cells").mkdir(parents=True)
    for i in range(12):
        Image.fromarray((np.random.default_rng(i).random((12, 12)) * 255).astype(np.uint8)).save(
            folder / "cells" / f"{i}.png"
        )
    code, _, err = run_cli(
        [
            "train",
            "--data",
            folder,
            "--out",
            tmp_path / "run",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            *FAST,
            "eval.after_train=false",
        ],
        capsys,
    )
    assert code == 0, err
    from icone.config import build_config, load_yaml

    assert load_yaml(tmp_path / "run" / "config.yaml")["data"]["source"] == str(folder)
    assert build_config(None, None, {"data.source": "yes"}).data.source == "yes"
