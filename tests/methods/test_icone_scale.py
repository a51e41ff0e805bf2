"""IConE at scale: N-independent diversity estimates, the maintained frame matrix, row-sparse table updates."""

import pytest
import torch
import torch.nn.functional as F

from helpers import make_trainer, run_on_processes, small_backbone, tiny_dataset, train_steps
from icone import distributed, losses
from icone.methods.icone import IConE, IConEOptions
from icone.training.checkpoint import load_checkpoint
from icone.training.optim import (
    OptimizerSet,
    OptimizerSpec,
    all_reduce_row_gradients,
    build_optimizer,
    clip_grad_norm,
)

N, D = 12, 5


@pytest.fixture
def table():
    return torch.randn(N, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _full_gradient_at(table: torch.Tensor, rows: torch.Tensor, loss_of_table) -> torch.Tensor:
    t = table.clone().requires_grad_()
    loss_of_table(t).backward()
    return t.grad[rows]


# ---- the estimates, against the full-table terms ---------------------------------------------------


def test_frame_from_gram_is_exact_and_its_gradient_is_the_scaled_full_gradient(table):
    rows = torch.tensor([2, 7, 9])
    en = F.normalize(table, dim=-1)
    gram = en.t() @ en
    batch = table[rows].clone().requires_grad_()
    got = losses.icone_frame_diversity_from_gram(gram, batch, N)
    assert got.item() == pytest.approx(losses.icone_frame_diversity(table).item(), abs=1e-12)
    got.backward()
    full = _full_gradient_at(table, rows, losses.icone_frame_diversity)
    assert torch.allclose(batch.grad, full * N / len(rows), atol=1e-12)


@pytest.mark.parametrize("diversity", ["hinge", "uniformity"])
def test_batch_diversity_against_every_row_doubles_the_gradient(table, diversity):
    """With the whole table as the sample, the value is the batch rows' share of the full mean and the
    hinge gradient is N / B times the full-table gradient at the batch's rows."""
    rows, everything = torch.tensor([1, 4, 10]), torch.arange(N)
    batch = table[rows].clone().requires_grad_()
    got = losses.icone_batch_diversity(batch, rows, table, everything, diversity=diversity)
    if diversity == "hinge":  # the mean over pairs (i, k), i in the batch, k != i, by hand
        cos = F.normalize(table[rows], dim=-1) @ F.normalize(table, dim=-1).t()
        terms = [max(cos[a, k].item(), 0.0) ** 2 for a, i in enumerate(rows.tolist()) for k in range(N) if k != i]
        assert got.item() == pytest.approx(sum(terms) / len(terms), abs=1e-12)
    got.backward()
    full_loss = losses.icone_hinge_diversity if diversity == "hinge" else losses.icone_uniformity
    full = _full_gradient_at(table, rows, full_loss)
    if diversity == "hinge":
        assert torch.allclose(batch.grad, full * N / len(rows), atol=1e-12)
    else:  # log-mean-exp is not a mean of pairs: only the direction is shared
        assert F.cosine_similarity(batch.grad.flatten(), full.flatten(), dim=0) > 0.9


# ---- the method on its sparse path ------------------------------------------------------------------


def _method(num_instances: int = N, **options) -> IConE:
    torch.manual_seed(0)
    backbone = small_backbone("smallcnn", 2, "group")
    return IConE(backbone, IConEOptions(table_init="normal", **options), num_instances)


def _views(batch: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 1, 12, 12, generator=g) for _ in range(2)]


def _optimizer(method: IConE, batch_size: int = 2):
    """The run's optimizer; ``batch_size``: the whole batch (the table's SGD lr follows it)."""
    return build_optimizer(method, OptimizerSpec(lr=1e-2, weight_decay=0.05, batch_size=batch_size))


def _step(
    method: IConE, optimizer, views: list[torch.Tensor], index: torch.Tensor, step: int, model=None
) -> torch.Tensor:
    optimizer.zero_grad(set_to_none=True)
    loss, _ = (model or method)(views, index)
    loss.backward()
    all_reduce_row_gradients(optimizer)
    clip_grad_norm(method.parameters(), 3.0)
    optimizer.step()
    method.after_optimizer_step(step, 100)
    return loss.detach()


def test_auto_takes_the_sparse_path_above_diversity_rows():
    assert not _method(N, diversity_rows=N).sparse
    assert _method(N, diversity_rows=N - 1).sparse
    assert _method(N, table_path="sparse").sparse and not _method(N, diversity_rows=4, table_path="dense").sparse
    method = _method(N, table_path="sparse")
    assert isinstance(_optimizer(method), OptimizerSet)  # the table has its own row-sparse optimizer


@pytest.mark.parametrize(
    "options",
    [
        {"diversity": "hinge"},
        {"diversity": "frame"},
        {"diversity": "uniformity"},
        {"alignment": "infonce", "negatives": 4},
    ],
)
def test_a_sparse_step_writes_only_the_rows_it_used(options):
    method = _method(N, table_path="sparse", diversity_rows=6, **options)
    method.initialize([])
    optimizer = _optimizer(method)
    before = method.table.detach().clone()
    index = torch.tensor([3, 8])
    optimizer.zero_grad()
    loss, _ = method(_views(2), index)
    loss.backward()
    assert method.table.grad.is_sparse
    used = set(method.table.grad.coalesce().indices()[0].tolist())
    assert {3, 8} <= used and (len(used) == 2 or options.get("alignment") == "infonce")
    optimizer.step()
    changed = set((method.table.detach() != before).any(dim=1).nonzero().flatten().tolist())
    assert changed == used
    assert torch.isfinite(loss)


def test_the_maintained_frame_matrix_tracks_the_table():
    method = _method(N, table_path="sparse", diversity="frame", frame_resync_every=10_000)
    method.initialize([])
    optimizer = _optimizer(method)
    for step in range(1, 6):
        _step(method, optimizer, _views(3, seed=step), torch.randperm(N)[:3], step)
    maintained = method.frame_gram.clone()
    assert method.resync_gram() < 1e-6  # the drift a resync removes
    assert torch.allclose(maintained, method.frame_gram, atol=1e-6)
    en = F.normalize(method.table.detach().double(), dim=-1)
    assert torch.allclose(method.frame_gram, en.t() @ en, atol=1e-6)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_sparse_path_trains_at_batch_size_one(spatial_dims):
    for diversity in ("hinge", "frame"):
        trainer, logs = train_steps(
            "icone",
            spatial_dims,
            batch_size=1,
            dataset=tiny_dataset(spatial_dims, n=8),
            overrides=["icone.table_path=sparse", f"icone.diversity={diversity}", "icone.diversity_rows=4"],
        )
        assert trainer.method.sparse and len(logs) == 8
        assert all(torch.isfinite(torch.tensor(r["loss"])) for r in logs)
        assert all(torch.isfinite(p).all() for p in trainer.method.parameters())


@pytest.mark.parametrize("optimizer,moment", [("sgd", "momentum_buffer"), ("adamw", "exp_avg")])
def test_bfloat16_table_trains(optimizer, moment):
    trainer, logs = train_steps(
        "icone",
        batch_size=2,
        dataset=tiny_dataset(2, n=8),
        overrides=["icone.table_path=sparse", "icone.table_dtype=bfloat16", f"icone.table_optimizer={optimizer}"],
    )
    assert trainer.method.table.dtype == torch.bfloat16
    assert trainer.optimizer.optimizers[1].state[trainer.method.table][moment].dtype == torch.bfloat16
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in logs)


def test_sparse_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    data = tiny_dataset(2, n=12)
    overrides = ["icone.table_path=sparse", "icone.diversity=frame", "icone.frame_resync_every=5"]
    full, _ = train_steps("icone", batch_size=3, epochs=2, run_dir=tmp_path / "full", dataset=data, overrides=overrides)
    half = make_trainer(full.config, data, tmp_path / "half")
    half.fit(until_epoch=1)
    resumed = make_trainer(full.config, data, tmp_path / "half")
    resumed.restore(load_checkpoint(tmp_path / "half"))
    resumed.fit()
    for (name, a), b in zip(full.method.state_dict().items(), resumed.method.state_dict().values()):
        assert torch.equal(a, b), name


# ---- two processes: the table stays identical and equals one process with the whole batch ---------


def _two_process_worker(rank: int, world: int, out_dir: str, projector: str) -> None:
    method = _method(N, table_path="sparse", diversity="frame", projector=projector)
    method.initialize([])
    optimizer = _optimizer(method, batch_size=4)  # the whole batch: 2 on each of 2 processes
    distributed.ddp_ignore(method, ["table"])
    model = torch.nn.parallel.DistributedDataParallel(method)
    for step in range(1, 3):
        views, index = _views(4, seed=step), torch.arange(4) + 4 * (step - 1)
        mine = slice(2 * rank, 2 * rank + 2)
        _step(method, optimizer, [v[mine] for v in views], index[mine], step, model=model)
    torch.save({k: v.detach() for k, v in method.state_dict().items()}, f"{out_dir}/rank{rank}.pt")


@pytest.mark.parametrize("projector", ["none", "linear"])
def test_two_processes_keep_one_table_equal_to_one_process_with_the_whole_batch(tmp_path, projector):
    run_on_processes(_two_process_worker, str(tmp_path), projector)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    single = _method(N, table_path="sparse", diversity="frame", projector=projector)
    single.initialize([])
    optimizer = _optimizer(single, batch_size=4)  # the whole batch of the two processes
    start = single.table.detach().clone()
    for step in range(1, 3):
        _step(single, optimizer, _views(4, seed=step), torch.arange(4) + 4 * (step - 1), step)
    for name, value in single.state_dict().items():
        assert torch.equal(ranks[0][name], ranks[1][name]), name
        # 1e-4 = 1% of one step at lr 1e-2: Adam divides by sqrt(v), which turns the rounding of
        # near-zero gradients (summed in another order over processes) into differences of ~4e-5
        assert torch.allclose(ranks[0][name], value, atol=1e-4), name
    assert not torch.allclose(single.table, start)
