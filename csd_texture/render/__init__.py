"""Rendering: visibility backends (torch, nvdiffrast), shared interpolation and shading."""
from .rasterizer import Rasterizer, get_rasterizer, interpolate
from .shading import composite, linear_to_srgb, shade, srgb_to_linear
from .torch_rasterizer import TorchRasterizer

__all__ = [
    "Rasterizer",
    "TorchRasterizer",
    "composite",
    "get_rasterizer",
    "interpolate",
    "linear_to_srgb",
    "shade",
    "srgb_to_linear",
]
