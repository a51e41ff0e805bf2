"""Trainer properties: resume equals uninterrupted, NaN stops the run and keeps the last good checkpoint."""

import json

import pytest
import torch

from helpers import make_trainer, tiny_dataset, train_steps
from icone.errors import TrainingDiverged
from icone.training.checkpoint import load_checkpoint
from icone.training.step import Schedule


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    data = tiny_dataset(2, n=24)
    full, _ = train_steps("icone", batch_size=4, epochs=2, run_dir=tmp_path / "full", dataset=data)
    interrupted = make_trainer(full.config, data, tmp_path / "half")
    interrupted.fit(until_epoch=1)
    assert load_checkpoint(tmp_path / "half")["epoch"] == 1
    resumed = make_trainer(full.config, data, tmp_path / "half")
    resumed.restore(load_checkpoint(tmp_path / "half"))
    resumed.fit()
    assert resumed.step == full.step
    for (name, a), b in zip(full.method.state_dict().items(), resumed.method.state_dict().values()):
        assert torch.equal(a, b), name


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    full, _ = train_steps("icone", batch_size=4, epochs=2, run_dir=tmp_path / "full")
    trainer = make_trainer(full.config, tiny_dataset(2), tmp_path)  # the setup is built once: 2 epochs
    trainer.fit(until_epoch=1)
    good = load_checkpoint(tmp_path)
    original = trainer.method.training_step

    def poisoned(views, index):
        loss, metrics = original(views, index)
        return loss * float("nan"), metrics

    trainer.method.training_step = poisoned
    with pytest.raises(TrainingDiverged, match="nan.*checkpoint of epoch 1 is kept"):
        trainer.fit()
    kept = load_checkpoint(tmp_path)
    assert kept["epoch"] == good["epoch"] == 1
    for a, b in zip(kept["model"].values(), good["model"].values()):
        assert torch.equal(a, b)


def test_metrics_log_has_steps_and_collapse_monitor(tmp_path):
    train_steps("icone", batch_size=4, epochs=2, run_dir=tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1, 2]
    for key in (
        "monitor_rankme",
        "monitor_std",
        "health/table_mean_cosine",
        "health/table_max_cosine",
        "health/table_rankme",
    ):
        assert all(key in r for r in epochs)
    steps = [r for r in records if r["kind"] == "step"]
    assert {"loss", "lr", "loss_vi", "loss_vv", "loss_div"} <= set(steps[0])


def test_schedule_warms_up_then_decays():
    factors = [Schedule(100, 10, 0.01).factor(s) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert factors[-1] == pytest.approx(0.01, abs=1e-3)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_channels_last_trains_like_the_default_layout(spatial_dims):
    """``train.channels_last`` changes the memory layout only: same losses, and the weights really are channels-last."""
    data = tiny_dataset(spatial_dims, n=8)
    _, plain_logs = train_steps("simclr", spatial_dims, batch_size=4, dataset=data)
    last, last_logs = train_steps(
        "simclr", spatial_dims, batch_size=4, dataset=data, overrides=["train.channels_last=true"]
    )
    fmt = torch.channels_last_3d if spatial_dims == 3 else torch.channels_last
    convs = [p for p in last.method.backbone.parameters() if p.dim() == spatial_dims + 2]
    assert convs and all(p.is_contiguous(memory_format=fmt) for p in convs)
    assert [r["loss"] for r in last_logs] == pytest.approx([r["loss"] for r in plain_logs], rel=1e-4)
