"""The rasterizer protocol, its input checks and the shared, differentiable interpolation.

A rasterizer only answers "which triangle, where inside it" per pixel (`Fragments`);
everything after that (interpolation, texture lookup, shading) is shared PyTorch, so
gradients reach the texture whichever backend ran.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from ..datatypes import Fragments


@runtime_checkable
class Rasterizer(Protocol):
    """A visibility backend. Rows of the result run top (NDC y = +1) to bottom.

    `device` is where its Fragments live and where callers put the inputs (the UV bake
    builds its G-buffer there)."""

    name: str
    device: torch.device

    def rasterize(
        self, pos_clip: torch.Tensor, faces: torch.Tensor, resolution: tuple[int, int]
    ) -> Fragments:
        """pos_clip: (B, V, 4) float32 clip-space positions; faces: (F, 3) int32;
        resolution: (H, W). Returns Fragments with (B, H, W) fields."""
        ...


def check_rasterize_inputs(
    pos_clip: torch.Tensor, faces: torch.Tensor, resolution: tuple[int, int]
) -> None:
    """Raise ValueError with a fix when the arguments of `rasterize` are malformed."""
    if not isinstance(pos_clip, torch.Tensor) or pos_clip.ndim != 3 or pos_clip.shape[-1] != 4:
        shape = tuple(pos_clip.shape) if isinstance(pos_clip, torch.Tensor) else type(pos_clip)
        raise ValueError(f"pos_clip must be a (B, V, 4) tensor of clip positions, got {shape}")
    if not pos_clip.is_floating_point():
        raise ValueError(f"pos_clip must be floating point, got {pos_clip.dtype}")
    if not isinstance(faces, torch.Tensor) or faces.ndim != 2 or faces.shape[-1] != 3:
        shape = tuple(faces.shape) if isinstance(faces, torch.Tensor) else type(faces)
        raise ValueError(f"faces must be an (F, 3) integer tensor, got {shape}")
    if faces.is_floating_point() or faces.dtype == torch.bool:
        raise ValueError(f"faces must be an integer tensor (int32), got {faces.dtype}")
    if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= pos_clip.shape[1]):
        raise ValueError(
            f"faces index vertices outside [0, {pos_clip.shape[1]}): "
            f"min {int(faces.min())}, max {int(faces.max())}"
        )
    if len(resolution) != 2 or any(int(r) != r or r <= 0 for r in resolution):
        raise ValueError(f"resolution must be two positive ints (H, W), got {resolution!r}")


def interpolate(attr: torch.Tensor, fragments: Fragments, faces: torch.Tensor) -> torch.Tensor:
    """Interpolate per-vertex attributes at every pixel.

    attr: (V, C) or (B, V, C) float; faces: (F, 3) integer. Returns (B, H, W, C) in
    attr's dtype, zero where no triangle covers the pixel. Differentiable w.r.t. attr
    (the barycentrics are treated as constants: the mesh is fixed).
    """
    if attr.ndim not in (2, 3):
        raise ValueError(f"attr must be (V, C) or (B, V, C), got {tuple(attr.shape)}")
    tri = fragments.triangle_id
    batch = tri.shape[0]
    if attr.ndim == 3 and attr.shape[0] not in (1, batch):
        raise ValueError(f"attr batch {attr.shape[0]} does not match fragments batch {batch}")
    vidx = faces.long()[tri.clamp(min=0)]  # (B, H, W, 3)
    if attr.ndim == 2:
        values = attr[vidx]  # (B, H, W, 3, C)
    else:
        rows = torch.arange(batch, device=tri.device).view(batch, 1, 1, 1)
        values = attr.expand(batch, -1, -1)[rows, vidx]
    bary = fragments.barycentrics.to(attr.dtype) * fragments.mask.unsqueeze(-1)
    return (bary.unsqueeze(-1) * values).sum(dim=-2)
