"""IConE's levers for learning faster: views per visit, local crops that never move the table,
the table's own SGD, and PIC's softmax over every row (Cao et al. 2020)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import small_backbone
from icone.methods import get_method
from icone.training.optim import OptimizerSpec, RowSparseSGD, build_optimizer


def make(n=10, dims=2, global_crops=2, **options):
    cls = get_method("icone")
    backbone = small_backbone("smallcnn", dims, "group")
    return cls(backbone, cls.make_options(options), num_instances=n, global_crops=global_crops)


def crops(count: int, b: int = 2, size: int = 12) -> list[torch.Tensor]:
    return [torch.randn(b, 1, size, size) for _ in range(count)]


def table_gradient(method, views, index) -> torch.Tensor:
    method.zero_grad()
    loss, _ = method.training_step(views, index)
    loss.backward()
    return method.table.grad.clone()


@pytest.mark.parametrize("alignment", ["cosine", "infonce"])
def test_local_crops_follow_their_row_and_never_move_it(alignment):
    torch.manual_seed(0)
    method = make(alignment=alignment, w_div=0.0)
    index, globals_ = torch.tensor([1, 4]), crops(2)
    with_locals = table_gradient(method, globals_ + crops(3, size=6), index)
    other_locals = table_gradient(method, globals_ + crops(3, size=6), index)
    assert torch.equal(with_locals, other_locals) and with_locals.abs().sum() > 0  # no path from a local crop
    method.zero_grad()
    loss, _ = method.training_step(globals_ + crops(3, size=6), index)
    loss.backward()
    assert next(method.backbone.parameters()).grad.abs().sum() > 0


def test_local_alignment_none_leaves_local_crops_out():
    torch.manual_seed(0)
    method = make(local_alignment="none")
    globals_, index = crops(2), torch.tensor([0, 3])
    torch.manual_seed(1)
    alone, _ = method.training_step(globals_, index)
    torch.manual_seed(1)
    with_locals, _ = method.training_step(globals_ + crops(4, size=6), index)
    assert float(alone.detach()) == pytest.approx(float(with_locals.detach()))


def test_every_global_view_is_pulled_to_the_row_and_to_each_other():
    """Four global views: L_vi over 4 views and L_vv over their 6 pairs, as the formulas say."""
    torch.manual_seed(0)
    method = make(w_div=0.0, global_crops=4)
    views, index = crops(4), torch.tensor([2, 5])
    _, metrics = method.training_step(views, index)
    with torch.no_grad():
        z = F.normalize(method.embed(torch.cat(views)).reshape(4, 2, -1), dim=-1)  # V x B x d
        e = F.normalize(method.table[index], dim=-1)
        vi = np.mean([1 - float(z[v, i] @ e[i]) for v in range(4) for i in range(2)])
        vv = np.mean([1 - float(z[v, i] @ z[w, i]) for v in range(4) for w in range(v + 1, 4) for i in range(2)])
    assert float(metrics["loss_vi"]) == pytest.approx(vi, rel=1e-5)
    assert float(metrics["loss_vv"]) == pytest.approx(vv, rel=1e-5)


def test_pic_is_a_softmax_of_each_view_against_every_row():
    """PIC's loss (Cao et al. 2020, eq. 1): -log exp(<z, e_i>/0.2) / sum_j exp(<z, e_j>/0.2) over all N rows,
    on normalised vectors, averaged over the views; the large crops' rows get gradients, the small crops' do not."""
    torch.manual_seed(0)
    method = make(n=7, preset="pic", global_crops=1)
    assert (method.options.alignment, method.options.w_div, method.options.w_vv) == ("infonce", 0.0, 0.0)
    views, index = crops(1) + crops(3, size=6), torch.tensor([1, 6])
    loss, _ = method.training_step(views, index)
    with torch.no_grad():
        table = F.normalize(method.table, dim=-1)
        terms = []
        for view in views:
            z = F.normalize(method.embed(view), dim=-1)
            for i in range(2):
                logits = [float(z[i] @ table[j]) / 0.2 for j in range(7)]
                terms.append(-logits[int(index[i])] + math.log(sum(math.exp(v) for v in logits)))
        expected = (1 * np.mean(terms[:2]) + 3 * np.mean(terms[2:])) / 4
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    assert method.table.std().item() == pytest.approx(0.01, rel=0.3)  # rows start N(0, 0.01^2)


def _optimizer(method, batch_size: int = 8, lr: float = 1e-3):
    return build_optimizer(method, OptimizerSpec(lr=lr, weight_decay=0.05, batch_size=batch_size))


def test_the_table_gets_sgd_at_its_own_lr_scaled_linearly_with_the_batch():
    method = make(table_optimizer="sgd", table_lr=4.0, table_momentum=0.5)
    optimizer = _optimizer(method, batch_size=8)
    table = next(g for g in optimizer.param_groups if any(p is method.table for p in g["params"]))
    assert table["lr"] == pytest.approx(4.0 * 8 / 64) and table["lr_scale"] == pytest.approx(0.5 / 1e-3)
    assert table["weight_decay"] == 0.0 and table["momentum"] == 0.5
    kinds = {type(o).__name__ for o in optimizer.optimizers}
    assert kinds == {"AdamW", "SGD"}
    before = method.table.detach().clone()
    loss, _ = method.training_step(crops(2), torch.tensor([0, 1]))
    loss.backward()
    grad = method.table.grad.clone()
    optimizer.step()
    assert torch.allclose(method.table, before - 0.5 * grad, atol=1e-7)  # first SGD step: the buffer is the gradient


def test_row_sparse_sgd_moves_the_touched_rows_as_sgd_does():
    torch.manual_seed(0)
    dense = torch.nn.Parameter(torch.randn(6, 3))
    sparse = torch.nn.Parameter(dense.detach().clone())
    reference = torch.optim.SGD([dense], lr=0.3, momentum=0.9)
    lazy = RowSparseSGD([sparse], lr=0.3, momentum=0.9)
    rows = torch.tensor([1, 4])
    for _ in range(3):  # the same rows every step: lazy and dense momentum agree
        target = torch.randn(2, 3)
        for p, opt, sparse_grad in ((dense, reference, False), (sparse, lazy, True)):
            opt.zero_grad()
            ((F.embedding(rows, p, sparse=sparse_grad) - target) ** 2).sum().backward()
            opt.step()
    assert torch.allclose(dense, sparse, atol=1e-6)
    untouched = [0, 2, 3, 5]
    assert torch.equal(sparse.detach()[untouched], dense.detach()[untouched])


def test_the_sparse_path_takes_the_row_sparse_sgd():
    method = make(n=50, diversity_rows=8, table_optimizer="sgd")
    assert method.describe() == {"table_path": "sparse"}
    assert {type(o).__name__ for o in _optimizer(method).optimizers} == {"AdamW", "RowSparseSGD"}
