"""PBR maps -> quantised images and PNG bytes; standalone map files."""
from __future__ import annotations

import io
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from ..datatypes import PBRMaps
from ..errors import ExportError
from ..fileio import atomic_outputs

logger = logging.getLogger(__name__)

MAP_NAMES = ("basecolor", "roughness", "metallic", "orm", "normal")  # every map save_maps may write; normal only when the maps have one


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    """The exact sRGB transfer function (IEC 61966-2-1), as kornia.color.linear_rgb_to_rgb."""
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1.0 / 2.4) - 0.055)


def _quantize(x: np.ndarray, bits: int) -> np.ndarray:
    """[0, 1] floats -> uint8 (bits=8) or uint16 (bits=16), rounded to nearest."""
    top = (1 << bits) - 1
    dtype = np.uint8 if bits == 8 else np.uint16
    return np.round(np.clip(x, 0.0, 1.0) * top).astype(dtype)


def _check_maps(maps: PBRMaps) -> tuple[int, int]:
    """Validate map shapes and values; returns (H, W)."""
    albedo = np.asarray(maps.albedo)
    if albedo.ndim != 3 or albedo.shape[2] != 3:
        raise ExportError(f"PBRMaps.albedo must be (H, W, 3), got {albedo.shape}")
    height, width = albedo.shape[:2]
    for name in ("roughness", "metallic"):
        shape = np.shape(getattr(maps, name))
        if shape not in ((height, width), (height, width, 1)):
            raise ExportError(f"PBRMaps.{name} must be ({height}, {width}, 1) like albedo, got {shape}")
    if maps.normal is not None and np.shape(maps.normal) != (height, width, 3):
        raise ExportError(f"PBRMaps.normal must be ({height}, {width}, 3) like albedo, got {np.shape(maps.normal)}")
    for name in ("albedo", "roughness", "metallic", "normal"):
        if getattr(maps, name) is not None and not np.all(np.isfinite(getattr(maps, name))):
            raise ExportError(f"PBRMaps.{name} has NaN or infinite values; the bake produced invalid texels")
    return height, width


def map_images(maps: PBRMaps, bits: int = 8) -> dict[str, np.ndarray]:
    """Quantised (H, W, C) images: basecolor (sRGB, C=3), roughness and metallic (linear,
    C=1), orm (R = 1, G = roughness, B = metallic) and, when the maps have one, normal (the encoded
    tangent-space normal, C=3); uint8 for bits=8, uint16 for bits=16."""
    if bits not in (8, 16):
        raise ExportError(f"map bit depth must be 8 or 16, got {bits}")
    height, width = _check_maps(maps)
    roughness = np.asarray(maps.roughness, np.float64).reshape(height, width, 1)
    metallic = np.asarray(maps.metallic, np.float64).reshape(height, width, 1)
    orm = np.concatenate([np.ones_like(roughness), roughness, metallic], axis=2)
    images = {
        "basecolor": _quantize(linear_to_srgb(np.asarray(maps.albedo, np.float64)), bits),
        "roughness": _quantize(roughness, bits),
        "metallic": _quantize(metallic, bits),
        "orm": _quantize(orm, bits),
    }
    if maps.normal is not None:
        images["normal"] = _quantize(np.asarray(maps.normal, np.float64), bits)
    return images


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, C) uint8 or uint16 image, C in {1, 3, 4}; row 0 is the top."""
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ExportError(f"PNG images must be (H, W, 1|3|4), got {image.shape}")
    if image.dtype == np.uint8:
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[2] == 1 else image).save(buffer, format="PNG")
        return buffer.getvalue()
    if image.dtype == np.uint16:
        return _encode_png16(image)
    raise ExportError(f"PNG images must be uint8 or uint16, got {image.dtype}")


def _encode_png16(image: np.ndarray) -> bytes:
    """16-bit PNG (PIL cannot write 16-bit RGB): big-endian samples, filter 0 per row."""
    height, width, channels = image.shape
    colour_type = {1: 0, 3: 2, 4: 6}[channels]
    rows = np.zeros((height, 1 + width * channels * 2), np.uint8)
    rows[:, 1:] = image.astype(">u2").reshape(height, -1).view(np.uint8)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    pixels = zlib.compress(rows.tobytes(), 6)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def save_maps(maps: PBRMaps, folder: Path, bits: int = 8) -> dict[str, Path]:
    """Write basecolor.png (sRGB), roughness.png, metallic.png (linear grey), orm.png
    (R = 1, G = roughness, B = metallic) and, with a normal map, normal.png (tangent space, +Y up as
    glTF) into `folder`, 8- or 16-bit; returns name -> path."""
    folder = Path(folder)
    images = map_images(maps, bits)
    paths = {name: folder / f"{name}.png" for name in images}
    encoded = {name: encode_png(image) for name, image in images.items()}
    with atomic_outputs(list(paths.values())) as temps:
        for temp, name in zip(temps, paths):
            temp.write_bytes(encoded[name])
    logger.info("wrote %d-bit maps %s to %s", bits, ", ".join(p.name for p in paths.values()), folder)
    return paths
