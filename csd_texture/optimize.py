"""The plain optimisation loop: random views -> render -> objective -> Adam step.

The objective is pluggable: CSD guidance by default, a photometric objective for texture
recovery benchmarks and tests.
"""
from __future__ import annotations

import logging
import math
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
from .guidance.regional import pixel_parts
from .lighting import Environments, EnvironmentLighting, bundled_environments, random_environment_lighting, random_lighting
from .render.base import Rasterizer
from .render.views import RenderOutput, Surface, render_views

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ViewBatch:
    """The random views of one step: cameras, lighting and background colour (B, 3); `rendered`:
    what the loop rendered from them (depth and normals for a ControlNet), once rendered."""

    cameras: CameraBatch
    lighting: Lighting | EnvironmentLighting
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
    """Classifier Score Distillation towards the prompt (the default objective). With part prompts,
    `embeds.cond` is (K, N_views, L, D) and `face_prompt` (F,) says which of the K paints each face."""

    def __init__(self, guidance: CSDGuidance, embeds: PromptEmbeds, config: Config,
                 face_prompt: torch.Tensor | None = None) -> None:
        self.guidance, self.embeds, self.config = guidance, embeds, config
        self.face_prompt = None if face_prompt is None else face_prompt.to(guidance.device, torch.long)
        self.use_negative = bool(config.negative_prompt.strip())
        self.noise_generator = torch.Generator(guidance.device).manual_seed(config.seed)

    def __call__(self, images: torch.Tensor, views: ViewBatch, progress: float,
                 generator: torch.Generator) -> ObjectiveOutput:
        view_index = view_bucket_index(views.cameras.elevation, views.cameras.azimuth)
        control = self.guidance.control
        geometry = views.rendered
        control_image = (control_images(control.kind, geometry.depth, geometry.normal, geometry.mask)
                         if control is not None else None)
        parts = (pixel_parts(geometry.triangle_id.to(self.face_prompt.device), self.face_prompt)
                 if self.face_prompt is not None and self.embeds.cond.ndim == 4 else None)
        out = self.guidance(images, view_index, self.embeds, self.config, progress, generator, self.use_negative,
                            self.noise_generator, control_image, parts)
        return ObjectiveOutput(out.loss, out.timestep, out.negative_weight)


class PhotometricObjective:
    """Squared error against renders of a reference texture from the same views, 0.5 * sum / B, so
    the image gradient is the per-pixel residual, of the order of CSD's per-pixel gradient (what
    `grad_clip` is set for; Adam itself does not care about the scale)."""

    def __init__(self, surface: Surface, reference: Callable, rasterizer: Rasterizer) -> None:
        self.surface, self.reference, self.rasterizer = surface, reference, rasterizer

    def __call__(self, images: torch.Tensor, views: ViewBatch, progress: float,
                 generator: torch.Generator) -> ObjectiveOutput:
        with torch.no_grad():
            target = render_views(self.surface, self.reference, views.cameras, views.lighting,
                                  self.rasterizer, views.background).image
        return ObjectiveOutput(0.5 * ((images - target) ** 2).sum() / images.shape[0])


def sample_views(config: Config, generator: torch.Generator, radius: float,
                 up_axis: tuple[float, float, float], device: torch.device,
                 environments: Environments | None = None) -> ViewBatch:
    """Random cameras, lighting and grey backgrounds for one step (drawn on the CPU generator
    so a seed gives the same views on every device). `environments` (on `device`) for
    `config.lighting == "environment"`: the bundled ones when not given."""
    cameras = random_cameras(config.views_per_step, generator, config.render_size, config.elevation_range,
                             config.fov_range, radius, up_axis, config.distance_range)
    if config.lighting == "environment":
        environments = environments if environments is not None else bundled_environments().to(device)
        light = random_environment_lighting(cameras, generator, config.unlit_fraction, environments, up_axis)
        lighting: Lighting | EnvironmentLighting = light.to(device)
    else:
        light = random_lighting(cameras, generator, config.unlit_fraction)
        lighting = Lighting(*(t.to(device) for t in (light.direction, light.colour, light.ambient, light.unlit)))
    grey = 0.4 + 0.6 * torch.rand(config.views_per_step, 1, generator=generator)
    return ViewBatch(cameras.to(device), lighting, grey.expand(-1, 3).to(device))


def learning_rate_factor(progress: float, final: float) -> float:
    """Cosine decay from 1 to `final` over progress 0 -> 1."""
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def ema_model(texture: torch.nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel | None:
    """An exponential moving average of the texture's parameters (None when decay is 0). The decay
    warms up as min(decay, (1 + n) / (10 + n)), so short runs are not stuck near the start."""
    if decay <= 0:
        return None

    def average(averaged: torch.Tensor, current: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        d = min(decay, (1.0 + float(count)) / (10.0 + float(count)))
        return averaged * d + current * (1.0 - d)

    return torch.optim.swa_utils.AveragedModel(texture, avg_fn=average, use_buffers=False)


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
    optimizer = adam(parameters, config.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step / max(config.steps - 1, 1), config.lr_decay))
    environments = bundled_environments().to(device) if config.lighting == "environment" else None
    averaged = ema_model(texture, config.ema_decay)
    losses: list[torch.Tensor] = []
    records: list[tuple[int, float, float, bool]] = []
    skipped = 0
    start = time.perf_counter()
    for step in range(config.steps):
        progress = step / max(config.steps - 1, 1)
        views = sample_views(config, generator, radius, up_axis, device, environments)
        rendered = render_views(surface, texture, views.cameras, views.lighting, rasterizer, views.background)
        views = replace(views, rendered=rendered)
        out = objective(rendered.image, views, progress, generator)
        loss = out.loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        finite = _all_finite(loss, parameters)
        if finite:
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(parameters, config.grad_clip)
            optimizer.step()
            # The material prior is decoupled, as AdamW's weight decay: a pull towards the prior whose
            # strength does not depend on the objective's gradient scale (CSD, photometric, any model).
            if config.material_prior > 0 and hasattr(texture, "decay_materials"):
                texture.decay_materials(1.0 - optimizer.param_groups[0]["lr"] * config.material_prior)
            if averaged is not None:
                averaged.update_parameters(texture)
        else:
            skipped += 1
            log.debug("step %d: non-finite loss or gradient, skipped", step)
            if skipped > config.steps // 2:
                raise OptimizationError(
                    f"{skipped} of {config.steps} steps had a non-finite loss or gradient (NaN/inf) by step {step}; "
                    "the texture cannot converge: try a lower learning_rate, another --seed or model, "
                    "or --device cpu (float32)")
        schedule.step()
        losses.append(out.loss.detach())
        records.append((out.timestep, out.negative_weight, time.perf_counter() - start, not finite))
        if on_step is not None:
            on_step(step, losses[-1])
    if averaged is not None and config.steps > 0:
        with torch.no_grad():  # the export is the averaged texture
            for mine, mean in zip(parameters, averaged.module.parameters()):
                mine.copy_(mean)
    if skipped:
        log.warning("skipped %d of %d steps with a non-finite loss or gradient (NaN/inf); the texture was not "
                    "updated on those steps", skipped, config.steps)
    values = torch.stack(losses).float().cpu().tolist() if losses else []
    return [StepRecord(step, loss, t, w, elapsed, skip)
            for step, (loss, (t, w, elapsed, skip)) in enumerate(zip(values, records))]


def adam(parameters: list[torch.Tensor], learning_rate: float) -> torch.optim.Adam:
    """Adam, fused where this torch has the fused kernel for the device (5x faster on CPU for the
    hybrid texture's 1.5M parameters; torch >= 2.4), plain otherwise."""
    try:
        return torch.optim.Adam(parameters, lr=learning_rate, betas=(0.9, 0.99), eps=1e-15, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(parameters, lr=learning_rate, betas=(0.9, 0.99), eps=1e-15)


def _all_finite(loss: torch.Tensor, parameters: list[torch.Tensor]) -> bool:
    """Whether the loss and every gradient are free of NaN and inf (one device sync)."""
    flags = [torch.isfinite(loss).all()] + [torch.isfinite(p.grad).all() for p in parameters if p.grad is not None]
    return bool(torch.stack(flags).all())
