"""MeshData -> world-space arrays ready to write (both writers use them)."""
from __future__ import annotations

import dataclasses
import logging

import numpy as np

from ..datatypes import MeshData
from ..errors import ExportError
from ..mesh_io.flatten import NO_MATERIAL

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Geometry:
    """World-space arrays ready to write. world: (V, 3) float64 positions; centre: (3,)
    float64 bounding-box centre; normals: (V, 3) float32 unit; uv: (V, 2) float32
    bottom-left origin; faces: (F, 3) uint32, wound counter-clockwise in world space;
    tangents: (V, 4) float32 (unit xyz orthogonal to the normal, w +-1; glTF's TANGENT) or None."""

    world: np.ndarray
    centre: np.ndarray
    normals: np.ndarray
    uv: np.ndarray
    faces: np.ndarray
    tangents: np.ndarray | None = None

    def offsets(self) -> np.ndarray:
        """(V, 3) float32 positions relative to the centre (what glTF stores)."""
        return (self.world - self.centre).astype(np.float32)


def unit_normals(normals: np.ndarray, name: str) -> np.ndarray:
    """Renormalise (V, 3) normals; zero or non-finite ones (degenerate faces, stray
    vertices) become +Y, since glTF requires unit NORMAL vectors."""
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    bad = ~(np.isfinite(length) & (length > 1e-12))[:, 0]
    if bad.any():
        logger.warning("mesh '%s': %d zero or invalid normals written as +Y", name, int(bad.sum()))
    return np.where(bad[:, None], [0.0, 1.0, 0.0], normals / np.where(bad[:, None], 1.0, length))


def world_geometry(mesh: MeshData, with_tangents: bool = False) -> Geometry:
    """Transform `mesh` to its source world space; normals by the inverse transpose. With
    `with_tangents`, the tangents the renderer used (render.tangents) carried along: xyz by the
    transform, w flipped by a mirroring one."""
    if mesh.uv is None:
        raise ExportError(f"mesh '{mesh.name}' has no UVs; unwrap it (uv stage) before exporting")
    world = mesh.world_vertices()
    if not np.all(np.isfinite(world)):
        raise ExportError(f"mesh '{mesh.name}' has non-finite positions after to_source")
    if not np.all(np.isfinite(mesh.uv)):
        raise ExportError(f"mesh '{mesh.name}' has NaN or infinite UVs; re-run the unwrap")
    linear = np.asarray(mesh.to_source, np.float64)[:3, :3]
    normals = unit_normals(np.asarray(mesh.normals, np.float64) @ np.linalg.inv(linear), mesh.name)
    faces = np.asarray(mesh.faces, np.int64)
    if np.linalg.det(linear) < 0:  # a mirroring transform flips the winding
        faces = faces[:, ::-1]
    return Geometry(
        world=world,
        centre=(world.min(axis=0) + world.max(axis=0)) / 2.0,
        normals=normals.astype(np.float32),
        uv=np.asarray(mesh.uv, np.float32),
        faces=np.ascontiguousarray(faces, dtype=np.uint32),
        tangents=world_tangents(mesh, linear, normals) if with_tangents else None,
    )


def world_tangents(mesh: MeshData, linear: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """(V, 4) float32 tangents of `mesh` in world space: the renderer's tangents (normalised space)
    through the (3, 3) `linear` part of to_source, made orthogonal to the world `normals` (V, 3)
    and unit; w flips where `linear` mirrors."""
    from ..render.tangents import vertex_tangents

    local = vertex_tangents(mesh.vertices, mesh.faces, mesh.normals, mesh.uv).astype(np.float64)
    tangent = local[:, :3] @ linear.T
    tangent -= normals * (tangent * normals).sum(1, keepdims=True)
    length = np.linalg.norm(tangent, axis=1, keepdims=True)
    fallback = np.cross(normals, np.where(np.abs(normals[:, :1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]]))
    fallback /= np.maximum(np.linalg.norm(fallback, axis=1, keepdims=True), 1e-20)
    tangent = np.where(length > 1e-12, tangent / np.maximum(length, 1e-12), fallback)
    w = local[:, 3:] * (-1.0 if np.linalg.det(linear) < 0 else 1.0)
    return np.concatenate([tangent, w], 1).astype(np.float32)


def face_groups(mesh: MeshData) -> list[tuple[str, str, np.ndarray]]:
    """(material name, group name, face indices) per source part, in the source's order
    (`part_labels`); one group (the mesh's own names) when the mesh does not know its parts. Faces
    without a source material get `<mesh>_material`."""
    default = f"{mesh.name}_material"
    if mesh.face_parts is None or not mesh.part_labels:
        return [(default, mesh.name, np.arange(mesh.num_faces))]
    if len(mesh.face_parts) != mesh.num_faces:
        logger.warning("mesh '%s': face_parts has %d entries for %d faces; writing one material", mesh.name,
                       len(mesh.face_parts), mesh.num_faces)
        return [(default, mesh.name, np.arange(mesh.num_faces))]
    parts = np.asarray(mesh.face_parts)
    groups = []
    for label in np.unique(parts).tolist():
        material, node = mesh.part_labels[label]
        groups.append((default if material == NO_MATERIAL else material, node, np.flatnonzero(parts == label)))
    return groups
