"""Colour space, BRDF shading and compositing. Images are (B, H, W, C) float, linear
unless the name says sRGB."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from kornia.color import linear_rgb_to_rgb, rgb_to_linear_rgb

from ..datatypes import Lighting

MIN_ROUGHNESS = 0.04  # keeps the GGX lobe finite
DIELECTRIC_F0 = 0.04


def linear_to_srgb(rgb: torch.Tensor) -> torch.Tensor:
    """(..., 3) linear RGB -> sRGB, both in [0, 1] (input clamped first); finite gradients."""
    return _channels_last(linear_rgb_to_rgb, rgb.clamp(0.0, 1.0))


def srgb_to_linear(rgb: torch.Tensor) -> torch.Tensor:
    """(..., 3) sRGB -> linear RGB, both in [0, 1] (input clamped first); finite gradients."""
    return _channels_last(rgb_to_linear_rgb, rgb.clamp(0.0, 1.0))


def _channels_last(op, rgb: torch.Tensor) -> torch.Tensor:
    if rgb.shape[-1] != 3:
        raise ValueError(f"expected (..., 3) RGB, got {tuple(rgb.shape)}")
    return op(rgb[..., None, None])[..., 0, 0]  # kornia wants (*, 3, H, W)


def shade(
    albedo: torch.Tensor,
    roughness: torch.Tensor,
    metallic: torch.Tensor,
    normal: torch.Tensor,
    view_dir: torch.Tensor,
    lighting: Lighting,
) -> torch.Tensor:
    """Lambert + GGX (Cook-Torrance) under one directional light plus ambient.

    albedo (B, H, W, 3) linear; roughness, metallic (B, H, W, 1); normal, view_dir
    (B, H, W, 3) unit, view_dir pointing to the camera. Returns (B, H, W, 3) linear:
    (albedo * (1 - metallic) + pi * D G F / (4 n.l n.v)) * colour * max(n.l, 0)
    + ambient * albedo, with F0 = lerp(0.04, albedo, metallic). Two-sided: normals facing
    away from the viewer are flipped. Views with lighting.unlit[b] return albedo.
    """
    if albedo.ndim != 4 or albedo.shape[-1] != 3:
        raise ValueError(f"albedo must be (B, H, W, 3), got {tuple(albedo.shape)}")
    batch = albedo.shape[0]
    if lighting.direction.shape != (batch, 3):
        raise ValueError(
            f"lighting has {tuple(lighting.direction.shape)} directions for {batch} views; "
            "build one Lighting entry per view"
        )

    def per_view(t: torch.Tensor) -> torch.Tensor:
        return t.to(albedo).view(batch, 1, 1, -1)

    light = F.normalize(per_view(lighting.direction), dim=-1)
    n = normal * torch.where((normal * view_dir).sum(-1, keepdim=True) < 0, -1.0, 1.0)
    h = F.normalize(light + view_dir, dim=-1)
    n_l = (n * light).sum(-1, keepdim=True).clamp(min=0.0)
    n_v = (n * view_dir).sum(-1, keepdim=True).clamp(min=1e-4)
    n_h = (n * h).sum(-1, keepdim=True).clamp(min=0.0)
    v_h = (view_dir * h).sum(-1, keepdim=True).clamp(min=0.0)

    rough = roughness.clamp(MIN_ROUGHNESS, 1.0)
    alpha2 = rough.pow(4)  # alpha = roughness^2
    distribution = alpha2 / (math.pi * (n_h * n_h * (alpha2 - 1.0) + 1.0).pow(2))
    k = (rough + 1.0).pow(2) / 8.0
    geometry = (n_l / (n_l * (1 - k) + k)) * (n_v / (n_v * (1 - k) + k))
    f0 = DIELECTRIC_F0 + (albedo - DIELECTRIC_F0) * metallic
    fresnel = f0 + (1.0 - f0) * (1.0 - v_h).pow(5)
    specular = math.pi * distribution * geometry * fresnel / (4.0 * n_l * n_v + 1e-4)

    diffuse = albedo * (1.0 - metallic)
    lit = (diffuse + specular) * per_view(lighting.colour) * n_l
    lit = lit + per_view(lighting.ambient) * albedo
    unlit = lighting.unlit.to(albedo.device).view(batch, 1, 1, 1)
    return torch.where(unlit, albedo, lit)


def composite(rgb: torch.Tensor, mask: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """rgb (B, H, W, 3) over background (B, 3) or (B, H, W, 3) with mask (B, H, W, 1) in [0, 1]."""
    if background.ndim == 2:
        background = background.view(background.shape[0], 1, 1, -1)
    if background.ndim != 4 or background.shape[-1] != 3:
        raise ValueError(f"background must be (B, 3) or (B, H, W, 3), got {tuple(background.shape)}")
    mask = mask.to(rgb.dtype)
    return rgb * mask + background.to(rgb) * (1.0 - mask)
