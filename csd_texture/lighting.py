"""Random lighting for each optimisation view: a directional light near the camera, ambient
light, and some views of plain albedo so the albedo is learned without baked-in shading."""
from __future__ import annotations

import torch

from .datatypes import CameraBatch, Lighting


def random_lighting(cameras: CameraBatch, generator: torch.Generator, unlit_fraction: float) -> Lighting:
    """Light from a random direction within about 60 degrees of the camera, random strength."""
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
    """A neutral headlight with some ambient light (previews, tests)."""
    batch = cameras.batch_size
    return Lighting(
        direction=torch.nn.functional.normalize(cameras.position, dim=-1),
        colour=torch.full((batch, 3), 0.8),
        ambient=torch.full((batch, 3), 0.3),
        unlit=torch.full((batch,), unlit, dtype=torch.bool),
    )
