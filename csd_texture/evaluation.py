"""Quality proxies that run offline: texture recovery on held-out views, sharpness of baked maps.

Texture recovery replaces the diffusion guidance by a photometric objective against renders of a
mesh's own texture; reproducing unseen views proves render -> unwrap -> optimise -> bake ->
export -> load is right end to end.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kornia
import numpy as np
import torch

from .api import texture_mesh
from .cameras import bounding_radius, orbit_cameras
from .datatypes import PBRMaps
from .lighting import fixed_lighting
from .mesh_io import load_mesh
from .optimize import PhotometricObjective
from .render import get_rasterizer
from .render.views import Surface, render_views
from .texture import ImageTexture


@dataclass(frozen=True)
class RecoveryResult:
    psnr_db: float
    seconds_per_step: float
    first_loss: float
    last_loss: float
    maps: PBRMaps


def masked_psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """PSNR in dB of (B, H, W, C) images in [0, 1] over pixels where mask (B, H, W, 1) is set."""
    mse = ((a - b) ** 2 * mask).sum() / (mask.sum() * a.shape[-1]).clamp(min=1)
    return float(10 * torch.log10(1.0 / mse.clamp(min=1e-12)))


def texture_recovery(mesh_path: str | Path, views: int = 6, resolution: int = 128, **settings: Any) -> RecoveryResult:
    """Optimise a texture from renders of `mesh_path`'s own base colour texture, export a GLB, read it
    back and return the PSNR of unlit held-out views (an orbit at 35 degrees elevation, never
    sampled in optimisation) against the original. `settings` are Config fields."""
    rasterizer = get_rasterizer("torch")
    source = load_mesh(mesh_path)
    if source.base_color_image is None:
        raise ValueError(f"{mesh_path}: texture recovery needs a mesh with a base colour texture")
    reference = ImageTexture.from_srgb(source.base_color_image)
    surface = Surface.from_mesh(source, "cpu")
    objective = PhotometricObjective(surface, reference, rasterizer)
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "recovered.glb"
        result = texture_mesh(mesh_path, output=output, objective=objective, progress=False,
                              render_size=resolution, **settings)
        readback = load_mesh(output)
    cameras = orbit_cameras(views, resolution, bounding_radius(surface.vertices), elevation=35.0)
    lighting = fixed_lighting(cameras, unlit=True)
    grey = torch.full((views, 3), 0.5)
    with torch.no_grad():
        want = render_views(surface, reference, cameras, lighting, rasterizer, grey)
        got = render_views(Surface.from_mesh(readback, "cpu"), ImageTexture.from_srgb(readback.base_color_image),
                           cameras, lighting, rasterizer, grey)
    steps = max(len(result.history), 1)
    return RecoveryResult(
        psnr_db=masked_psnr(got.image, want.image, want.mask),
        seconds_per_step=result.timings["optimize"] / steps,
        first_loss=result.history[0].loss if result.history else float("nan"),
        last_loss=result.history[-1].loss if result.history else float("nan"),
        maps=result.maps,
    )


def sharpness(maps: PBRMaps) -> float:
    """Mean absolute Laplacian of the baked albedo over covered texels (higher = more detail)."""
    albedo = torch.from_numpy(np.ascontiguousarray(maps.albedo)).permute(2, 0, 1)[None]
    laplacian = kornia.filters.laplacian(albedo, kernel_size=3).abs().mean(1)[0]
    coverage = torch.from_numpy(maps.coverage)
    return float(laplacian[coverage].mean()) if coverage.any() else 0.0
