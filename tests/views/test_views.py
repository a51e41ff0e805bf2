"""The batched 2D/3D view maker."""

import pytest
import torch

from icone.views import ViewMaker, ViewSpec, gaussian_blur, random_affine


def spec(dims, **kw):
    """Resolved view options and the view maker's dimensionality: ``ViewMaker(*spec(dims))``."""
    base = dict(global_size=12, local_size=6, local_crops=0, flip=True, rotate90=True)
    base.update(kw)
    return ViewSpec(**base), dims


PLAIN = dict(
    global_scale=(1.0, 1.0),
    aspect=1.0,
    flip=False,
    rotate90=False,
    brightness=0,
    contrast=0,
    gamma=0,
    blur_prob=0,
    noise_std=0,
)


@pytest.mark.parametrize("dims", [2, 3])
def test_shapes_of_global_and_local_views(dims):
    maker = ViewMaker(*spec(dims, local_crops=3))
    views = maker(torch.randn(5, 2, *([12] * dims)))
    assert maker.num_views == 5 and len(views) == 5
    assert all(v.shape == (5, 2, *([12] * dims)) for v in views[:2])
    assert all(v.shape == (5, 2, *([6] * dims)) for v in views[2:])
    assert all(torch.isfinite(v).all() for v in views)


@pytest.mark.parametrize("dims", [2, 3])
def test_full_crop_without_augmentation_is_the_input(dims):
    torch.manual_seed(0)
    x = torch.randn(3, 1, *([12] * dims))
    (view, _) = ViewMaker(*spec(dims, **PLAIN))(x)
    assert torch.allclose(view, x, atol=1e-5)


def test_flips_and_rotations_only_permute_pixels():
    torch.manual_seed(1)
    x = torch.randn(64, 1, 12, 12)
    views = ViewMaker(*spec(2, **{**PLAIN, "flip": True, "rotate90": True}))(x)
    for v in views:
        assert torch.allclose(v.flatten(1).sort(1).values, x.flatten(1).sort(1).values, atol=1e-5)
    assert not torch.allclose(views[0], x)  # some of 64 samples were turned


def test_rotations_without_flips_are_proper():
    torch.manual_seed(2)
    for dims in (2, 3):
        theta = random_affine(200, dims, (1.0, 1.0), flip=False, rotate=True, device=torch.device("cpu"), aspect=1.0)
        assert torch.allclose(torch.linalg.det(theta[:, :, :dims]), torch.ones(200))


def test_crop_scale_bounds_the_covered_area():
    theta = random_affine(500, 2, (0.2, 0.5), flip=False, rotate=False, device=torch.device("cpu"))
    area = theta[:, 0, 0] * theta[:, 1, 1]  # side fractions (of the [-1, 1] extent) multiply to the area share
    assert area.min() >= 0.2 - 1e-6 and area.max() <= 0.5 + 1e-6
    ratio = theta[:, 0, 0] / theta[:, 1, 1]
    assert ratio.max() <= 4 / 3 + 1e-5 and ratio.min() >= 3 / 4 - 1e-5
    assert (theta[:, :, 2].abs() <= 1 - theta[:, [0, 1], [0, 1]] + 1e-6).all()  # crop stays inside


def test_blur_keeps_the_mean_and_smooths():
    x = torch.zeros(2, 1, 15, 15, 15)
    x[:, :, 7, 7, 7] = 1
    out = gaussian_blur(x, torch.tensor([0.5, 1.5]))
    assert torch.allclose(out.sum((1, 2, 3, 4)), torch.ones(2), atol=1e-5)
    assert out[1].max() < out[0].max() < 1


def test_same_seed_same_views():
    x = torch.randn(4, 1, 12, 12)
    torch.manual_seed(5)
    a = ViewMaker(*spec(2))(x)
    torch.manual_seed(5)
    b = ViewMaker(*spec(2))(x)
    assert all(torch.equal(u, v) for u, v in zip(a, b))


@pytest.mark.parametrize("global_crops", [2, 6])
def test_every_crop_of_a_size_is_made_in_one_batched_call(global_crops, monkeypatch):
    """K views cost one resampling of K x B samples per crop size, not K calls, and differ from each other."""
    calls = []
    grid_sample = torch.nn.functional.grid_sample
    monkeypatch.setattr(
        torch.nn.functional, "grid_sample", lambda x, *a, **k: calls.append(len(x)) or grid_sample(x, *a, **k)
    )
    views = ViewMaker(*spec(2, global_crops=global_crops, local_crops=3))(torch.randn(4, 1, 12, 12))
    assert calls == [global_crops * 4, 3 * 4]
    assert len(views) == global_crops + 3 and not torch.equal(views[0], views[1])
