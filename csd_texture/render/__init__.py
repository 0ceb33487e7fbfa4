"""Rendering: visibility backends (torch, nvdiffrast), shared interpolation and shading.

The protocol and input checks live in `base` (the backends import only that); the backend
choice (`get_rasterizer`) lives here, above the backends, so no module imports in a circle.
"""
from __future__ import annotations

import logging

import torch

from ..errors import BackendUnavailableError, ConfigError
from .base import Rasterizer, check_rasterize_inputs, interpolate
from .shading import composite, linear_to_srgb, shade, srgb_to_linear
from .torch_rasterizer import TorchRasterizer

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "nvdiffrast")


def get_rasterizer(name: str = "auto", device: torch.device | str = "cpu") -> Rasterizer:
    """Return the backend called `name` ("auto", "torch" or "nvdiffrast") for `device`.

    "auto" picks nvdiffrast on a CUDA device when it runs there, else torch, and logs
    why. Asking for "nvdiffrast" where it cannot run raises BackendUnavailableError.
    Either way the returned rasterizer's `device` is `device`.
    """
    if name not in BACKENDS:
        raise ConfigError(f"unknown renderer {name!r}; choose one of {', '.join(BACKENDS)}")
    device = torch.device(device)
    if name == "torch":
        return TorchRasterizer(device=device)
    if name == "nvdiffrast":
        return _nvdiffrast(device)
    if device.type != "cuda":
        logger.info("rasterizer: torch (device %s is not CUDA)", device)
        return TorchRasterizer(device=device)
    try:
        rasterizer = _nvdiffrast(device)
    except BackendUnavailableError as exc:
        logger.info("rasterizer: torch (nvdiffrast unavailable: %s)", exc)
        return TorchRasterizer(device=device)
    logger.info("rasterizer: nvdiffrast on %s", device)
    return rasterizer


def _nvdiffrast(device: torch.device) -> Rasterizer:
    from .nvdiffrast_rasterizer import NvdiffrastRasterizer  # lazy: imports nvdiffrast

    return NvdiffrastRasterizer(device)


__all__ = [
    "BACKENDS",
    "Rasterizer",
    "TorchRasterizer",
    "check_rasterize_inputs",
    "composite",
    "get_rasterizer",
    "interpolate",
    "linear_to_srgb",
    "shade",
    "srgb_to_linear",
]
