"""Head norms: RunningNorm (batch-free, running statistics used in training) against BatchNorm."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from icone.nets import HEAD_NORMS, MLP, RunningNorm, calibrate, norm_layer


def mean_pairwise_cosine(x: torch.Tensor) -> float:
    z = F.normalize(x, dim=-1)
    sim = z @ z.t()
    n = len(z)
    return float((sim.sum() - sim.diagonal().sum()) / (n * (n - 1)))


def cone(n: int = 256, dim: int = 32, seed: int = 0) -> torch.Tensor:
    """Positive features with a large common direction, like pooled features of an untrained CNN."""
    gen = torch.Generator().manual_seed(seed)
    return torch.relu(3.0 + torch.randn(n, dim, generator=gen))


def test_running_is_a_head_norm():
    assert "running" in HEAD_NORMS and isinstance(norm_layer("running", 8, dims=1), RunningNorm)
    plain = norm_layer("running", 8, dims=1, affine=False)
    assert plain.weight is None and list(plain.parameters()) == []
    x = torch.randn(16, 8) * 3 + 1
    assert torch.allclose(plain.train()(x).mean(0), torch.zeros(8), atol=1e-5)  # first batch: its own statistics
    with pytest.raises(ValueError, match="running"):
        norm_layer("weird", 8, dims=1)
    with pytest.raises(ValueError):  # feature maps: not a backbone norm
        norm_layer("running", 8, dims=2)


def test_batch_of_one_is_defined_and_rows_do_not_see_each_other():
    norm = RunningNorm(4)
    norm.running_mean.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    norm.running_sq.copy_(torch.tensor([2.0, 8.0, 10.0, 17.0]))  # var = 1, 4, 1, 1
    norm.rows_seen.fill_(100)
    x = torch.tensor([[2.0, 4.0, 3.0, 5.0], [0.0, 0.0, 0.0, 0.0]])
    expected = (
        torch.tensor([1.0, 1.0, 0.0, 1.0]) / torch.sqrt(torch.tensor(1.0 + 1e-5)) * torch.tensor([1.0, 1.0, 1.0, 1.0])
    )
    expected[1] = 2.0 / math.sqrt(4.0 + 1e-5)
    norm.train()
    one = norm(x[:1].clone())  # B = 1 in training: finite, normalised with the statistics before it
    assert torch.allclose(one[0], expected, atol=1e-5)
    norm.load_state_dict(
        {
            **norm.state_dict(),
            "running_mean": torch.tensor([1.0, 2.0, 3.0, 4.0]),
            "running_sq": torch.tensor([2.0, 8.0, 10.0, 17.0]),
        }
    )
    both = norm(x)
    assert torch.allclose(both[0], expected, atol=1e-5)  # the same row gives the same output in a batch of two


def test_running_update_by_hand():
    norm = RunningNorm(2, window=10.0)
    norm.rows_seen.fill_(5)  # already started: stats mean 0, E[x^2] 1
    x = torch.tensor([[1.0, 3.0], [3.0, 5.0]])
    norm.train()
    norm(x)
    keep = (1 - 1 / 10) ** 2  # 0.81 after two rows
    assert norm.momentum(2) == pytest.approx(0.81)
    assert torch.allclose(norm.running_mean, torch.tensor([2.0, 4.0]) * (1 - keep))
    assert torch.allclose(norm.running_sq, keep * torch.ones(2) + (1 - keep) * torch.tensor([5.0, 17.0]))
    assert float(norm.rows_seen) == 7
    before = norm.running_mean.clone()
    norm.eval()
    norm(x)  # evaluation: no update
    assert torch.equal(norm.running_mean, before)


def test_fresh_module_starts_from_its_first_training_batch():
    norm = RunningNorm(3)
    x = torch.randn(64, 3) * 5 + 2
    norm.train()
    y = norm(x)
    assert torch.allclose(norm.running_mean, x.mean(0), atol=1e-5)
    assert torch.allclose(y.mean(0), torch.zeros(3), atol=1e-4) and torch.allclose(
        y.std(0, unbiased=False), torch.ones(3), atol=1e-3
    )
    # after a checkpoint restore the state dict decides, not the first batch
    fresh = RunningNorm(3)
    fresh.load_state_dict(norm.state_dict())
    fresh.train()
    assert torch.allclose(fresh(x[:1]), norm.eval()(x[:1]), atol=1e-6)


def test_calibrated_running_norm_matches_batch_norm_on_the_calibration_batch():
    torch.manual_seed(0)
    batch_mlp = MLP(32, 64, 16, layers=3, norm="batch")
    running_mlp = MLP(32, 64, 16, layers=3, norm="running")
    running_mlp.load_state_dict(batch_mlp.state_dict(), strict=False)  # the same linear weights and affine parameters
    x = cone()
    with torch.no_grad():
        with calibrate(running_mlp):
            running_mlp(x)
        running_mlp.eval()
        expected = batch_mlp.train()(x)  # batch statistics of the same batch
        assert torch.allclose(running_mlp(x), expected, atol=1e-4)
        running_mlp.train()
        assert torch.allclose(running_mlp(x), expected, atol=1e-4)  # in training too (normalised before the update)


def test_running_norm_keeps_batch_norm_geometry_where_layer_norm_does_not():
    """Untrained projections of a narrow cone of inputs: BatchNorm and (calibrated) RunningNorm
    heads spread them (mean pairwise cosine near 0.3), LayerNorm heads keep most of the cone,
    also at B = 1 for RunningNorm."""
    x = cone(n=256)
    cosines = {}
    for norm in ("batch", "running", "layer"):
        torch.manual_seed(0)
        mlp = MLP(32, 128, 16, layers=3, norm=norm)
        with torch.no_grad():
            if norm == "running":
                with calibrate(mlp):
                    mlp(x)
                mlp.train()
                out = torch.cat([mlp(row[None]) for row in x])  # one sample at a time, in training mode
            else:
                out = mlp.train()(x)
        cosines[norm] = mean_pairwise_cosine(out)
    assert cosines["layer"] > 0.8  # 0.86 here
    assert cosines["batch"] < 0.4 and abs(cosines["running"] - cosines["batch"]) < 0.02  # 0.257 and 0.257


def test_calibrate_sets_nothing_on_an_error():
    """An error inside ``calibrate`` leaves the statistics (and the other modules, and the mode) as they were."""
    mlp = nn.Sequential(nn.Linear(4, 4), RunningNorm(4)).train()
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    with pytest.raises(RuntimeError), calibrate(mlp):
        mlp(torch.randn(8, 4) * 3 + 1)  # accumulated, then thrown away
        raise RuntimeError("boom")
    assert mlp[1]._calibration is None and mlp.training
    assert all(torch.equal(v, before[k]) for k, v in mlp.state_dict().items())


def test_batch_statistics_mode_is_batch_norm_in_training():
    torch.manual_seed(0)
    batch_mlp = MLP(32, 64, 16, layers=3, norm="batch")
    running_mlp = MLP(32, 64, 16, layers=3, norm="running")
    running_mlp.load_state_dict(batch_mlp.state_dict(), strict=False)
    for norm in running_mlp.modules():
        if isinstance(norm, RunningNorm):
            norm.use_batch_statistics(True)
    x = cone(n=16)
    out = running_mlp.train()(x)
    assert torch.allclose(out, batch_mlp.train()(x), atol=1e-4)
    out.sum().backward()  # the gradient flows through the batch statistics, as in BatchNorm
    assert all(p.grad is not None for p in running_mlp.parameters())
    norm = next(m for m in running_mlp.modules() if isinstance(m, RunningNorm))
    restored = RunningNorm(64)
    restored.load_state_dict(norm.state_dict())
    assert (
        restored._uses_batch_statistics() and float(restored.rows_seen) == 16
    )  # the choice and the statistics are saved
