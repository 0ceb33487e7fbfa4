"""One exception hierarchy for csd-texture.

Library code raises these with messages that name the file and say how to fix the
problem; the CLI turns them into one line and an exit code (`exit_code`).
"""
from __future__ import annotations


class CSDTextureError(Exception):
    """Base class for every error csd-texture raises on purpose."""

    exit_code = 1


class InputError(CSDTextureError):
    """Bad input from the user (file, option, value): exit code 2."""

    exit_code = 2


class MeshLoadError(InputError):
    """A mesh file cannot be read (missing, unsupported, corrupt, unsafe reference)."""


class MeshValidationError(InputError):
    """A mesh was read but cannot be textured (no faces, degenerate, non-finite)."""


class UnsafeReferenceError(MeshLoadError):
    """An asset references a path outside its folder or a remote URL."""


class ConfigError(InputError):
    """An option or config file value is invalid."""


class ModelLoadError(InputError):
    """The diffusion model cannot be found or loaded."""


class BackendUnavailableError(CSDTextureError):
    """A requested backend (device, rasterizer) cannot run on this machine."""

    exit_code = 2


class UnwrapError(CSDTextureError):
    """UV unwrapping failed (xatlas crashed or produced no usable atlas)."""


class ExportError(CSDTextureError):
    """Writing an output file failed."""


class OptimizationError(CSDTextureError):
    """The optimisation cannot go on (most steps had a non-finite loss or gradient)."""
