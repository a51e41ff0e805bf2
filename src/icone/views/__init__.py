"""2D and 3D view makers, batched on the training device."""

from icone.views.maker import ViewMaker, ViewSpec, gaussian_blur, random_affine

__all__ = ["ViewMaker", "ViewSpec", "gaussian_blur", "random_affine"]
