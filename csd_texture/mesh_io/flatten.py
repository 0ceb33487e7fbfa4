"""A parsed trimesh scene -> world-space triangle parts (node transforms applied)."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import numpy as np
import trimesh

from ..errors import MeshValidationError

log = logging.getLogger(__name__)



@dataclass
class Part:
    """One triangle primitive in world space (float64)."""

    name: str
    vertices: np.ndarray
    faces: np.ndarray
    uv: np.ndarray | None
    image: object | None  # PIL image of the base colour texture
    material: str = ""  # the source material's name ("" when it has none)


NO_MATERIAL = "(no material)"  # the material name of faces without one
_UNNAMED_NODE = re.compile(r"\d+|geometry(_\d+)?")  # glTF node index, or trimesh's default


def flatten_scene(scene: trimesh.Scene, label: str, default_name: str) -> list[Part]:
    """Every triangle geometry instance of the scene, with node transforms applied."""
    parts, ignored = [], 0
    for node in scene.graph.nodes_geometry:
        transform, geometry_name = scene.graph[node]
        geometry = scene.geometry[geometry_name]
        if isinstance(geometry, trimesh.Trimesh) and len(geometry.faces):
            part = _world_part(geometry, np.asarray(transform, dtype=np.float64),
                               _part_name(scene, node, geometry_name, default_name))
            if part.material and part.name.endswith(f"_{part.material}"):  # trimesh's OBJ `<group>_<material>`
                part.name = part.name[: -len(part.material) - 1]
            parts.append(part)
        else:
            ignored += 1
    if ignored and parts:
        log.warning(f"{label}: ignoring {ignored} point/line geometr{'y' if ignored == 1 else 'ies'}; only triangles are textured")
    if not parts:
        if ignored:
            raise MeshValidationError(f"{label}: contains only points or lines (no triangle faces); nothing to texture")
        raise MeshValidationError(f"{label}: contains no faces; nothing to texture")
    return parts


def _part_name(scene: trimesh.Scene, node: str, geometry_name: str, default_name: str) -> str:
    """The source's name for a part: its node, else its mesh, else the file's stem.

    trimesh names a multi-primitive glTF node's children `<node>_<6 hex digits>`, unnamed glTF
    nodes by index and single meshes `geometry[_N]`."""
    parent = scene.graph.transforms.parents.get(node)
    if parent is not None and re.fullmatch(re.escape(parent) + r"_[0-9a-f]{6}", node):
        node = parent
    for name in (node, geometry_name):
        if not _UNNAMED_NODE.fullmatch(name):
            return name
    return default_name


def _world_part(mesh: trimesh.Trimesh, transform: np.ndarray, name: str) -> Part:
    """A part in world space; faces flipped under mirroring transforms to keep their facing."""
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    with np.errstate(invalid="ignore"):  # NaN vertices are dealt with later
        vertices = vertices @ transform[:3, :3].T + transform[:3, 3]
    faces = np.asarray(mesh.faces, dtype=np.int64)
    if np.linalg.det(transform[:3, :3]) < 0:
        faces = faces[:, ::-1]
    uv, image = None, None
    visual = mesh.visual
    material = str(getattr(getattr(visual, "material", None), "name", None) or "")
    if getattr(visual, "kind", None) == "texture" and visual.uv is not None:
        uv = np.asarray(visual.uv, dtype=np.float64)
        uv = uv if uv.shape == (len(vertices), 2) else None
        image = _base_color_source(getattr(visual, "material", None))
    return Part(name, vertices, faces, uv, image, material)


def _base_color_source(material: object) -> object | None:
    """The material's base colour texture (PIL), ignoring trimesh's 2x2 colour placeholders."""
    image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
    if image is None or not hasattr(image, "size") or (image.size[0] <= 2 and image.size[1] <= 2):
        return None
    return image
