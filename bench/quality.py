"""Quality proxies we can measure offline, printed as one table.

- texture recovery: PSNR (dB) of held-out views after optimising from renders of fuze.obj's own
  texture (photometric objective), for the UV image pyramid and the neural field, with seconds per step;
- sharpness: mean |Laplacian| of the baked albedo over covered texels (the reference texture's own
  value is printed for scale);
- determinism: two runs with the same seed give identical maps, another seed does not.
Seam errors at chart borders: see bench/seams.py.

    python bench/quality.py [--steps 120] [--texture-size 256] [--render-size 128] [--threads 2]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
import trimesh

from csd_texture import texture_mesh
from csd_texture.bake import bake_maps
from csd_texture.evaluation import sharpness, texture_recovery
from csd_texture.mesh_io import load_mesh
from csd_texture.render import get_rasterizer
from csd_texture.testing import save_tiny_pipeline
from csd_texture.texture import ImageTexture

FUZE = Path(__file__).resolve().parents[1] / "assets" / "fuze.obj"


def reference_sharpness(texture_size: int) -> float:
    """Sharpness of fuze's own texture baked through the same bake at the same size."""
    mesh = load_mesh(FUZE)
    with torch.no_grad():
        maps = bake_maps(mesh, ImageTexture.from_srgb(mesh.base_color_image), texture_size, get_rasterizer("torch"))
    return sharpness(maps)


def determinism(model: str) -> tuple[bool, bool]:
    sphere = trimesh.creation.icosphere(subdivisions=2)
    run = lambda seed: texture_mesh(sphere, "a red ball", model=model, seed=seed, steps=5, texture_size=64,  # noqa: E731
                                    render_size=64, progress=False).maps.albedo
    first = run(1)
    return bool(np.array_equal(first, run(1))), not np.array_equal(first, run(2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--texture-size", type=int, default=256)
    parser.add_argument("--render-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = [("representation", "steps", "held-out PSNR dB", "s/step", "sharpness")]
    for kind, lr in (("image", 0.05), ("field", 0.01)):
        result = texture_recovery(FUZE, resolution=args.render_size, steps=args.steps, texture_size=args.texture_size,
                                  views_per_step=2, learning_rate=lr, unlit_fraction=0.5, texture=kind)
        rows.append((kind, args.steps, f"{result.psnr_db:.2f}", f"{result.seconds_per_step:.3f}",
                     f"{sharpness(result.maps):.4f}"))
    rows.append(("reference texture", "-", "-", "-", f"{reference_sharpness(args.texture_size):.4f}"))
    with tempfile.TemporaryDirectory() as tmp:
        same, differs = determinism(str(save_tiny_pipeline(Path(tmp) / "tiny")))

    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    print(f"\ndeterminism: same seed identical maps: {same}; other seed differs: {differs}")
    print(f"machine: {torch.get_num_threads()} CPU thread(s), torch {torch.__version__}")


if __name__ == "__main__":
    main()
