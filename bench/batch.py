"""Batch throughput and per-asset overhead on CPU with the tiny model, in two tables.

1. Assets per hour for `csd-texture batch` with 1 and 2 workers, locally and on Ray (a fresh
   local instance per run), timed from the command's start to its exit on a library of
   --assets small meshes (model loading, process and Ray start-up included).
2. Per-asset overhead outside the optimisation (mesh load, unwrap, prompt encoding, bake,
   export) as a share of the asset's total time: at the bench settings (measured), and at the
   default settings (600 steps, 1024 texture, 512 render): every stage measured on one asset
   with --overhead-steps steps, the optimisation projected to 600 steps from its time per step
   after the first (or really run with --overhead-steps 600).

    python bench/batch.py [--assets 16] [--steps 60] [--texture-size 256] [--render-size 128] [--threads 1] [--no-ray]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import trimesh

from csd_texture.api import load_guidance, texture_mesh
from csd_texture.config import Config
from csd_texture.testing import save_tiny_pipeline

MESHES = Path(__file__).resolve().parent.parent / "tests" / "data" / "meshes" / "good"
OVERHEAD_STAGES = ("load", "unwrap", "model_load", "bake", "export")  # model_load: prompt encoding (model reused)


def make_library(root: Path, count: int) -> Path:
    """`count` assets, one folder each, cycling through four small meshes of 12 to 5760 faces."""
    makers = [
        lambda p: shutil.copy(MESHES / "suzanne.ply", p.with_suffix(".ply")),
        lambda p: shutil.copy(MESHES / "teddy.obj", p.with_suffix(".obj")),
        lambda p: trimesh.creation.box(extents=(2, 1, 1)).export(p.with_suffix(".stl")),
        lambda p: trimesh.creation.cylinder(radius=0.5, height=1.5, sections=32).export(p.with_suffix(".obj")),
    ]
    for i in range(count):
        folder = root / f"asset{i:03d}"
        folder.mkdir(parents=True)
        makers[i % len(makers)](folder / "mesh")
    return root


def run_batch(library: Path, out: Path, model: Path, sizes: list[str], extra: list[str],
              threads: int) -> tuple[float, dict]:
    """Wall seconds of one `csd-texture batch` run (`threads` CPU threads per worker) and its report."""
    exe = Path(sys.executable).parent / "csd-texture"
    command = [str(exe), "batch", str(library), "-o", str(out), "--prompt", "a painted toy", "--model", str(model),
               "--device", "cpu", "--quiet", *sizes, *extra]
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}  # what Ray gives a one-CPU actor
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return wall, json.loads((out / "report.json").read_text())


def overhead_share(timings: dict[str, float]) -> float:
    overhead = sum(timings.get(stage, 0.0) for stage in OVERHEAD_STAGES)
    return overhead / (overhead + timings["optimize"])


def throughput_table(library: Path, model: Path, work: Path, args: argparse.Namespace) -> list[dict]:
    sizes = ["--steps", str(args.steps), "--texture-size", str(args.texture_size), "--render-size", str(args.render_size)]
    modes = [("local", 1, []), ("local", 2, ["--workers", "2"])]
    if not args.no_ray:
        modes += [("ray", 1, ["--workers", "1", "--ray"]), ("ray", 2, ["--workers", "2", "--ray"])]
    rows = []
    for name, workers, extra in modes:
        wall, report = run_batch(library, work / f"out-{name}-{workers}", model, sizes, extra, args.threads)
        assets = report["assets"]
        assert report["counts"]["succeeded"] == len(assets), report["counts"]
        rows.append({
            "mode": name, "workers": workers, "assets": len(assets), "wall_s": wall,
            "assets_per_hour": len(assets) * 3600 / wall,
            "s_per_asset": sum(a["seconds"] for a in assets) / len(assets),
            "overhead": sum(overhead_share(a["timings_s"]) for a in assets) / len(assets),
        })
        print(f"  {name} x{workers}: {wall:.1f} s", file=sys.stderr)
    return rows


def default_settings_overhead(model: Path, work: Path, steps: int) -> tuple[dict[str, float], float]:
    """Stage timings of teddy.obj at default settings with `steps` steps (model loaded beforehand, as
    in a batch) and the optimisation's seconds per step after the first (warm-up) step."""
    config = Config(prompt="a painted toy", model=str(model), device="cpu", steps=steps)
    result = texture_mesh(MESHES / "teddy.obj", output=work / "teddy.glb", config=config,
                          guidance=load_guidance(config), progress=False)
    history = result.history
    per_step = (history[-1].elapsed - history[0].elapsed) / (len(history) - 1)
    return result.timings, per_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=int, default=16)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--texture-size", type=int, default=256)
    parser.add_argument("--render-size", type=int, default=128)
    parser.add_argument("--overhead-steps", type=int, default=10, help="steps of the default-settings run (>= 2)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads per worker, as Ray gives a one-CPU actor (local runs default to all cores)")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray rows")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = save_tiny_pipeline(work / "tiny-model")
        library = make_library(work / "library", args.assets)
        rows = throughput_table(library, model, work, args)
        timings, per_step = default_settings_overhead(model, work, args.overhead_steps)

    print(f"\nBatch throughput on CPU ({os.cpu_count()} cores, {args.threads} thread(s) per worker), tiny model, "
          f"{args.assets} assets, {args.steps} steps, texture {args.texture_size}, render {args.render_size}:\n")
    print("| mode | workers | wall s | assets/hour | s/asset (worker) | overhead share |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['workers']} | {r['wall_s']:.1f} | {r['assets_per_hour']:.0f} | "
              f"{r['s_per_asset']:.2f} | {r['overhead']:.1%} |")

    overhead = sum(timings.get(stage, 0.0) for stage in OVERHEAD_STAGES)
    projected = overhead + per_step * 600
    print(f"\nPer-asset stages at default settings (teddy.obj, 5760 faces, 1024 texture, 512 render; "
          f"{args.overhead_steps} steps measured):\n")
    print("| stage | seconds |")
    print("|---|---|")
    for stage, seconds in timings.items():
        print(f"| {stage} | {seconds:.2f} |")
    print(f"| optimize per step | {per_step:.3f} |")
    print(f"\nOverhead (load+unwrap+prompt+bake+export) {overhead:.1f} s; with 600 steps "
          f"({per_step * 600:.0f} s of optimisation) it is {overhead / projected:.1%} of the asset's time.")


if __name__ == "__main__":
    main()
