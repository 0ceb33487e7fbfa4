"""Colour space, BRDF shading and compositing. Images are (B, H, W, C) float, linear
unless the name says sRGB."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from kornia.color import linear_rgb_to_rgb, rgb_to_linear_rgb

from ..datatypes import Lighting
from ..lighting import ROUGHNESS_LEVELS, EnvironmentLighting, direction_to_grid

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


def shade_environment(albedo: torch.Tensor, roughness: torch.Tensor, metallic: torch.Tensor, normal: torch.Tensor,
                      view_dir: torch.Tensor, lighting: EnvironmentLighting) -> torch.Tensor:
    """Split-sum image-based lighting, as real-time glTF viewers shade (Karis 2013).

    Shapes as `shade`. diffuse = albedo (1 - metallic) irradiance(n); specular =
    prefiltered(reflect(-v, n), roughness) (F0 A + B), with (A, B) from Karis' analytic fit of the
    DFG lookup table ("EnvBRDFApprox", no table to ship); both times the view's intensity, then
    Khronos PBR Neutral tone mapping so highlights compress instead of clipping. Views with
    lighting.unlit[b] return albedo.

    Roughness gets its gradient through the lobe width only (which prefiltered level is read: how
    sharp the reflection is, what tells shiny from matte); (A, B) take the current roughness's
    value but pass it no gradient. Through (A, B) a rougher surface is only a dimmer one (single-
    scattering energy loss: A 0.83 -> 0.67 -> 0.51 at roughness 0.3, 0.6, 0.9 face-on), and the
    guidance's high-noise steps, which judge brightness rather than highlights, pushed roughness up
    through it for any prompt that wants a darker object, cancelling the lobe's signal. Measured
    (bench/material_gradient.py, pattern prior, sphere at roughness 0.6 and metallic 0.4, 200 views):
    d loss / d raw roughness for "a shiny metal ball" +0.091 +- 0.018 in all, of which the lobe
    +0.161 and (A, B) -0.070 (-0.34 at timesteps >= 600, from the face-on part, not the rim); through
    the CLI the metal ended at roughness 0.602 against 0.599 for "a matte clay ball" (now 0.497 against
    0.577). The photometric recovery loses a little (roughness MAE 0.035 -> 0.054, tests/test_recipe.py).
    """
    batch = albedo.shape[0]
    if lighting.index.shape != (batch,):
        raise ValueError(f"lighting has {tuple(lighting.index.shape)} views for {batch}; build one entry per view")
    envs = lighting.environments
    n = normal * torch.where((normal * view_dir).sum(-1, keepdim=True) < 0, -1.0, 1.0)
    n_v = (n * view_dir).sum(-1, keepdim=True).clamp(min=1e-4)
    reflected = 2 * n_v * n - view_dir
    rotation = lighting.rotation.to(albedo).view(batch, 1, 1, 3, 3)

    def env_grid(direction: torch.Tensor) -> torch.Tensor:
        return direction_to_grid(_off_pole_gradient(F.normalize((rotation @ direction[..., None])[..., 0], dim=-1,
                                                                eps=1e-8)))

    index = lighting.index.to(albedo.device)
    irradiance = F.grid_sample(envs.irradiance[index].to(albedo), env_grid(n), mode="bilinear",
                               padding_mode="border", align_corners=False).permute(0, 2, 3, 1)
    levels = torch.tensor(ROUGHNESS_LEVELS, device=albedo.device, dtype=albedo.dtype)
    rough = roughness.clamp(0.0, 1.0)
    level = torch.searchsorted(levels, rough.contiguous(), right=True).clamp(1, len(levels) - 1)
    low, high = levels[level - 1], levels[level]
    steps = len(levels) - 1
    depth = (((level - 1) + (rough - low) / (high - low)) / steps * 2 - 1) * steps / len(levels)  # texel centres
    grid3d = torch.cat([env_grid(reflected), depth], -1)[:, None]  # (B, 1, H, W, 3)
    prefiltered = F.grid_sample(envs.specular[index].to(albedo), grid3d, mode="bilinear", padding_mode="border",
                                align_corners=False)[:, :, 0].permute(0, 2, 3, 1)
    c0 = torch.tensor([-1.0, -0.0275, -0.572, 0.022], device=albedo.device, dtype=albedo.dtype)
    c1 = torch.tensor([1.0, 0.0425, 1.04, -0.04], device=albedo.device, dtype=albedo.dtype)
    r = rough.detach() * c0 + c1  # no gradient through the energy term (see the docstring)
    a004 = torch.minimum(r[..., 0:1] ** 2, torch.exp2(-9.28 * n_v)) * r[..., 0:1] + r[..., 1:2]
    scale, bias = a004 * -1.04 + r[..., 2:3], a004 * 1.04 + r[..., 3:4]
    f0 = DIELECTRIC_F0 + (albedo - DIELECTRIC_F0) * metallic
    lit = albedo * (1.0 - metallic) * irradiance + prefiltered * (f0 * scale + bias)
    lit = pbr_neutral_tonemap(lit * lighting.intensity.to(albedo).view(batch, 1, 1, 1))
    unlit = lighting.unlit.to(albedo.device).view(batch, 1, 1, 1)
    return torch.where(unlit, albedo, lit)


def _off_pole_gradient(direction: torch.Tensor) -> torch.Tensor:
    """(..., 3) unit directions, the same values, but no gradient through those within ~0.1 degree of
    the equirectangular map's poles (+-Y), where acos and atan2 have infinite or 0/0 derivatives
    (a normal-mapped flat floor faces exactly up). Shading normals only need a gradient with a normal map."""
    if not direction.requires_grad:
        return direction
    pole = direction[..., 1:2].abs() > 1.0 - 1e-6
    return torch.where(pole, direction.detach(), direction)


def pbr_neutral_tonemap(rgb: torch.Tensor) -> torch.Tensor:
    """Khronos PBR Neutral tone mapping (linear in, linear out in [0, 1]): base colours under
    unit light stay as they are, highlights desaturate and compress smoothly below 1."""
    start, desaturation = 0.8 - 0.04, 0.15
    x = rgb.amin(-1, keepdim=True)
    offset = torch.where(x < 0.08, x - 6.25 * x * x, torch.full_like(x, 0.04))
    rgb = rgb - offset
    peak = rgb.amax(-1, keepdim=True)
    d = 1.0 - start
    # The highlight branch only runs from the knee up; torch.where still back-propagates through it
    # everywhere, and at peak == start - d its division by zero turned 0 * inf into a NaN gradient.
    knee = peak.clamp(min=start)
    new_peak = 1.0 - d * d / (knee + d - start)
    compressed = rgb * (new_peak / knee)
    g = 1.0 - 1.0 / (desaturation * (knee - new_peak) + 1.0)
    compressed = compressed * (1.0 - g) + new_peak * g
    return torch.where(peak < start, rgb, compressed)


def composite(rgb: torch.Tensor, mask: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """rgb (B, H, W, 3) over background (B, 3) or (B, H, W, 3) with mask (B, H, W, 1) in [0, 1]."""
    if background.ndim == 2:
        background = background.view(background.shape[0], 1, 1, -1)
    if background.ndim != 4 or background.shape[-1] != 3:
        raise ValueError(f"background must be (B, 3) or (B, H, W, 3), got {tuple(background.shape)}")
    mask = mask.to(rgb.dtype)
    return rgb * mask + background.to(rgb) * (1.0 - mask)
