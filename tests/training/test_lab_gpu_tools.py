"""Training on one lab GPU: precision and loss scaling, activation checkpointing, step checkpoints with
mid-epoch resume, experiment tracking, the Python API and the example loop. (They run on the CPU here.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import icone
from helpers import FAST, make_trainer, run_cli, small_backbone, tiny_dataset, train_steps, write_tiny_npz
from icone.build import build_method, resolve_config
from icone.config import build_config
from icone.training.optim import build_optimizer
from icone.training.step import Schedule, TrainStep
from icone.views import ViewMaker

ROOT = Path(__file__).resolve().parents[2]


# ---- precision ---------------------------------------------------------------------------------------


def test_fp16_skips_an_overflowing_step_and_carries_on():
    data = tiny_dataset(2, n=16)
    config = resolve_config(
        build_config(None, ["model.backbone=smallcnn", "model.width=8", "train.batch_size=4", "train.precision=fp16"]),
        data,
    )
    method = build_method(config, num_instances=16)
    step = TrainStep(
        method,
        build_optimizer(method, config),
        Schedule(10),
        float(config.optim.lr),
        torch.device("cpu"),
        precision="fp16",
    )
    assert step.scaler is not None and config.train.precision == "fp16"
    real, calls = method.training_step, []

    def overflow_on_the_second_call(views, index):
        loss, metrics = real(views, index)
        calls.append(1)
        return (loss * float("inf") if len(calls) == 2 else loss), metrics

    method.training_step = overflow_on_the_second_call
    maker = ViewMaker(config.views, 2)
    x, index = torch.from_numpy(np.asarray(data.train.samples)[:4]), torch.arange(4)
    skipped_before = None
    for i in range(4):
        before = [p.detach().clone() for p in method.backbone.parameters()]
        step(x, index, maker)
        moved = any(not torch.equal(a, p) for a, p in zip(before, method.backbone.parameters()))
        if i == 1:
            assert step.last_skipped and not moved  # the overflowing step left the weights alone
            skipped_before = step.skipped_steps
        elif i > 1 and not step.last_skipped:
            assert moved
    assert skipped_before >= 1 and step.step == 4 and all(torch.isfinite(p).all() for p in method.parameters())


def test_a_trainer_under_fp16_does_not_take_a_skipped_step_for_a_divergence(tmp_path):
    from icone.methods.icone import IConE

    real = IConE.training_step
    state = {"calls": 0}

    def poisoned(self, views, index):
        loss, metrics = real(self, views, index)
        state["calls"] += 1
        return (loss * float("inf") if state["calls"] == 3 else loss), metrics

    IConE.training_step = poisoned
    try:
        trainer, _ = train_steps("icone", batch_size=4, epochs=1, run_dir=tmp_path, overrides=["train.precision=fp16"])
    finally:
        IConE.training_step = real
    epoch = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"epoch"' in line][
        -1
    ]
    assert trainer.train_step.skipped_steps >= 1 and epoch["skipped_steps"] >= 1 and epoch["epoch"] == 1


def test_auto_precision_is_fp32_on_a_cpu_and_saved(tmp_path):
    config = resolve_config(build_config(None, ["train.device=cpu"]), tiny_dataset(2, n=32))
    assert config.train.precision == "fp32"


# ---- activation checkpointing ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["smallcnn", "resnet18"])
@pytest.mark.parametrize("dims", [2, 3])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(name, dims):
    from icone.nets import set_activation_checkpointing

    torch.manual_seed(0)
    backbone = small_backbone(name, dims).train()
    x = torch.randn(2, 1, *(12,) * dims)
    grads = []
    for on in (False, True):
        set_activation_checkpointing(backbone, on)
        backbone.zero_grad()
        loss = backbone(x).pow(2).mean()
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in backbone.parameters()]))
    (plain_loss, plain), (checked_loss, checked) = grads
    torch.testing.assert_close(checked_loss, plain_loss)
    for a, b in zip(plain, checked):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)


# ---- step checkpoints and mid-epoch resume --------------------------------------------------------------

KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from icone.training.step import TrainStep
    kill_after = int(sys.argv[1])
    real = TrainStep.__call__
    def call(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        if kill_after and self.step == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)  # between two step checkpoints, in the middle of an epoch
        return out
    TrainStep.__call__ = call
    from icone.cli import run
    sys.exit(run(sys.argv[2:]))
    """
)


@pytest.mark.parametrize("method", ["icone", "excb", "moco", "dino"])
def test_a_run_killed_between_step_checkpoints_resumes_to_the_same_weights(method, tmp_path, capsys):
    npz = write_tiny_npz(tmp_path / "tiny.npz", 2, n=24)  # 6 steps per epoch at batch 4
    args = ["train", "--data", str(npz), "--method", method, "--epochs", "2", "--batch-size", "4", *FAST, "eval.after_train=false",
            "train.checkpoint_every_steps=2", "optim.warmup_epochs=0.5", "train.log_every=1"]  # fmt: skip
    if method in ("excb", "dino"):
        args += [f"{method}.hidden_dim=32", "views.local_size=8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def icone_run(kill_after: int, out: Path, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", KILLER, str(kill_after), *args, "--out", str(out), *extra],
            capture_output=True,
            text=True,
            env=env,
        )

    from helpers import run_cli

    code, _, err = run_cli([*args, "--out", tmp_path / "whole"], capsys)  # uninterrupted: in this process (1 thread)
    assert code == 0, err
    killed = icone_run(3, tmp_path / "cut")  # step checkpoints after steps 2 and 4, killed after 3
    assert killed.returncode == -signal.SIGKILL
    saved = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)
    assert (saved["epoch"], saved["step"], saved["batch"]) == (0, 2, 2)
    resumed = subprocess.run([sys.executable, "-m", "icone", "train", "--out", str(tmp_path / "cut"), "--resume", "--no-progress"],
                             capture_output=True, text=True, env=env)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 12
    different = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert different == []
    steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
        if '"kind": "step"' in line
    ]
    assert steps == list(
        range(1, 13)
    )  # every step once: those the killed run logged after its checkpoint are not repeated


# ---- tracking -------------------------------------------------------------------------------------------


def test_tensorboard_holds_the_logged_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer, steps = train_steps(
        "icone", batch_size=4, epochs=2, run_dir=tmp_path, overrides=["train.logger=tensorboard"]
    )
    trainer.log.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"step/loss", "step/lr", "epoch/monitor_rankme", "epoch/health/table_rankme"} <= tags
    logged = [(r["step"], r["loss"]) for r in steps]
    got = [(e.step, e.value) for e in events.Scalars("step/loss")]
    assert [s for s, _ in got] == [s for s, _ in logged]
    np.testing.assert_allclose([v for _, v in got], [v for _, v in logged], rtol=1e-6)


def test_tensorboard_gets_the_config_and_the_final_plots(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    npz = write_tiny_npz(tmp_path / "tiny.npz", 2)
    args = ["train", "--data", npz, "--out", tmp_path / "run", "--epochs", "1", "--batch-size", "8", *FAST]
    code, _, err = run_cli([*args, "train.logger=tensorboard", "eval.knn_k=5"], capsys)
    assert code == 0, err
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    assert "config/text_summary" in events.Tags()["tensors"]
    text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "batch_size: 8" in text and "method: icone" in text
    images = set(events.Tags()["images"])
    assert {"plots/embeddings", "plots/confusion", "plots/collapse"} <= images, images


def test_mlflow_holds_the_run_params_metrics_and_artifacts(tmp_path, capsys, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    npz = write_tiny_npz(tmp_path / "tiny.npz", 2)
    run = tmp_path / "run"
    args = ["train", "--data", npz, "--out", run, "--epochs", "1", "--batch-size", "8", *FAST, "eval.knn_k=5"]
    code, _, err = run_cli([*args, "train.logger=mlflow"], capsys)
    assert code == 0, err
    assert "INFO" not in err  # MLflow's notes on making its database are not shown
    client = MlflowClient(f"sqlite:///{run / 'mlflow.db'}")
    (found,) = client.search_runs([client.get_experiment_by_name("icone").experiment_id])
    assert found.info.run_name == "run" and found.info.status == "FINISHED"
    assert found.data.params["train.batch_size"] == "8" and found.data.params["method"] == "icone"
    losses = client.get_metric_history(found.info.run_id, "step/loss")
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m.step for m in losses] == [r["step"] for r in steps if r["kind"] == "step"]
    assert "eval/knn_accuracy" in found.data.metrics
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"backbone.pt", "eval.json", "config.yaml", "plots"} <= artifacts
    assert any(a.path.endswith(".png") for a in client.list_artifacts(found.info.run_id, "plots"))


# ---- the Python API and the example ------------------------------------------------------------------


def test_the_python_api_trains_a_run_and_returns_its_evaluation(tmp_path):
    npz = write_tiny_npz(tmp_path / "tiny.npz", 2)
    run = icone.train(str(npz), "icone", batch_size=8, epochs=1, backbone="smallcnn", out=tmp_path / "run",
                      options={"model.width": 8, "train.monitor_samples": 16, "eval.knn_k": 5, "icone.diversity": "frame"})  # fmt: skip
    assert run.folder == tmp_path / "run" and run.epochs == 1 and run.steps == 48 // 8
    assert run.eval["knn_accuracy"] == json.loads((run.folder / "eval.json").read_text())["knn_accuracy"]
    assert run.config.method_options["diversity"] == "frame" and run.config.model.width == 8
    backbone = icone.load_backbone(run.folder)
    assert backbone(torch.randn(2, 1, 16, 16)).shape == (2, 64)


def test_the_example_loop_runs():
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "own_loop.py"), "12"], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    losses = [
        float(line.split("loss ")[1].split()[0]) for line in result.stdout.splitlines() if line.startswith("step ")
    ]
    assert len(losses) == 2 and all(np.isfinite(losses)) and "features: (4, 128)" in result.stdout


def test_peak_memory_is_logged_per_epoch(tmp_path):
    trainer = make_trainer(
        resolve_config(
            build_config(None, ["model.backbone=smallcnn", "model.width=8", "train.batch_size=4", "train.epochs=1"]),
            tiny_dataset(2),
        ),
        tiny_dataset(2),
        tmp_path,
    )
    trainer.fit()
    epochs = [
        json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"kind": "epoch"' in line
    ]
    assert epochs[-1]["peak_rss_mib"] > 10
