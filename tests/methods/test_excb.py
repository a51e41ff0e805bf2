"""ExCB: sizes, pairing, k-means init, monitoring, end-to-end runs and the all-reduce of sizes."""

import json
import math

import numpy as np
import pytest
import torch

from helpers import run_on_processes, small_backbone, tiny_dataset, train_steps
from icone import losses
from icone.build import resolve_config
from icone.config import build_config
from icone.errors import UserError
from icone.evaluate.metrics import cluster_occupancy
from icone.evaluate.report import occupancy_on_train
from icone.export import load_backbone
from icone.methods.excb import ExCB
from icone.methods.excb_rules import (
    PAPER_SIZE_STEP,
    crop_min_scale,
    default_hidden_dim,
    default_num_clusters,
    default_size_momentum,
)
from icone.methods.kmeans import spherical_kmeans
from icone.nets import RunningNorm
from icone.views import ViewSpec


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
    return ExCB(
        backbone,
        ExCB.make_options({"hidden_dim": 32, "bottleneck_dim": 16, "num_clusters": 8, **options}),
        num_instances,
    )


def make_views(batch: int = 4, local: int = 2, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 1, 16, 16, generator=gen) for _ in range(2)] + [
        torch.randn(batch, 1, 8, 8, generator=gen) for _ in range(local)
    ]


def excb_loss(balanced: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """ExCB's loss by the formula: the mean cross-entropy of the matched pairs of 2 global and 2 local views."""
    pairs = losses.excb_pairs(2, 2)
    return losses.excb_pair_cross_entropies(losses.excb_teacher_targets(balanced), student, pairs).mean()


def skewed_sizes(k: int, seed: int = 0) -> torch.Tensor:
    return torch.softmax(torch.randn(k, generator=torch.Generator().manual_seed(seed)), 0)  # no empty cluster: no noise


# ---- rules and options --------------------------------------------------------------------------


def test_k_rule_and_head_rule():
    assert default_num_clusters(160) == 8
    assert default_num_clusters(1438) == 72  # digits
    assert default_num_clusters(640) == 32  # synthetic3d
    assert default_num_clusters(1_281_167) == 64058  # ImageNet: about the paper's 65536
    assert default_num_clusters(4) == 2 and default_num_clusters(1) == 1
    assert default_num_clusters(10**7) == 65536
    # with the size-momentum rule the sizes average over K / (0.032 x 2 N) = 0.8 epochs, as in the paper
    assert default_num_clusters(1438) / (PAPER_SIZE_STEP * 2 * 1438) == pytest.approx(
        65536 / (PAPER_SIZE_STEP * 2 * 1_281_167), rel=0.03
    )
    assert default_hidden_dim(128) == 512 and default_hidden_dim(2048) == 2048
    assert make_method(num_clusters=None, num_instances=160).num_clusters == 8
    method = make_method()
    assert method.num_clusters == 8 and method.centroids.weight.shape == (8, 16)
    assert make_method(num_clusters=5).num_clusters == 5


def test_size_momentum_rule():
    """m_s = 1 - 0.032 A / K with A = global views x batch x processes: the paper's setting gives its
    0.999, and one assignment always moves a cluster's relative size by K (1 - m_s) / A = 0.032."""
    assert math.isclose(PAPER_SIZE_STEP, 0.032)
    assert default_size_momentum(65536, 1024) == pytest.approx(0.999)  # the paper: K 65536, batch 1024, 2 views
    assert default_size_momentum(65536, 256, world_size=4) == pytest.approx(0.999)  # the same batch on 4 processes
    assert default_size_momentum(360, 1) == pytest.approx(1 - 0.032 * 2 / 360)  # 0.99982
    assert default_size_momentum(360, 64) == pytest.approx(1 - 0.032 * 128 / 360)  # 0.9886
    for k, b, w in [(360, 1, 1), (360, 64, 1), (72, 8, 2), (65536, 1024, 1)]:
        m, a = default_size_momentum(k, b, w), 2 * b * w
        assert k * (1 - m) / a == pytest.approx(0.032)
    assert default_size_momentum(4, 64) == 0.0  # more than 1 / 0.032 assignments per cluster each step: no memory


def test_step_uses_the_size_momentum_rule_unless_set():
    views = make_views(batch=4, local=1)
    for option, expected in [(None, default_size_momentum(8, 4)), (0.9, 0.9)]:
        method = make_method(size_momentum=option)
        s0 = skewed_sizes(8)
        method.sizes.copy_(s0)
        _, metrics = method.training_step(views, torch.arange(4))
        fractions = method._pending_fractions.clone()
        method.after_optimizer_step(1, 10)
        assert float(metrics["size_momentum"]) == pytest.approx(expected)
        assert torch.allclose(method.sizes, expected * s0 + (1 - expected) * fractions, atol=1e-7)
    assert default_size_momentum(8, 4) == pytest.approx(1 - 0.032 * 8 / 8)


@pytest.mark.parametrize(
    "bad",
    [
        {"num_clusters": 1},
        {"head_norm": "foo"},
        {"predictor_norm": "instance"},
        {"teacher_temperature": 0},
        {"size_momentum": 1.5},
        {"eval_network": "both"},
        {"running_window": 0},
        {"auto_batch_size": 0},
        {"crop_scale_start": 0},
    ],
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
    before = {k: v.clone() for k, v in method.state_dict().items() if k != "epoch_counts"}  # running norms update
    loss, metrics = method.training_step(views, torch.arange(4))
    assert torch.equal(method.sizes, s0)  # unchanged by the step itself

    method.load_state_dict(before, strict=False)

    with torch.no_grad():  # recompute the step by hand with s0: same loss, same assignments
        raw = method.teacher_similarities(views[:2]).reshape(2, 4, 8)
        balanced = losses.excb_argmax_boost(losses.excb_balance(raw, s0))
        student = method.student_outputs(views, 2)
        expected_loss = excb_loss(balanced, student)
        with_uniform = excb_loss(losses.excb_argmax_boost(raw), student)
    assert float(loss.detach()) == pytest.approx(float(expected_loss), rel=1e-5)
    assert float(with_uniform) != pytest.approx(float(expected_loss), rel=1e-5)
    fractions = losses.excb_assignment_counts(balanced.argmax(-1), 8) / 8  # 2 global views x 4 samples

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


@pytest.mark.parametrize("batch, expected", [(1, False), (4, False), (8, True), (16, True)])
def test_auto_heads_use_batch_statistics_from_the_threshold(batch, expected):
    method = make_method(auto_batch_size=8)  # head_norm = predictor_norm = auto
    norms = [m for m in method.modules() if isinstance(m, RunningNorm)]
    assert len(norms) == 2 + 2 + 1 + 1  # student and teacher projector, predictor, predictor norm
    method.training_step(make_views(batch=batch, local=1), torch.arange(batch))
    assert all(bool(n.batch_statistics) == expected for n in norms)
    assert method.describe()["head_statistics"] == ("batch" if expected else "running")
    fixed = make_method(head_norm="running", predictor_norm="running")
    fixed.training_step(make_views(batch=batch, local=1), torch.arange(batch))
    assert not any(bool(n.batch_statistics) for n in fixed.modules() if isinstance(n, RunningNorm))


def test_auto_threshold_is_per_process(monkeypatch):
    """B = 4 on each of 2 processes: each process would normalise 4 rows alone, so running statistics;
    B = 8 on each of 2: batch statistics."""
    from icone import distributed

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    for batch, expected in ((4, False), (8, True)):
        method = make_method(auto_batch_size=8)
        method._choose_auto_norms(batch)
        assert all(bool(n.batch_statistics) == expected for n in method.modules() if isinstance(n, RunningNorm))


def test_projector_normalises_all_crops_in_one_pass():
    """As the official MLPBottleneckClassifier.forward: global and local crops' features go through
    the student projector together, so a batch-norm head's statistics cover all of them."""
    method = make_method(head_norm="batch", predictor_norm="batch")
    calls = []
    method.projector.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
    method.student_outputs(make_views(batch=3, local=2), 2)
    assert calls == [3 * 4]  # one pass over 2 global + 2 local crops of 3 samples


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
    spec = ViewSpec(global_size=16, local_size=8, local_crops=2)
    assert (
        ExCB.view_requirements(make_method().options).schedule is None
    )  # off by default: views.* scales as every method
    # on: relative to views.global_scale, start = its minimum, end = start x 0.14 / 0.26
    schedule = ExCB.view_requirements(make_method(crop_schedule=True).options).schedule
    first = schedule(spec, 0, 10)
    assert first.global_scale == (pytest.approx(0.4), 1.0) and first.local_scale == (0.05, pytest.approx(0.4))
    scales = [schedule(spec, e, 10).global_scale[0] for e in range(10)]
    assert all(a > b for a, b in zip(scales, scales[1:])) and scales[-1] > 0.4 * 0.14 / 0.26
    # the paper's schedule, given explicitly
    paper = ExCB.view_requirements(make_method(crop_schedule=True, crop_scale_start=0.26, crop_scale_end=0.14).options)
    first = paper.schedule(spec, 0, 10)
    assert first.global_scale == (pytest.approx(0.26), 1.0) and first.local_scale[1] == pytest.approx(0.26)
    assert crop_min_scale(10, 10) == pytest.approx(0.14)
    assert spec.global_scale == (0.4, 1.0)  # the input spec is not modified


def test_one_global_crop_is_refused_before_training():
    """ExCB's teacher needs two global crops: the method says so in its own words, the build adds the option."""
    assert "global crops" in ExCB.view_requirements(make_method().options).problem("excb", 1, 2)
    with pytest.raises(UserError, match="excb needs at least 2 global crops.*views.global_crops=2"):
        resolve_config(build_config(None, ["method=excb", "views.global_crops=1"]), tiny_dataset(2, n=32))


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


@pytest.mark.parametrize("heads", ["batch", "running"])
def test_kmeans_init_keeps_norm_buffers(heads):
    """Batch-norm buffers (backbone, batch-norm heads) are left as they were; running-norm heads
    are calibrated (their statistics set from the data, the same in student and teacher)."""
    method = make_method(norm="batch", head_norm=heads, predictor_norm=heads)
    running = {
        f"{n}.{b}" for n, m in method.named_modules() if isinstance(m, RunningNorm) for b, _ in m.named_buffers()
    }
    before = {n: b.clone() for n, b in method.named_buffers()}
    x = torch.from_numpy(np.asarray(tiny_dataset(2, n=32).train.samples))
    method.initialize([(x, torch.arange(32))])
    for name, buffer in method.named_buffers():
        if name != "epoch_counts" and name not in running:
            assert torch.equal(buffer, before[name]), name
    assert bool(running) == (heads == "running")
    for name in running:
        if name.endswith("running_mean"):
            assert not torch.equal(method.get_buffer(name), before[name]), name
    student, teacher = method.projector.state_dict(), method.teacher["projector"].state_dict()
    assert all(torch.equal(student[k], teacher[k]) for k in student)


def test_calibration_without_kmeans_uses_more_than_one_batch():
    """kmeans_init=false still calibrates the running-norm heads, over up to CALIBRATION_ROWS samples."""
    method = make_method(kmeans_init=False, head_norm="running", predictor_norm="running")
    x = torch.from_numpy(np.asarray(tiny_dataset(2, n=32).train.samples))
    centroids = method.centroids.weight.clone()
    method.initialize([(x[:16], torch.arange(16)), (x[16:], torch.arange(16, 32))])
    norm = next(m for m in method.teacher["projector"].modules() if isinstance(m, RunningNorm))
    assert float(norm.rows_seen) == 32
    assert torch.equal(method.centroids.weight, centroids)  # no k-means


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


def test_evaluation_backbone_is_the_teacher():
    method = make_method()
    assert method.evaluation_backbone() is method.teacher["backbone"]
    student = make_method(eval_network="student")
    assert student.evaluation_backbone() is student.backbone


def test_exported_backbone_is_the_teacher(tmp_path):
    trainer, _ = train_steps("excb", 2, batch_size=4, run_dir=tmp_path / "run")
    method = trainer.method
    exported = load_backbone(tmp_path / "run")  # from the run's checkpoint
    teacher, student = method.teacher["backbone"].state_dict(), method.backbone.state_dict()
    got = exported.state_dict()
    assert all(torch.equal(got[k], teacher[k]) for k in teacher)
    assert any(not torch.equal(got[k], student[k]) for k in student)  # the EMA teacher lags the student


def test_teacher_keeps_its_own_norm_statistics():
    """The EMA covers parameters only: a batch-norm teacher's running statistics come from its own inputs."""
    method = make_method(norm="batch", head_norm="batch", predictor_norm="batch")
    method.training_step(make_views(batch=4, local=1), torch.arange(4))
    student = dict(method.backbone.named_buffers())
    teacher_before = {n: b.clone() for n, b in method.teacher["backbone"].named_buffers()}
    method.after_optimizer_step(1, 10)
    for name, buffer in method.teacher["backbone"].named_buffers():
        assert torch.equal(buffer, teacher_before[name]), name
    assert any(
        not torch.equal(teacher_before[n], student[n]) for n in student if n.endswith("running_mean")
    )  # the student saw other crops


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
