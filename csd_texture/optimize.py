"""The plain optimisation loop: random views -> render -> objective -> Adam step.

The objective is pluggable: CSD guidance by default, a photometric objective for texture
recovery benchmarks and tests.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Callable, Protocol

import torch

from .cameras import bounding_radius, random_cameras, view_bucket_index
from .config import Config
from .datatypes import CameraBatch, Lighting, PromptEmbeds, StepRecord
from .errors import OptimizationError
from .guidance.controlnet import control_images
from .guidance.csd import CSDGuidance
from .lighting import random_lighting
from .render.base import Rasterizer
from .render.views import RenderOutput, Surface, render_views

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ViewBatch:
    """The random views of one step: cameras, lighting and background colour (B, 3); `rendered`:
    what the loop rendered from them (depth and normals for a ControlNet), once rendered."""

    cameras: CameraBatch
    lighting: Lighting
    background: torch.Tensor
    rendered: RenderOutput | None = None


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
        control = self.guidance.control
        geometry = views.rendered
        control_image = (control_images(control.kind, geometry.depth, geometry.normal, geometry.mask)
                         if control is not None else None)
        out = self.guidance(images, view_index, self.embeds, self.config, progress, generator, self.use_negative,
                            self.noise_generator, control_image)
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

    A step whose loss or gradient is not finite (NaN/inf, e.g. a float16 overflow) is skipped:
    Adam's state stays clean, the step is marked `skipped` in the history and counted in one
    warning; OptimizationError stops the run as soon as most steps are skipped. Checking that is
    the loop's one wait for the device per step; losses stay on it until the end (`on_step` gets
    the step and the loss tensor and decides itself how often to read it)."""
    device = surface.vertices.device
    generator = torch.Generator().manual_seed(config.seed)
    radius = bounding_radius(surface.vertices)
    parameters = list(texture.parameters())
    optimizer = torch.optim.Adam(parameters, lr=config.learning_rate, betas=(0.9, 0.99), eps=1e-15)
    losses: list[torch.Tensor] = []
    records: list[tuple[int, float, float, bool]] = []
    skipped = 0
    start = time.perf_counter()
    for step in range(config.steps):
        progress = step / max(config.steps - 1, 1)
        views = sample_views(config, generator, radius, up_axis, device)
        rendered = render_views(surface, texture, views.cameras, views.lighting, rasterizer, views.background)
        views = replace(views, rendered=rendered)
        out = objective(rendered.image, views, progress, generator)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        finite = _all_finite(out.loss, parameters)
        if finite:
            optimizer.step()
        else:
            skipped += 1
            log.debug("step %d: non-finite loss or gradient, skipped", step)
            if skipped > config.steps // 2:
                raise OptimizationError(
                    f"{skipped} of {config.steps} steps had a non-finite loss or gradient (NaN/inf) by step {step}; "
                    "the texture cannot converge: try a lower learning_rate, another --seed or model, "
                    "or --device cpu (float32)")
        losses.append(out.loss.detach())
        records.append((out.timestep, out.negative_weight, time.perf_counter() - start, not finite))
        if on_step is not None:
            on_step(step, losses[-1])
    if skipped:
        log.warning("skipped %d of %d steps with a non-finite loss or gradient (NaN/inf); the texture was not "
                    "updated on those steps", skipped, config.steps)
    values = torch.stack(losses).float().cpu().tolist() if losses else []
    return [StepRecord(step, loss, t, w, elapsed, skip)
            for step, (loss, (t, w, elapsed, skip)) in enumerate(zip(values, records))]


def _all_finite(loss: torch.Tensor, parameters: list[torch.Tensor]) -> bool:
    """Whether the loss and every gradient are free of NaN and inf (one device sync)."""
    flags = [torch.isfinite(loss).all()] + [torch.isfinite(p.grad).all() for p in parameters if p.grad is not None]
    return bool(torch.stack(flags).all())
