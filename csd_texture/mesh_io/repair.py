"""World-space parts -> one repaired MeshData normalised into [-1, 1]^3.

trimesh computes the triangle areas. The rest is hand-written rather than trimesh's
`merge_vertices`/`update_faces`/`fix_normals`/`vertex_normals`: those do not report what they
changed (every repair here is a warning naming the count), do not keep the part/UV seams this
pipeline needs while sharing one normal per position across them, and `fix_normals` re-winds
whole bodies by a heuristic. `unique_rows` stands in for trimesh.grouping.unique_rows because the
edge and duplicate-face checks need the counts too, which trimesh's does not return.
"""
from __future__ import annotations

import logging

import numpy as np
import trimesh

from ..datatypes import MeshData
from ..errors import MeshValidationError
from .flatten import NO_MATERIAL, Part

log = logging.getLogger(__name__)

_MOSTLY = 0.5  # refuse when more than this fraction of vertices is non-finite
MERGE_QUANTUM = 2.0**-20  # vertices closer than ~1e-6 (normalised units) are the same vertex
_MIN_DOUBLE_AREA = 1e-14  # |cross| below this (normalised units) is a zero-area face
_MAX_IMAGE_SIDE = 4096


def build_mesh_data(parts: list[Part], label: str, name: str, up: tuple[float, float, float]) -> MeshData:
    """Merge parts, repair, normalise, compute normals."""
    uv, image = _shared_uv(parts, label)
    vertices = np.concatenate([p.vertices for p in parts])
    part_ids = np.concatenate([np.full(len(p.vertices), i) for i, p in enumerate(parts)])
    offsets = np.cumsum([0] + [len(p.vertices) for p in parts[:-1]])
    faces = np.concatenate([p.faces + o for p, o in zip(parts, offsets)])
    faces = _drop_invalid_indices(faces, len(vertices), label)
    unreferenced = len(vertices) - int(_used(faces, len(vertices)).sum())
    faces = _drop_nonfinite(vertices, faces, label)
    if uv is not None and not np.isfinite(uv[_used(faces, len(uv))]).all():
        log.warning(f"{label}: source UVs contain NaN/inf values; ignoring them")
        uv, image = None, None
    centre, half = _bounds(vertices, faces, label)
    normalised = (vertices - centre) / half
    normalised, faces, uv, groups, vertex_parts = _merge_vertices(normalised, faces, uv, part_ids)
    faces = _drop_degenerate(normalised, faces, label)
    faces = _drop_duplicates(faces, label)
    if unreferenced:
        log.warning(f"{label}: removed {unreferenced} unreferenced vertices")
    faces = _fix_winding(normalised, faces, label)
    normalised, faces, uv, groups, vertex_parts = _compact(normalised, faces, uv, groups, vertex_parts)
    labels = tuple(dict.fromkeys((p.material or NO_MATERIAL, p.name) for p in parts))
    part_label = np.array([labels.index((p.material or NO_MATERIAL, p.name)) for p in parts], dtype=np.int32)
    centre_again, half_again = box(normalised)  # dropped faces may have shrunk the box
    normalised = (normalised - centre_again) / half_again
    to_source = np.eye(4)
    to_source[:3, :3] *= half * half_again
    to_source[:3, 3] = centre + centre_again * half
    return MeshData(
        vertices=normalised.astype(np.float32),
        faces=faces.astype(np.int32),
        normals=vertex_normals(normalised, faces, groups, up),
        uv=None if uv is None else uv.astype(np.float32),
        to_source=to_source,
        name=name,
        up_axis=up,
        base_color_image=None if image is None else _image_array(image),
        part_names=tuple(p.name for p in parts),
        face_parts=part_label[vertex_parts[faces[:, 0]]],  # welding never joins parts: one part per face
        part_labels=labels,
    )


def _shared_uv(parts: list[Part], label: str) -> tuple[np.ndarray | None, object | None]:
    """Source UVs, kept only if every part has them and all parts share one texture."""
    if any(p.uv is None for p in parts):
        return None, None
    keys = {_image_key(p.image) for p in parts}
    if len(parts) > 1 and (len(keys) > 1 or None in keys):
        log.info(f"{label}: parts use different textures; source UVs not kept")
        return None, None
    return np.concatenate([p.uv for p in parts]), parts[0].image


def _image_key(image: object | None) -> object | None:
    if image is None:
        return None
    return (image.size, image.mode, hash(image.tobytes()))


def _used(faces: np.ndarray, count: int) -> np.ndarray:
    """(count,) bool: vertices referenced by a face."""
    used = np.zeros(count, dtype=bool)
    used[faces.reshape(-1)] = True
    return used


def _drop_invalid_indices(faces: np.ndarray, count: int, label: str) -> np.ndarray:
    bad = ((faces < 0) | (faces >= count)).any(axis=1)
    if bad.any():
        log.warning(f"{label}: dropped {int(bad.sum())} face(s) with out-of-range vertex indices")
    return faces[~bad]


def _drop_nonfinite(vertices: np.ndarray, faces: np.ndarray, label: str) -> np.ndarray:
    """Refuse mostly non-finite coordinates; otherwise drop faces that touch a NaN/inf vertex."""
    bad = ~np.isfinite(vertices).all(axis=1)
    if not bad.any():
        return faces
    if bad.mean() > _MOSTLY:
        raise MeshValidationError(
            f"{label}: {int(bad.sum())} of {len(vertices)} vertices have NaN/inf coordinates; the file is corrupt"
        )
    touched = bad[faces].any(axis=1)
    log.warning(f"{label}: {int(bad.sum())} vertices have NaN/inf coordinates; dropped {int(touched.sum())} face(s) using them")
    if touched.all():
        raise MeshValidationError(f"{label}: every face uses a vertex with NaN/inf coordinates; the file is corrupt")
    return faces[~touched]


def box(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre and half of the longest side of the points' bounding box."""
    low, high = points.min(axis=0), points.max(axis=0)
    return (low + high) / 2.0, float((high - low).max()) / 2.0


def _bounds(vertices: np.ndarray, faces: np.ndarray, label: str) -> tuple[np.ndarray, float]:
    """_box of the vertices faces use; refuses a mesh of zero extent."""
    used = vertices[_used(faces, len(vertices))]
    centre, half = box(used)
    if not half > 1e-12 * max(1.0, float(np.abs(used).max())):
        raise MeshValidationError(f"{label}: all {len(faces)} faces are degenerate (zero area); nothing to texture")
    return centre, half


def unique_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first index, inverse, counts) of the unique rows of an (N, K) integer array, in
    lexicographic order like np.unique(axis=0), but via 1-D keys (much faster)."""
    rows = rows - rows.min(axis=0)
    spans = rows.max(axis=0) + 1
    if float(np.prod(spans.astype(np.float64))) < 2.0**62:
        key = rows[:, 0].astype(np.int64)
        for k in range(1, rows.shape[1]):
            key = key * int(spans[k]) + rows[:, k]
    else:  # combine columns one at a time through dense ranks, which stay below N
        key = np.zeros(len(rows), dtype=np.int64)
        for column in rows.T:
            _, rank = np.unique(column, return_inverse=True)
            _, key = np.unique(key * (int(rank.max()) + 1) + rank.reshape(-1), return_inverse=True)
    _, first, inverse, counts = np.unique(key, return_index=True, return_inverse=True, return_counts=True)
    return first, inverse.reshape(-1), counts


def _merge_vertices(
    vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray | None, part_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    """Weld coincident vertices (same position, part and UV); returns position-group ids and part ids too.

    Vertices at the same position share one position (the group's first), so normals and
    later welding agree; different parts and UV seams stay separate vertices."""
    finite = np.isfinite(vertices).all(axis=1)
    quantised = np.zeros(vertices.shape, dtype=np.int64)
    quantised[finite] = np.round(vertices[finite] / MERGE_QUANTUM).astype(np.int64)
    quantised[~finite] = np.arange((~finite).sum())[:, None] - (1 << 40)  # never merge bad vertices
    first, groups, _ = unique_rows(quantised)
    vertices = vertices[first[groups]]
    key = [groups[:, None], part_ids[:, None]]
    if uv is not None:
        uv_key = np.where(np.isfinite(uv), uv, 0.0)
        key.append(np.round(uv_key / MERGE_QUANTUM).astype(np.int64))
    keep, inverse, _ = unique_rows(np.hstack(key))
    return vertices[keep], inverse[faces], None if uv is None else uv[keep], groups[keep], part_ids[keep]


def _double_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(F,) twice each face's area."""
    return 2.0 * trimesh.triangles.area(vertices[faces])


def _drop_degenerate(vertices: np.ndarray, faces: np.ndarray, label: str) -> np.ndarray:
    """Drop zero-area faces; refuse a mesh made only of them."""
    bad = ~(_double_areas(vertices, faces) > _MIN_DOUBLE_AREA)
    if bad.all():
        raise MeshValidationError(f"{label}: all {len(faces)} faces are degenerate (zero area); nothing to texture")
    if bad.any():
        log.warning(f"{label}: dropped {int(bad.sum())} degenerate (zero-area) face(s)")
    return faces[~bad]


def _drop_duplicates(faces: np.ndarray, label: str) -> np.ndarray:
    """Drop faces that repeat another face's vertices (in any order)."""
    first, _, _ = unique_rows(np.sort(faces, axis=1))
    if len(first) < len(faces):
        log.warning(f"{label}: dropped {len(faces) - len(first)} duplicate face(s)")
    return faces[np.sort(first)]


def _fix_winding(vertices: np.ndarray, faces: np.ndarray, label: str) -> np.ndarray:
    """Make face winding consistent across manifold edges, and outward for closed pieces."""
    faces = faces.copy()
    pair = _manifold_edge_pairs(faces)
    if (pair[:, 2] == 0).any():
        flip = _consistent_flips(len(faces), pair)
        faces[flip] = faces[flip, ::-1]
        log.warning(f"{label}: face winding was inconsistent; fixed ({int(flip.sum())} face(s) flipped)")
        pair = _manifold_edge_pairs(faces)
    inward = _inward_faces(vertices, faces, pair)
    if inward.any():
        faces[inward] = faces[inward, ::-1]
        log.warning(f"{label}: {int(inward.sum())} face(s) of closed pieces pointed inwards; flipped")
    return faces


def _manifold_edge_pairs(faces: np.ndarray) -> np.ndarray:
    """(E, 3) rows (face a, face b, consistent 0/1), one per edge shared by exactly two faces;
    consistent when the two faces run along the edge in opposite directions."""
    directed = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    forward = directed[:, 0] < directed[:, 1]
    _, inverse, counts = unique_rows(np.sort(directed, axis=1))
    shared = np.flatnonzero(counts[inverse] == 2)
    idx = shared[np.argsort(inverse[shared], kind="stable")].reshape(-1, 2)
    consistent = forward[idx[:, 0]] != forward[idx[:, 1]]
    return np.stack([idx[:, 0] // 3, idx[:, 1] // 3, consistent.astype(np.int64)], axis=1)


def _consistent_flips(count: int, pair: np.ndarray) -> np.ndarray:
    """Which faces to flip so every manifold edge is consistent (first face of each piece kept).

    Two copies of each face (as is, flipped) in one graph: a consistent edge joins same copies,
    an inconsistent one opposite copies; a face flips if its as-is copy is not connected to the
    as-is copy of its piece's first face."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    a, b, same = pair[:, 0], pair[:, 1], pair[:, 2].astype(bool)
    rows = np.concatenate([a, a + count])
    cols = np.concatenate([np.where(same, b, b + count), np.where(same, b + count, b)])
    doubled = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(2 * count, 2 * count))
    _, state = connected_components(doubled, directed=False)
    single = coo_matrix((np.ones(len(a)), (a, b)), shape=(count, count))
    _, piece = connected_components(single, directed=False)
    _, first = np.unique(piece, return_index=True)
    return state[:count] != state[first[piece]]


def _inward_faces(vertices: np.ndarray, faces: np.ndarray, pair: np.ndarray) -> np.ndarray:
    """Faces of closed, consistently wound pieces whose signed volume is negative."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    count = len(faces)
    single = coo_matrix((np.ones(len(pair)), (pair[:, 0], pair[:, 1])), shape=(count, count))
    pieces, piece = connected_components(single, directed=False)
    good_edges = np.bincount(pair[:, 0], pair[:, 2], minlength=count) + np.bincount(pair[:, 1], pair[:, 2], minlength=count)
    open_piece = np.bincount(piece, good_edges < 3, minlength=pieces) > 0
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    volume = np.bincount(piece, np.einsum("ij,ij->i", a, np.cross(b, c)), minlength=pieces)
    return (~open_piece & (volume < 0))[piece]


def _compact(
    vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray | None, groups: np.ndarray, parts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    """Remove vertices no face uses."""
    used = np.flatnonzero(_used(faces, len(vertices)))
    remap = np.full(len(vertices), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return vertices[used], remap[faces], None if uv is None else uv[used], groups[used], parts[used]


def vertex_normals(
    vertices: np.ndarray, faces: np.ndarray, groups: np.ndarray, up: tuple[float, float, float]
) -> np.ndarray:
    """(V, 3) float32 area-weighted normals, shared by all vertices at one position."""
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    face_normals = np.cross(b - a, c - a)
    corner_groups = groups[faces].reshape(-1)
    size = int(groups.max()) + 1
    sums = np.stack(
        [np.bincount(corner_groups, np.repeat(face_normals[:, k], 3), minlength=size) for k in range(3)], axis=1
    )
    length = np.linalg.norm(sums, axis=1, keepdims=True)
    normals = np.where(length > 0, sums / np.where(length > 0, length, 1.0), np.asarray(up))
    return normals[groups].astype(np.float32)


def _image_array(image: object) -> np.ndarray:
    """(H, W, 3) float32 sRGB in [0, 1], longest side at most _MAX_IMAGE_SIDE."""
    from PIL import Image

    rgb = image.convert("RGB")
    if max(rgb.size) > _MAX_IMAGE_SIDE:
        scale = _MAX_IMAGE_SIDE / max(rgb.size)
        rgb = rgb.resize((max(1, round(rgb.size[0] * scale)), max(1, round(rgb.size[1] * scale))), Image.LANCZOS)
    return np.asarray(rgb, dtype=np.float32) / 255.0
