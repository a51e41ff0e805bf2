"""ExCB: sizes, pairing, k-means init, monitoring, end-to-end runs and the all-reduce of sizes."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from helpers import run_on_processes, small_backbone, tiny_dataset, train_steps
from icone import losses
from icone.config import ViewConfig
from icone.errors import UserError
from icone.evaluate.metrics import cluster_occupancy
from icone.evaluate.report import occupancy_on_train
from icone.methods.excb import ExCB, crop_min_scale, default_hidden_dim, default_num_clusters
from icone.methods.kmeans import spherical_kmeans


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on 2 shared cores, 2 threads make these tiny ops many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_method(num_instances: int = 32, dims: int = 2, norm: str = "group", **options) -> ExCB:
    torch.manual_seed(0)
    backbone = small_backbone("smallcnn", dims, norm)
    return ExCB(backbone, ExCB.make_options({"hidden_dim": 32, "bottleneck_dim": 16, **options}), num_instances)


def make_views(batch: int = 4, local: int = 2, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 1, 16, 16, generator=gen) for _ in range(2)] + [
        torch.randn(batch, 1, 8, 8, generator=gen) for _ in range(local)
    ]


def skewed_sizes(k: int, seed: int = 0) -> torch.Tensor:
    return torch.softmax(torch.randn(k, generator=torch.Generator().manual_seed(seed)), 0)  # no empty cluster: no noise


# ---- rules and options --------------------------------------------------------------------------


def test_k_rule_and_head_rule():
    assert default_num_clusters(32) == 8
    assert default_num_clusters(1437) == 359
    assert default_num_clusters(4) == 2 and default_num_clusters(1) == 1
    assert default_num_clusters(10**7) == 65536
    assert default_hidden_dim(128) == 512 and default_hidden_dim(2048) == 2048
    method = make_method()
    assert method.num_clusters == 8 and method.centroids.weight.shape == (8, 16)
    assert make_method(num_clusters=5).num_clusters == 5


@pytest.mark.parametrize(
    "bad", [{"num_clusters": 1}, {"head_norm": "foo"}, {"teacher_temperature": 0}, {"size_momentum": 1.5}]
)
def test_options_validate(bad):
    with pytest.raises(UserError, match="excb"):
        ExCB.make_options(bad)


# ---- sizes: used before, updated after, global views only ------------------------------------------


def test_step_uses_previous_sizes_and_updates_after():
    method = make_method(size_momentum=0.9)
    s0 = skewed_sizes(8)
    method.sizes.copy_(s0)
    views = make_views(batch=4, local=2)
    loss, metrics = method.training_step(views, torch.arange(4))
    assert torch.equal(method.sizes, s0)  # unchanged by the step itself

    with torch.no_grad():  # recompute the step by hand with s0: same loss, same assignments
        raw = method.teacher_similarities(views[:2]).reshape(2, 4, 8)
        balanced = losses.excb_argmax_boost(losses.excb_balance(raw, s0))
        student = method.student_outputs(views, 2)
        expected_loss = losses.excb_loss(balanced, student, losses.excb_pairs(2, 2))
        with_uniform = losses.excb_loss(losses.excb_argmax_boost(raw), student, losses.excb_pairs(2, 2))
    assert float(loss.detach()) == pytest.approx(float(expected_loss), rel=1e-5)
    assert float(with_uniform) != pytest.approx(float(expected_loss), rel=1e-5)
    fractions = losses.excb_assignment_fractions(balanced.argmax(-1), 8)  # 2 global views x 4 samples

    method.after_optimizer_step(1, 10)
    assert torch.allclose(method.sizes, 0.9 * s0 + 0.1 * fractions, atol=1e-7)
    assert method.sizes.sum() == pytest.approx(1.0, abs=1e-6)
    assert float(method.epoch_counts.sum()) == 8  # counted over the 2 global views only, not the 2 locals
    assert set(metrics) >= {
        "teacher_distinct_labels",
        "teacher_confidence",
        "teacher_student_agreement",
        "loss_projector",
        "loss_predictor",
    }
    assert all(v.ndim == 0 and not v.requires_grad for v in metrics.values())


def test_balancing_off_is_the_plain_sharpened_teacher():
    method = make_method(balancing=False)
    method.sizes.copy_(skewed_sizes(8))
    raw = torch.rand(2, 3, 8) * 2 - 1
    assert torch.equal(method.teacher_logits(raw), raw)
    on = make_method()
    on.sizes.copy_(skewed_sizes(8))
    assert not torch.allclose(on.teacher_logits(raw), raw)


def test_teacher_is_ema_of_student():
    method = make_method(ema_momentum=0.5)
    with torch.no_grad():
        for p in method.projector.parameters():
            p.add_(1.0)
    before = [p.clone() for p in method.teacher["projector"].parameters()]
    method.after_optimizer_step(0, 10)  # cosine momentum at step 0 is the base, 0.5
    for t, s, b in zip(method.teacher["projector"].parameters(), method.projector.parameters(), before):
        assert torch.allclose(t, 0.5 * b + 0.5 * s)
    assert not any(p.requires_grad for p in method.teacher.parameters())


# ---- pairing and where gradients go --------------------------------------------------------------------


@pytest.mark.parametrize("local", [0, 3])
def test_pairing_and_centroid_gradients(local):
    method = make_method()
    views = make_views(batch=3, local=local)
    student = method.student_outputs(views, 2)
    assert student.shape == (2 * (2 + local), 3, 8)  # projector then predictor outputs of every view
    assert len(losses.excb_pairs(2, local)) == 2 * (3 + local)
    # predictor outputs and local projector outputs do not reach the centroids
    student[2:].sum().backward()
    assert method.centroids.weight.grad is None or not method.centroids.weight.grad.any()
    assert any(p.grad is not None and p.grad.any() for p in method.predictor.parameters())
    # global projector outputs do
    method.zero_grad()
    method.student_outputs(views, 2)[:2].sum().backward()
    assert method.centroids.weight.grad.abs().sum() > 0


def test_param_groups_centroid_weight_decay_schedule():
    method = make_method()
    groups = method.param_groups(1e-3, 0.05)
    centroid = [g for g in groups if "weight_decay_start_scale" in g]
    assert len(centroid) == 1 and centroid[0]["weight_decay_start_scale"] == 10
    assert centroid[0]["params"] == [method.centroids.weight]
    grouped = {id(p) for g in groups for p in g["params"]}
    assert not grouped & {id(p) for p in method.teacher.parameters()}
    assert grouped == {id(p) for p in method.parameters() if p.requires_grad}


def test_crop_scale_schedule():
    method = make_method()
    spec = ViewConfig(global_size=16, local_size=8, local_crops=2, flip=True, rotate90=True)
    first = method.adjust_views(spec, 0, 10)
    assert first.global_scale == (pytest.approx(0.26), 1.0) and first.local_scale[1] == pytest.approx(0.26)
    scales = [method.adjust_views(spec, e, 10).global_scale[0] for e in range(10)]
    assert all(a > b for a, b in zip(scales, scales[1:])) and scales[-1] > 0.14
    assert crop_min_scale(10, 10) == pytest.approx(0.14)
    assert spec.global_scale == [0.4, 1.0]  # the input spec is not modified
    with pytest.raises(UserError, match="global crops"):
        method.adjust_views(dataclasses.replace(spec, global_crops=1), 0, 10)


# ---- k-means initialisation --------------------------------------------------------------------------


def test_kmeans_init_leaves_no_empty_cluster():
    data = tiny_dataset(2, n=32)
    method = make_method()
    x = torch.from_numpy(np.asarray(data.train.samples))
    method.initialize([(x[:16], torch.arange(16)), (x[16:], torch.arange(16, 32))])
    assert torch.equal(method.centroids.weight, method.teacher["centroids"].weight)
    assert torch.allclose(method.centroids.weight.norm(dim=1), torch.ones(8), atol=1e-5)
    assign = method.cluster_assignments(x)
    assert assign.dtype == torch.long and assign.shape == (32,)
    assert (torch.bincount(assign, minlength=8) > 0).all()
    assert method.epoch_metrics()["empty_cluster_fraction"] == 0.0  # epoch 0 shows the k-means occupancy


def test_kmeans_init_keeps_norm_buffers():
    method = make_method(norm="batch")
    before = {n: b.clone() for n, b in method.named_buffers()}
    x = torch.from_numpy(np.asarray(tiny_dataset(2, n=32).train.samples))
    method.initialize([(x, torch.arange(32))])
    for name, buffer in method.named_buffers():
        if name != "epoch_counts":
            assert torch.equal(buffer, before[name]), name


def test_cluster_assignments_balanced_or_raw():
    x = torch.from_numpy(np.asarray(tiny_dataset(2, n=32).train.samples))
    method = make_method()
    method.initialize([(x, torch.arange(32))])
    method.sizes.copy_(torch.tensor([0.93] + [0.01] * 7))  # cluster 0 far oversized
    raw = make_method(eval_assignments="raw")
    raw.load_state_dict(method.state_dict())
    balanced, plain = method.cluster_assignments(x), raw.cluster_assignments(x)
    assert (balanced == 0).sum() <= (plain == 0).sum()
    with torch.no_grad():
        z = method.teacher_similarities([x])
    assert torch.equal(plain, z.argmax(-1))
    assert torch.equal(balanced, losses.excb_balance(z, method.sizes).argmax(-1))


def test_kmeans_seeds_empty_clusters_when_restarts_fail():
    # 3 distinct directions, 5 clusters: argmax k-means can fill at most 3, the fallback fills all
    base = torch.eye(3)
    x = torch.cat([base.repeat(3, 1), base[:1]])
    centroids, assign = spherical_kmeans(x, 5, iters=5, restarts=2, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(centroids.norm(dim=1), torch.ones(5))  # every centroid a unit direction, seeded ones included
    assert (torch.bincount(assign, minlength=5) > 0).all()
    with pytest.raises(UserError, match="num_clusters"):
        spherical_kmeans(torch.randn(3, 4), 5)


# ---- monitoring ---------------------------------------------------------------------------------------


def test_epoch_metrics_match_cluster_occupancy_and_reset():
    method = make_method()
    labels = torch.tensor([[0, 0, 1, 3], [3, 0, 1, 1]])
    method._record_assignments(labels)
    got = method.epoch_metrics()
    assert got == pytest.approx(cluster_occupancy(labels, 8))
    assert all(k.startswith(("empty", "largest", "smallest", "cluster")) for k in got)
    assert method.epoch_metrics() == {}  # reset


def test_occupancy_on_train_uses_cluster_assignments():
    data = tiny_dataset(2, n=32)
    method = make_method()
    result = occupancy_on_train(method, data, torch.device("cpu"))
    assert set(result) == {
        "empty_cluster_fraction",
        "largest_cluster_share",
        "smallest_cluster_share",
        "cluster_entropy",
    }


# ---- end to end ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("batch_size", [1, 16])
def test_excb_trains_finite(dims, batch_size):
    trainer, steps = train_steps("excb", dims, batch_size=batch_size)
    assert steps and all(math.isfinite(s["loss"]) for s in steps)
    assert all(math.isfinite(s["teacher_confidence"]) for s in steps)
    assert all(s["teacher_distinct_labels"] <= 2 * batch_size for s in steps)
    assert all(torch.isfinite(p).all() for p in trainer.method.parameters())
    assert trainer.method.sizes.sum() == pytest.approx(1.0, abs=1e-5)
    epochs = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in epochs if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1] and all("health/empty_cluster_fraction" in r for r in epochs)


# ---- distributed: sizes are all-reduced ----------------------------------------------------------------


def _sizes_worker(rank: int, world: int, out_dir: str) -> None:
    method = make_method(size_momentum=0.5)
    method.sizes.copy_(skewed_sizes(8))
    half = [v[2 * rank : 2 * rank + 2] for v in make_views(batch=4, local=1)]
    method.training_step(half, torch.arange(2 * rank, 2 * rank + 2))
    method.after_optimizer_step(1, 10)
    torch.save({"sizes": method.sizes, "counts": method.epoch_counts}, f"{out_dir}/rank{rank}.pt")


def test_sizes_are_all_reduced_across_processes(tmp_path):
    run_on_processes(_sizes_worker, str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    single = make_method(size_momentum=0.5)
    single.sizes.copy_(skewed_sizes(8))
    single.training_step(make_views(batch=4, local=1), torch.arange(4))
    single.after_optimizer_step(1, 10)
    assert torch.equal(ranks[0]["sizes"], ranks[1]["sizes"])
    assert torch.allclose(ranks[0]["sizes"], single.sizes, atol=1e-6)
    assert torch.equal(ranks[0]["counts"], single.epoch_counts) and float(single.epoch_counts.sum()) == 8
    assert not torch.allclose(single.sizes, skewed_sizes(8))  # the step did move the sizes
