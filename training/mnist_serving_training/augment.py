"""Seeded random affine augmentation (rotation, translation, scale; optional elastic warp).

Digits drawn on the page or photographed are tilted, off-centre and of any size; MNIST's are
upright, centred by their centre of mass and normalised in size. Training on digits moved the
way people move them is what teaches the network to ignore it.

Every transform is drawn from a :class:`torch.Generator` the caller seeds, so the same seed
gives the same augmented batches (and the same weights). The warp is one
``affine_grid`` + ``grid_sample`` per batch (bilinear, zeros outside the image = background).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

from mnist_serving_training.defaults import (
    DEFAULT_ELASTIC_ALPHA,
    DEFAULT_ELASTIC_SIGMA,
    DEFAULT_ROTATION_DEGREES,
    DEFAULT_SCALE,
    DEFAULT_TRANSLATE_PIXELS,
)

# The transformed held-out set of the report: its own seed, never the training seed.
ROBUSTNESS_SEED = 20_240_615

PIXEL_MAX = 255.0
# Elastic displacement: a Gaussian kernel of this many sigmas each side.
GAUSSIAN_HALF_WIDTH_SIGMAS = 3


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transform, each drawn uniformly and independently per image.

    rotation_degrees: angle in [-r, r]; translate_pixels: shift in [-t, t] along each axis;
    scale: factor in [1 - s, 1 + s]; elastic_alpha: elastic displacement in pixels
    (0 = none), smoothed by a Gaussian of elastic_sigma pixels.
    """

    rotation_degrees: float = DEFAULT_ROTATION_DEGREES
    translate_pixels: float = DEFAULT_TRANSLATE_PIXELS
    scale: float = DEFAULT_SCALE
    elastic_alpha: float = DEFAULT_ELASTIC_ALPHA
    elastic_sigma: float = DEFAULT_ELASTIC_SIGMA

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"augmentation {name} must be finite and >= 0, got {value}")
        if self.scale >= 1:
            raise ValueError(f"augmentation scale must be below 1, got {self.scale}")
        if self.elastic_alpha > 0 and self.elastic_sigma <= 0:
            raise ValueError("elastic_sigma must be positive when elastic_alpha is")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# The transformed held-out set (report, tests): the default ranges, no elastic distortion.
ROBUSTNESS_TRANSFORM = AugmentConfig(elastic_alpha=0.0)


def _uniform(count: int, half_range: float, generator: torch.Generator) -> torch.Tensor:
    """``count`` draws from U[-half_range, half_range] (always drawn, so streams stay aligned)."""
    return (torch.rand(count, generator=generator) * 2 - 1) * half_range


def random_affine_matrices(
    count: int, side: int, config: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """``affine_grid`` matrices [count, 2, 3] for square images of ``side`` pixels.

    The content is scaled by s, rotated by a and moved by t (pixels) about the image centre:
    output point p = s R p_in + t, so the grid (output -> input) is p_in = R^T (p - t) / s.
    """
    angle = torch.deg2rad(_uniform(count, config.rotation_degrees, generator))
    scale = 1 + _uniform(count, config.scale, generator)
    # grid_sample's normalised coordinates span 2 units over ``side`` pixels.
    shift = _uniform(2 * count, config.translate_pixels, generator).view(count, 2) * (2 / side)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # R^T / s for R = [[cos, -sin], [sin, cos]].
    linear = torch.stack([torch.stack([cos, sin], 1), torch.stack([-sin, cos], 1)], 1)
    offset = -(linear @ shift.unsqueeze(2))
    return torch.cat([linear, offset], dim=2)


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, round(GAUSSIAN_HALF_WIDTH_SIGMAS * sigma))
    positions = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(positions**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def elastic_displacement(
    count: int, side: int, config: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """Smooth random displacements [count, side, side, 2] in grid units (Simard et al. 2003)."""
    noise = torch.rand(count * 2, 1, side, side, generator=generator) * 2 - 1
    kernel = _gaussian_kernel(config.elastic_sigma)
    pad = kernel.numel() // 2
    smooth = F.conv2d(noise, kernel.view(1, 1, 1, -1), padding=(0, pad))
    smooth = F.conv2d(smooth, kernel.view(1, 1, -1, 1), padding=(pad, 0))
    # Rescale so that elastic_alpha is the largest displacement in pixels, whatever sigma.
    peak = smooth.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    pixels = smooth / peak * config.elastic_alpha
    return (pixels * (2 / side)).view(count, 2, side, side).permute(0, 2, 3, 1)


def augment(
    pixels: torch.Tensor, config: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """Randomly transform images [N, 1, H, W] (uint8 or float, 0-255) -> float32, 0-255."""
    count, channels, height, width = pixels.shape
    if height != width:
        raise ValueError(f"augment expects square images, got {height}x{width}")
    images = pixels.to(torch.float32)
    if count == 0:
        return images
    theta = random_affine_matrices(count, width, config, generator)
    grid = F.affine_grid(theta, [count, channels, height, width], align_corners=False)
    if config.elastic_alpha > 0:
        grid = grid + elastic_displacement(count, width, config, generator)
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return warped.clamp(0, PIXEL_MAX)


def transformed_copy(
    pixels: torch.Tensor, config: AugmentConfig = ROBUSTNESS_TRANSFORM, seed: int = ROBUSTNESS_SEED
) -> torch.Tensor:
    """A seeded transformed copy of uint8 images [N, 1, H, W], rounded back to uint8."""
    generator = torch.Generator().manual_seed(seed)
    return augment(pixels, config, generator).round().to(torch.uint8)
