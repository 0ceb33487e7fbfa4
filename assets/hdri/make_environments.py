"""Convert Blender's CC0 studio-light HDRIs (Debian package blender-data) into the small prefiltered
environment maps bundled in csd_texture/data/hdri: 8x8 box-downsampled to 128x64 (energy kept, so
the sun stays as bright in total), GGX-prefiltered and cosine-convolved (csd_texture.lighting),
stored as float16 .npz.

Needs OpenEXR from PyPI (`pip install openexr`; used only here, not by the package):

    apt-get install blender-data
    python assets/hdri/make_environments.py /usr/share/blender/datafiles/studiolights/world
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import OpenEXR

from csd_texture.lighting import HDRI_DIR, save_environment

NAMES = ("studio", "courtyard", "forest", "interior", "sunset")
FACTOR = 8  # 1024x512 -> 128x64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    HDRI_DIR.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        with OpenEXR.File(str(args.folder / f"{name}.exr")) as exr:
            rgb = np.asarray(exr.channels()["RGB"].pixels, np.float32)  # (H, W, 3), row 0 = up
        h, w = rgb.shape[0] // FACTOR, rgb.shape[1] // FACTOR
        small = rgb[:h * FACTOR, :w * FACTOR].reshape(h, FACTOR, w, FACTOR, 3).mean(axis=(1, 3))
        save_environment(HDRI_DIR / f"{name}.npz", small)
        print(f"{name}: {small.shape[1]}x{small.shape[0]}, mean {small.mean():.3f}, max {small.max():.1f}")


if __name__ == "__main__":
    main()
