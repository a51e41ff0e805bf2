"""The audit of issue 19 on the command line: every fault is one true line (exit 2 for input, 1 for a
failure during training, 130 for Ctrl-C), and its advice leads somewhere."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from helpers import FAST, expect_error, run_cli, write_tiny_npz

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


# ---- training: what a run says when it stops, and what it leaves ---------------------------------------


def test_an_allocator_failure_is_out_of_memory_naming_the_samples_and_data_resize(capsys, tmp_path, monkeypatch):
    from PIL import Image

    from icone.training.trainer import Trainer

    folder = tmp_path / "big"
    folder.mkdir()
    for i in range(16):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (64, 64), np.uint8)).save(folder / f"{i}.png")

    def allocator(self, *args, **kwargs):  # what torch's CPU allocator raises for a 4096^2 set over the limit
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried "
            "to allocate 5368709120 bytes. Error code 12 (Cannot allocate memory)"
        )

    monkeypatch.setattr(Trainer, "fit", allocator)
    line = expect_error(
        capsys,
        ["train", "--data", folder, "--out", tmp_path / "run", *TRAIN],
        r"^error: out of memory training on samples of 1x64x64 \(e.g. '.*big/0\.png'\) at batch 8; pass data.resize=",
        code=1,
    )
    assert "internal error" not in line and "--batch-size" in line
    assert not (tmp_path / "run").exists()


def test_config_yaml_holds_the_options_a_resume_changed(capsys, tmp_path, npz):
    from icone.config import build_config, load_yaml

    run = tmp_path / "run"
    assert run_cli(["train", "--data", npz, "--out", run, *TRAIN], capsys)[0] == 0
    code, _, err = run_cli(
        ["train", "--out", run, "--resume", "--epochs", "2", "train.log_every=3", "--no-progress"], capsys
    )
    assert code == 0, err
    saved = build_config(load_yaml(run / "config.yaml"))
    assert (saved.train.epochs, saved.train.log_every) == (2, 3)


def test_tensorboard_does_not_show_replayed_steps_twice(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from icone.training.logs import MetricsLog

    first = MetricsLog(tmp_path / "metrics.jsonl", "tensorboard")
    for step in range(1, 7):  # killed after step 6; its last checkpoint was at step 4
        first.write({"kind": "step", "epoch": 1, "step": step, "loss": 10.0 + step})
    first.close()
    time.sleep(1.1)  # a new event file is named by the second it was opened
    resumed = MetricsLog(tmp_path / "metrics.jsonl", "tensorboard")
    resumed.resume_at(0, 4)
    for step in (5, 6, 7):
        resumed.write({"kind": "step", "epoch": 1, "step": step, "loss": 20.0 + step})
    resumed.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    got = [(e.step, e.value) for e in events.Scalars("step/loss")]
    assert got == [(1, 11.0), (2, 12.0), (3, 13.0), (4, 14.0), (5, 25.0), (6, 26.0), (7, 27.0)]


def test_a_torchrun_ctrl_c_names_a_command_that_resumes_the_distributed_run(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from icone.runs.train import _interrupted

    trainer = SimpleNamespace(epoch=3, step=40, saved_epoch=3)
    assert "'icone train --resume --out runs/a'" in str(_interrupted(Path("runs/a"), trainer))
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    line = str(_interrupted(Path("runs/a"), trainer))
    assert (
        "'torchrun --nnodes=2 --nproc_per_node=4 [your rendezvous options] -m icone train --resume --out runs/a'"
        in line
    )
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    line = str(_interrupted(Path("runs/a"), trainer))
    assert "'torchrun --standalone --nproc_per_node=2 -m icone train --resume --out runs/a'" in line


def test_icone_on_a_single_training_instance_is_refused_before_anything_is_written(capsys, tmp_path):
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32), np.uint8)).save(tmp_path / "one.png")
    run = tmp_path / "run"
    expect_error(
        capsys,
        ["train", "--data", tmp_path / "one.png", "--out", run, "--batch-size", "1", *FAST],
        r"icone tells training instances apart and needs at least 2, but '.*one\.png' gives 1 \(one patch of 32x32\); "
        r"make more with a smaller data.patch or data.stride, or give more images",
    )
    assert not run.exists()


@pytest.mark.parametrize("item", ["views.global_size=1", "views.local_size=1"])
def test_views_of_one_pixel_are_refused_not_blamed_on_the_learning_rate(capsys, tmp_path, npz, item):
    line = expect_error(
        capsys,
        ["train", "--data", npz, "--out", tmp_path / "run", *TRAIN, "--method", "dino", item],
        rf"{item.split('=')[0]} must be at least 2, got 1 \(a view of one pixel",
    )
    assert "optim.lr" not in line and not (tmp_path / "run").exists()


def test_a_batch_above_patches_per_epoch_names_the_option(capsys, tmp_path, npz):
    expect_error(
        capsys,
        ["train", "--data", npz, "--out", tmp_path / "run", *TRAIN, "data.patches_per_epoch=4"],
        r"batch size 8 is larger than the 4 samples drawn per epoch \(data.patches_per_epoch=4\); use --batch-size 4 "
        r"or less, or raise data.patches_per_epoch",
    )


@pytest.mark.parametrize(
    "name,fmt,pattern",
    [
        ("resnet.pt", "onnx", r"--out '.*resnet\.pt' does not end in \.onnx, the suffix of --format onnx; name it .*resnet\.onnx"),
        ("resnet.onnx", "icone", r"does not end in \.pt or \.pth, the suffix of --format icone; name it .*resnet\.pt"),
        ("weights.bin", "safetensors", r"name it .*weights\.safetensors"),
    ],
)  # fmt: skip
def test_an_export_under_another_formats_suffix_is_refused(capsys, tmp_path, npz, name, fmt, pattern):
    run = tmp_path / "run"
    assert run_cli(["train", "--data", npz, "--out", run, *TRAIN], capsys)[0] == 0
    expect_error(capsys, ["export", run, "--out", tmp_path / name, "--format", fmt], pattern)
    assert not (tmp_path / name).exists()
