"""Quality proxies that run offline: texture recovery on held-out views, sharpness of baked maps.

Texture recovery replaces the diffusion guidance by a photometric objective against renders of a
mesh's own texture; reproducing unseen views proves render -> unwrap -> optimise -> bake ->
export -> load is right end to end.
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kornia
import numpy as np
import torch

from .api import texture_mesh
from .cameras import bounding_radius, orbit_cameras
from .datatypes import MeshData, PBRMaps
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


# --- Recipe quality (issue 12): seams, material identifiability and drift, saturation ----------------

CSD_PIXEL_GRAD_STD = 0.0037  # per-pixel std of CSD's image gradient (tiny trained prior, 64 px views)


class NoiseObjective:
    """A zero-mean random objective of CSD's magnitude: d loss / d image is fresh Gaussian noise
    each step, drawn at the latent resolution (1/8, as CSD's gradient arrives through the VAE)
    and upsampled, with per-pixel std CSD_PIXEL_GRAD_STD * 64 / render size. Nothing in it
    prefers any material, so whatever moves roughness and metallic away from where they
    start is drift."""

    def __init__(self, seed: int = 0, scale: float = 1.0) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.scale = scale

    def __call__(self, images: torch.Tensor, views: Any, progress: float, generator: torch.Generator):
        from .optimize import ObjectiveOutput

        batch, height, width = images.shape[:3]
        noise = torch.randn(batch, 3, max(height // 8, 1), max(width // 8, 1), generator=self.generator)
        noise = torch.nn.functional.interpolate(noise, size=(height, width), mode="bilinear", align_corners=False)
        noise = noise / noise.std().clamp(min=1e-12) * CSD_PIXEL_GRAD_STD * 64 / width * self.scale
        return ObjectiveOutput((images * noise.permute(0, 2, 3, 1).to(images)).sum())


def run_recipe(mesh: MeshData, objective: Any, config: Any, size: int | None = None) -> tuple[PBRMaps, float]:
    """Optimise a texture on `mesh` (which has UVs) with `objective` under `config` and bake it
    at `size` (config.texture_size). Returns the maps and seconds per step."""
    import time

    from .bake import bake_maps
    from .optimize import optimize
    from .texture import MaterialRange, make_texture

    rasterizer = get_rasterizer("torch")
    surface = Surface.from_mesh(mesh, "cpu")
    torch.manual_seed(config.seed)
    texture = make_texture(config.texture, config.texture_size, config.seed,
                           MaterialRange(config.roughness, config.metallic))
    start = time.perf_counter()
    optimize(texture, surface, rasterizer, objective, config, mesh.up_axis)
    seconds = (time.perf_counter() - start) / max(config.steps, 1)
    with torch.no_grad():
        maps = bake_maps(mesh, texture, size or config.texture_size, rasterizer, config.pad_texels)
    return maps, seconds


def face_charts(mesh: MeshData) -> np.ndarray:
    """(F,) chart id per face: faces joined through shared (UV-split) vertices."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    faces = np.asarray(mesh.faces, np.int64)
    rows = np.concatenate([faces[:, 0], faces[:, 1]])
    cols = np.concatenate([faces[:, 1], faces[:, 2]])
    count = len(mesh.vertices)
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(count, count))
    _, labels = connected_components(graph, directed=False)
    return labels[faces[:, 0]]


@dataclass(frozen=True)
class SurfacePairs:
    """Pairs of nearby surface points: uv_a, uv_b (N, 2) and cross (N,) bool, the two in different charts."""

    uv_a: np.ndarray
    uv_b: np.ndarray
    cross: np.ndarray


def surface_pairs(mesh: MeshData, points: int = 40000, distance: float = 0.01, seed: int = 0) -> SurfacePairs:
    """Point pairs closer than `distance` x the bounding-box diagonal, from `points` area-uniform
    surface samples (scipy cKDTree)."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    vertices, faces, uv = (np.asarray(a, np.float64) for a in (mesh.vertices, mesh.faces, mesh.uv))
    faces = faces.astype(np.int64)
    corners = vertices[faces]
    area = np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=-1)
    chosen = rng.choice(len(faces), points, p=area / area.sum())
    r = rng.random((points, 2))
    r = np.where(r.sum(-1, keepdims=True) > 1, 1 - r, r)
    bary = np.concatenate([1 - r.sum(-1, keepdims=True), r], -1)[..., None]
    position = (vertices[faces[chosen]] * bary).sum(1)
    uvs = (uv[faces[chosen]] * bary).sum(1)
    diagonal = float(np.linalg.norm(vertices.max(0) - vertices.min(0)))
    pairs = cKDTree(position).query_pairs(distance * diagonal, output_type="ndarray")
    charts = face_charts(mesh)[chosen]
    return SurfacePairs(uvs[pairs[:, 0]], uvs[pairs[:, 1]], charts[pairs[:, 0]] != charts[pairs[:, 1]])


def seam_jump(maps: PBRMaps, pairs: SurfacePairs) -> float:
    """Mean sRGB base-colour difference of nearby point pairs across two charts over that within one
    chart (1 = seams invisible in the statistics; a texture cut at chart borders gives more)."""
    from .render.shading import linear_to_srgb

    texture = ImageTexture.from_maps(maps)

    def colour(uv: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return linear_to_srgb(texture(torch.as_tensor(uv, dtype=torch.float32)[None, None]).albedo[0, 0])

    difference = (colour(pairs.uv_a) - colour(pairs.uv_b)).norm(dim=-1).numpy()
    if not pairs.cross.any() or pairs.cross.all():
        raise ValueError("seam_jump needs pairs both across and within charts")
    return float(difference[pairs.cross].mean() / max(difference[~pairs.cross].mean(), 1e-12))


def smooth_field(position: torch.Tensor, seed: int = 0, frequencies: int = 6) -> torch.Tensor:
    """(..., 3) position -> (..., 3) colour in [0, 1]: a few random low-frequency sinusoids of
    position (a texture with no seams by construction)."""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(frequencies, 3, 3, generator=generator) * 2.0
    phases = torch.rand(frequencies, 3, generator=generator) * 6.283
    waves = torch.sin(torch.einsum("...d,fcd->...fc", position, directions) + phases)
    return (0.5 + 0.35 * waves.mean(-2) * math.sqrt(frequencies / 2)).clamp(0, 1)


def seamless_bake(mesh: MeshData, size: int, seed: int = 0) -> PBRMaps:
    """A smooth function of position (`smooth_field`) baked onto the mesh's UVs by bake_maps: the
    seam jump the bake alone gives, the target for an optimised texture."""
    from .bake import bake_maps
    from .render.shading import srgb_to_linear

    def sample(uv: torch.Tensor, position: torch.Tensor):
        albedo = srgb_to_linear(smooth_field(position, seed))
        ones = torch.ones_like(albedo[..., :1])
        return albedo, ones * 0.5, ones * 0.0

    return bake_maps(mesh, sample, size, get_rasterizer("torch"))


def material_reference(mesh: MeshData, size: int, seed: int = 1) -> PBRMaps:
    """Known PBR maps for recovery: smooth albedo, roughness 0.15..0.85 and metallic 0 or 1 in
    regions, all smooth functions of position baked onto the mesh's UVs."""
    from .bake import bake_maps
    from .render.shading import srgb_to_linear

    def sample(uv: torch.Tensor, position: torch.Tensor):
        field = smooth_field(position, seed, frequencies=3)
        albedo = srgb_to_linear(0.15 + 0.7 * smooth_field(position, seed + 1, frequencies=3))
        roughness = 0.15 + 0.7 * field[..., :1]
        metallic = (field[..., 1:2] > 0.6).float()
        return albedo, roughness, metallic

    return bake_maps(mesh, sample, size, get_rasterizer("torch"))


def map_errors(got: PBRMaps, want: PBRMaps) -> dict[str, float]:
    """Albedo PSNR (sRGB, dB) and roughness/metallic mean absolute error over covered texels."""
    from .render.shading import linear_to_srgb

    covered = torch.from_numpy(want.coverage)

    def srgb(a: np.ndarray) -> torch.Tensor:
        return linear_to_srgb(torch.from_numpy(np.ascontiguousarray(a)))[covered]

    mse = float(((srgb(got.albedo) - srgb(want.albedo)) ** 2).mean())
    return {
        "albedo_psnr_db": 10 * math.log10(1.0 / max(mse, 1e-12)),
        "roughness_mae": float(np.abs(got.roughness - want.roughness)[want.coverage].mean()),
        "metallic_mae": float(np.abs(got.metallic - want.metallic)[want.coverage].mean()),
    }


def material_band(maps: PBRMaps) -> dict[str, float]:
    """5th and 95th percentiles of roughness and metallic over covered texels."""
    rough, metal = maps.roughness[maps.coverage, 0], maps.metallic[maps.coverage, 0]
    return {"roughness_p5": float(np.percentile(rough, 5)), "roughness_p95": float(np.percentile(rough, 95)),
            "metallic_p5": float(np.percentile(metal, 5)), "metallic_p95": float(np.percentile(metal, 95))}


def saturation_share(maps: PBRMaps) -> float:
    """Share of covered base-colour texels with a channel at 0 or 255 in the 8-bit sRGB PNG."""
    from .render.shading import linear_to_srgb

    srgb = (linear_to_srgb(torch.from_numpy(np.ascontiguousarray(maps.albedo))) * 255).round()
    clipped = ((srgb <= 0) | (srgb >= 255)).any(-1).numpy()
    return float(clipped[maps.coverage].mean())
