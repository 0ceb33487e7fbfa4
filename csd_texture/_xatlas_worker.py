"""Run one xatlas unwrap in a child process: ``python _xatlas_worker.py IN.npz OUT.npz``.

xatlas can crash (segfault) on some inputs, so `csd_texture.uv` never calls it in-process.
This file is run as a plain script and imports only numpy and xatlas, so the child starts
fast and without the rest of csd_texture (torch, diffusers).

IN.npz: vertices (V, 3) float32, faces (F, 3) uint32, and the scalar options padding,
resolution, max_chart_area. OUT.npz: vmapping (N,) uint32, faces (F, 3) uint32,
uv (N, 2) float32 in [0, 1], atlas_count.
"""
import sys

import numpy as np


def main(source: str, target: str) -> int:
    import xatlas

    with np.load(source) as data:
        vertices = np.ascontiguousarray(data["vertices"], dtype=np.float32)
        faces = np.ascontiguousarray(data["faces"], dtype=np.uint32)
        padding, resolution = int(data["padding"]), int(data["resolution"])
        max_chart_area = float(data["max_chart_area"])
    atlas = xatlas.Atlas()
    atlas.add_mesh(vertices, faces)
    chart_options = xatlas.ChartOptions()
    chart_options.max_chart_area = max_chart_area
    pack_options = xatlas.PackOptions()
    pack_options.padding = padding
    pack_options.resolution = resolution
    pack_options.bilinear = True
    atlas.generate(chart_options, pack_options)
    vmapping, indices, uv = atlas[0]
    np.savez(target, vmapping=vmapping, faces=indices, uv=uv, atlas_count=atlas.atlas_count)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[-2:]))
