"""Torch rasterizer speed: ms per view (best of N) for a UV sphere at several face counts
and resolutions, rasterize + interpolate of positions.

    python bench/render.py [--repeats 5] [--threads 1] [--batch 1]
"""
from __future__ import annotations

import argparse
import math
import time

import torch
import trimesh

from csd_texture.render import TorchRasterizer, interpolate


def uv_sphere(rings: int, segments: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(V, 3) float32 unit-sphere vertices and (F, 3) int32 faces, about 2 * rings * segments faces."""
    mesh = trimesh.creation.uv_sphere(radius=1.0, count=[rings, segments])
    return torch.tensor(mesh.vertices, dtype=torch.float32), torch.tensor(mesh.faces, dtype=torch.int32)


def camera_mvp(batch: int) -> torch.Tensor:
    """(B, 4, 4) cameras 3 units from the origin around the Y axis, 45 degree fov."""
    f, near, far = 1 / math.tan(math.radians(22.5)), 0.5, 10.0
    proj = torch.tensor([[f, 0, 0, 0], [0, f, 0, 0],
                         [0, 0, -(far + near) / (far - near), -2 * far * near / (far - near)],
                         [0, 0, -1, 0]])
    mvps = []
    for k in range(batch):
        angle = 2 * math.pi * k / batch
        c, s = math.cos(angle), math.sin(angle)
        view = torch.tensor([[c, 0, -s, 0], [0, 1, 0, 0], [s, 0, c, -3.0], [0, 0, 0, 1]])
        mvps.append(proj @ view)
    return torch.stack(mvps)


def best_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--batch", type=int, default=1, help="views per rasterize call")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rasterizer = TorchRasterizer()
    resolutions = (64, 128, 256)
    mvp = camera_mvp(args.batch)
    print(f"torch rasterizer, ms per view (best of {args.repeats}), "
          f"{torch.get_num_threads()} threads, batch {args.batch}")
    print(f"{'faces':>8} " + " ".join(f"{r:>6}px" for r in resolutions))
    for rings in (16, 50, 120, 224):
        vertices, faces = uv_sphere(rings, rings * 2 if rings < 224 else rings)
        homo = torch.cat([vertices, torch.ones(len(vertices), 1)], 1)
        pos = torch.einsum("bij,vj->bvi", mvp, homo).contiguous()
        row = []
        for res in resolutions:
            def run() -> None:
                frags = rasterizer.rasterize(pos, faces, (res, res))
                interpolate(vertices, frags, faces)
            row.append(best_ms(run, args.repeats) / args.batch)
        print(f"{faces.shape[0]:>8} " + " ".join(f"{ms:>8.1f}" for ms in row))


if __name__ == "__main__":
    main()
