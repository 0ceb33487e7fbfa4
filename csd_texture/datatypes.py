"""Objects that pass between pipeline stages (see DESIGN.md), with shapes in annotations.

Conventions: world is right-handed, +Y up, front +Z; images are ``B H W C`` with row 0
at the top; UV origin is bottom-left; albedo is linear.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import numpy as np
import torch


@dataclass(frozen=True)
class MeshData:
    """A validated triangle mesh, normalised to fit the box [-1, 1]^3 (longest side 2).

    vertices: (V, 3) float32, normalised; faces: (F, 3) int32; normals: (V, 3) float32 unit;
    uv: (V, 2) float32 in [0, 1] (origin bottom-left) or None until unwrapped;
    to_source: (4, 4) float64, maps normalised positions back to the input's world space;
    up_axis: the world axis cameras treat as "up" (in normalised space), e.g. (0, 1, 0);
    base_color_image: (H, W, 3) float32 sRGB in [0, 1] from the source material, if any
    (used by --keep-uv / --edit); part_names: names of the source nodes or parts;
    face_parts: (F,) int32 index into part_labels, the (material name, node name) each face
    comes from (None when unknown; per-part prompts and --region-materials/--region-nodes).
    """

    vertices: np.ndarray
    faces: np.ndarray
    normals: np.ndarray
    uv: np.ndarray | None = None
    to_source: np.ndarray = field(default_factory=lambda: np.eye(4))
    name: str = "mesh"
    up_axis: tuple[float, float, float] = (0.0, 1.0, 0.0)
    base_color_image: np.ndarray | None = None
    part_names: tuple[str, ...] = ()
    face_parts: np.ndarray | None = None
    part_labels: tuple[tuple[str, str], ...] = ()

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    def world_vertices(self) -> np.ndarray:
        """(V, 3) float64 positions in the input's world space."""
        v = self.vertices.astype(np.float64)
        return v @ self.to_source[:3, :3].T + self.to_source[:3, 3]


@dataclass(frozen=True)
class CameraBatch:
    """B cameras. mvp: (B, 4, 4) world(normalised)->clip; position: (B, 3);
    elevation, azimuth: (B,) degrees (for view-dependent prompts); resolution: (H, W)."""

    mvp: torch.Tensor
    position: torch.Tensor
    elevation: torch.Tensor
    azimuth: torch.Tensor
    resolution: tuple[int, int]

    @property
    def batch_size(self) -> int:
        return int(self.mvp.shape[0])

    def to(self, device: torch.device | str) -> "CameraBatch":
        return CameraBatch(self.mvp.to(device), self.position.to(device), self.elevation.to(device),
                           self.azimuth.to(device), self.resolution)


@dataclass(frozen=True)
class Lighting:
    """Per-view lighting. direction: (B, 3) unit vector towards the light; colour: (B, 3);
    ambient: (B, 3); unlit: (B,) bool, views rendered as plain albedo."""

    direction: torch.Tensor
    colour: torch.Tensor
    ambient: torch.Tensor
    unlit: torch.Tensor


@dataclass(frozen=True)
class Fragments:
    """The only thing a rasterizer returns. triangle_id: (B, H, W) int64, -1 where empty;
    barycentrics: (B, H, W, 3) float32 perspective-correct weights of the triangle's three
    vertices (zero where empty); depth: (B, H, W) float32 NDC depth (inf where empty).
    Row 0 is the top of the image."""

    triangle_id: torch.Tensor
    barycentrics: torch.Tensor
    depth: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        """(B, H, W) bool: pixels covered by a triangle."""
        return self.triangle_id >= 0


@dataclass(frozen=True)
class GBuffer:
    """Per-pixel (camera) or per-texel (bake) surface attributes, each (B, H, W, C):
    mask (C=1, float 0/1), position (C=3, normalised world), normal (C=3, unit), uv (C=2)."""

    mask: torch.Tensor
    position: torch.Tensor
    normal: torch.Tensor
    uv: torch.Tensor


@dataclass(frozen=True)
class PBRMaps:
    """Baked texture maps, (H, W, C) float32 in [0, 1], row 0 = top (v = 1).
    albedo: C=3 linear; roughness: C=1; metallic: C=1; coverage: (H, W) bool, texels
    inside a UV chart (before padding); normal: C=3 tangent-space normal map encoded n * 0.5 + 0.5
    (glTF's normalTexture; render.tangents' frame), or None without a normal map."""

    albedo: np.ndarray
    roughness: np.ndarray
    metallic: np.ndarray
    coverage: np.ndarray
    normal: np.ndarray | None = None

    @property
    def size(self) -> int:
        return int(self.albedo.shape[0])


@dataclass(frozen=True)
class PromptEmbeds:
    """Text embeddings. cond: (N_views, L, D), one per view bucket (front/side/back/overhead), or
    (K, N_views, L, D) for K part prompts (guidance.regional); negative: (1, L, D); null: (1, L, D)
    for the empty prompt."""

    cond: torch.Tensor
    negative: torch.Tensor
    null: torch.Tensor


@dataclass(frozen=True)
class StepRecord:
    """One optimisation step's record: loss, timestep, negative weight, seconds since start, and
    whether the step was skipped (a non-finite loss or gradient: the texture was not updated)."""

    step: int
    loss: float
    timestep: int
    negative_weight: float
    elapsed: float
    skipped: bool = False
