"""Repaint only a region of an existing texture (`--edit` with `--region MASK.png`,
`--region-materials` or `--region-nodes`).

The region is a weight per texel of the source base colour image, (H, W) in [0, 1]: 0 keeps
the source texel exactly, 1 repaints it. A mask image is feathered inwards (a smoothstep over
a few texels from its border), so the repainted area fades into the kept one without a step;
a material/node selection is the UV footprint of its faces (grown into the empty gutter
around them), without feathering: the border of a material is already a seam.

During optimisation `RegionTexture` renders lerp(start, texture, weight), so the guidance sees
the final picture and gradients reach only the region; after the bake, `composite_region`
copies the source texels wherever the weight is 0, so they are bit-identical in the output.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .config import Config
from .datatypes import MeshData, PBRMaps
from .errors import ConfigError
from .texture import SurfaceSample, mip_sample

log = logging.getLogger(__name__)

FEATHER_FRACTION = 1 / 64  # feather width of a mask's border, as a fraction of the texture side ...
MIN_FEATHER = 3  # ... and at least this many texels
_GREY_MODES = {"1": 1.0, "L": 255.0, "I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I": 65535.0, "F": 1.0}


@dataclass(frozen=True)
class Region:
    """What an edit repaints: weight (H, W) float32 in [0, 1] on the source texture's texels
    (row 0 = v 1); record: how it was chosen, for the output's JSON record."""

    weight: np.ndarray
    record: dict[str, Any]


def edit_region(config: Config, mesh: MeshData, pad_texels: int = 16) -> Region | None:
    """The region `config` chooses on `mesh` (an --edit mesh with its base colour image), or None.
    ConfigError (one line) for a mask that is missing, not greyscale, of another size or empty,
    and for material/node names that match nothing (naming the available ones)."""
    if not (config.region or config.region_materials or config.region_nodes):
        return None
    height, width = mesh.base_color_image.shape[:2]
    if config.region:
        mask = read_mask(Path(config.region), (height, width))
    if height != width:  # the maps are square; the source's texels could not be kept one for one
        raise ConfigError(f"{mesh.name}: repainting a region needs a square base colour texture, this one is "
                          f"{width}x{height}; edit without a region, or resize the texture")
    if config.region:
        weight = feathered(mask, max(MIN_FEATHER, round(height * FEATHER_FRACTION)))
        record = {"mask": config.region, "sha256": hashlib.sha256(Path(config.region).read_bytes()).hexdigest()}
    else:
        by_node = bool(config.region_nodes)
        patterns = config.region_nodes or config.region_materials
        selected = selected_faces(mesh, patterns, 1 if by_node else 0)
        weight = face_region(mesh, selected, height, pad_texels)
        record = {"nodes" if by_node else "materials": list(patterns), "faces": int(selected.sum())}
    if not (weight > 0).any():
        raise ConfigError(f"{config.region or 'region'}: the region selects no texel of the texture; nothing to repaint")
    record["texels"] = int((weight > 0).sum())
    return Region(weight.astype(np.float32), record)


def read_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    """(H, W) float32 in [0, 1] from a greyscale image (white = repaint) of exactly `size` (H, W);
    RGB(A) images count as greyscale when every pixel is grey and opaque."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
    except FileNotFoundError:
        raise ConfigError(f"{path}: region mask not found") from None
    except (OSError, UnidentifiedImageError) as exc:
        raise ConfigError(f"{path}: region mask is not a readable image ({exc})") from None
    if image.size != (size[1], size[0]):
        raise ConfigError(f"{path}: region mask is {image.size[0]}x{image.size[1]} but the source texture is "
                          f"{size[1]}x{size[0]}; draw the mask at the texture's size")
    if image.mode in _GREY_MODES:
        return np.clip(np.asarray(image, dtype=np.float32) / _GREY_MODES[image.mode], 0.0, 1.0)
    rgba = np.asarray(image.convert("RGBA"))
    if (rgba[..., :3] != rgba[..., :1]).any():
        raise ConfigError(f"{path}: region mask is not a greyscale image (mode {image.mode} with coloured pixels); "
                          "save it as greyscale, white where to repaint")
    if (rgba[..., 3] != 255).any():
        raise ConfigError(f"{path}: region mask has transparent pixels; save it as an opaque greyscale image")
    return rgba[..., 0].astype(np.float32) / 255.0


def feathered(mask: np.ndarray, width: int) -> np.ndarray:
    """The mask faded in over `width` texels inside its border: mask * smoothstep(distance to the
    nearest 0 texel / width). Texels where the mask is 0 stay exactly 0."""
    from scipy.ndimage import distance_transform_edt

    distance = distance_transform_edt(mask > 0)  # texels to the nearest kept texel (0 on kept ones)
    ramp = np.clip((distance - 0.5) / width, 0.0, 1.0)
    return (mask * ramp * ramp * (3.0 - 2.0 * ramp)).astype(np.float32)


def selected_faces(mesh: MeshData, patterns: tuple[str, ...], field: int) -> np.ndarray:
    """(F,) bool: faces whose material (field 0) or node (field 1) name matches a glob of `patterns`;
    ConfigError naming the available names when a pattern matches none."""
    kind = ("material", "node")[field]
    labels = mesh.part_labels if mesh.face_parts is not None else ()
    names = sorted({label[field] for label in labels})
    missing = [p for p in patterns if not any(fnmatchcase(name, p) for name in names)]
    if missing:
        raise ConfigError(f"{mesh.name}: region {kind} pattern(s) {', '.join(map(repr, missing))} match no {kind}; "
                          f"{kind}s: {', '.join(names) or '(none)'}")
    chosen = np.array([any(fnmatchcase(label[field], p) for p in patterns) for label in labels])
    return chosen[mesh.face_parts]


def face_region(mesh: MeshData, selected: np.ndarray, size: int, pad_texels: int) -> np.ndarray:
    """(size, size) float32 0/1: texels whose centre lies in a selected face's UV triangle, grown by up to
    `pad_texels` rings into texels no other face covers (the gutter the bake pads)."""
    from .bake import uv_gbuffer
    from .render import get_rasterizer

    rasterizer = get_rasterizer("torch", "cpu")

    def coverage(faces: np.ndarray) -> torch.Tensor:
        if not len(faces):
            return torch.zeros(1, 1, size, size)
        part = dataclasses.replace(mesh, faces=faces, face_parts=None)
        return uv_gbuffer(part, size, rasterizer, "cpu").mask.permute(0, 3, 1, 2)

    chosen, others = coverage(mesh.faces[selected]), coverage(mesh.faces[~selected])
    shared = int(((chosen > 0) & (others > 0)).sum())
    if shared:
        log.warning(f"{mesh.name}: {shared} texel(s) of the region are also used by faces outside it (overlapping "
                    "UVs); they are repainted there too")
    free = others == 0
    for _ in range(pad_texels):
        chosen = torch.where(free, torch.maximum(chosen, F.max_pool2d(chosen, 3, 1, 1)), chosen)
    return chosen[0, 0].numpy().astype(np.float32)


class RegionTexture(torch.nn.Module):
    """Paints only inside an edit region: albedo, roughness and metallic are
    lerp(start, texture, weight), where start is a frozen copy of `texture` as it begins (the
    source's image) and weight the region sampled at the point's uv. Only `texture` has parameters."""

    def __init__(self, texture: torch.nn.Module, weight: np.ndarray) -> None:
        super().__init__()
        self.texture = texture
        device = next(texture.parameters()).device
        self.register_buffer("weight", torch.from_numpy(weight).to(device)[None, None])
        self._start = (copy.deepcopy(texture).requires_grad_(False),)  # a tuple: not a submodule, not optimised

    def forward(self, uv: torch.Tensor, position: torch.Tensor | None = None,
                footprint: torch.Tensor | None = None) -> SurfaceSample:
        new = self.texture(uv, position, footprint)
        with torch.no_grad():
            start = self._start[0](uv, position, footprint)
            weight = mip_sample([self.weight], uv, None)  # (..., 1)
        return SurfaceSample(*(s + weight * (n - s) for n, s in zip(new, start)))


def composite_region(maps: PBRMaps, source_srgb: np.ndarray, region: Region) -> PBRMaps:
    """The baked maps with the source's base colour wherever the region weight is 0, so those texels
    are bit-identical to the source once written as 8-bit sRGB. source_srgb: (H, W, 3) float32 in [0, 1]."""
    from .render.shading import srgb_to_linear

    if maps.albedo.shape[:2] != source_srgb.shape[:2]:
        raise ValueError(f"maps of {maps.albedo.shape[:2]} cannot take a region of {source_srgb.shape[:2]}")
    source = srgb_to_linear(torch.from_numpy(source_srgb)).numpy()
    keep = (region.weight <= 0)[..., None]
    return dataclasses.replace(maps, albedo=np.where(keep, source, maps.albedo).astype(np.float32))


__all__ = [
    "Region",
    "RegionTexture",
    "composite_region",
    "edit_region",
    "face_region",
    "feathered",
    "read_mask",
    "selected_faces",
]
