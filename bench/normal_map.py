"""Does the optional normal map (Config.normal_map) help, and what does it cost? Prints a table.

A reference with a known bump pattern (grey dielectric, roughness 0.3, sine height field of period
8 texels, as tests/test_normal_map.py) on an xatlas-unwrapped icosphere; the photometric objective
under the bundled environments with and without a learnable normal map, same seed and views. Scores:
PSNR of lit held-out views (an orbit at 35 degrees elevation under the studio environment, cameras
never sampled in optimisation), PSNR of unlit held-out views (the albedo: without a normal map the
base colour has to absorb the bumps' shading), the correlation of the recovered tangent-space normal
(x, y) with the reference's, and seconds per step on this CPU.

Only the photometric objective is measured: the tiny test priors know colours, not relief, so
whether a normal map helps CSD with a real model is not shown here (the setting stays off).

    python bench/normal_map.py [--steps 200] [--texture-size 64] [--render-size 64] [--threads 1]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import trimesh

from csd_texture.bake import bake_maps
from csd_texture.cameras import bounding_radius, orbit_cameras
from csd_texture.config import Config
from csd_texture.evaluation import masked_psnr
from csd_texture.lighting import fixed_environment_lighting
from csd_texture.mesh_io import load_mesh
from csd_texture.optimize import PhotometricObjective, optimize
from csd_texture.render import get_rasterizer
from csd_texture.render.views import Surface, render_views
from csd_texture.testing import bump_reference
from csd_texture.texture import ImageTexture, make_texture
from csd_texture.uv import prepare_uv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--texture-size", type=int, default=64)
    parser.add_argument("--render-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rasterizer = get_rasterizer("torch")
    mesh = prepare_uv(load_mesh(trimesh.creation.icosphere(subdivisions=3)), texture_size=args.texture_size)
    surface = Surface.from_mesh(mesh, "cpu")
    reference, want_normal = bump_reference(args.texture_size)
    want_normal = want_normal.numpy()
    cameras = orbit_cameras(8, args.render_size, bounding_radius(surface.vertices), elevation=35.0)
    grey = torch.full((8, 3), 0.5)
    print(f"icosphere ({mesh.num_faces} faces), {args.steps} steps, texture {args.texture_size}, "
          f"render {args.render_size}, {args.threads} thread(s)")
    print(f"{'normal_map':<11}{'lit PSNR dB':>13}{'unlit PSNR dB':>15}{'normal corr':>13}{'s/step':>9}")
    for normal_map in (False, True):
        config = Config(steps=args.steps, texture_size=args.texture_size, render_size=args.render_size,
                        views_per_step=2, normal_map=normal_map)
        torch.manual_seed(0)
        texture = make_texture("hybrid", args.texture_size, normal_map=normal_map)
        start = time.perf_counter()
        optimize(texture, surface, rasterizer, PhotometricObjective(surface, reference, rasterizer), config)
        seconds = (time.perf_counter() - start) / max(args.steps, 1)
        maps = bake_maps(mesh, texture, args.texture_size, rasterizer, config.pad_texels)
        got = ImageTexture.from_maps(maps)
        scores = []
        with torch.no_grad():
            for unlit in (False, True):
                lighting = fixed_environment_lighting(cameras, mesh.up_axis, unlit=unlit)
                want = render_views(surface, reference, cameras, lighting, rasterizer, grey)
                image = render_views(surface, got, cameras, lighting, rasterizer, grey).image
                scores.append(masked_psnr(image, want.image, want.mask))
        correlation = float("nan")
        if maps.normal is not None:
            got_xy = maps.normal[maps.coverage][:, :2] * 2 - 1
            correlation = float(np.corrcoef(got_xy.ravel(), want_normal[maps.coverage][:, :2].ravel())[0, 1])
        print(f"{normal_map!s:<11}{scores[0]:>13.2f}{scores[1]:>15.2f}{correlation:>13.3f}{seconds:>9.3f}")


if __name__ == "__main__":
    main()
