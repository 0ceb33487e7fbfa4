"""Learnable textures. The one place where raw parameters become PBR values.

A texture maps surface points (their UV and normalised position) to linear albedo,
roughness and metallic, all in [0, 1] through a sigmoid.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .datatypes import PBRMaps

CHANNELS = 5  # albedo RGB, roughness, metallic
DEFAULT_INIT = {"albedo": 0.25, "roughness": 0.6, "metallic": 0.05}


class SurfaceSample(NamedTuple):
    """PBR values at sample points: albedo (..., 3) linear, roughness (..., 1), metallic (..., 1)."""

    albedo: torch.Tensor
    roughness: torch.Tensor
    metallic: torch.Tensor


def _logit(p: float | torch.Tensor) -> torch.Tensor:
    p = torch.as_tensor(p, dtype=torch.float32).clamp(1e-4, 1 - 1e-4)
    return torch.log(p / (1 - p))


def _to_sample(raw: torch.Tensor) -> SurfaceSample:
    values = torch.sigmoid(raw)
    return SurfaceSample(values[..., :3], values[..., 3:4], values[..., 4:5])


def _init_bias() -> torch.Tensor:
    values = [DEFAULT_INIT["albedo"]] * 3 + [DEFAULT_INIT["roughness"], DEFAULT_INIT["metallic"]]
    return _logit(torch.tensor(values))


def uv_to_grid(uv: torch.Tensor) -> torch.Tensor:
    """UV (origin bottom-left) -> grid_sample coordinates (row 0 of the image = v 1)."""
    return torch.stack([uv[..., 0] * 2 - 1, 1 - uv[..., 1] * 2], dim=-1)


class UVPyramidTexture(torch.nn.Module):
    """A UV texture stored as a multi-resolution pyramid whose levels are sampled and summed.

    Coarse levels let a few gradients move large areas early; the finest level holds detail.
    Sampling each level at the query points costs O(points * levels), not O(texture size).
    """

    def __init__(self, size: int, min_size: int = 8) -> None:
        super().__init__()
        sizes = [size]
        while sizes[-1] // 2 >= min_size:
            sizes.append(sizes[-1] // 2)
        self.size = size
        self.levels = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.zeros(1, CHANNELS, s, s)) for s in sizes]
        )
        self.register_buffer("bias", _init_bias())

    def forward(self, uv: torch.Tensor, position: torch.Tensor | None = None) -> SurfaceSample:
        """uv: (B, H, W, 2) in [0, 1]; position is unused (kept for the shared interface)."""
        grid = uv_to_grid(uv).to(self.levels[0].dtype)
        raw = sum(
            F.grid_sample(level.expand(grid.shape[0], -1, -1, -1), grid, mode="bilinear",
                          padding_mode="border", align_corners=False)
            for level in self.levels
        )
        return _to_sample(raw.permute(0, 2, 3, 1) + self.bias)

    @torch.no_grad()
    def initialise_albedo(self, albedo_linear: torch.Tensor) -> None:
        """Start from an existing (H, W, 3) linear albedo image (row 0 = v 1), e.g. for editing."""
        image = albedo_linear.permute(2, 0, 1)[None].to(self.levels[0])
        image = F.interpolate(image, size=(self.size, self.size), mode="bilinear", antialias=True,
                              align_corners=False)
        for level in self.levels:
            level.zero_()
        self.levels[0][:, :3] = _logit(image) - self.bias[:3, None, None]


class FourierFieldTexture(torch.nn.Module):
    """A neural field over normalised surface positions: Fourier features and a small MLP.

    It does not depend on the UV layout; it is baked into UV maps at the end.
    """

    def __init__(self, frequencies: int = 8, hidden: int = 64, layers: int = 3, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("bands", (2.0 ** torch.arange(frequencies, dtype=torch.float32)) * math.pi)
        dims = [3 + 6 * frequencies] + [hidden] * layers + [CHANNELS]
        linears = []
        for fan_in, fan_out in zip(dims[:-1], dims[1:]):
            linear = torch.nn.Linear(fan_in, fan_out)
            torch.nn.init.normal_(linear.weight, std=math.sqrt(2.0 / fan_in), generator=generator)
            torch.nn.init.zeros_(linear.bias)
            linears.append(linear)
        torch.nn.init.zeros_(linears[-1].weight)
        self.mlp = torch.nn.ModuleList(linears)
        self.register_buffer("bias", _init_bias())

    def forward(self, uv: torch.Tensor, position: torch.Tensor) -> SurfaceSample:
        """position: (..., 3) normalised world positions; uv is unused."""
        angles = position[..., None] * self.bands  # (..., 3, F)
        x = torch.cat([position, angles.sin().flatten(-2), angles.cos().flatten(-2)], dim=-1)
        for i, linear in enumerate(self.mlp):
            x = linear(x)
            if i < len(self.mlp) - 1:
                x = F.silu(x)
        return _to_sample(x + self.bias)


class ImageTexture(torch.nn.Module):
    """A fixed texture from images (e.g. baked maps or a source material), sampled bilinearly.

    albedo: (H, W, 3) linear; roughness, metallic: (H, W, 1); all in [0, 1], row 0 = v 1.
    """

    def __init__(self, albedo: torch.Tensor, roughness: torch.Tensor, metallic: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("image", torch.cat([albedo, roughness, metallic], dim=-1).permute(2, 0, 1)[None].float())

    @classmethod
    def from_maps(cls, maps: PBRMaps) -> "ImageTexture":
        return cls(*(torch.from_numpy(np.ascontiguousarray(a)) for a in (maps.albedo, maps.roughness, maps.metallic)))

    @classmethod
    def from_srgb(cls, image: np.ndarray, roughness: float = 0.6, metallic: float = 0.0) -> "ImageTexture":
        """A texture from an (H, W, 3) sRGB base colour image and constant roughness/metallic."""
        albedo = srgb_image_to_linear(image)
        ones = torch.ones(*albedo.shape[:2], 1)
        return cls(albedo, ones * roughness, ones * metallic)

    def forward(self, uv: torch.Tensor, position: torch.Tensor | None = None) -> SurfaceSample:
        grid = uv_to_grid(uv).to(self.image.dtype)
        values = F.grid_sample(self.image.expand(grid.shape[0], -1, -1, -1), grid, mode="bilinear",
                               padding_mode="border", align_corners=False).permute(0, 2, 3, 1)
        return SurfaceSample(values[..., :3], values[..., 3:4], values[..., 4:5])


def make_texture(kind: str, size: int, seed: int = 0) -> torch.nn.Module:
    """The learnable texture for `Config.texture` ("image" or "field")."""
    if kind == "field":
        return FourierFieldTexture(seed=seed)
    return UVPyramidTexture(size)


def srgb_image_to_linear(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) sRGB float image in [0, 1] -> linear torch tensor."""
    from .render.shading import srgb_to_linear

    return srgb_to_linear(torch.as_tensor(image, dtype=torch.float32))
