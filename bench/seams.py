"""Seam check figures: how far an exported GLB, read back and rendered, is from the optimised
maps at UV chart borders, with the bake's padding on and off (csd_texture.seams).

The maps are the bundled fuze bottle's own photo texture baked through the pipeline's bake
(a high-contrast texture, harder than most generated ones), on its source UVs and on an
xatlas unwrap. Errors are sRGB in [0, 1]; "worst border" is the mean error over chart-border
pixels in the worst view.

    python bench/seams.py [--views 24] [--size 256] [--texture-size 512] [--threads 2]
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from csd_texture.bake import bake_maps
from csd_texture.export import export_textured_mesh
from csd_texture.mesh_io import load_mesh
from csd_texture.render import get_rasterizer
from csd_texture.seams import seam_report
from csd_texture.texture import ImageTexture
from csd_texture.uv import prepare_uv

FUZE = Path(__file__).resolve().parents[1] / "assets" / "fuze.obj"
FILL = (0.0, 1.0, 0.0)  # what an unpadded bake shows outside the charts in this bench
CASES = (("padded (16 texels)", 16), ("padded (2 texels)", 2), ("no padding, green fill", 0))
COLUMNS = ("uv", "case", "border px", "worst border", "max border", "interior", "background px",
           "bleeding px", "seconds")


def row(uv_name: str, case: str, report: dict, seconds: float) -> tuple:
    return (uv_name, case, report["border_pixels"], f"{report['worst_border_error']:.4f}",
            f"{report['max_border_error']:.3f}", f"{report['interior_error']:.4f}", report["background_pixels"],
            report["bleed_pixels"], f"{seconds:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=24)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--texture-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rasterizer = get_rasterizer("torch")
    source = load_mesh(FUZE)
    texture = ImageTexture.from_srgb(source.base_color_image)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for uv_name, keep_uv in (("source", True), ("xatlas", False)):
            mesh = prepare_uv(source, keep_uv=keep_uv)
            reference = bake_maps(mesh, texture, args.texture_size, rasterizer, pad_texels=16)
            for case, pad in CASES:
                maps = bake_maps(mesh, texture, args.texture_size, rasterizer, pad_texels=pad)
                if pad == 0:
                    albedo = maps.albedo.copy()
                    albedo[~maps.coverage] = FILL
                    maps = dataclasses.replace(maps, albedo=albedo)
                out = export_textured_mesh(mesh, maps, Path(folder) / f"{uv_name}-{pad}.glb", {})
                start = time.perf_counter()
                report = seam_report(mesh, reference, out, views=args.views, size=args.size, rasterizer=rasterizer)
                rows.append(row(uv_name, case, report, time.perf_counter() - start))
    print(f"seam check: fuze.obj, {args.texture_size}^2 texels, {args.views} views of {args.size}^2 px, "
          f"torch rasterizer, {args.threads} threads")
    widths = [max(len(str(c)), *(len(str(r[i])) for r in rows)) for i, c in enumerate(COLUMNS)]
    for line in (COLUMNS, tuple("-" * w for w in widths), *rows):
        print(" | ".join(str(cell).ljust(width) for cell, width in zip(line, widths)))


if __name__ == "__main__":
    main()
