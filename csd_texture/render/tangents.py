"""Tangent frames for tangent-space normal maps: per-vertex tangents (as glTF's TANGENT) and the
per-pixel perturbed normal.

Convention (glTF's, with this project's bottom-left UVs): the tangent points along increasing u,
the bitangent along increasing v (up in the image, towards row 0), and
bitangent = cross(normal, tangent.xyz) * tangent.w with w = +-1 (handedness: -1 on mirrored UVs).
A map texel (x, y, z) in [-1, 1] means the normal x * tangent + y * bitangent + z * normal, so the
flat texel (0, 0, 1), encoded (0.5, 0.5, 1), leaves the surface normal unchanged.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def vertex_tangents(vertices: np.ndarray, faces: np.ndarray, normals: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """MikkTSpace-like per-vertex tangents: (V, 4) float32, xyz unit and orthogonal to the normal, w +-1.

    vertices (V, 3), faces (F, 3), normals (V, 3) unit, uv (V, 2) bottom-left. Each face's tangent
    and bitangent come from its UV derivatives (dP/du, dP/dv), are normalised and accumulated at its
    corners weighted by the corner angle (as MikkTSpace weights), then the tangent is made orthogonal
    to the vertex normal (Gram-Schmidt) and w = sign(cross(n, t) . bitangent). Vertices whose faces
    have no usable UV derivatives (zero UV area) get any unit tangent orthogonal to the normal, w = 1.
    """
    p = np.asarray(vertices, np.float64)[faces]  # (F, 3 corners, 3)
    t = np.asarray(uv, np.float64)[faces]  # (F, 3, 2)
    e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    d1, d2 = t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]
    det = d1[:, 0] * d2[:, 1] - d2[:, 0] * d1[:, 1]
    usable = np.abs(det) > 1e-20
    inv = np.where(usable, 1.0 / np.where(usable, det, 1.0), 0.0)[:, None]
    face_t = _unit((e1 * d2[:, 1:] - e2 * d1[:, 1:]) * inv)
    face_b = _unit((e2 * d1[:, :1] - e1 * d2[:, :1]) * inv)
    angles = _corner_angles(p)  # (F, 3)
    corners = np.asarray(faces).reshape(-1)

    def accumulate(per_face: np.ndarray) -> np.ndarray:  # (F, 3) -> (V, 3), summed over each vertex's corners
        weighted = (per_face[:, None, :] * angles[:, :, None]).reshape(-1, 3)
        return np.stack([np.bincount(corners, weighted[:, k], minlength=len(vertices)) for k in range(3)], 1)

    tangent, bitangent = accumulate(face_t), accumulate(face_b)
    n = _unit(np.asarray(normals, np.float64))
    tangent = tangent - n * (tangent * n).sum(1, keepdims=True)
    length = np.linalg.norm(tangent, axis=1, keepdims=True)
    fallback = _unit(np.cross(n, np.where(np.abs(n[:, :1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])))
    tangent = np.where(length > 1e-12, tangent / np.maximum(length, 1e-12), fallback)
    w = np.where((np.cross(n, tangent) * bitangent).sum(1) < 0, -1.0, 1.0)
    return np.concatenate([tangent, w[:, None]], 1).astype(np.float32)


def perturbed_normal(normal: torch.Tensor, tangent: torch.Tensor, tangent_normal: torch.Tensor) -> torch.Tensor:
    """The shading normal from a tangent-space normal map, per pixel.

    normal (..., 3) unit interpolated vertex normal; tangent (..., 4) interpolated vertex tangent
    (xyz, w); tangent_normal (..., 3) unit map value. The tangent is made orthogonal to the normal
    per pixel, the bitangent is cross(n, t) * sign(w), as glTF viewers do. Returns (..., 3) unit.
    """
    t = tangent[..., :3]
    t = F.normalize(t - normal * (t * normal).sum(-1, keepdim=True), dim=-1, eps=1e-8)
    b = torch.linalg.cross(normal, t, dim=-1) * torch.where(tangent[..., 3:] < 0, -1.0, 1.0)
    x, y, z = tangent_normal.unbind(-1)
    return F.normalize(t * x[..., None] + b * y[..., None] + normal * z[..., None], dim=-1, eps=1e-8)


def _unit(v: np.ndarray) -> np.ndarray:
    length = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(length, 1e-20)


def _corner_angles(p: np.ndarray) -> np.ndarray:
    """(F, 3, 3) triangle corners -> (F, 3) interior angle at each corner (0 for degenerate edges)."""
    angles = []
    for corner in range(3):
        a = _unit(p[:, (corner + 1) % 3] - p[:, corner])
        b = _unit(p[:, (corner + 2) % 3] - p[:, corner])
        angles.append(np.arccos(np.clip((a * b).sum(1), -1.0, 1.0)))
    return np.stack(angles, 1)
