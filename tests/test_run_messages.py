"""A run that says what it means (issue 23, item 11): plain per-epoch lines when stdout is not a terminal,
the verdict on collapse in words (table and eval.json), ``init`` for a model.init start, the option groups
in ``icone train --help``, and ``TrainStep`` taking a device name."""

import json
import re

import pytest
import torch

from helpers import run_cli, tiny_dataset, write_tiny_npz
from icone.config import build_config
from icone.evaluate.verdict import collapse_verdict

QUIET = ["--backbone", "smallcnn", "model.width=8", "train.monitor_samples=16", "eval.knn_k=5", "--batch-size", "8"]


def test_a_run_writes_one_plain_line_per_epoch_and_ends_with_a_verdict(capsys, tmp_path):
    npz = write_tiny_npz(tmp_path / "tiny.npz", 2)
    code, out, err = run_cli(["train", "--data", npz, "--out", tmp_path / "run", "--epochs", "2", *QUIET], capsys)
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]  # captured: not a terminal
    assert len(lines) == 2, out
    pattern = r"epoch 2/2  loss -?\d+\.\d{4}  lr \S+  monitor RankMe \d+\.\d  \d+\.\d samples/s  ETA 0:00:00"
    assert re.fullmatch(pattern, lines[1]), lines[1]
    verdict = json.loads((tmp_path / "run" / "eval.json").read_text())["collapse"]
    assert verdict["verdict"] in ("none", "partial", "collapsed") and "RankMe" in verdict["rule"]
    table_end = out[out.index("trained") :]
    assert verdict["text"].split(":")[0] in table_end and "untrained" in out


def test_the_verdict_rules():
    alive = {"rankme": 40.0, "embedding_std": 0.1, "baseline": {"rankme": 30.0}}
    assert collapse_verdict(alive, 64)["verdict"] == "none"
    lost = {"rankme": 5.0, "embedding_std": 0.1, "baseline": {"rankme": 30.0}}
    assert collapse_verdict(lost, 64)["verdict"] == "partial"
    learned = {"rankme": 8.3, "embedding_std": 0.3, "baseline": {"rankme": 34.0}}  # a good VICReg run on synthetic2d
    assert collapse_verdict(learned, 64)["verdict"] == "none"
    assert (
        collapse_verdict({"rankme": 2.9, "embedding_std": 0.3, "baseline": {"rankme": 34.0}}, 64)["verdict"]
        == "collapsed"
    )
    dead = collapse_verdict({"rankme": 1.2, "embedding_std": 0.001, "baseline": {"rankme": 30.0}}, 64)
    assert dead["verdict"] == "collapsed" and "optim.lr" in dead["text"] and dead["text"].startswith("collapse: ")
    point = {"rankme": 20.0, "embedding_std": 0.005, "baseline": {"rankme": 22.0}}  # 0.005 < 0.1 / sqrt(64)
    assert collapse_verdict(point, 64)["verdict"] == "collapsed"


def test_a_model_init_start_is_called_init(capsys, tmp_path):
    npz = write_tiny_npz(tmp_path / "tiny.npz", 2)
    args = ["train", "--data", npz, "--epochs", "1", *QUIET, "--no-progress"]
    assert run_cli([*args, "--out", tmp_path / "first"], capsys)[0] == 0
    code, out, err = run_cli([*args, "--out", tmp_path / "second", f"model.init={tmp_path / 'first'}"], capsys)
    assert code == 0, err
    header = next(line for line in out.splitlines() if "metric" in line)
    assert "init" in header and "untrained" not in header
    assert "(model.init: " in " ".join(out.split())  # the verdict compares with the weights the run started from


def test_train_help_lists_the_option_groups_and_a_valid_example(capsys):
    code, out, _ = run_cli(["train", "--help"], capsys)
    assert code == 0
    text = " ".join(out.split())
    for group in ("data.*:", "views.*:", "model.*:", "optim.*:", "train.*:", "eval.*:", "METHOD.key"):
        assert group in text, group
    assert "train.lr" not in text and "optim.lr" in text
    from icone.cli.commands import TRAIN_EXAMPLE

    items = [word for word in TRAIN_EXAMPLE.split() if "=" in word]
    config = build_config(None, items + ["method=icone"])
    assert config.optim.lr == pytest.approx(3e-4) and config.data.channels == [0, 2]


def test_train_step_takes_a_device_name():
    from helpers import train_steps
    from icone.training.step import Schedule, Schedules, TrainStep

    trainer, _ = train_steps("simclr", batch_size=4)
    step = TrainStep(trainer.method, trainer.optimizer, Schedules.make(Schedule(10), 1e-3), "cpu")
    assert step.device == torch.device("cpu")
    x = tiny_dataset(2, n=4).train.samples.array
    loss, _ = step(torch.from_numpy(x), torch.arange(4), trainer.views(0))
    assert torch.isfinite(loss)
