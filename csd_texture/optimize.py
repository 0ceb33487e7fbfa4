"""The plain optimisation loop: random views -> render -> objective -> Adam step.

The objective is pluggable: CSD guidance by default, a photometric objective for texture
recovery benchmarks and tests.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from .cameras import bounding_radius, random_cameras, view_bucket_index
from .config import Config
from .datatypes import CameraBatch, Lighting, PromptEmbeds, StepRecord
from .guidance.csd import CSDGuidance
from .lighting import random_lighting
from .render.base import Rasterizer
from .render.views import Surface, render_views

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ViewBatch:
    """The random views of one step: cameras, lighting and background colour (B, 3)."""

    cameras: CameraBatch
    lighting: Lighting
    background: torch.Tensor


@dataclass(frozen=True)
class ObjectiveOutput:
    loss: torch.Tensor
    timestep: int = -1
    negative_weight: float = 0.0


class Objective(Protocol):
    def __call__(self, images: torch.Tensor, views: ViewBatch, progress: float,
                 generator: torch.Generator) -> ObjectiveOutput: ...


class CSDObjective:
    """Classifier Score Distillation towards the prompt (the default objective)."""

    def __init__(self, guidance: CSDGuidance, embeds: PromptEmbeds, config: Config) -> None:
        self.guidance, self.embeds, self.config = guidance, embeds, config
        self.use_negative = bool(config.negative_prompt.strip())
        self.noise_generator = torch.Generator(guidance.device).manual_seed(config.seed)

    def __call__(self, images: torch.Tensor, views: ViewBatch, progress: float,
                 generator: torch.Generator) -> ObjectiveOutput:
        view_index = view_bucket_index(views.cameras.elevation, views.cameras.azimuth)
        out = self.guidance(images, view_index, self.embeds, self.config, progress, generator, self.use_negative,
                            self.noise_generator)
        return ObjectiveOutput(out.loss, out.timestep, out.negative_weight)


class PhotometricObjective:
    """Mean squared error against renders of a reference texture from the same views."""

    def __init__(self, surface: Surface, reference: Callable, rasterizer: Rasterizer) -> None:
        self.surface, self.reference, self.rasterizer = surface, reference, rasterizer

    def __call__(self, images: torch.Tensor, views: ViewBatch, progress: float,
                 generator: torch.Generator) -> ObjectiveOutput:
        with torch.no_grad():
            target = render_views(self.surface, self.reference, views.cameras, views.lighting,
                                  self.rasterizer, views.background).image
        return ObjectiveOutput(torch.nn.functional.mse_loss(images, target))


def sample_views(config: Config, generator: torch.Generator, radius: float,
                 up_axis: tuple[float, float, float], device: torch.device) -> ViewBatch:
    """Random cameras, lighting and grey backgrounds for one step (drawn on the CPU generator
    so a seed gives the same views on every device)."""
    cameras = random_cameras(config.views_per_step, generator, config.render_size, config.elevation_range,
                             config.fov_range, radius, up_axis)
    lighting = random_lighting(cameras, generator, config.unlit_fraction)
    grey = 0.4 + 0.6 * torch.rand(config.views_per_step, 1, generator=generator)
    lighting = Lighting(*(t.to(device) for t in (lighting.direction, lighting.colour, lighting.ambient,
                                                  lighting.unlit)))
    return ViewBatch(cameras.to(device), lighting, grey.expand(-1, 3).to(device))


StepCallback = Callable[[int, torch.Tensor], None]


def optimize(texture: torch.nn.Module, surface: Surface, rasterizer: Rasterizer, objective: Objective,
             config: Config, up_axis: tuple[float, float, float] = (0.0, 1.0, 0.0),
             on_step: StepCallback | None = None) -> list[StepRecord]:
    """Run `config.steps` Adam steps on the texture's parameters; returns the per-step history.

    Nothing in the loop waits for the device: losses stay on it until the end (`on_step` gets the
    step and the loss tensor and decides itself how often to read it)."""
    device = surface.vertices.device
    generator = torch.Generator().manual_seed(config.seed)
    radius = bounding_radius(surface.vertices)
    optimizer = torch.optim.Adam(texture.parameters(), lr=config.learning_rate, betas=(0.9, 0.99), eps=1e-15)
    losses: list[torch.Tensor] = []
    records: list[tuple[int, float, float]] = []
    start = time.perf_counter()
    for step in range(config.steps):
        progress = step / max(config.steps - 1, 1)
        views = sample_views(config, generator, radius, up_axis, device)
        images = render_views(surface, texture, views.cameras, views.lighting, rasterizer, views.background).image
        out = objective(images, views, progress, generator)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.detach())
        records.append((out.timestep, out.negative_weight, time.perf_counter() - start))
        if on_step is not None:
            on_step(step, losses[-1])
    values = torch.stack(losses).float().cpu().tolist() if losses else []
    return [StepRecord(step, loss, t, w, elapsed) for step, (loss, (t, w, elapsed)) in enumerate(zip(values, records))]
