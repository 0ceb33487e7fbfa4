"""Cameras: random views for optimisation, orbits for previews, and view buckets for prompts.

Cameras look at the origin of the normalised mesh space. Azimuth 0 looks at the mesh's
front; elevation is measured from the plane perpendicular to the up axis.
"""
from __future__ import annotations


import torch

from .datatypes import CameraBatch

VIEW_BUCKETS = ("front", "side", "back", "overhead")


def up_front_frame(up: tuple[float, float, float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Orthonormal (up, front, right) for an up axis. Front is +Z for a Y-up mesh and -Y for a
    Z-up mesh (Blender's front view)."""
    up_t = torch.tensor(up, dtype=torch.float32)
    up_t = up_t / up_t.norm()
    preferred = torch.tensor([0.0, 0.0, 1.0]) if abs(float(up_t[2])) < 0.9 else torch.tensor([0.0, -1.0, 0.0])
    front = preferred - (preferred @ up_t) * up_t
    front = front / front.norm()
    right = torch.linalg.cross(up_t, front)
    return up_t, front, right


def look_at(eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """(B, 4, 4) world->camera matrices (OpenGL: camera looks down -Z, +Y up)."""
    forward = torch.nn.functional.normalize(target - eye, dim=-1)
    right = torch.nn.functional.normalize(torch.linalg.cross(forward, up.expand_as(forward)), dim=-1)
    true_up = torch.linalg.cross(right, forward)
    view = torch.eye(4, dtype=eye.dtype).repeat(eye.shape[0], 1, 1)
    view[:, 0, :3], view[:, 1, :3], view[:, 2, :3] = right, true_up, -forward
    view[:, :3, 3] = -torch.einsum("bij,bj->bi", view[:, :3, :3], eye)
    return view


def perspective(fov_deg: torch.Tensor, near: torch.Tensor, far: torch.Tensor) -> torch.Tensor:
    """(B, 4, 4) OpenGL projection for a square image, vertical field of view in degrees."""
    f = 1.0 / torch.tan(torch.deg2rad(fov_deg) / 2)
    proj = torch.zeros(fov_deg.shape[0], 4, 4, dtype=fov_deg.dtype)
    proj[:, 0, 0] = f
    proj[:, 1, 1] = f
    proj[:, 2, 2] = -(far + near) / (far - near)
    proj[:, 2, 3] = -2 * far * near / (far - near)
    proj[:, 3, 2] = -1.0
    return proj


FIT_MARGIN = 1.1  # the bounding sphere fills 1/1.1 of the field of view at distance scale 1


def fitting_distance(radius: float, fov: torch.Tensor) -> torch.Tensor:
    """(B,) camera distance at which a bounding sphere of `radius` fits a field of view `fov`
    (B,) degrees with the FIT_MARGIN."""
    return radius * FIT_MARGIN / torch.sin(torch.deg2rad(fov) / 2)


def make_cameras(
    elevation: torch.Tensor,
    azimuth: torch.Tensor,
    fov: torch.Tensor,
    radius: float,
    resolution: int,
    up_axis: tuple[float, float, float] = (0.0, 1.0, 0.0),
    distance_scale: torch.Tensor | None = None,
) -> CameraBatch:
    """Cameras on a sphere around the origin, at a distance that fits a bounding sphere of
    `radius` inside the field of view, times `distance_scale` (B,) when given (< 1: close-ups
    that crop the mesh). Angles in degrees, tensors of shape (B,)."""
    up, front, right = up_front_frame(up_axis)
    elev, azim = torch.deg2rad(elevation), torch.deg2rad(azimuth)
    distance = fitting_distance(radius, fov)
    if distance_scale is not None:
        distance = distance * distance_scale
    direction = (
        torch.cos(elev)[:, None] * (torch.cos(azim)[:, None] * front + torch.sin(azim)[:, None] * right)
        + torch.sin(elev)[:, None] * up
    )
    eye = direction * distance[:, None]
    # Looking straight down the up axis makes look_at degenerate: use front as "up" there.
    cam_up = torch.where((direction @ up).abs()[:, None] > 0.999, -front.expand_as(eye), up.expand_as(eye))
    view = look_at(eye, torch.zeros_like(eye), cam_up)
    proj = perspective(fov, near=(distance - radius * 1.5).clamp(min=1e-2), far=distance + radius * 1.5)
    return CameraBatch(
        mvp=proj @ view,
        position=eye,
        elevation=elevation,
        azimuth=azimuth,
        resolution=(resolution, resolution),
    )


def random_cameras(
    batch: int,
    generator: torch.Generator,
    resolution: int,
    elevation_range: tuple[float, float],
    fov_range: tuple[float, float],
    radius: float,
    up_axis: tuple[float, float, float] = (0.0, 1.0, 0.0),
    distance_range: tuple[float, float] = (1.0, 1.0),
) -> CameraBatch:
    """Random azimuth over the full circle; elevation, field of view and distance scale (see
    `make_cameras`) uniform in their ranges."""

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(batch, generator=generator)

    return make_cameras(
        elevation=uniform(*elevation_range),
        azimuth=uniform(-180.0, 180.0),
        fov=uniform(*fov_range),
        radius=radius,
        resolution=resolution,
        up_axis=up_axis,
        distance_scale=uniform(*distance_range),
    )


def orbit_cameras(
    count: int,
    resolution: int,
    radius: float,
    elevation: float = 20.0,
    fov: float = 40.0,
    up_axis: tuple[float, float, float] = (0.0, 1.0, 0.0),
) -> CameraBatch:
    """`count` evenly spaced views around the mesh, starting at the front."""
    azimuth = torch.arange(count, dtype=torch.float32) * (360.0 / count)
    azimuth = (azimuth + 180.0) % 360.0 - 180.0
    return make_cameras(
        elevation=torch.full((count,), float(elevation)),
        azimuth=azimuth,
        fov=torch.full((count,), float(fov)),
        radius=radius,
        resolution=resolution,
        up_axis=up_axis,
    )


def view_bucket_index(elevation: torch.Tensor, azimuth: torch.Tensor) -> torch.Tensor:
    """(B,) int64 index into VIEW_BUCKETS: overhead above 60 degrees, else by azimuth."""
    azim = (azimuth + 180.0) % 360.0 - 180.0
    index = torch.where(azim.abs() <= 45.0, 0, torch.where(azim.abs() >= 135.0, 2, 1))
    return torch.where(elevation > 60.0, 3, index).long()


def bounding_radius(vertices: torch.Tensor) -> float:
    """Radius of the origin-centred sphere that holds all vertices."""
    return float(vertices.norm(dim=-1).max()) if vertices.numel() else 1.0


__all__ = [
    "VIEW_BUCKETS",
    "bounding_radius",
    "look_at",
    "make_cameras",
    "orbit_cameras",
    "perspective",
    "random_cameras",
    "up_front_frame",
    "view_bucket_index",
]

