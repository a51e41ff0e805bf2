"""Batched 2D/3D multi-view augmentation on the training device.

Every geometric change of a view (random resized crop, flips, 90-degree rotations) is one affine
map per sample, applied to the whole batch with a single ``grid_sample``; intensity changes
(brightness, contrast, gamma), Gaussian blur and noise follow, also batched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ViewSpec:
    """What the view maker makes (resolved: :func:`icone.build.view_spec` fills it from the run's ``views.*``):
    ``global_crops`` at ``global_size`` and ``local_crops`` at ``local_size`` per side, each covering a share
    ``global_scale`` / ``local_scale`` of the input, then flips, 90-degree rotations and intensity changes."""

    global_size: int
    local_size: int
    global_crops: int = 2
    local_crops: int = 0
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    aspect: float = 4 / 3  # largest ratio between two sides of a crop (1: no jitter)
    flip: bool = True
    rotate90: bool = True
    brightness: float = 0.4
    contrast: float = 0.4
    gamma: float = 0.3
    blur_prob: float = 0.3
    blur_sigma: tuple[float, float] = (0.1, 1.5)
    noise_std: float = 0.05


def _orientations(batch: int, dims: int, flip: bool, rotate: bool, device: torch.device) -> torch.Tensor:
    """Signed permutation matrices ``B x d x d``: 90-degree rotations (det +1) and/or flips."""
    eye = torch.eye(dims, device=device)
    if rotate:
        perms = torch.argsort(torch.rand(batch, dims, device=device), dim=1)
        mats = eye[perms]
    else:
        mats = eye.expand(batch, dims, dims).clone()
    if flip or rotate:
        signs = torch.randint(0, 2, (batch, dims), device=device).float() * 2 - 1
        mats = mats * signs[:, :, None]
    if rotate and not flip:  # keep proper rotations only: negate one row where det = -1
        det = torch.linalg.det(mats)
        mats[:, 0] *= det[:, None].sign()
    return mats


def random_affine(
    batch: int,
    dims: int,
    scale: tuple[float, float],
    flip: bool,
    rotate: bool,
    device: torch.device,
    aspect: float = 4 / 3,
) -> torch.Tensor:
    """``B x d x (d+1)`` maps from output to input coordinates (``affine_grid`` convention).

    The crop covers a fraction ``s ~ U(scale)`` of the input area/volume (before clipping to the
    input), its sides differ by up to a factor ``aspect``, and it lies uniformly inside the input.
    """
    s = torch.empty(batch, 1, device=device).uniform_(*scale)
    log_aspect = torch.empty(batch, dims, device=device).uniform_(-0.5, 0.5) * math.log(aspect)
    log_aspect = log_aspect - log_aspect.mean(1, keepdim=True)  # the jitter keeps the area
    sides = (s ** (1.0 / dims) * log_aspect.exp()).clamp(max=1.0)
    centres = (torch.rand(batch, dims, device=device) * 2 - 1) * (1 - sides)
    linear = _orientations(batch, dims, flip, rotate, device) * sides[:, None, :]
    return torch.cat([linear, centres[:, :, None]], dim=2)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per sample (``sigma``: B), any spatial dims."""
    b, c = x.shape[:2]
    dims = x.ndim - 2
    radius = max(1, int(math.ceil(3 * float(sigma.max()))))
    grid = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (grid[None] / sigma[:, None].clamp(min=1e-3)) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B*C) x K
    out = x.reshape(1, b * c, *x.shape[2:])
    conv = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]
    for axis in range(dims):
        shape = [b * c, 1] + [1] * dims
        shape[2 + axis] = kernel.shape[1]
        padding = [0] * dims
        padding[axis] = radius
        out = conv(out, kernel.reshape(shape), padding=tuple(padding), groups=b * c)
    return out.reshape_as(x)


class ViewMaker:
    """Makes the views a :class:`ViewSpec` describes, of ``spatial_dims`` sides each."""

    def __init__(self, spec: ViewSpec, spatial_dims: int) -> None:
        self.spec = spec
        self.spatial_dims = spatial_dims
        self.global_shape = (int(spec.global_size),) * spatial_dims
        self.local_shape = (int(spec.local_size),) * spatial_dims

    @property
    def num_views(self) -> int:
        return self.spec.global_crops + int(self.spec.local_crops)

    def _geometric(self, x: torch.Tensor, shape: tuple[int, ...], scale: tuple[float, float]) -> torch.Tensor:
        spec = self.spec
        theta = random_affine(
            x.shape[0], self.spatial_dims, tuple(scale), bool(spec.flip), bool(spec.rotate90), x.device, spec.aspect
        )
        grid = F.affine_grid(theta.to(x.dtype), [x.shape[0], x.shape[1], *shape], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def _intensity(self, x: torch.Tensor) -> torch.Tensor:
        spec, b = self.spec, x.shape[0]
        per_sample = (b,) + (1,) * (x.ndim - 1)
        reduce = tuple(range(1, x.ndim))
        if spec.gamma > 0:
            low, high = x.amin(reduce, keepdim=True), x.amax(reduce, keepdim=True)
            unit = ((x - low) / (high - low).clamp(min=1e-6)).clamp(0, 1)
            g = torch.empty(per_sample, device=x.device).uniform_(-spec.gamma, spec.gamma).exp()
            x = unit.pow(g) * (high - low) + low
        if spec.contrast > 0:
            mean = x.mean(reduce, keepdim=True)
            x = (x - mean) * torch.empty(per_sample, device=x.device).uniform_(
                1 - spec.contrast, 1 + spec.contrast
            ) + mean
        if spec.brightness > 0:
            x = x + torch.empty(per_sample, device=x.device).uniform_(-spec.brightness, spec.brightness) * x.std(
                reduce, keepdim=True
            )
        if spec.blur_prob > 0:
            sigma = torch.empty(b, device=x.device).uniform_(*spec.blur_sigma)
            blurred = gaussian_blur(x, sigma)
            apply = (torch.rand(per_sample, device=x.device) < spec.blur_prob).to(x.dtype)
            x = apply * blurred + (1 - apply) * x
        if spec.noise_std > 0:
            x = x + torch.randn_like(x) * torch.rand(per_sample, device=x.device) * spec.noise_std
        return x

    def _crops(self, x: torch.Tensor, count: int, shape: tuple[int, ...], scale: list[float]) -> list[torch.Tensor]:
        """``count`` crops of every sample, made in one batched call (``count x B`` samples at once)."""
        if count == 0:
            return []
        made = self._intensity(self._geometric(x.repeat(count, *([1] * (x.ndim - 1))), shape, scale))
        return list(made.chunk(count))

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Views of a batch ``B x C x spatial``: global crops first, then local crops."""
        x = x.float()
        spec = self.spec
        return self._crops(x, spec.global_crops, self.global_shape, spec.global_scale) + self._crops(
            x, int(spec.local_crops), self.local_shape, spec.local_scale
        )
