"""Unwrap time and peak memory on big meshes: load_mesh + prepare_uv (xatlas in a child).

    python bench/unwrap.py                # the 200k and 1.3M-face cases
    python bench/unwrap.py --cases 200k   # just one

Each case runs in a fresh process so its peak memory is its own. The meshes are the test
bunny (and blub) subdivided, with a little noise so that, like a scan, they are not
piecewise flat. Prints a markdown table; "xatlas child" is the isolated worker process.
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import trimesh

MESHES = Path(__file__).resolve().parents[1] / "tests" / "data" / "meshes" / "good"
CASES = {"200k": [("bunny.ply", 2)], "1.3M": [("bunny.ply", 3), ("blub.obj", 2)]}


def build(case: str) -> trimesh.Scene:
    """The case's mesh: each (file, subdivisions) becomes one noisy node, side by side."""
    scene = trimesh.Scene()
    rng = np.random.default_rng(0)
    for index, (name, subdivisions) in enumerate(CASES[case]):
        mesh = trimesh.load_mesh(MESHES / name, process=True)
        mesh.apply_scale(1.0 / mesh.scale)
        vertices, faces = mesh.vertices, mesh.faces
        for _ in range(subdivisions):
            vertices, faces = trimesh.remesh.subdivide(vertices, faces)
        piece = trimesh.Trimesh(vertices, faces, process=False)
        piece.vertices += piece.vertex_normals * rng.normal(0, 2e-4, (len(vertices), 1))
        scene.add_geometry(piece, node_name=f"{name}-{index}",
                           transform=trimesh.transformations.translation_matrix([1.5 * index, 0, 0]))
    return scene


def run_case(case: str) -> dict:
    """Time load_mesh and prepare_uv on one case (run in its own process)."""
    from csd_texture.mesh_io import load_mesh
    from csd_texture.uv import prepare_uv

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    uv_log = logging.getLogger("csd_texture.uv")
    uv_log.addHandler(handler)
    uv_log.setLevel(logging.DEBUG)
    scene = build(case)
    start = time.perf_counter()
    mesh = load_mesh(scene, name=case)
    loaded = time.perf_counter()
    unwrapped = prepare_uv(mesh)
    done = time.perf_counter()
    worker = [r for r in records if hasattr(r, "unwrap_peak_mb")][-1]
    return {
        "case": case,
        "faces": mesh.num_faces,
        "load_s": loaded - start,
        "unwrap_s": done - loaded,
        "xatlas_s": worker.unwrap_seconds,
        "out_vertices": len(unwrapped.vertices),
        "peak_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_xatlas_mb": worker.unwrap_peak_mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_case(args.child)))
        return
    print("| case | faces | load_mesh s | prepare_uv s | of which xatlas child s | output vertices |"
          " peak main MB | peak xatlas child MB |")
    print("|---|---|---|---|---|---|---|---|")
    for case in args.cases:
        out = subprocess.run([sys.executable, __file__, "--child", case], capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {row['case']} | {row['faces']:,} | {row['load_s']:.1f} | {row['unwrap_s']:.1f} | "
              f"{row['xatlas_s']:.1f} | {row['out_vertices']:,} | {row['peak_main_mb']:.0f} | "
              f"{row['peak_xatlas_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
