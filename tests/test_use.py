"""Using what was trained: embeddings with provenance, few-label evaluation, portable exports, model.init."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import icone
from helpers import FAST, expect_error, run_cli, write_tiny_npz

TRAIN = ["--epochs", "1", "--batch-size", "8", *FAST, "eval.knn_k=5"]
RESNET = ["--backbone", "resnet18", "model.width=8", "train.monitor_samples=16", "--no-progress", "eval.knn_k=5"]


def train(capsys, root, npz, *extra):
    run = root / "run"
    code, _, err = run_cli(["train", "--data", npz, "--out", run, "--epochs", "1", "--batch-size", "8", *extra], capsys)
    assert code == 0, err
    return run


@pytest.fixture(scope="module", params=[2, 3], ids=["2d", "3d"])
def resnet_run(request, tmp_path_factory):
    """A one-epoch ResNet-18 (width 8) run in 2D and in 3D, shared by the export tests."""
    from helpers import run_cli as cli

    root = tmp_path_factory.mktemp(f"resnet{request.param}d")
    npz = write_tiny_npz(root / "tiny.npz", request.param)

    class NoCapture:
        def readouterr(self):
            return type("Captured", (), {"out": "", "err": ""})()

    run = root / "run"
    code, _, err = cli(
        ["train", "--data", npz, "--out", run, "--epochs", "1", "--batch-size", "8", *RESNET, "eval.after_train=false"],
        NoCapture(),
    )
    assert code == 0, err
    return request.param, npz, run


def features_of(backbone, x):
    with torch.no_grad():
        return backbone(x)


def sample_input(dims):
    return torch.randn(3, 1, *(12 if dims == 3 else 16,) * dims, generator=torch.Generator().manual_seed(1))


# ---- exports -------------------------------------------------------------------------------------------


def test_torchscript_runs_without_icone(resnet_run, tmp_path, capsys):
    dims, _, run = resnet_run
    assert run_cli(["export", run, "--out", tmp_path / "bb.pt", "--format", "torchscript"], capsys)[0] == 0
    x = sample_input(dims)
    torch.save(x, tmp_path / "x.pt")
    script = (
        "import sys, torch\n"
        f"model = torch.jit.load({str(tmp_path / 'bb.pt')!r})\n"
        f"torch.save(model(torch.load({str(tmp_path / 'x.pt')!r})), {str(tmp_path / 'y.pt')!r})\n"
        "assert not any(name == 'icone' or name.startswith('icone.') for name in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    expected = features_of(icone.load_backbone(run), x)
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), expected, atol=1e-4, rtol=0)


def test_onnx_matches_pytorch_in_onnxruntime(resnet_run, tmp_path, capsys):
    import onnxruntime

    dims, _, run = resnet_run
    assert run_cli(["export", run, "--out", tmp_path / "bb.onnx", "--format", "onnx"], capsys)[0] == 0
    x = sample_input(dims)
    session = onnxruntime.InferenceSession(str(tmp_path / "bb.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    torch.testing.assert_close(got, features_of(icone.load_backbone(run), x), atol=1e-4, rtol=0)


def test_safetensors_weights_are_keyed_as_monais_resnet(resnet_run, tmp_path, capsys):
    from safetensors.torch import load_file

    dims, _, run = resnet_run
    assert run_cli(["export", run, "--out", tmp_path / "bb.safetensors", "--format", "safetensors"], capsys)[0] == 0
    tensors = load_file(str(tmp_path / "bb.safetensors"))
    described = json.loads((tmp_path / "bb.json").read_text())
    assert described["model"]["backbone"] == "resnet18" and described["model"]["spatial_dims"] == dims
    network = monai_network(described["monai.networks.nets.ResNet"], tmp_path)
    network.load_state_dict(tensors, strict=True)  # MONAI's own names, every tensor
    x = sample_input(dims)
    torch.testing.assert_close(
        features_of(network.eval(), x), features_of(icone.load_backbone(run), x), atol=1e-4, rtol=0
    )


def monai_network(kwargs, root):
    """The network a MONAI bundle's ``network_def`` builds for these ResNet arguments (written by icone for a
    group-norm backbone), parsed by MONAI's own ConfigParser: no icone and no code in the JSON."""

    bundle = root / "parsed"
    if kwargs["norm"] == "batch":
        target = "monai.networks.nets.ResNet"
    else:
        from icone.export.monai import BLOCK_NORM_RESNET

        (bundle / "scripts").mkdir(parents=True, exist_ok=True)
        (bundle / "scripts" / "__init__.py").write_text("")
        (bundle / "scripts" / "networks.py").write_text(BLOCK_NORM_RESNET)
        target = "scripts.networks.ResNet"
    return bundle_network({"network_def": {"_target_": target, **kwargs}}, bundle)


def bundle_network(config, bundle):
    from monai.bundle import ConfigParser

    sys.path.insert(0, str(bundle))
    try:
        for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
            del sys.modules[name]  # another bundle's scripts
        parser = ConfigParser(config)
        return parser.get_parsed_content("network_def")
    finally:
        sys.path.remove(str(bundle))


def test_a_monai_bundle_loads_the_export_strictly(resnet_run, tmp_path, capsys):
    dims, _, run = resnet_run
    assert run_cli(["export", run, "--out", tmp_path / "bundle", "--format", "monai"], capsys)[0] == 0
    bundle = tmp_path / "bundle"
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    assert (
        "$" not in json.dumps(inference) and json.loads((bundle / "configs" / "metadata.json").read_text())["version"]
    )
    network = bundle_network(inference, bundle)
    network.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True), strict=True)
    x = sample_input(dims)
    torch.testing.assert_close(
        features_of(network.eval(), x), features_of(icone.load_backbone(run), x), atol=1e-4, rtol=0
    )


def test_a_batch_norm_resnet_loads_into_the_stock_monai_resnet(capsys, tmp_path):
    from monai.networks.nets import ResNet

    npz = write_tiny_npz(tmp_path / "tiny.npz", 2)
    run = train(capsys, tmp_path, npz, *RESNET, "model.norm=batch", "eval.after_train=false")
    assert run_cli(["export", run, "--out", tmp_path / "monai.pt", "--format", "monai"], capsys)[0] == 0
    sidecar = json.loads((tmp_path / "monai.json").read_text())
    assert set(sidecar) == {"monai.networks.nets.ResNet"}  # no code, no note: the arguments as they are
    network = ResNet(**sidecar["monai.networks.nets.ResNet"])
    network.load_state_dict(torch.load(tmp_path / "monai.pt", weights_only=True), strict=True)
    x = sample_input(2)
    torch.testing.assert_close(
        features_of(network.eval(), x), features_of(icone.load_backbone(run), x), atol=1e-4, rtol=0
    )


def test_export_refusals(capsys, tmp_path, monkeypatch):
    npz = write_tiny_npz(tmp_path / "tiny.npz", 2)
    run = train(capsys, tmp_path, npz, *FAST, "eval.after_train=false")
    expect_error(
        capsys,
        ["export", run, "--out", tmp_path / "m.pt", "--format", "monai"],
        "monai is for the resnet18 and resnet50",
    )
    resnet = train(capsys, tmp_path / "r", npz, *RESNET, "eval.after_train=false")
    expect_error(
        capsys,
        ["export", resnet, "--out", tmp_path / "m.pt", "--format", "monai"],
        r"export a MONAI bundle instead: --out .*/m \(a folder\)",
    )
    expect_error(capsys, ["export", run, "--out", tmp_path / "m.x", "--format", "keras"], "'keras' is not one of")
    (tmp_path / "taken.pt").write_text("mine")
    expect_error(capsys, ["export", run, "--out", tmp_path / "taken.pt"], "already exists.*--overwrite")
    assert (tmp_path / "taken.pt").read_text() == "mine"
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the extra were not installed
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    expect_error(
        capsys, ["export", run, "--out", tmp_path / "bb.onnx", "--format", "onnx"], r"pip install 'icone\[onnx\]'"
    )
    assert not (tmp_path / "bb.onnx").exists()


def test_an_onnx_export_that_disagrees_is_not_written(capsys, tmp_path, monkeypatch):
    import onnxruntime

    npz = write_tiny_npz(tmp_path / "tiny.npz", 2)
    run = train(capsys, tmp_path, npz, *FAST, "eval.after_train=false")

    class Wrong:
        def __init__(self, *args, **kwargs):
            pass

        def run(self, names, feeds):
            return [np.zeros((len(feeds["input"]), 64), np.float32)]

    monkeypatch.setattr(onnxruntime, "InferenceSession", Wrong)
    expect_error(
        capsys,
        ["export", run, "--out", tmp_path / "bb.onnx", "--format", "onnx"],
        "differs from PyTorch by .* nothing was written",
    )
    assert not (tmp_path / "bb.onnx").exists() and not list(tmp_path.glob(".bb.onnx*"))


# ---- model.init --------------------------------------------------------------------------------------


def test_model_init_starts_from_the_source_runs_trained_weights(capsys, tmp_path):
    npz = write_tiny_npz(tmp_path / "tiny.npz", 2)
    source = train(capsys, tmp_path, npz, *FAST, "eval.knn_k=5")
    trained = json.loads((source / "eval.json").read_text())
    for init in (source, source / "backbone.pt", source / "checkpoints" / "last.pt"):
        out = tmp_path / f"from-{init.name}"
        args = [
            "train",
            "--data",
            npz,
            "--out",
            out,
            "--epochs",
            "1",
            "--batch-size",
            "8",
            *FAST,
            "eval.knn_k=5",
            f"model.init={init}",
        ]
        code, _, err = run_cli(args, capsys)
        assert code == 0, err
        baseline = json.loads((out / "eval.json").read_text())["baseline"]
        for key in ("knn_accuracy", "linear_accuracy", "rankme"):  # the baseline is the source run's trained encoder
            assert baseline[key] == pytest.approx(trained[key], abs=1e-6), (init, key)


def test_model_init_from_safetensors_and_a_plain_monai_state_dict(capsys, tmp_path):
    npz = write_tiny_npz(tmp_path / "tiny.npz", 2)
    source = train(capsys, tmp_path, npz, *RESNET, "eval.after_train=false")
    assert run_cli(["export", source, "--out", tmp_path / "bb.safetensors", "--format", "safetensors"], capsys)[0] == 0
    assert run_cli(["export", source, "--out", tmp_path / "monai", "--format", "monai"], capsys)[0] == 0
    from icone.build import build_method
    from icone.config import build_config
    from icone.training.checkpoint import load_checkpoint

    config = build_config(load_checkpoint(source)["config"])
    x = sample_input(2)
    expected = features_of(icone.load_backbone(source), x)
    for init in (tmp_path / "bb.safetensors", tmp_path / "monai" / "models" / "model.pt"):
        config.model.init = str(init)
        method = build_method(config, num_instances=36)
        torch.testing.assert_close(features_of(method.backbone.eval(), x), expected, atol=1e-5, rtol=0)


def test_model_init_of_another_architecture_is_one_line(capsys, tmp_path):
    npz2, npz3 = write_tiny_npz(tmp_path / "two.npz", 2), write_tiny_npz(tmp_path / "three.npz", 3)
    source = train(capsys, tmp_path, npz2, *FAST, "eval.after_train=false")
    args = ["--epochs", "1", "--batch-size", "8", *FAST, "eval.after_train=false", f"model.init={source}"]
    expect_error(
        capsys,
        ["train", "--data", npz3, "--out", tmp_path / "a", *args],
        r"model.init: .* has features.0.weight of shape .*another architecture, spatial dimension",
    )
    expect_error(
        capsys,
        ["train", "--data", npz2, "--out", tmp_path / "b", *args, "--backbone", "resnet18"],
        r"does not fit this backbone \(missing 'net.conv1.weight'",
    )
    expect_error(
        capsys,
        ["train", "--data", npz2, "--out", tmp_path / "c", *args[:-1], f"model.init={tmp_path / 'none.pt'}"],
        "does not exist",
    )
    assert not any((tmp_path / n).exists() for n in "abc")


# ---- embeddings with provenance ---------------------------------------------------------------------


def image_folder(root):
    from PIL import Image

    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(8):
            pixels = np.random.default_rng(i + (label == "b") * 50).random((16, 16)) * (80 if label == "a" else 250)
            Image.fromarray(pixels.astype(np.uint8)).save(root / label / f"{label}{i}.png")
    return root


def test_parquet_and_anndata_carry_files_labels_and_splits(capsys, tmp_path):
    import anndata
    import pyarrow.parquet as pq

    folder = image_folder(tmp_path / "cells")
    run = train(capsys, tmp_path, folder, "--batch-size", "4", *FAST, "eval.after_train=false")
    assert run_cli(["embed", run, "--data", folder, "--out", tmp_path / "e.parquet"], capsys)[0] == 0
    table = pq.read_table(tmp_path / "e.parquet").to_pydict()
    assert list(table) == ["index", "source", "split", "label", "label_id", "position", "embedding"]
    assert len(table["source"]) == 16 and set(table["split"]) == {"train", "test"}
    for source, label, position, embedding in zip(
        table["source"], table["label"], table["position"], table["embedding"]
    ):
        assert source.startswith(str(folder)) and source.endswith(".png") and position == [] and len(embedding) == 64
        assert label == ("b" if "/b/" in source else "a")  # the class is the sub-folder, by name
    assert run_cli(["embed", run, "--data", folder, "--out", tmp_path / "e.h5ad"], capsys)[0] == 0
    adata = anndata.read_h5ad(tmp_path / "e.h5ad")
    assert adata.X.shape == (16, 64) and list(adata.obs["source"]) == table["source"]
    np.testing.assert_allclose(adata.X, np.asarray(table["embedding"]), atol=1e-6)


def test_a_patch_source_gives_each_patch_its_position(capsys, tmp_path):
    import pyarrow.parquet as pq

    volume = np.random.default_rng(0).random((64, 64, 32)).astype(np.float32)
    np.save(tmp_path / "volume.npy", volume)
    run = train(capsys, tmp_path, tmp_path / "volume.npy", "--batch-size", "2", *FAST, "eval.after_train=false")
    assert run_cli(["embed", run, "--data", tmp_path / "volume.npy", "--out", tmp_path / "p.parquet"], capsys)[0] == 0
    table = pq.read_table(tmp_path / "p.parquet").to_pydict()
    assert sorted(map(tuple, table["position"])) == [(z, y, 0) for z in (0, 32) for y in (0, 32)]
    assert set(table["source"]) == {str(tmp_path / "volume.npy")}


def test_embed_plot_and_overwrite(capsys, tmp_path, monkeypatch):
    npz = write_tiny_npz(tmp_path / "tiny.npz", 2)
    run = train(capsys, tmp_path, npz, *FAST, "eval.after_train=false")
    calls = []

    class FakeUMAP:  # umap-learn is an optional extra; its wiring is what this checks
        def __init__(self, **kwargs):
            calls.append(kwargs)

        def fit_transform(self, x):
            return np.asarray(x)[:, :2]

    monkeypatch.setitem(sys.modules, "umap", type(sys)("umap"))
    sys.modules["umap"].UMAP = FakeUMAP
    code, out, err = run_cli(["embed", run, "--data", npz, "--out", tmp_path / "e.npz", "--plot"], capsys)
    assert code == 0, err
    assert (tmp_path / "e.png").is_file() and calls and "map:" in out
    expect_error(capsys, ["embed", run, "--data", npz, "--out", tmp_path / "e.npz"], "already exists")
    assert run_cli(["embed", run, "--data", npz, "--out", tmp_path / "e.npz", "--overwrite"], capsys)[0] == 0
    data = np.load(tmp_path / "e.npz")
    assert set(data.files) >= {"features", "indices", "labels", "splits", "sources", "positions"}


# ---- few labels --------------------------------------------------------------------------------------


def test_draws_are_stratified_and_reproducible():
    from icone.evaluate.few_label import stratified_draw

    labels = np.repeat(np.arange(4), [50, 30, 10, 3])
    a = stratified_draw(labels, np.random.default_rng(7), fraction=0.1)
    b = stratified_draw(labels, np.random.default_rng(7), fraction=0.1)
    assert np.array_equal(a, b) and np.bincount(labels[a]).tolist() == [5, 3, 1, 1]  # at least one per class
    shots = stratified_draw(labels, np.random.default_rng(0), shots=3)
    assert np.bincount(labels[shots]).tolist() == [3, 3, 3, 3]
    assert not np.array_equal(a, stratified_draw(labels, np.random.default_rng(8), fraction=0.1))


def test_evaluate_reports_few_label_budgets_for_trained_and_untrained(capsys, tmp_path):
    npz = write_tiny_npz(tmp_path / "tiny.npz", 2, n=64)
    run = train(capsys, tmp_path, npz, *FAST, "eval.knn_k=5")
    args = ["evaluate", run, "--label-fractions", "0.25,1", "--shots", "1,3", "--repeats", "3", "--json"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    result = json.loads(out)
    for where in (result, result["baseline"]):
        few = where["few_label"]
        assert set(few["fractions"]) == {"0.25", "1"} and set(few["shots"]) == {"1", "3"}
        entry = few["shots"]["3"]
        assert entry["labels_used"] == 12 and entry["repeats"] == 3
        assert 0 <= entry["linear_balanced_accuracy"]["mean"] <= 1 and entry["knn_accuracy"]["std"] >= 0
    assert len(result["per_class_recall"]) == 4 and (run / "plots" / "confusion.png").is_file()
    assert json.loads((run / "eval.json").read_text())["few_label"] == result["few_label"]
    expect_error(
        capsys, ["evaluate", run, "--label-fractions", "0,0.5"], "must lie in \\(0, 1\\]|at least|greater than 0"
    )
    expect_error(capsys, ["evaluate", run, "--shots", "50"], "more than the smallest class has")
