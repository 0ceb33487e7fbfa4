"""csd-texture: PBR textures for existing meshes with Classifier Score Distillation."""
from .api import load_guidance, texture_mesh
from .config import Config, Schedule, load_config, preset, save_config
from .datatypes import MeshData, PBRMaps, TextureResult
from .errors import CSDTextureError
from .version import __version__

__all__ = [
    "CSDTextureError",
    "Config",
    "MeshData",
    "PBRMaps",
    "Schedule",
    "TextureResult",
    "__version__",
    "load_config",
    "load_guidance",
    "preset",
    "save_config",
    "texture_mesh",
]
