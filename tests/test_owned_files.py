"""Nothing a user owns is touched (issue 19): ``--overwrite`` replaces only what icone wrote, a replacement
cut short by a kill is put right by the next command, and no run writes among its data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from helpers import FAST, expect_error, run_cli, write_tiny_npz
from icone.run_folder import MARKER

TRAIN = ["--epochs", "1", "--batch-size", "8", *FAST, "eval.after_train=false"]


@pytest.fixture
def npz(tmp_path) -> Path:
    return write_tiny_npz(tmp_path / "tiny.npz", 2)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def test_overwrite_refuses_a_run_folder_that_holds_the_users_files(capsys, tmp_path, npz):
    run = tmp_path / "run"
    assert run_cli(["train", "--data", npz, "--out", run, *TRAIN], capsys)[0] == 0
    (run / "notes.txt").write_text("what I saw")
    (run / "plots" / "mine.png").write_bytes(b"my figure")
    before = snapshot(run)
    expect_error(
        capsys,
        ["train", "--data", npz, "--out", run, "--overwrite", *TRAIN],
        r"--overwrite replaces only what icone wrote, and '.*run' also holds notes\.txt, plots/mine\.png; move them "
        r"out of the folder or choose another --out",
    )
    assert snapshot(run) == before and not list(tmp_path.glob(".run.replaced-*"))


def test_overwrite_replaces_what_train_evaluate_and_bench_wrote(capsys, tmp_path, npz):
    run = tmp_path / "run"
    assert run_cli(["train", "--data", npz, "--out", run, *TRAIN, "train.save_every=1"], capsys)[0] == 0
    assert run_cli(["evaluate", run], capsys)[0] == 0  # eval.json and plots, written into the run folder
    code, _, err = run_cli(["train", "--data", npz, "--out", run, "--overwrite", *TRAIN], capsys)
    assert code == 0, err
    assert not (run / "checkpoints" / "epoch_1.pt").exists() and not (run / "eval.json").exists()


def test_a_run_folder_of_an_older_icone_without_a_list_is_judged_by_its_names(capsys, tmp_path, npz):
    run = tmp_path / "run"
    assert run_cli(["train", "--data", npz, "--out", run, *TRAIN], capsys)[0] == 0
    (run / MARKER).write_text("")  # as icone wrote it before it kept a list
    (run / "notes.txt").write_text("mine")
    expect_error(capsys, ["train", "--data", npz, "--out", run, "--overwrite", *TRAIN], r"also holds notes\.txt;")
    (run / "notes.txt").unlink()
    assert run_cli(["train", "--data", npz, "--out", run, "--overwrite", *TRAIN], capsys)[0] == 0


def interrupted_overwrite(run: Path) -> Path:
    """What a kill -9 during ``--overwrite`` leaves: the old run moved aside, a new folder without a checkpoint."""
    aside = run.with_name(f".{run.name}.replaced-999999999")  # no such process
    run.rename(aside)
    run.mkdir()
    (run / MARKER).write_text("")
    (run / "config.yaml").write_text("half written")
    return aside


@pytest.mark.parametrize("command", ["export", "evaluate", "resume", "model.init"])
def test_the_next_command_restores_a_run_an_interrupted_overwrite_hid(capsys, tmp_path, npz, command):
    run = tmp_path / "run"
    assert run_cli(["train", "--data", npz, "--out", run, *TRAIN], capsys)[0] == 0
    before = snapshot(run)
    aside = interrupted_overwrite(run)
    args = {
        "export": ["export", run, "--out", tmp_path / "bb.pt"],
        "evaluate": ["evaluate", run, "--json"],
        "resume": ["train", "--out", run, "--resume", "--epochs", "2", "--no-progress"],
        "model.init": ["train", "--data", npz, "--out", tmp_path / "next", *TRAIN, f"model.init={run}"],
    }[command]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert f"restored '{run}'" in err and not aside.exists()
    if command == "export":
        assert snapshot(run) == before


def test_out_inside_the_data_folder_is_refused(capsys, tmp_path):
    from PIL import Image

    data = tmp_path / "images"
    data.mkdir()
    for i in range(12):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (16, 16), np.uint8)).save(data / f"{i}.png")
    before = sorted(os.listdir(data))
    expect_error(
        capsys,
        ["train", "--data", data, "--out", data / "run", *TRAIN],
        r"--out '.*images/run' is inside the data folder '.*images'.*choose an --out outside it",
    )
    assert sorted(os.listdir(data)) == before


def test_model_init_inside_the_folder_overwrite_replaces_is_refused(capsys, tmp_path, npz):
    run = tmp_path / "run"
    assert run_cli(["train", "--data", npz, "--out", run, *TRAIN], capsys)[0] == 0
    before = snapshot(run)
    expect_error(
        capsys,
        ["train", "--data", npz, "--out", run, "--overwrite", *TRAIN, f"model.init={run}"],
        r"model.init='.*run' is inside the run folder --overwrite would replace; copy the weights out first",
    )
    assert snapshot(run) == before
