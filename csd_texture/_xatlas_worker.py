"""Run one xatlas unwrap in a child process: ``python _xatlas_worker.py IN.npz OUT.npz``.

xatlas can crash (segfault) on some inputs, so `csd_texture.uv` never calls it in-process.
This file is run as a plain script and imports only numpy and xatlas, so the child starts
fast and without the rest of csd_texture (torch, diffusers).

IN.npz: vertices (V, 3) float32, faces (F, 3) uint32, chunks (F,) int32 (faces of one chunk
are unwrapped as one xatlas mesh, so chunks are charted in parallel and packed together),
and the scalar options padding, resolution, max_chart_area.
OUT.npz: vmapping (N,) int64, faces (F, 3) int64 in input face order, uv (N, 2) float32 in
[0, 1], atlas_count, peak_rss_mb (this process's peak memory, 0 where unknown).
"""
import sys

import numpy as np


def main(source: str, target: str) -> int:
    import xatlas

    with np.load(source) as data:
        vertices = np.ascontiguousarray(data["vertices"], dtype=np.float32)
        faces = np.ascontiguousarray(data["faces"], dtype=np.uint32)
        chunks = data["chunks"]
        padding, resolution = int(data["padding"]), int(data["resolution"])
        max_chart_area = float(data["max_chart_area"])
    atlas = xatlas.Atlas()
    pieces = []
    for chunk in range(int(chunks.max()) + 1):
        face_ids = np.flatnonzero(chunks == chunk)
        used, local = np.unique(faces[face_ids], return_inverse=True)
        atlas.add_mesh(vertices[used], local.reshape(-1, 3).astype(np.uint32))
        pieces.append((face_ids, used))
    chart_options = xatlas.ChartOptions()
    chart_options.max_chart_area = max_chart_area
    pack_options = xatlas.PackOptions()
    pack_options.padding = padding
    pack_options.resolution = resolution
    pack_options.bilinear = True
    atlas.generate(chart_options, pack_options)
    vmapping, out_faces, uv, offset = [], np.zeros((len(faces), 3), dtype=np.int64), [], 0
    for index, (face_ids, used) in enumerate(pieces):
        piece_vmapping, piece_faces, piece_uv = atlas[index]
        vmapping.append(used[piece_vmapping])
        out_faces[face_ids] = piece_faces.astype(np.int64) + offset
        uv.append(piece_uv)
        offset += len(piece_vmapping)
    np.savez(target, vmapping=np.concatenate(vmapping), faces=out_faces, uv=np.concatenate(uv),
             atlas_count=atlas.atlas_count, peak_rss_mb=peak_rss_mb())
    return 0


def peak_rss_mb() -> float:
    """Peak resident memory of this process since exec (Linux), else 0."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[-2:]))
