"""``icone embed`` and ``icone evaluate --data OTHER`` (issue 19): another source starts from its own data
options, not the run's (a run's label volume was applied to it), and takes ``data.KEY=VALUE``; the few-label
evaluation says what it skips and writes strict JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from helpers import FAST, blob_volume, expect_error, run_cli, write_tiny_npz, write_zarr


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    """A run trained on volume A with its label volume; volume B of the same shape, with labels of its own."""
    root = tmp_path_factory.mktemp("volumes")
    a, labels_a = blob_volume(seed=0)
    b, labels_b = blob_volume(seed=1)
    store_a = write_zarr(root / "a.zarr", a, name="raw", labels=labels_a)
    store_b = write_zarr(root / "b.zarr", b, name="raw", labels=labels_b)

    class NoCapture:
        def readouterr(self):
            return type("Captured", (), {"out": "", "err": ""})()

    run = root / "run"
    args = ["train", "--data", f"{store_a}#raw", f"data.labels={store_a}#labels", "data.patch=16", "data.stride=8",
            "data.normalize=zscore", "--out", run, "--epochs", "1", "--batch-size", "8", *FAST, "eval.knn_k=3"]  # fmt: skip
    assert run_cli(args, NoCapture())[0] == 0
    return run, store_a, store_b


def test_embed_another_source_does_not_take_the_runs_label_volume(capsys, tmp_path, volumes):
    run, _, b = volumes
    out = tmp_path / "b.npz"
    code, _, err = run_cli(["embed", run, "--data", f"{b}#raw", "--out", out], capsys)
    assert code == 0, err
    embedded = np.load(out)
    assert (embedded["labels"] == -1).all() and set(embedded["splits"]) == {"train"}  # B has no labels of its own
    code, _, err = run_cli(["embed", run, "--data", f"{b}#raw", "--out", tmp_path / "l.npz", f"data.labels={b}#labels",
                            "data.patch=16"], capsys)  # fmt: skip
    assert code == 0, err
    labelled = np.load(tmp_path / "l.npz")
    assert (labelled["labels"] >= 0).all() and set(labelled["splits"]) == {"train", "test"}


def test_evaluate_another_source_uses_its_own_labels_or_none(capsys, volumes):
    run, _, b = volumes
    code, out, err = run_cli(["evaluate", run, "--data", f"{b}#raw", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["knn_accuracy"] is None  # no labels: no accuracy, rather than the run's labels on B
    code, out, err = run_cli(
        ["evaluate", run, "--data", f"{b}#raw", f"data.labels={b}#labels", "data.patch=8", "--json"], capsys
    )
    assert code == 0, err
    assert 0 <= json.loads(out)["knn_accuracy"] <= 1


def test_another_source_keeps_only_how_the_model_takes_its_input():
    from icone.config import build_config
    from icone.runs.evaluate import data_for

    run = build_config(None, ["data.source=a.zarr", "data.labels=a.zarr#labels", "data.patch=64", "data.resize=32,32",
                              "data.normalize=zscore", "data.channels=0,2", "data.imbalance_ratio=10"])  # fmt: skip
    data = data_for(run, "b.zarr", ["data.sampler=grid"])
    assert (data.source, data.normalize, data.resize) == ("b.zarr", "zscore", [32, 32])  # carried: the model's input
    assert (data.labels, data.patch, data.channels, data.imbalance_ratio, data.sampler) == (
        None,
        None,
        None,
        1.0,
        "grid",
    )
    assert data_for(run, "b.zarr", ["data.normalize=percentile"]).normalize == "percentile"


def test_data_options_are_checked_and_need_data(capsys, tmp_path, volumes):
    run, _, b = volumes
    expect_error(capsys, ["evaluate", run, "data.labels=x"], r"data options \(data.labels\) go with --data SOURCE")
    expect_error(capsys, ["embed", run, "--data", f"{b}#raw", "--out", tmp_path / "e.npz", "train.epochs=3"],
                 r"takes data\.\* options .*; 'train.epochs' is not one")  # fmt: skip
    expect_error(capsys, ["embed", run, "--data", f"{b}#raw", "--out", tmp_path / "e.npz", "data.patch=0"],
                 r"data.patch must be at least 1")  # fmt: skip


def test_a_source_the_backbone_cannot_take_is_named(capsys, tmp_path, volumes):
    run, _, _ = volumes
    npz = write_tiny_npz(tmp_path / "flat.npz", 2)
    expect_error(
        capsys,
        ["embed", run, "--data", npz, "--out", tmp_path / "e.npz"],
        r"the backbone takes 3D samples with 1 channel\(s\), but '.*flat\.npz' has 2D samples",
    )


# ---- few labels ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("few")
    npz = write_tiny_npz(root / "tiny.npz", 2, n=64)

    class NoCapture:
        def readouterr(self):
            return type("Captured", (), {"out": "", "err": ""})()

    args = ["train", "--data", npz, "--out", root / "run", "--epochs", "1", "--batch-size", "8", *FAST, "eval.knn_k=5"]
    assert run_cli(args, NoCapture())[0] == 0
    return root / "run", npz


def test_repeats_below_one_are_refused_and_eval_json_is_strict(capsys, digits_run):
    run, _ = digits_run
    expect_error(
        capsys, ["evaluate", run, "--label-fractions", "0.5", "--repeats", "0"], r"--repeats must be at least 1"
    )
    from icone.files import json_text

    text = json_text({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -float("inf")}, "e": 2})
    assert json.loads(text) == {"a": None, "b": [1.0, None], "c": {"d": None}, "e": 2}
    assert "NaN" not in text and "Infinity" not in text
    json.loads((run / "eval.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in eval.json"))


def test_few_label_probes_that_cannot_run_say_why(capsys, tmp_path, digits_run):
    run, npz = digits_run
    arrays = dict(np.load(npz))
    arrays["test_labels"] = np.full_like(arrays["test_labels"], -1)  # a test split without labels
    np.savez(tmp_path / "unlabelled_test.npz", **arrays)
    code, out, err = run_cli(
        ["evaluate", run, "--data", tmp_path / "unlabelled_test.npz", "--shots", "2", "--json"], capsys
    )
    assert code == 0
    assert err.strip() == (
        "warning: few-label probes (--label-fractions/--shots) skipped: the test split has no labels to score them on"
    )
    assert "few_label" not in json.loads(out) and not math.isnan(json.loads(out)["rankme"])
