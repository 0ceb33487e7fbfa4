"""csd-texture: PBR textures for existing meshes with Classifier Score Distillation.

Public names are imported on first use, so `import csd_texture` stays light.
"""
from __future__ import annotations

import importlib
from typing import Any

from .version import __version__

_EXPORTS = {
    "texture_mesh": "api",
    "load_guidance": "api",
    "texture_folder": "batch",
    "texture_many": "batch",
    "Config": "config",
    "Schedule": "config",
    "load_config": "config",
    "preset": "config",
    "save_config": "config",
    "MeshData": "datatypes",
    "PBRMaps": "datatypes",
    "TextureResult": "api",
    "CSDTextureError": "errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'csd_texture' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
