"""Render textured views: rasterize, interpolate surface attributes, sample the texture,
shade, convert to sRGB and composite over a background. Shared by every backend."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..datatypes import CameraBatch, Lighting, MeshData
from ..texture import SurfaceSample
from .base import Rasterizer, interpolate
from .shading import composite, linear_to_srgb, shade

TextureFn = Callable[[torch.Tensor, torch.Tensor], SurfaceSample]


@dataclass(frozen=True)
class Surface:
    """A mesh's render attributes on the compute device: vertices (V, 3), faces (F, 3) int32,
    normals (V, 3), uv (V, 2)."""

    vertices: torch.Tensor
    faces: torch.Tensor
    normals: torch.Tensor
    uv: torch.Tensor

    @classmethod
    def from_mesh(cls, mesh: MeshData, device: torch.device | str) -> "Surface":
        if mesh.uv is None:
            raise ValueError(f"{mesh.name}: mesh has no UVs; unwrap it first (uv.prepare_uv)")

        def tensor(array, dtype=torch.float32) -> torch.Tensor:
            return torch.as_tensor(array, dtype=dtype, device=device).contiguous()

        return cls(tensor(mesh.vertices), tensor(mesh.faces, torch.int32), tensor(mesh.normals), tensor(mesh.uv))


@dataclass(frozen=True)
class RenderOutput:
    """image: (B, H, W, 3) sRGB in [0, 1] over the background; mask: (B, H, W, 1) coverage."""

    image: torch.Tensor
    mask: torch.Tensor


def render_views(surface: Surface, texture: TextureFn, cameras: CameraBatch, lighting: Lighting,
                 rasterizer: Rasterizer, background: torch.Tensor) -> RenderOutput:
    """Render B views of the textured surface; differentiable w.r.t. the texture."""
    homogeneous = F.pad(surface.vertices, (0, 1), value=1.0)
    pos_clip = torch.einsum("bij,vj->bvi", cameras.mvp.to(homogeneous), homogeneous)
    fragments = rasterizer.rasterize(pos_clip, surface.faces, cameras.resolution)
    mask = fragments.mask[..., None].to(homogeneous.dtype)
    uv = interpolate(surface.uv, fragments, surface.faces)
    position = interpolate(surface.vertices, fragments, surface.faces)
    normal = F.normalize(interpolate(surface.normals, fragments, surface.faces), dim=-1, eps=1e-8)
    view_dir = F.normalize(cameras.position.to(position)[:, None, None, :] - position, dim=-1, eps=1e-8)
    sample = texture(uv, position)
    linear = shade(sample.albedo, sample.roughness, sample.metallic, normal, view_dir, lighting)
    srgb = linear_to_srgb(linear.clamp(0.0, 1.0))
    return RenderOutput(image=composite(srgb, mask, background), mask=mask)
