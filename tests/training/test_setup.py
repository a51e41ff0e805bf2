"""The composition root: ``icone train`` resolves each thing once, a Setup holds what the loop consumes,
its schedules are the ones the step applies, and the Python API hands it over."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

import icone
from helpers import FAST, run_cli, tiny_dataset, write_tiny_npz
from icone import build
from icone.config import DataConfig, EvalConfig, ViewConfig, build_config
from icone.data import ReadOptions
from icone.errors import UserError
from icone.evaluate.report import EvalOptions
from icone.training.setup import Setup
from icone.views import ViewSpec

ITEMS = ["model.backbone=smallcnn", "model.width=8", "train.batch_size=4", "train.epochs=2", "train.device=cpu"]


def test_train_resolves_the_method_options_and_runtime_once(tmp_path, capsys, monkeypatch):
    """From the command line to the last step: get_method, the method's options, the device, the precision
    and the memory format are each resolved once (the evaluation after training is left out)."""
    from icone import methods, runtime
    from icone.methods.base import Method

    counts = dict.fromkeys(["get_method", "make_options", "pick_device", "resolve_precision", "memory_format"], 0)

    def counted(name, real):
        def call(*args, **kwargs):
            counts[name] += 1
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(build, "get_method", counted("get_method", methods.get_method))
    monkeypatch.setattr(Method, "make_options", classmethod(counted("make_options", Method.make_options.__func__)))
    for name in ("pick_device", "resolve_precision", "memory_format"):
        monkeypatch.setattr(runtime, name, counted(name, getattr(runtime, name)))
    npz = write_tiny_npz(tmp_path / "tiny.npz", 2, n=16)
    code, _, err = run_cli(
        ["train", "--data", npz, "--method", "byol", "--out", tmp_path / "run", *FAST, "--batch-size", "4",
         "--epochs", "1", "eval.after_train=false"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert counts == dict.fromkeys(counts, 1)


def test_the_step_applies_the_precomputed_schedules(monkeypatch):
    """lr[step] x the group's scale, the weight-decay ramp of ExCB's centroids, and the teacher's momentum."""
    from icone.methods import excb

    seen = []
    real = excb.ema_update
    monkeypatch.setattr(excb, "ema_update", lambda t, o, m, buffers=True: seen.append(m) or real(t, o, m, buffers))
    data = tiny_dataset(2, n=16)
    setup = build.setup(build_config(None, ["method=excb", "excb.num_clusters=4", *ITEMS]), data)
    assert isinstance(setup, Setup) and setup.plan.total_steps == setup.schedules.total_steps == 8
    scales = {start: setup.schedules.wd[start] for start in setup.schedules.wd}
    assert list(scales) == [10.0] and scales[10.0][0] == pytest.approx(10.0) and scales[10.0][-1] > 1.0
    views = setup.views[0]
    for step, (x, index, _) in enumerate(setup.loaders.epoch(0)):
        setup.train_step(x, index, views)
        groups = setup.optimizer.param_groups
        assert groups[0]["lr"] == pytest.approx(setup.schedules.lr[step] * groups[0]["lr_scale"])
        centroids = next(g for g in groups if "weight_decay_start_scale" in g)
        assert centroids["weight_decay"] == pytest.approx(centroids["base_weight_decay"] * scales[10.0][step])
    assert seen[::3] == pytest.approx(list(setup.schedules.momentum[: len(seen) // 3]))  # 3 teacher parts per step


def test_the_views_of_each_epoch_follow_the_methods_schedule():
    data = tiny_dataset(2, n=16)
    plain = build.setup(build_config(None, ["method=excb", *ITEMS]), data)
    assert plain.views[0].spec == plain.views[1].spec  # no schedule: the same views every epoch
    scheduled = build.setup(build_config(None, ["method=excb", "excb.crop_schedule=true", *ITEMS]), data)
    first, last = (scheduled.views[e].spec.global_scale[0] for e in (0, 1))
    assert first == pytest.approx(0.4) and last < first


def test_the_small_values_below_build_default_as_the_config_does():
    """ReadOptions, EvalOptions and ViewSpec restate the config's defaults for the layers that cannot read it."""
    assert ReadOptions() == ReadOptions.of(DataConfig())
    assert EvalOptions() == EvalOptions.of(EvalConfig())
    views = ViewConfig()
    spec = ViewSpec(global_size=8, local_size=4)
    for field in dataclasses.fields(ViewSpec):
        given = getattr(views, field.name)
        if field.name not in ("global_size", "local_size", "local_crops", "flip", "rotate90"):
            assert getattr(spec, field.name) == (tuple(given) if isinstance(given, list) else given), field.name


def test_the_api_returns_a_setup_and_deprecates_the_separate_builders():
    data = tiny_dataset(2, n=16)
    setup = icone.setup(
        data, "simclr", batch_size=4, backbone="smallcnn", options={"model.width": 8, "train.device": "cpu"}
    )
    assert isinstance(setup, Setup) and setup.config.method == "simclr" and setup.config.data.source == data.name
    x, index, _ = next(iter(setup.loaders.epoch(0)))
    loss, _ = setup.train_step(x, index, setup.views[0])
    assert torch.isfinite(loss) and setup.train_step.step == 1
    with pytest.raises(UserError, match="simclr needs a batch size of at least 2"):
        icone.setup(data, "simclr", batch_size=1, backbone="smallcnn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        method = icone.build_method("icone", num_instances=16, sample_shape=(1, 16, 16), backbone="smallcnn")
        icone.build_optimizer(method)
        views = icone.build_views(method)
    assert [w.category for w in caught] == [DeprecationWarning] * 3 and views.num_views == 2
