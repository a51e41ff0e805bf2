"""The baseline methods train end to end in 2D and 3D, learn on fixed data, and refuse batches they cannot use."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from helpers import tiny_dataset, train_steps
from icone.build import build_method, check_batch_size, resolve_config
from icone.config import build_config
from icone.errors import UserError
from icone.methods import get_method, registry

BASELINES = ["simclr", "moco", "byol", "simsiam", "vicreg", "barlow_twins", "dino", "swav"]
FAMILIES = {"contrastive", "distillation", "clustering", "regularisation"}

# Narrow heads keep the runs fast; the shipped widths are exercised in test_default_heads_take_a_step.
NARROW_HEADS = {
    "simclr": ["simclr.hidden_dim=64"],
    "moco": ["moco.hidden_dim=64"],
    "byol": ["byol.hidden_dim=64", "byol.out_dim=32"],
    "simsiam": ["simsiam.proj_dim=64", "simsiam.pred_hidden_dim=16"],
    "vicreg": ["vicreg.expander_dim=64"],
    "barlow_twins": ["barlow_twins.projector_dim=64"],
    "dino": ["dino.hidden_dim=64", "dino.bottleneck_dim=32"],
    "swav": ["swav.hidden_dim=64", "swav.out_dim=32"],
}
GENTLE_VIEWS = [
    "views.blur_prob=0",
    "views.noise_std=0",
    "views.brightness=0.1",
    "views.contrast=0.1",
    "views.gamma=0.1",
    "views.global_scale=[0.8,1.0]",
    "views.flip=false",
    "views.rotate90=false",
]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors gain nothing from threads, and threads spin when other test runs share the cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def assert_finite(trainer, steps) -> None:
    assert steps and all(math.isfinite(s["loss"]) for s in steps)
    assert all(math.isfinite(v) for s in steps for k, v in s.items() if isinstance(v, float))
    for name, tensor in list(trainer.method.named_parameters()) + list(trainer.method.named_buffers()):
        if tensor.is_floating_point():
            assert torch.isfinite(tensor).all(), name


def test_registered_with_their_attributes():
    methods = registry()
    for name in BASELINES:
        cls = methods[name]
        assert cls.family in FAMILIES and cls.batch_needs and "arXiv" in cls.paper
        assert cls.min_batch_size >= 1 and cls.default_lr > 0 and cls.default_weight_decay >= 0
        assert cls.default_norm in ("batch", "group") and cls.default_local_crops >= 0
        assert dataclasses.is_dataclass(cls.Options) and "norm" in {f.name for f in dataclasses.fields(cls.Options)}
    assert {n: methods[n].min_batch_size for n in BASELINES} == {
        "simclr": 2,
        "moco": 1,
        "byol": 1,
        "simsiam": 1,
        "vicreg": 2,
        "barlow_twins": 2,
        "dino": 1,
        "swav": 1,
    }


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("method", BASELINES)
def test_trains_at_min_batch_and_at_16(method, dims):
    smallest = get_method(method).min_batch_size
    for batch, n, epochs in ((smallest, 4 * smallest, 1), (16, 16, 2)):
        trainer, steps = train_steps(
            method,
            dims,
            batch_size=batch,
            epochs=epochs,
            dataset=tiny_dataset(dims, n=n),
            overrides=NARROW_HEADS[method],
        )
        assert len(steps) == n // batch * epochs
        assert_finite(trainer, steps)


@pytest.mark.parametrize("method", BASELINES)
def test_default_heads_take_a_step(method):
    """The shipped option defaults build and take one optimizer step at the smallest batch size."""
    dataset = tiny_dataset(2, n=8)
    b = get_method(method).min_batch_size
    config = resolve_config(
        build_config(None, [f"method={method}", "model.backbone=smallcnn", "model.width=8", f"train.batch_size={b}"]),
        dataset,
    )
    model = build_method(config, num_instances=8)
    torch.manual_seed(0)
    views = [torch.randn(b, 1, 16, 16) for _ in range(2)] + [
        torch.randn(b, 1, 7, 7) for _ in range(config.views.local_crops)
    ]
    loss, metrics = model(views, torch.arange(b))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert all(not v.requires_grad for v in metrics.values())
    loss.backward()
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3).step()
    model.after_optimizer_step(1, 10)
    assert all(torch.isfinite(p).all() for p in model.parameters())


# Test-only settings that expose learning in a 32-step run; each is explained where it is set.
LEARNING_SETTINGS = {
    # The teacher and its centre held fixed: DINO's loss first rises while the centre forms (the
    # teacher flattens towards uniform), which takes longer than this run; here the student must
    # still come closer to the teacher.
    "dino": ["dino.momentum=1", "dino.final_momentum=1", "dino.center_momentum=1"],
}
# MoCo's queue starts with random keys (easy negatives): compare from the second epoch on.
SKIP_FIRST_EPOCH = {"moco"}


@pytest.mark.parametrize("method", BASELINES)
def test_loss_goes_down_on_fixed_data(method):
    batch, n, epochs = 8, 32, 8
    # the method's stated lr, unscaled: the sqrt rule would lower it 2.8x at batch 8 for this short run
    overrides = GENTLE_VIEWS + NARROW_HEADS[method] + LEARNING_SETTINGS.get(method, []) + ["optim.lr_scaling=none"]
    _, steps = train_steps(
        method, 2, batch_size=batch, epochs=epochs, dataset=tiny_dataset(2, n=n), overrides=overrides
    )
    # a fixed teacher's entropy is a floor no student reaches: what can fall is the KL above it
    losses = np.array([s["loss"] - s.get("teacher_entropy", 0.0) for s in steps])
    if method in SKIP_FIRST_EPOCH:
        losses = losses[n // batch :]
    window = len(losses) // 4
    first, last = losses[:window].mean(), losses[-window:].mean()
    assert last < first - 0.05 * abs(first), (method, first, last)


def test_queues_fill_at_batch_one():
    """MoCo queues keys with their instance indices; SwAV's queue gives a lone sample a non-uniform code."""
    trainer, _ = train_steps("moco", 2, batch_size=1, dataset=tiny_dataset(2, n=4), overrides=NARROW_HEADS["moco"])
    moco = trainer.method
    assert len(moco.queue) == 4 and sorted(moco.queue.index.tolist()) == [
        0,
        1,
        2,
        3,
    ]  # queue length: largest power of two <= N
    assert torch.allclose(moco.queue.rows.norm(dim=1), torch.ones(4))

    trainer, _ = train_steps("swav", 2, batch_size=1, dataset=tiny_dataset(2, n=4), overrides=NARROW_HEADS["swav"])
    swav = trainer.method
    assert (
        swav.queue.filled == int(swav.queue.count) == len(swav.queue) == 4
    )  # min(3840, N); full after two steps of two global views
    with torch.no_grad():
        lone = swav.prototypes(torch.randn(1, swav.options.out_dim, generator=torch.Generator().manual_seed(0)))
        codes = swav.codes(lone)
    assert codes.shape == (1, swav.num_prototypes) and torch.allclose(codes.sum(), torch.tensor(1.0))
    assert codes.max() > 2 / swav.num_prototypes  # not the uniform code of Sinkhorn over one sample


# ---- batch sizes the methods cannot use ---------------------------------------------------


@pytest.mark.parametrize("method", ["simclr", "vicreg", "barlow_twins"])
def test_refuses_batches_below_the_minimum(method):
    cls = get_method(method)
    config = build_config(None, [f"method={method}", f"train.batch_size={cls.min_batch_size - 1}"])
    with pytest.raises(UserError) as err:
        check_batch_size(config, cls, num_samples=100)
    message = str(err.value)
    assert method in message and f"at least {cls.min_batch_size}" in message
    for alternative in ("icone", "moco", "byol", "dino", "swav"):
        assert alternative in message
    with pytest.raises(UserError, match=method):  # the same refusal from the full config resolution
        resolve_config(config, tiny_dataset(2, n=8))


def test_two_view_methods_refuse_multi_crop():
    with pytest.raises(UserError, match="views.local_crops=0"):
        train_steps(
            "byol",
            2,
            batch_size=4,
            dataset=tiny_dataset(2, n=8),
            overrides=NARROW_HEADS["byol"] + ["views.local_crops=2"],
        )


def test_options_are_validated():
    for item in (
        "simclr.temperature=0",
        "moco.norm=weird",
        "dino.center_momentum=2",
        "swav.epsilon=-1",
        "vicreg.expander_dim=0",
    ):
        method = item.split(".")[0]
        with pytest.raises(UserError, match=item.split("=")[0].split(".")[1]):
            resolve_config(build_config(None, [f"method={method}", "train.batch_size=4", item]), tiny_dataset(2, n=8))


def test_evaluation_backbone_is_the_papers_network():
    """DINO is evaluated (and exported) through its teacher, as its paper does; the others through the student."""
    dataset = tiny_dataset(2)
    for name in BASELINES:
        config = resolve_config(
            build_config(None, [f"method={name}", "model.backbone=smallcnn", "model.width=8", *NARROW_HEADS[name]]),
            dataset,
        )
        method = build_method(config, num_instances=len(dataset.train))
        expected = method.teacher_backbone if name == "dino" else method.backbone
        assert method.evaluation_backbone() is expected, name
