"""The IConE method: gradients at B = 1, options, table initialisation, param groups."""

import pytest
import torch
import torch.nn.functional as F

from helpers import small_backbone
from icone.errors import UserError
from icone.methods import get_method


def make(dims=2, n=10, **options):
    cls = get_method("icone")
    backbone = small_backbone("smallcnn", dims, "group")
    return cls(backbone, cls.make_options(options), num_instances=n)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize(
    "options", [{}, {"alignment": "infonce"}, {"diversity": "frame"}, {"diversity": "uniformity", "projector": "mlp"}]
)
def test_batch_size_one_is_finite_with_gradients(dims, options):
    torch.manual_seed(0)
    method = make(dims, **options)
    views = [torch.randn(1, 1, *([12] * dims)) for _ in range(2)]
    loss, metrics = method.training_step(views, torch.tensor([3]))
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in metrics.values())
    conv = next(method.backbone.parameters())
    assert conv.grad is not None and conv.grad.abs().sum() > 0
    assert method.table.grad[3].abs().sum() > 0


def test_detach_table_keeps_alignment_out_of_the_table():
    method = make(n=6, detach_table=True, w_div=0.0)
    views = [torch.randn(2, 1, 12, 12) for _ in range(2)]
    loss, _ = method.training_step(views, torch.tensor([0, 1]))
    loss.backward()
    assert method.table.grad is None or method.table.grad.abs().sum() == 0


def test_sampled_diversity_above_threshold_touches_batch_rows():
    """Above diversity_rows the sparse path's gradient holds the batch's rows and no other (the sample is held fixed)."""
    torch.manual_seed(0)
    method = make(n=50, diversity_rows=8)
    assert method.describe() == {"table_path": "sparse"}
    views = [torch.randn(2, 1, 12, 12) for _ in range(2)]
    loss, _ = method.training_step(views, torch.tensor([3, 17]))
    loss.backward()
    grad = method.table.grad.coalesce()
    assert grad.is_sparse and torch.isfinite(loss)
    touched = {int(row) for row, value in zip(grad.indices()[0], grad.values()) if value.abs().sum() > 0}
    assert touched == {3, 17}


def test_features_table_init_sets_rows_to_normalised_embeddings():
    method = make(n=4, table_init="features")
    x = torch.randn(4, 1, 12, 12)
    method.initialize([(x, torch.arange(4))])
    method.eval()
    with torch.no_grad():
        expected = F.normalize(method.embed(x), dim=-1)  # the table space: after the projector
    assert torch.allclose(method.table, expected, atol=1e-5)


def test_table_has_its_own_lr_and_weight_decay():
    method = make(table_optimizer="adamw", table_lr_scale=10.0, table_weight_decay=0.0)
    groups = method.param_groups(1e-4, 0.05)
    table_group = next(g for g in groups if any(p is method.table for p in g["params"]))
    assert table_group["lr"] == pytest.approx(1e-3) and table_group["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(method.parameters()))


def test_unknown_option_names_valid_ones():
    with pytest.raises(UserError, match="icone.bogus.*valid options.*alignment"):
        make(bogus=1)


def test_bad_choice_names_valid_ones():
    with pytest.raises(UserError, match="diversity.*hinge, frame, uniformity"):
        make(diversity="spread")
