"""Previews of a textured mesh, rendered with the project's own renderer: a PNG contact
sheet (orbit views, lit and albedo-only) and a turntable (.gif, or .mp4 with imageio-ffmpeg).

Every file is written atomically (see ``fileio``). Rendering runs on the rasterizer's
device, in batches of views to bound memory.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .cameras import bounding_radius, orbit_cameras
from .datatypes import CameraBatch, MeshData, PBRMaps
from .devices import resolve_device
from .errors import ConfigError
from .fileio import atomic_output
from .lighting import bundled_environments, fixed_environment_lighting
from .render import Rasterizer, get_rasterizer
from .render.views import RenderOutput, Surface, TextureFn, render_views
from .texture import ImageTexture

logger = logging.getLogger(__name__)

SHEET_VIEWS = 8
ELEVATION = 20.0  # degrees above the horizon for preview orbits
BACKGROUND = (1.0, 1.0, 1.0)
VIEWS_PER_BATCH = 8
TURNTABLE_SUFFIXES = (".gif", ".mp4")
MP4_INSTALL_HINT = "pip install imageio-ffmpeg (it bundles an ffmpeg binary), or write a .gif turntable instead"


def default_rasterizer(rasterizer: Rasterizer | None) -> Rasterizer:
    """`rasterizer`, or the automatic choice for the automatic device."""
    return rasterizer if rasterizer is not None else get_rasterizer("auto", resolve_device("auto"))


def render_batched(mesh: MeshData, texture: TextureFn, cameras: CameraBatch, rasterizer: Rasterizer, *,
                   unlit: bool, background: tuple[float, float, float] = BACKGROUND) -> RenderOutput:
    """Render every camera of `cameras` lit by the studio environment, as a glTF viewer would show
    the model (`fixed_environment_lighting`, the light the optimiser uses), VIEWS_PER_BATCH at a time.

    Returns a RenderOutput on the CPU: image (B, H, W, 3) sRGB in [0, 1], mask (B, H, W, 1), uv (B, H, W, 2).
    """
    device = torch.device(getattr(rasterizer, "device", "cpu"))
    surface = Surface.from_mesh(mesh, device)
    environments = bundled_environments().to(device)
    images, masks, uvs = [], [], []
    with torch.no_grad():
        for start in range(0, cameras.batch_size, VIEWS_PER_BATCH):
            views = _camera_slice(cameras, start, start + VIEWS_PER_BATCH).to(device)
            fill = torch.tensor(background, dtype=torch.float32, device=device).expand(views.batch_size, 3)
            lighting = fixed_environment_lighting(views, mesh.up_axis, unlit=unlit, environments=environments)
            out = render_views(surface, texture, views, lighting, rasterizer, fill)
            images.append(out.image.cpu())
            masks.append(out.mask.cpu())
            uvs.append(out.uv.cpu())
    return RenderOutput(image=torch.cat(images), mask=torch.cat(masks), uv=torch.cat(uvs))


def _camera_slice(cameras: CameraBatch, start: int, stop: int) -> CameraBatch:
    return CameraBatch(cameras.mvp[start:stop], cameras.position[start:stop], cameras.elevation[start:stop],
                       cameras.azimuth[start:stop], cameras.resolution)


def orbit_frames(mesh: MeshData, maps: PBRMaps, count: int, size: int, rasterizer: Rasterizer | None = None, *,
                 unlit: bool = False) -> np.ndarray:
    """(count, size, size, 3) uint8 sRGB views of the textured mesh on a white background,
    evenly spaced around it from the front, ELEVATION degrees up."""
    if int(count) != count or count < 1 or int(size) != size or size < 8:
        raise ConfigError(f"previews need at least 1 view of at least 8 pixels, got {count} views of {size}")
    rasterizer = default_rasterizer(rasterizer)
    device = torch.device(getattr(rasterizer, "device", "cpu"))
    radius = bounding_radius(torch.as_tensor(mesh.vertices, dtype=torch.float32))
    cameras = orbit_cameras(int(count), int(size), radius, elevation=ELEVATION, up_axis=mesh.up_axis)
    texture = ImageTexture.from_maps(maps).to(device)
    out = render_batched(mesh, texture, cameras, rasterizer, unlit=unlit)
    return (out.image.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def contact_sheet(mesh: MeshData, maps: PBRMaps, path: Path, size: int = 256,
                  rasterizer: Rasterizer | None = None) -> Path:
    """Write a PNG of SHEET_VIEWS orbit views, `size` pixels each: the top row lit by a
    studio environment (`fixed_environment_lighting`), the bottom row albedo only. Returns `path`."""
    path = check_sheet_path(path)
    rasterizer = default_rasterizer(rasterizer)
    rows = [orbit_frames(mesh, maps, SHEET_VIEWS, size, rasterizer, unlit=unlit) for unlit in (False, True)]
    sheet = np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)
    with atomic_output(path) as temp:
        Image.fromarray(sheet).save(temp, format="PNG")
    logger.info("wrote contact sheet %s (%d views, %d px)", path, SHEET_VIEWS, size)
    return path


def turntable(mesh: MeshData, maps: PBRMaps, path: Path, frames: int = 36, size: int = 256,
              rasterizer: Rasterizer | None = None, fps: int = 12) -> Path:
    """Write a looping turntable of `frames` lit views: .gif (PIL) or .mp4 (H.264, needs
    the optional package imageio-ffmpeg). Returns `path`."""
    path = check_turntable_path(path)
    images = orbit_frames(mesh, maps, frames, size, rasterizer)
    with atomic_output(path) as temp:
        (_write_mp4 if path.suffix.lower() == ".mp4" else _write_gif)(images, temp, fps)
    logger.info("wrote turntable %s (%d frames, %d px)", path, frames, size)
    return path


def check_sheet_path(path: Path) -> Path:
    """`path` as a Path if it names a PNG; ConfigError otherwise."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"{path}: a contact sheet is a PNG; give a file name ending in .png")
    return path


def check_turntable_path(path: Path) -> Path:
    """`path` as a Path if a turntable can be written there (.gif, or .mp4 with the encoder
    installed); ConfigError saying what to do otherwise. Call it before long work."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TURNTABLE_SUFFIXES:
        raise ConfigError(f"{path}: a turntable is written as {' or '.join(TURNTABLE_SUFFIXES)}; "
                          "give a file name with one of those extensions")
    if suffix == ".mp4":
        _import_imageio_ffmpeg()
    return path


def check_preview_paths(sheet: Path | None, turntable_path: Path | None) -> None:
    """Check the names `write_previews` will write (before long work); ConfigError if unusable."""
    if sheet is not None:
        check_sheet_path(sheet)
    if turntable_path is not None:
        check_turntable_path(turntable_path)


def write_previews(mesh: MeshData, maps: PBRMaps, sheet: Path | None, turntable_path: Path | None,
                   renderer: str = "auto", device: str = "auto") -> None:
    """Write the contact sheet and/or turntable that are asked for (None: skip), rendered
    with the `renderer` backend on `device` (Config.renderer / Config.device)."""
    if sheet is None and turntable_path is None:
        return
    rasterizer = get_rasterizer(renderer, resolve_device(device))
    if sheet is not None:
        contact_sheet(mesh, maps, sheet, rasterizer=rasterizer)
    if turntable_path is not None:
        turntable(mesh, maps, turntable_path, rasterizer=rasterizer)


def _write_gif(images: np.ndarray, path: Path, fps: int) -> None:
    """A looping GIF, one adaptive palette per frame."""
    frames = [Image.fromarray(image) for image in images]
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], loop=0,
                   duration=round(1000 / fps), disposal=1)


def _import_imageio_ffmpeg():
    try:
        import imageio_ffmpeg
    except ImportError as exc:
        raise ConfigError(f"writing .mp4 turntables needs the optional package imageio-ffmpeg: "
                          f"{MP4_INSTALL_HINT}") from exc
    return imageio_ffmpeg


def _write_mp4(images: np.ndarray, path: Path, fps: int) -> None:
    """H.264 in yuv420p (plays in browsers and players); sizes rounded up to even."""
    imageio_ffmpeg = _import_imageio_ffmpeg()
    height, width = images.shape[1:3]
    writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=fps, codec="libx264",
                                         pix_fmt_out="yuv420p", macro_block_size=2, quality=8,
                                         ffmpeg_log_level="error")
    writer.send(None)  # start the encoder
    try:
        for image in images:
            writer.send(np.ascontiguousarray(image))
    finally:
        writer.close()
