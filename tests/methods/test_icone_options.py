"""IConE presets and the options the study added: the study's defaults, the public reading, InfoNCE over
every row, the diversity term skipped at weight 0."""

import pytest
import torch

from helpers import small_backbone
from icone import losses
from icone.methods import get_method
from icone.methods.icone import PRESETS, IConE, IConEOptions


def make(n=10, **options):
    cls = get_method("icone")
    return cls(small_backbone("smallcnn", 2, "group"), cls.make_options(options), num_instances=n)


def views(b=2):
    return [torch.randn(b, 1, 12, 12) for _ in range(2)]


def test_the_default_preset_is_the_study_and_paper_is_the_public_reading():
    ours, paper = get_method("icone").make_options({}), get_method("icone").make_options({"preset": "paper"})
    keys = ("projector", "diversity", "table_lr_scale", "table_init", "w_div")
    assert [getattr(ours, k) for k in keys] == ["linear", "frame", 1.0, "features", 10.0]
    assert [getattr(paper, k) for k in keys] == ["none", "hinge", 1.0, "normal", 1.0]
    assert set(PRESETS["icone"]) == set(PRESETS["paper"])  # each preset sets the same options


def test_an_option_given_wins_over_the_preset():
    options = get_method("icone").make_options({"preset": "paper", "projector": "mlp", "diversity": "frame"})
    assert (options.projector, options.diversity, options.table_init) == ("mlp", "frame", "normal")


def test_options_built_by_hand_get_the_preset_too():
    method = IConE(small_backbone("smallcnn", 2, "group"), IConEOptions(), num_instances=4)
    assert isinstance(method.projector, torch.nn.Linear) and method.options.diversity == "frame"
    assert method.table.shape == (4, method.options.projector_dim)


def test_mlp_projector_hidden_width():
    method = make(projector="mlp", projector_hidden=40, projector_dim=16)
    assert method.projector.net[0].out_features == 40


def test_infonce_uses_every_row_when_negatives_cover_the_table():
    torch.manual_seed(0)
    method = make(n=6, alignment="infonce", w_vv=0.0, w_div=0.0, temperature=0.2)
    method.initialize([(torch.randn(6, 1, 12, 12), torch.arange(6))])
    v, index = views(), torch.tensor([1, 4])
    loss, _ = method.training_step(v, index)
    with torch.no_grad():
        z = method.embed(torch.cat(v)).reshape(2, 2, -1).transpose(0, 1)
        expected = losses.icone_infonce_alignment(z, method.table, index, None, temperature=0.2)  # all rows
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)


def test_zero_diversity_weight_skips_the_term(monkeypatch):
    method = make(w_div=0.0)
    monkeypatch.setattr(method, "diversity", lambda *a: pytest.fail("the diversity term was computed at w_div=0"))
    loss, metrics = method.training_step(views(), torch.tensor([0, 1]))
    assert torch.isfinite(loss) and float(metrics["loss_div"]) == 0.0
