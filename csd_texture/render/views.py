"""Render textured views: rasterize, interpolate surface attributes, sample the texture,
shade, convert to sRGB and composite over a background. Shared by every backend."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..datatypes import CameraBatch, Fragments, Lighting, MeshData
from ..texture import NormalMappedSample, SurfaceSample
from .base import Rasterizer, interpolate
from ..lighting import EnvironmentLighting
from .shading import composite, linear_to_srgb, shade, shade_environment
from .tangents import perturbed_normal, vertex_tangents

# texture(uv (..., 2), position (..., 3), footprint (..., 1) or None) -> a sample per point. render_views calls it on
# the covered pixels only, shaped (1, N, 1, C) (`sample_covered`), so a texture must not assume a frame's layout.
TextureFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], SurfaceSample | NormalMappedSample]


@dataclass(frozen=True)
class Surface:
    """A mesh's render attributes on the compute device: vertices (V, 3), faces (F, 3) int32,
    normals (V, 3), uv (V, 2), tangents (V, 4) (xyz, handedness w; for normal maps, None: not made)."""

    vertices: torch.Tensor
    faces: torch.Tensor
    normals: torch.Tensor
    uv: torch.Tensor
    tangents: torch.Tensor | None = None

    @classmethod
    def from_mesh(cls, mesh: MeshData, device: torch.device | str) -> "Surface":
        if mesh.uv is None:
            raise ValueError(f"{mesh.name}: mesh has no UVs; unwrap it first (uv.prepare_uv)")

        def tensor(array, dtype=torch.float32) -> torch.Tensor:
            return torch.as_tensor(array, dtype=dtype, device=device).contiguous()

        tangents = vertex_tangents(mesh.vertices, mesh.faces, mesh.normals, mesh.uv)
        return cls(tensor(mesh.vertices), tensor(mesh.faces, torch.int32), tensor(mesh.normals), tensor(mesh.uv),
                   tensor(tangents))


@dataclass(frozen=True)
class RenderOutput:
    """image: (B, H, W, 3) sRGB in [0, 1] over the background; mask: (B, H, W, 1) coverage;
    depth: (B, H, W, 1) distance along the view axis and normal: (B, H, W, 3) camera-space unit
    normals (x right, y up, z towards the camera), both 0 on the background (ControlNet inputs);
    triangle_id: (B, H, W) int64 face of each pixel, -1 on the background (per-part prompts);
    uv: (B, H, W, 2) texture coordinates, 0 on the background (seam checks)."""

    image: torch.Tensor
    mask: torch.Tensor
    depth: torch.Tensor | None = None
    normal: torch.Tensor | None = None
    triangle_id: torch.Tensor | None = None
    uv: torch.Tensor | None = None


def render_views(surface: Surface, texture: TextureFn, cameras: CameraBatch, lighting: Lighting | EnvironmentLighting,
                 rasterizer: Rasterizer, background: torch.Tensor) -> RenderOutput:
    """Render B views of the textured surface; differentiable w.r.t. the texture."""
    homogeneous = F.pad(surface.vertices, (0, 1), value=1.0)
    pos_clip = torch.einsum("bij,vj->bvi", cameras.mvp.to(homogeneous), homogeneous)
    fragments = rasterizer.rasterize(pos_clip, surface.faces, cameras.resolution)
    mask = fragments.mask[..., None].to(homogeneous.dtype)
    uv = interpolate(surface.uv, fragments, surface.faces)
    footprint = uv_footprint(pos_clip, surface.faces, surface.uv, fragments, cameras.resolution)
    position = interpolate(surface.vertices, fragments, surface.faces)
    normal = F.normalize(interpolate(surface.normals, fragments, surface.faces), dim=-1, eps=1e-8)
    view_dir = F.normalize(cameras.position.to(position)[:, None, None, :] - position, dim=-1, eps=1e-8)
    sample = sample_covered(texture, uv, position, footprint, fragments.mask.bool())
    shading_normal = (mapped_normal(surface, fragments, normal, sample.normal, view_dir)
                      if isinstance(sample, NormalMappedSample) else normal)
    shader = shade_environment if isinstance(lighting, EnvironmentLighting) else shade
    linear = shader(sample.albedo, sample.roughness, sample.metallic, shading_normal, view_dir, lighting)
    srgb = linear_to_srgb(linear.clamp(0.0, 1.0))
    depth, camera_normal = view_space_geometry(cameras.mvp.to(position), position, normal)
    return RenderOutput(image=composite(srgb, mask, background), mask=mask, depth=depth * mask,
                        normal=camera_normal * mask, triangle_id=fragments.triangle_id, uv=uv)


def sample_covered(texture: TextureFn, uv: torch.Tensor, position: torch.Tensor, footprint: torch.Tensor | None,
                   covered: torch.Tensor) -> SurfaceSample | NormalMappedSample:
    """`texture(uv, position, footprint)` evaluated at the covered pixels only (covered: (B, H, W) bool)
    and scattered back to (B, H, W, C): the same values and gradients there, at the cost of the
    object's pixels (the albedo field's MLP runs per point; the object often fills under half the
    frame). Background pixels repeat the first covered pixel's values, detached: they are finite
    and `composite` gives them no gradient."""
    count = int(covered.sum())
    if count in (0, covered.numel()):
        return texture(uv, position, footprint)

    def gathered(values: torch.Tensor | None) -> torch.Tensor | None:  # (B, H, W, C) -> (1, N, 1, C)
        return None if values is None else values[covered][None, :, None]

    def scattered(values: torch.Tensor) -> torch.Tensor:  # (1, N, 1, C) -> (B, H, W, C)
        full = values[0, :1, 0].detach().expand(*covered.shape, values.shape[-1]).clone()
        full[covered] = values[0, :, 0]
        return full

    sample = texture(gathered(uv), gathered(position), gathered(footprint))
    return type(sample)(*(scattered(values) for values in sample))


def mapped_normal(surface: Surface, fragments: Fragments, normal: torch.Tensor, tangent_normal: torch.Tensor,
                  view_dir: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) unit shading normals from a tangent-space normal map (B, H, W, 3), in the frame of
    the interpolated vertex normal `normal` and tangent. On faces seen from behind the whole frame is
    flipped first (glTF's double-sided rule), so the shader's own flip towards the viewer sees the
    mapped normal of the visible side."""
    if surface.tangents is None:
        raise ValueError("the texture has a normal map but the Surface has no tangents; build it with "
                         "Surface.from_mesh")
    tangent = interpolate(surface.tangents, fragments, surface.faces)
    facing = torch.where((normal * view_dir).sum(-1, keepdim=True) < 0, -1.0, 1.0)
    return perturbed_normal(normal, tangent, tangent_normal.to(normal)) * facing


@torch.no_grad()
def view_space_geometry(mvp: torch.Tensor, position: torch.Tensor,
                        normal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Depth along the view axis (B, H, W, 1) and camera-space normals (B, H, W, 3) from world
    positions and normals. For a perspective mvp (proj @ view) rows 0, 1 of mvp are the camera's
    right and up axes scaled, and row 3 is its forward axis (clip w = depth)."""
    rows = mvp[:, None, None]
    depth = (position * rows[..., 3, :3]).sum(-1, keepdim=True) + rows[..., 3, 3:]
    axes = F.normalize(torch.stack([mvp[:, 0, :3], mvp[:, 1, :3], -mvp[:, 3, :3]], 1), dim=-1)
    return depth, torch.einsum("bhwj,bij->bhwi", normal, axes)


@torch.no_grad()
def barycentric_derivatives(pos_clip: torch.Tensor, faces: torch.Tensor, fragments: Fragments,
                            resolution: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Screen-space derivatives of the perspective-correct barycentrics, per pixel.

    pos_clip (B, V, 4), faces (F, 3). Returns d/dx and d/dy, each (B, H, W, 3), per pixel step
    to the right and down (zero where empty). The triangle's clip x, y, w columns c_k give
    homogeneous edge functions q_k = (c_i x c_j) . (x, y, 1) with barycentrics q / sum(q), so
    d lambda / dx = (a_x - lambda sum(a_x)) / sum(q), a_x the x coefficients (what nvdiffrast
    returns as rast_db). Computed from the triangle ids, so both backends give the same values.
    """
    height, width = resolution
    tri = fragments.triangle_id
    batch = tri.shape[0]
    vidx = faces.long()[tri.clamp(min=0)]  # (B, H, W, 3)
    rows = torch.arange(batch, device=tri.device).view(batch, 1, 1, 1)
    corners = pos_clip.detach().double()[rows, vidx][..., [0, 1, 3]]  # (B, H, W, 3 vertices, xyw)
    edges = torch.linalg.cross(corners.roll(-1, dims=-2), corners.roll(-2, dims=-2), dim=-1)  # (.., 3, 3)
    ys, xs = torch.meshgrid(1 - (torch.arange(height, device=tri.device) + 0.5) / height * 2,
                            (torch.arange(width, device=tri.device) + 0.5) / width * 2 - 1, indexing="ij")
    point = torch.stack([xs, ys, torch.ones_like(xs)], -1).double()  # NDC (H, W, 3)
    q = (edges * point[None, :, :, None, :]).sum(-1)  # (B, H, W, 3)
    total = q.sum(-1, keepdim=True)
    total = torch.where(total.abs() < 1e-20, torch.full_like(total, 1e-20), total)
    bary = q / total
    mask = fragments.mask[..., None]

    def along(axis: int, step: float) -> torch.Tensor:
        coefficient = edges[..., axis] * step
        d = (coefficient - bary * coefficient.sum(-1, keepdim=True)) / total
        return torch.where(mask, d, torch.zeros_like(d)).float()

    return along(0, 2.0 / width), along(1, -2.0 / height)


def uv_footprint(pos_clip: torch.Tensor, faces: torch.Tensor, uv: torch.Tensor, fragments: Fragments,
                 resolution: tuple[int, int]) -> torch.Tensor:
    """(B, H, W, 1): the longer of |duv/dx| and |duv/dy| per pixel, in UV units (mip level choice)."""
    d_dx, d_dy = barycentric_derivatives(pos_clip, faces, fragments, resolution)
    duv_dx = interpolate(uv, Fragments(fragments.triangle_id, d_dx, fragments.depth), faces)
    duv_dy = interpolate(uv, Fragments(fragments.triangle_id, d_dy, fragments.depth), faces)
    return torch.maximum(duv_dx.norm(dim=-1, keepdim=True), duv_dy.norm(dim=-1, keepdim=True))
