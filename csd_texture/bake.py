"""Bake a texture into UV-space images: UV G-buffer -> per-texel PBR values -> seam padding.

The UV G-buffer reuses the camera rasterizer: each vertex is placed at clip position
(u * 2 - 1, v * 2 - 1, 0, 1), so texel (i, j) has its centre at
uv = ((j + 0.5) / size, 1 - (i + 0.5) / size) and row 0 holds v = 1, the image
convention of textures. Texels count as covered when their centre lies inside a UV
triangle; border texels that a triangle only grazes are filled by `pad_charts`, which
also keeps bilinear filtering and mipmaps free of seams.
"""
from __future__ import annotations

import itertools
import logging
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .datatypes import GBuffer, MeshData, PBRMaps
from .errors import MeshValidationError
from .render.base import Rasterizer, interpolate

logger = logging.getLogger(__name__)

Sampler = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
SAMPLE_TEXELS = 2**20  # texels per `sample` call, bounds memory for neural textures


def uv_gbuffer(
    mesh: MeshData, size: int, rasterizer: Rasterizer, device: torch.device | str | None = None
) -> GBuffer:
    """Rasterize `mesh` in UV space at size x size texels.

    Returns a GBuffer with B = 1: mask (1, S, S, 1) float 0/1, position (1, S, S, 3)
    normalised world, normal (1, S, S, 3) unit, uv (1, S, S, 2); zero where uncovered.
    `device` defaults to the rasterizer's device (CPU for the torch backend).
    """
    if mesh.uv is None:
        raise MeshValidationError(f"mesh {mesh.name!r} has no UVs; unwrap it first (csd_texture.uv)")
    if int(size) != size or size <= 0:
        raise ValueError(f"size must be a positive int, got {size!r}")
    device = torch.device(device if device is not None else getattr(rasterizer, "device", "cpu"))
    uv = torch.as_tensor(mesh.uv, dtype=torch.float32, device=device)
    faces = torch.as_tensor(mesh.faces, dtype=torch.int32, device=device)
    pos_clip = torch.cat([uv * 2.0 - 1.0, torch.zeros_like(uv[:, :1]), torch.ones_like(uv[:, :1])], 1)
    fragments = rasterizer.rasterize(pos_clip[None], faces, (size, size))

    def attribute(values: np.ndarray) -> torch.Tensor:
        return interpolate(torch.as_tensor(values, dtype=torch.float32, device=device), fragments, faces)

    return GBuffer(
        mask=fragments.mask.unsqueeze(-1).float(),
        position=attribute(mesh.vertices),
        normal=F.normalize(attribute(mesh.normals), dim=-1),
        uv=interpolate(uv, fragments, faces),
    )


def pad_charts(image: torch.Tensor, coverage: torch.Tensor, texels: int) -> torch.Tensor:
    """Grow every UV chart of `image` by `texels` texels, then fill the rest.

    image: (H, W, C) float; coverage: (H, W) bool, texels inside a chart. Each ring of
    dilation sets the uncovered texels touching the charts (8-neighbourhood) to the
    average of their covered neighbours; whatever is still empty afterwards gets the mean
    of the covered texels. Covered texels are returned unchanged. Returns (H, W, C).
    """
    if image.ndim != 3 or tuple(coverage.shape) != tuple(image.shape[:2]):
        raise ValueError(
            f"image must be (H, W, C) and coverage (H, W); got {tuple(image.shape)} and "
            f"{tuple(coverage.shape)}"
        )
    if int(texels) != texels or texels < 0:
        raise ValueError(f"texels must be a non-negative int, got {texels!r}")
    covered = coverage.to(device=image.device, dtype=torch.bool)
    if not covered.any():
        logger.warning("pad_charts: no covered texel; returning an all-zero image")
        return torch.zeros_like(image)
    mask = covered[None, None].to(image.dtype)  # (1, 1, H, W)
    values = image.permute(2, 0, 1)[None] * mask  # (1, C, H, W), zero off the charts
    for _ in range(int(texels)):
        total = F.avg_pool2d(values, 3, stride=1, padding=1)
        count = F.avg_pool2d(mask, 3, stride=1, padding=1)
        ring = (mask == 0) & (count > 0)
        if not ring.any():
            break
        values = torch.where(ring, total / count.clamp(min=1e-12), values)
        mask = torch.where(ring, torch.ones_like(mask), mask)
    fill = image[covered].mean(dim=0).view(1, -1, 1, 1)
    values = torch.where(mask > 0, values, fill)
    return torch.where(covered[..., None], image, values[0].permute(1, 2, 0))


def bake_maps(
    mesh: MeshData,
    sample: Sampler,
    size: int,
    rasterizer: Rasterizer,
    pad_texels: int = 16,
    device: torch.device | str | None = None,
) -> PBRMaps:
    """Evaluate `sample(uv (1, h, S, 2), position (1, h, S, 3))` -> (albedo (..., 3),
    roughness (..., 1), metallic (..., 1)[, tangent-space normal (..., 3) unit]) at every
    texel of the UV G-buffer, in row blocks, keep covered texels, pad charts by `pad_texels` and
    return float32 [0, 1] maps (the normal, when there is one, renormalised after padding and
    encoded n * 0.5 + 0.5). Runs on `device`, by default the texture's (a `sample` module's
    parameters), else the rasterizer's.
    """
    gbuffer = uv_gbuffer(mesh, size, rasterizer, device if device is not None else _device_of(sample, rasterizer))
    rows = max(1, SAMPLE_TEXELS // size)
    blocks = []
    with torch.no_grad():
        for top in range(0, size, rows):
            uv = gbuffer.uv[:, top:top + rows]
            outputs = sample(uv, gbuffer.position[:, top:top + rows])
            blocks.append(_stack_channels(outputs, uv.shape[1], size))
    channels = torch.cat(blocks, dim=0)  # (S, S, 5) or (S, S, 8) with a normal map
    coverage = gbuffer.mask[0, ..., 0] > 0
    padded = pad_charts(channels, coverage, pad_texels)
    maps = padded[..., :5].clamp(0.0, 1.0).cpu().numpy()
    normal = None
    if padded.shape[-1] == 8:
        normal = (F.normalize(padded[..., 5:], dim=-1, eps=1e-8) * 0.5 + 0.5).clamp(0.0, 1.0).cpu().numpy()
    return PBRMaps(
        albedo=np.ascontiguousarray(maps[..., 0:3]),
        roughness=np.ascontiguousarray(maps[..., 3:4]),
        metallic=np.ascontiguousarray(maps[..., 4:5]),
        coverage=coverage.cpu().numpy(),
        normal=None if normal is None else np.ascontiguousarray(normal),
    )


def _device_of(sample: Sampler, rasterizer: Rasterizer) -> torch.device:
    """Where `sample` computes: its first parameter or buffer's device when it is a module (a
    texture), else the rasterizer's device."""
    if isinstance(sample, torch.nn.Module):
        for tensor in itertools.chain(sample.parameters(), sample.buffers()):
            return tensor.device
    return torch.device(getattr(rasterizer, "device", "cpu"))


def _stack_channels(outputs: tuple[torch.Tensor, ...], height: int, width: int) -> torch.Tensor:
    """(albedo, roughness, metallic[, normal]) of any (..., C) shape with height*width texels ->
    (h, W, 5), or (h, W, 8) with a normal."""
    if len(outputs) not in (3, 4):
        raise ValueError(f"sample must return (albedo, roughness, metallic[, normal]), got {len(outputs)} values")
    parts = []
    for name, tensor, channels in zip(("albedo", "roughness", "metallic", "normal"), outputs, (3, 1, 1, 3)):
        if tensor.shape[-1] != channels or tensor.numel() != height * width * channels:
            raise ValueError(
                f"sample returned {name} of shape {tuple(tensor.shape)}; expected "
                f"(1, {height}, {width}, {channels})"
            )
        parts.append(tensor.reshape(height, width, channels).float())
    return torch.cat(parts, dim=-1)
