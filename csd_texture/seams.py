"""Seam check: does an exported file show the optimised texture, also at UV chart borders?

The exported file is read back with ``mesh_io.load_mesh`` (its UVs and base colour image)
and rendered, albedo only, from many orbit views with the project's renderer. The
reference renders the optimised maps on the in-memory mesh, sampling covered texels only
(bilinear weights renormalised over texels inside a chart), so it shows what a renderer
would show if the padding were perfect and nothing else leaked in. Both renders use the
same cameras and a magenta background.

Pixels are compared on the surface's interior (the reference mask eroded by one pixel, so
one-pixel silhouette differences do not count). A pixel is at a chart border when the
texel under it lies within `border_texels` of a chart boundary (the coverage mask dilated
minus eroded, kornia.morphology): its bilinear footprint crosses the boundary, so it reads
padding texels.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import kornia.morphology as morphology
import numpy as np
import torch
import torch.nn.functional as F

from .bake import pad_charts
from .cameras import bounding_radius, make_cameras
from .datatypes import CameraBatch, MeshData, PBRMaps
from .errors import ExportError
from .mesh_io import load_mesh
from .preview import default_rasterizer, render_batched
from .render.base import Rasterizer
from .render.views import RenderOutput
from .texture import ImageTexture, SurfaceSample, uv_to_grid

logger = logging.getLogger(__name__)

BACKGROUND = (1.0, 0.0, 1.0)  # magenta: far from most textures, easy to spot
ELEVATIONS = (-30.0, 15.0, 60.0)
FALLBACK_PAD = 2  # texels; reference values for pixels whose footprint holds no covered texel


class CoveredTexture(torch.nn.Module):
    """Bilinear sampling of maps that uses covered texels only.

    Where a footprint holds no covered texel (slivers thinner than a texel), the value comes
    from the covered texels grown by FALLBACK_PAD texels (``pad_charts``).
    """

    def __init__(self, maps: PBRMaps) -> None:
        super().__init__()
        albedo = torch.from_numpy(np.ascontiguousarray(maps.albedo, dtype=np.float32))
        coverage = torch.from_numpy(np.ascontiguousarray(maps.coverage, dtype=bool))
        weighted = torch.cat([albedo * coverage[..., None], coverage[..., None].float()], dim=-1)
        self.register_buffer("weighted", weighted.permute(2, 0, 1)[None])
        fallback = pad_charts(albedo, coverage, FALLBACK_PAD)
        self.register_buffer("fallback", fallback.permute(2, 0, 1)[None])

    def forward(self, uv: torch.Tensor, position: torch.Tensor | None = None,
                footprint: torch.Tensor | None = None) -> SurfaceSample:
        grid = uv_to_grid(uv)
        total = _sample(self.weighted, grid)
        weight = total[..., 3:]
        albedo = torch.where(weight > 1e-6, total[..., :3] / weight.clamp(min=1e-6), _sample(self.fallback, grid))
        zeros = torch.zeros_like(weight)
        return SurfaceSample(albedo, zeros, zeros)


def _sample(image: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """(1, C, H, W) image at grid (B, h, w, 2) -> (B, h, w, C)."""
    out = F.grid_sample(image.expand(grid.shape[0], -1, -1, -1), grid, mode=mode, padding_mode="border",
                        align_corners=False)
    return out.permute(0, 2, 3, 1)


def border_texels_mask(coverage: np.ndarray, border_texels: int = 1) -> torch.Tensor:
    """(H, W) float 0/1: texels within `border_texels` of a chart boundary (either side)."""
    mask = torch.from_numpy(np.ascontiguousarray(coverage, dtype=np.float32))[None, None]
    kernel = torch.ones(2 * border_texels + 1, 2 * border_texels + 1)
    band = morphology.dilation(mask, kernel) - morphology.erosion(mask, kernel)
    return band[0, 0]


def seam_cameras(views: int, size: int, radius: float, up_axis: tuple[float, float, float]) -> CameraBatch:
    """An orbit at each of ELEVATIONS, azimuths offset between rings: `views` cameras,
    rounded down to a multiple of len(ELEVATIONS) (at least one per ring)."""
    per_ring = max(1, views // len(ELEVATIONS))
    elevation = torch.tensor(ELEVATIONS).repeat_interleave(per_ring)
    ring = torch.arange(len(ELEVATIONS)).repeat_interleave(per_ring)
    azimuth = (torch.arange(per_ring).repeat(len(ELEVATIONS)) + ring / len(ELEVATIONS)) * (360.0 / per_ring)
    azimuth = (azimuth + 180.0) % 360.0 - 180.0
    fov = torch.full_like(elevation, 40.0)
    return make_cameras(elevation, azimuth, fov, radius, size, up_axis)


def read_back(mesh: MeshData, exported: Path) -> tuple[MeshData, ImageTexture]:
    """The exported file as MeshData in `mesh`'s normalised frame, and its base colour texture."""
    loaded = load_mesh(exported)
    if loaded.uv is None or loaded.base_color_image is None:
        raise ExportError(f"{exported}: read back without UVs or a base colour texture")
    to_source = np.asarray(mesh.to_source, np.float64)
    world = loaded.world_vertices()
    vertices = (world - to_source[:3, 3]) @ np.linalg.inv(to_source[:3, :3]).T
    placed = dataclasses.replace(loaded, vertices=vertices.astype(np.float32), up_axis=mesh.up_axis)
    return placed, ImageTexture.from_srgb(loaded.base_color_image)


def seam_report(mesh: MeshData, maps: PBRMaps, exported: Path, *, views: int = 24, size: int = 256,
                border_texels: int = 1, tolerance: float = 0.2,
                rasterizer: Rasterizer | None = None) -> dict[str, Any]:
    """Compare renders of the `exported` file with renders of `maps` on `mesh` (see module doc).

    Errors are absolute sRGB differences in [0, 1] (max over channels). Returns a dict:
    worst_border_error (mean error over border pixels in the worst view), worst_view
    (its elevation and azimuth), max_border_error (largest single border pixel),
    interior_error (mean over the other surface pixels), border_pixels, surface_pixels,
    background_pixels (surface pixels that show the background in the export),
    bleed_pixels (surface pixels off by more than `tolerance`: padding or fill showing),
    and per_view (elevation, azimuth, border_pixels, border_error for each view).
    """
    rasterizer = default_rasterizer(rasterizer)
    device = torch.device(getattr(rasterizer, "device", "cpu"))
    placed, exported_texture = read_back(mesh, Path(exported))
    radius = bounding_radius(torch.as_tensor(mesh.vertices, dtype=torch.float32))
    cameras = seam_cameras(views, size, radius, mesh.up_axis)
    reference_texture = CoveredTexture(maps).to(device)
    reference = render_batched(mesh, reference_texture, cameras, rasterizer, unlit=True, background=BACKGROUND)
    exported_texture = exported_texture.to(device)
    finest = lambda uv, position, footprint: exported_texture(uv, position)  # noqa: E731 - texel lookups, as the reference
    actual = render_batched(placed, finest, cameras, rasterizer, unlit=True, background=BACKGROUND)
    surface, border = _surface_and_border(reference, reference.uv, maps.coverage, border_texels)
    error = (actual.image - reference.image).abs().amax(dim=-1)
    report = {"views": cameras.batch_size, "size": size,
              **_summarise(cameras, surface, border, error, _shows_background(reference, actual), tolerance)}
    logger.info("seam check of %s: worst border error %.4f, %d background and %d bleeding pixels", exported,
                report["worst_border_error"], report["background_pixels"], report["bleed_pixels"])
    return report


def _surface_and_border(reference: RenderOutput, uv: torch.Tensor, coverage: np.ndarray,
                        border_texels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, W) bool masks: surface interior (reference mask eroded by one pixel) and the
    surface pixels whose texel lies in the chart-border band."""
    band = _sample(border_texels_mask(coverage, border_texels)[None, None], uv_to_grid(uv), "nearest")[..., 0]
    surface = morphology.erosion(reference.mask.permute(0, 3, 1, 2), torch.ones(3, 3))[:, 0] > 0
    return surface, surface & (band > 0)


def _shows_background(reference: RenderOutput, actual: RenderOutput) -> torch.Tensor:
    """(B, H, W) bool: the export shows no surface, or the background colour where the
    reference does not."""
    background = torch.tensor(BACKGROUND)

    def is_background(image: torch.Tensor) -> torch.Tensor:
        return (image - background).abs().amax(dim=-1) < 1 / 255

    return (actual.mask[..., 0] == 0) | (is_background(actual.image) & ~is_background(reference.image))


def _summarise(cameras: CameraBatch, surface: torch.Tensor, border: torch.Tensor, error: torch.Tensor,
               shows_background: torch.Tensor, tolerance: float) -> dict[str, Any]:
    per_view = _per_view(cameras, border, error)
    worst = max(per_view, key=lambda v: v["border_error"])
    interior = surface & ~border
    return {
        "worst_border_error": worst["border_error"],
        "worst_view": {"elevation": worst["elevation"], "azimuth": worst["azimuth"]},
        "max_border_error": float(error[border].max()) if border.any() else 0.0,
        "interior_error": float(error[interior].mean()) if interior.any() else 0.0,
        "border_pixels": int(border.sum()),
        "surface_pixels": int(surface.sum()),
        "background_pixels": int((surface & shows_background).sum()),
        "bleed_pixels": int((surface & (error > tolerance)).sum()),
        "per_view": per_view,
    }


def _per_view(cameras: CameraBatch, border: torch.Tensor, error: torch.Tensor) -> list[dict[str, Any]]:
    rows = []
    for b in range(cameras.batch_size):
        count = int(border[b].sum())
        rows.append({
            "elevation": float(cameras.elevation[b]),
            "azimuth": float(cameras.azimuth[b]),
            "border_pixels": count,
            "border_error": float(error[b][border[b]].mean()) if count else 0.0,
        })
    return rows
