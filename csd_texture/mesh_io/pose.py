"""A glTF scene in a pose: node world matrices, morph targets and linear-blend skinning (numpy).

The optimiser sees the default pose (every node at its own TRS/matrix, morph weights at their
defaults, skins bound to their joints' default transforms); tests use the same functions with
animated node transforms and weights to compare the input and output at several times.
"""
from __future__ import annotations

import numpy as np
import trimesh

from .gltf import GltfSource


def local_matrix(node: dict) -> np.ndarray:
    """(4, 4) float64 local transform of a glTF node (its matrix, or T @ R @ S)."""
    if "matrix" in node:
        return np.asarray(node["matrix"], np.float64).reshape(4, 4).T  # glTF stores column-major
    x, y, z, w = node.get("rotation", (0.0, 0.0, 0.0, 1.0))
    matrix = trimesh.transformations.quaternion_matrix([w, x, y, z])
    matrix[:3, :3] *= np.asarray(node.get("scale", (1.0, 1.0, 1.0)), np.float64)
    matrix[:3, 3] = node.get("translation", (0.0, 0.0, 0.0))
    return matrix


def parents(document: dict) -> dict[int, int]:
    """Child node index -> parent node index."""
    return {child: index for index, node in enumerate(document.get("nodes") or []) for child in node.get("children") or []}


def world_matrices(document: dict, local: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """(4, 4) world matrix of every node; `local` overrides the nodes' own local matrices."""
    nodes = document.get("nodes") or []
    local = local if local is not None else [local_matrix(node) for node in nodes]
    parent = parents(document)
    world: dict[int, np.ndarray] = {}

    def resolve(index: int) -> np.ndarray:
        if index not in world:
            above = parent.get(index)
            world[index] = local[index] if above is None else resolve(above) @ local[index]
        return world[index]

    return [resolve(index) for index in range(len(nodes))]


def default_weights(document: dict, node_index: int) -> np.ndarray:
    """(T,) the node's morph weights: node.weights, else mesh.weights, else zeros."""
    node = document["nodes"][node_index]
    mesh = document["meshes"][node["mesh"]]
    targets = max((len(p.get("targets") or []) for p in mesh["primitives"]), default=0)
    weights = node.get("weights", mesh.get("weights", [0.0] * targets))
    return np.asarray(weights, np.float64)


def posed_positions(
    source: GltfSource, node_index: int, primitive: dict, worlds: list[np.ndarray], weights: np.ndarray | None = None
) -> np.ndarray:
    """(V, 3) float64 world positions of one primitive drawn by node `node_index`:
    morph targets blended with `weights` (default: the node's), then skinned by the node's
    skin (joint world @ inverse bind matrix, JOINTS_n/WEIGHTS_n) or placed by its world matrix."""
    document = source.document
    attributes = primitive["attributes"]
    positions = source.accessor_float(attributes["POSITION"])
    weights = default_weights(document, node_index) if weights is None else weights
    for weight, target in zip(weights, primitive.get("targets") or []):
        if weight and "POSITION" in target:
            positions = positions + weight * source.accessor_float(target["POSITION"])
    node = document["nodes"][node_index]
    if "skin" not in node or "JOINTS_0" not in attributes:
        world = worlds[node_index]
        return positions @ world[:3, :3].T + world[:3, 3]
    skin = document["skins"][node["skin"]]
    joints = skin["joints"]
    if "inverseBindMatrices" in skin:
        inverse_bind = source.accessor_float(skin["inverseBindMatrices"]).reshape(-1, 4, 4).transpose(0, 2, 1)
    else:
        inverse_bind = np.broadcast_to(np.eye(4), (len(joints), 4, 4))
    joint_matrices = np.stack([worlds[j] for j in joints]) @ inverse_bind  # (J, 4, 4)
    homogeneous = np.hstack([positions, np.ones((len(positions), 1))])
    posed = np.zeros_like(positions)
    set_index = 0
    while f"JOINTS_{set_index}" in attributes:
        joint_ids = source.accessor(attributes[f"JOINTS_{set_index}"]).astype(np.int64)
        joint_weights = source.accessor_float(attributes[f"WEIGHTS_{set_index}"])
        for k in range(joint_ids.shape[1]):
            moved = np.einsum("vij,vj->vi", joint_matrices[joint_ids[:, k]], homogeneous)[:, :3]
            posed += joint_weights[:, k : k + 1] * moved
        set_index += 1
    return posed
