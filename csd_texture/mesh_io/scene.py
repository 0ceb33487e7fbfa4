"""A glTF asset kept whole, and its flattening for the optimiser with the map back.

`SceneSource` holds the source glTF and its triangle primitives; `SceneUV` says, per source
primitive, which source vertex each of its (possibly split) new vertices comes from, its
new faces and its UVs. `flatten_for_optimiser` draws every node instance of every textured
primitive in the default pose (node transforms, default morph weights, skins at their
joints' default transforms) into one MeshData; an instanced mesh appears once per node
with the same UVs, so every instance gets one consistent texture. The writer
(`export.scene`) goes back from `SceneUV` to the source primitives.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

import numpy as np

from ..datatypes import MeshData
from ..errors import ConfigError
from .flatten import NO_MATERIAL
from .gltf import GltfSource
from .pose import posed_positions, world_matrices
from .repair import MERGE_QUANTUM, box, unique_rows, vertex_normals

log = logging.getLogger(__name__)

Key = tuple[int, int]  # (mesh index, primitive index)


@dataclass(frozen=True)
class SourcePrimitive:
    """A triangle primitive of the source: triangles (F, 3) int64 into its vertex_count vertices."""

    mesh: int
    index: int
    material: int | None
    triangles: np.ndarray
    vertex_count: int

    @property
    def key(self) -> Key:
        return (self.mesh, self.index)


@dataclass(frozen=True)
class SceneSource:
    """The source glTF, its drawn triangle primitives of textured materials, the nodes that
    draw them (node, mesh), and which materials get new maps (None: primitives without one)."""

    source: GltfSource
    primitives: tuple[SourcePrimitive, ...]
    instances: tuple[tuple[int, int], ...]
    textured: tuple[int | None, ...]
    untouched: tuple[int, ...]

    @property
    def document(self) -> dict:
        return self.source.document

    def material_name(self, material: int | None) -> str:
        return material_name(self.document, material)


@dataclass(frozen=True)
class PrimitiveUV:
    """New layout of one source primitive: vmapping (N,) int64 source vertex of each new vertex,
    faces (F, 3) int64 into the new vertices, uv (N, 2) float32 bottom-left in its group's
    [0, 1] map; remade False when the source vertices and UVs are kept as they are (then
    texcoord is the source TEXCOORD set the maps use); group: which map it uses."""

    vmapping: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    remade: bool
    group: int
    texcoord: int = 0


@dataclass(frozen=True)
class SceneUV:
    """The UV layout of a scene: per primitive, its PrimitiveUV; per group (one map each),
    its materials. The optimiser's atlas puts group k in tile (k % grid, k // grid)."""

    scene: SceneSource
    primitives: dict[Key, PrimitiveUV]
    groups: tuple[tuple[int | None, ...], ...]

    @property
    def grid(self) -> int:
        return int(np.ceil(np.sqrt(len(self.groups))))

    def atlas_uv(self, key: Key) -> np.ndarray:
        """(N, 2) float32 UVs of a primitive in the optimiser's atlas of grid x grid tiles."""
        layout = self.primitives[key]
        tile = np.array([layout.group % self.grid, layout.group // self.grid], np.float32)
        return ((layout.uv + tile) / self.grid).astype(np.float32)


def material_name(document: dict, material: int | None) -> str:
    """A material's name, `material_<index>` when unnamed, NO_MATERIAL for None."""
    if material is None:
        return NO_MATERIAL
    return (document.get("materials") or [])[material].get("name") or f"material_{material}"


def load_scene(path: str | Path, materials: tuple[str, ...] = (), skip_materials: tuple[str, ...] = ()) -> SceneSource:
    """Read a .gltf/.glb whole. `materials` / `skip_materials` are glob patterns on material
    names choosing which materials get new maps (default: all). ConfigError if none is left."""
    source = GltfSource.read(path)
    document = source.document
    instances = tuple((node, document["nodes"][node]["mesh"]) for node in _drawn_nodes(document)
                      if "mesh" in document["nodes"][node])
    drawn = {mesh for _, mesh in instances}
    primitives, used_materials = [], []
    for mesh_index in sorted(drawn):
        for index, primitive in enumerate(document["meshes"][mesh_index]["primitives"]):
            triangles = source.triangles(primitive)
            if triangles is None or not len(triangles):
                continue
            material = primitive.get("material")
            used_materials.append(material)
            count = document["accessors"][primitive["attributes"]["POSITION"]]["count"]
            primitives.append(SourcePrimitive(mesh_index, index, material, triangles, int(count)))
    gpu_instanced = [node for node, _ in instances
                     if "EXT_mesh_gpu_instancing" in (document["nodes"][node].get("extensions") or {})]
    if gpu_instanced:
        log.warning(f"{path}: EXT_mesh_gpu_instancing on node(s) {gpu_instanced} is kept, but the texture is"
                    " optimised on each node's own placement only")
    undrawn = [i for i in range(len(document.get("meshes") or [])) if i not in drawn]
    if undrawn:
        log.warning(f"{path}: mesh(es) {undrawn} are drawn by no node of the scene; kept, but not textured")
    candidates = list(dict.fromkeys(used_materials))
    textured = _select(document, candidates, materials, skip_materials, path)
    untouched = tuple(m for m in range(len(document.get("materials") or [])) if m not in textured)
    return SceneSource(source, tuple(p for p in primitives if p.material in textured), instances, textured, untouched)


def _drawn_nodes(document: dict) -> list[int]:
    """Nodes of the default scene (all root nodes when the file has no scene), depth first."""
    scenes = document.get("scenes") or []
    if scenes:
        roots = scenes[document.get("scene", 0)].get("nodes") or []
    else:
        children = {c for node in document.get("nodes") or [] for c in node.get("children") or []}
        roots = [i for i in range(len(document.get("nodes") or [])) if i not in children]
    order, stack = [], list(reversed(roots))
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(reversed(document["nodes"][node].get("children") or []))
    return order


def _select(document: dict, candidates: list[int | None], include: tuple[str, ...], exclude: tuple[str, ...],
            path: str | Path) -> tuple[int | None, ...]:
    """The candidate materials whose names match `include` (all when empty) and not `exclude`."""
    names = {m: material_name(document, m) for m in candidates}
    for pattern in (*include, *exclude):
        if not any(fnmatchcase(name, pattern) for name in names.values()):
            log.warning(f"{path}: material pattern {pattern!r} matches none of {sorted(names.values())}")
    chosen = tuple(m for m in candidates if (not include or any(fnmatchcase(names[m], p) for p in include))
                   and not any(fnmatchcase(names[m], p) for p in exclude))
    if not chosen:
        raise ConfigError(f"{path}: --materials/--skip-materials leave no material to texture "
                          f"(materials: {', '.join(sorted(names.values()))})")
    skipped = [names[m] for m in candidates if m not in chosen]
    if skipped:
        log.info(f"{path}: not texturing material(s) {', '.join(skipped)}; they are written unchanged")
    return chosen


def flatten_for_optimiser(layout: SceneUV, name: str, up: tuple[float, float, float]) -> MeshData:
    """Every node instance of every textured primitive, in the default pose, as one MeshData
    normalised into [-1, 1]^3 with the atlas UVs. Vertices follow (instance, primitive, new
    vertex) order; faces of mirrored instances are flipped to keep their facing."""
    scene = layout.scene
    document = scene.document
    worlds = world_matrices(document)
    by_mesh: dict[int, list[SourcePrimitive]] = {}
    for primitive in scene.primitives:
        by_mesh.setdefault(primitive.mesh, []).append(primitive)
    positions, faces, uvs, names, offset = [], [], [], [], 0
    labels: dict[tuple[str, str], int] = {}  # (material name, node name) -> part label
    face_parts = []
    for node, mesh in scene.instances:
        for primitive in by_mesh.get(mesh, []):
            source_primitive = document["meshes"][mesh]["primitives"][primitive.index]
            placed = layout.primitives[primitive.key]
            world = posed_positions(scene.source, node, source_primitive, worlds)[placed.vmapping]
            piece = placed.faces
            if "skin" not in document["nodes"][node] and np.linalg.det(worlds[node][:3, :3]) < 0:
                piece = piece[:, ::-1]
            positions.append(world)
            faces.append(piece + offset)
            uvs.append(layout.atlas_uv(primitive.key))
            offset += len(world)
            label = (scene.material_name(primitive.material), document["nodes"][node].get("name") or f"node_{node}")
            face_parts.append(np.full(len(piece), labels.setdefault(label, len(labels)), np.int32))
        names.append(document["nodes"][node].get("name") or f"node_{node}")
    vertices, faces_all = np.concatenate(positions), np.concatenate(faces)
    centre, half = box(vertices)
    normalised = (vertices - centre) / half
    _, groups, _ = unique_rows(np.round(normalised / MERGE_QUANTUM).astype(np.int64))
    to_source = np.eye(4)
    to_source[:3, :3] *= half
    to_source[:3, 3] = centre
    return MeshData(
        vertices=normalised.astype(np.float32),
        faces=faces_all.astype(np.int32),
        normals=vertex_normals(normalised, faces_all, groups, up),
        uv=np.concatenate(uvs),
        to_source=to_source,
        name=name,
        up_axis=up,
        part_names=tuple(dict.fromkeys(names)),
        face_parts=np.concatenate(face_parts),
        part_labels=tuple(labels),
    )
