"""Lighting for each view: image-based light from HDR environment maps (the default, as glTF
viewers light a model), or the old directional light plus ambient; in both, some views show
plain albedo so the albedo is learned without baked-in shading.

Environment maps are equirectangular, linear radiance, +Y up, row 0 = straight up, u = 0.5
looking down -Z. `Environments` holds them prefiltered for split-sum shading
(render/shading.py): GGX-prefiltered radiance at ROUGHNESS_LEVELS and cosine-convolved
irradiance, both normalised so each map's mean irradiance is 1.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .datatypes import CameraBatch, Lighting

HDRI_DIR = Path(__file__).resolve().parent / "data" / "hdri"
ROUGHNESS_LEVELS = (0.0, 0.2, 0.35, 0.5, 0.7, 1.0)  # prefiltered specular levels (interpolated between)
PREFILTER_SIZE = (32, 64)  # (H, W) of the prefiltered maps
INTENSITY_RANGE = (0.6, 1.6)
PREVIEW_ENVIRONMENT = "studio"  # random per-view scale of the environment


@dataclass(frozen=True)
class Environments:
    """E prefiltered environments. specular: (E, 3, R, H, W) radiance prefiltered by GGX lobes of
    roughness ROUGHNESS_LEVELS; irradiance: (E, 3, H, W) cosine-convolved radiance / pi (what a
    white Lambertian surface facing that way reflects); names: E names."""

    specular: torch.Tensor
    irradiance: torch.Tensor
    names: tuple[str, ...]

    def to(self, device: torch.device | str) -> "Environments":
        return Environments(self.specular.to(device), self.irradiance.to(device), self.names)


@dataclass(frozen=True)
class EnvironmentLighting:
    """Per-view image-based light. index: (B,) long environment per view; rotation: (B, 3, 3)
    world -> environment directions; intensity: (B, 1); unlit: (B,) bool views of plain albedo."""

    environments: Environments
    index: torch.Tensor
    rotation: torch.Tensor
    intensity: torch.Tensor
    unlit: torch.Tensor

    def to(self, device: torch.device | str) -> "EnvironmentLighting":
        return EnvironmentLighting(self.environments.to(device), self.index.to(device), self.rotation.to(device),
                                   self.intensity.to(device), self.unlit.to(device))


def equirect_directions(height: int, width: int) -> torch.Tensor:
    """(H, W, 3) unit directions at texel centres (row 0 = +Y, u = 0.5 towards -Z)."""
    theta = (torch.arange(height, dtype=torch.float64) + 0.5) / height * math.pi
    phi = ((torch.arange(width, dtype=torch.float64) + 0.5) / width - 0.5) * 2 * math.pi
    theta, phi = torch.meshgrid(theta, phi, indexing="ij")
    return torch.stack([theta.sin() * phi.sin(), theta.cos(), -theta.sin() * phi.cos()], -1)


def direction_to_grid(direction: torch.Tensor) -> torch.Tensor:
    """(..., 3) unit directions -> (..., 2) grid_sample coordinates of an equirectangular map."""
    x, y, z = direction.unbind(-1)
    u = torch.atan2(x, -z) / math.pi  # [-1, 1]
    v = torch.acos(y.clamp(-1.0, 1.0)) / math.pi * 2 - 1
    return torch.stack([u, v], -1)


def prefilter(radiance: torch.Tensor, size: tuple[int, int] = PREFILTER_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W, 3) linear radiance -> specular (3, R, h, w) and irradiance (3, h, w), by brute-force
    integration over every source texel (maps are small: 128x64 -> 64x32 is one matmul per level).
    Specular uses Karis' split-sum assumption N = V = R with weights D_GGX(n.h) max(n.l, 0) dw."""
    height, width = radiance.shape[:2]
    source = equirect_directions(height, width).reshape(-1, 3)
    solid_angle = (torch.sin((torch.arange(height, dtype=torch.float64) + 0.5) / height * math.pi)
                   * (math.pi / height) * (2 * math.pi / width))[:, None].expand(height, width).reshape(-1)
    target = equirect_directions(*size).reshape(-1, 3)
    values = radiance.reshape(-1, 3).float()
    source, target, solid_angle = source.float(), target.float(), solid_angle.float()
    cos = (target @ source.T)  # (T, S)
    n_l = cos.clamp(min=0.0)
    irradiance = (n_l * solid_angle) @ values / math.pi
    levels = []
    for roughness in ROUGHNESS_LEVELS:
        alpha2 = max(roughness, 0.02) ** 4
        n_h2 = (1 + cos) / 2  # cos^2 of the half angle between target and source
        d = alpha2 / (math.pi * (n_h2 * (alpha2 - 1) + 1) ** 2)
        weight = d * n_l * solid_angle
        levels.append(weight @ values / weight.sum(-1, keepdim=True).clamp(min=1e-30))
    h, w = size
    specular = torch.stack(levels).reshape(len(ROUGHNESS_LEVELS), h, w, 3).permute(3, 0, 1, 2)
    return specular.float(), irradiance.reshape(h, w, 3).permute(2, 0, 1).float()


def environments_from_radiance(maps: dict[str, np.ndarray]) -> Environments:
    """Prefilter named (H, W, 3) radiance maps (slow: seconds per 128x64 map; the bundled maps are
    stored prefiltered), each scaled to mean irradiance 1."""
    prefiltered = {name: prefilter(torch.as_tensor(np.asarray(radiance, np.float32)))
                   for name, radiance in maps.items()}
    return _normalised(prefiltered)


def _normalised(prefiltered: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> Environments:
    speculars, irradiances = [], []
    for specular, irradiance in prefiltered.values():
        scale = 1.0 / max(float(irradiance.mean()), 1e-6)
        speculars.append(specular.float() * scale)
        irradiances.append(irradiance.float() * scale)
    return Environments(torch.stack(speculars), torch.stack(irradiances), tuple(prefiltered))


def save_environment(path: Path, radiance: np.ndarray) -> None:
    """Write an (H, W, 3) linear radiance map prefiltered, float16, as `bundled_environments` reads it:
    specular (3, R, h, w), irradiance (3, h, w), radiance (H, W, 3) for reference."""
    specular, irradiance = prefilter(torch.as_tensor(np.asarray(radiance, np.float32)))
    np.savez_compressed(path, specular=specular.numpy().astype(np.float16),
                        irradiance=irradiance.numpy().astype(np.float16),
                        radiance=np.asarray(radiance, np.float16))


@functools.lru_cache(maxsize=4)
def bundled_environments(names: tuple[str, ...] | None = None) -> Environments:
    """The prefiltered environments shipped in csd_texture/data/hdri (all, or those `names`).
    Falls back to a procedural studio (prefiltered here, at low resolution) when none is installed."""
    prefiltered = {}
    for file in sorted(HDRI_DIR.glob("*.npz")):
        if names is None or file.stem in names:
            with np.load(file) as data:
                prefiltered[file.stem] = (torch.from_numpy(data["specular"].astype(np.float32)),
                                          torch.from_numpy(data["irradiance"].astype(np.float32)))
    if not prefiltered:
        return environments_from_radiance({"procedural-studio": procedural_studio(32, 64)})
    return _normalised(prefiltered)


def procedural_studio(height: int = 64, width: int = 128) -> np.ndarray:
    """(H, W, 3) a soft-box studio: bright key and fill panels, a dim floor, a grey horizon."""
    d = equirect_directions(height, width).float()
    sky = 0.4 + 0.4 * d[..., 1:2].clamp(min=0)
    key = 12.0 * (d @ F.normalize(torch.tensor([0.6, 0.7, 0.4]), dim=0)).clamp(min=0).pow(40)[..., None]
    fill = 4.0 * (d @ F.normalize(torch.tensor([-0.7, 0.3, 0.5]), dim=0)).clamp(min=0).pow(20)[..., None]
    floor = torch.where(d[..., 1:2] < 0, 0.15, 1.0)
    return ((sky + key + fill) * floor).expand(-1, -1, 3).numpy()


def environment_rotation(azimuth: torch.Tensor, up_axis: tuple[float, float, float]) -> torch.Tensor:
    """(B, 3, 3) world -> environment: the environment's +Y along the mesh's up axis, turned by
    `azimuth` (B,) radians about it."""
    from .cameras import up_front_frame

    up, front, right = up_front_frame(up_axis)
    world_to_frame = torch.stack([right, up, front])  # rows: env x, y, z axes in world
    c, s = azimuth.cos(), azimuth.sin()
    zero, one = torch.zeros_like(c), torch.ones_like(c)
    spin = torch.stack([torch.stack([c, zero, s], -1), torch.stack([zero, one, zero], -1),
                        torch.stack([-s, zero, c], -1)], -2)
    return spin @ world_to_frame


def random_environment_lighting(cameras: CameraBatch, generator: torch.Generator, unlit_fraction: float,
                                environments: Environments,
                                up_axis: tuple[float, float, float] = (0.0, 1.0, 0.0)) -> EnvironmentLighting:
    """A random environment, rotation about the up axis and intensity per view; some views unlit."""
    batch = cameras.batch_size
    index = torch.randint(0, len(environments.names), (batch,), generator=generator)
    azimuth = torch.rand(batch, generator=generator) * 2 * math.pi
    low, high = INTENSITY_RANGE
    intensity = low * (high / low) ** torch.rand(batch, 1, generator=generator)
    unlit = torch.rand(batch, generator=generator) < unlit_fraction
    return EnvironmentLighting(environments, index, environment_rotation(azimuth, up_axis), intensity, unlit)


def fixed_environment_lighting(cameras: CameraBatch, up_axis: tuple[float, float, float] = (0.0, 1.0, 0.0),
                               unlit: bool = False, environments: Environments | None = None) -> EnvironmentLighting:
    """The PREVIEW_ENVIRONMENT (or the first) environment, fixed to the world (previews, turntables,
    benches)."""
    environments = environments if environments is not None else bundled_environments()
    batch = cameras.batch_size
    names = environments.names
    index = names.index(PREVIEW_ENVIRONMENT) if PREVIEW_ENVIRONMENT in names else 0
    return EnvironmentLighting(
        environments, torch.full((batch,), index, dtype=torch.long),
        environment_rotation(torch.zeros(batch), up_axis), torch.ones(batch, 1),
        torch.full((batch,), unlit, dtype=torch.bool))


def random_lighting(cameras: CameraBatch, generator: torch.Generator, unlit_fraction: float) -> Lighting:
    """Old recipe: light from a random direction within about 60 degrees of the camera, random strength."""
    batch = cameras.batch_size
    towards_camera = torch.nn.functional.normalize(cameras.position, dim=-1)
    jitter = torch.randn(batch, 3, generator=generator) * 0.6
    direction = torch.nn.functional.normalize(towards_camera + jitter, dim=-1)
    strength = 0.6 + 0.6 * torch.rand(batch, 1, generator=generator)
    ambient = 0.15 + 0.25 * torch.rand(batch, 1, generator=generator)
    unlit = torch.rand(batch, generator=generator) < unlit_fraction
    return Lighting(
        direction=direction,
        colour=strength.expand(batch, 3).clone(),
        ambient=ambient.expand(batch, 3).clone(),
        unlit=unlit,
    )


def fixed_lighting(cameras: CameraBatch, unlit: bool = False) -> Lighting:
    """A neutral headlight with some ambient light (old previews, tests)."""
    batch = cameras.batch_size
    return Lighting(
        direction=torch.nn.functional.normalize(cameras.position, dim=-1),
        colour=torch.full((batch, 3), 0.8),
        ambient=torch.full((batch, 3), 0.3),
        unlit=torch.full((batch,), unlit, dtype=torch.bool),
    )
