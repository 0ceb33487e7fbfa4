"""Time-to-texture and memory of the optimisation loop, against a reference loop, in one table.

Builds the default model's exact architecture (bench/sd21_base/*.json, random weights: the same cost
as the real SD-2.1-base) or the tiny test architecture (`--arch tiny`, for CPU), runs the real loop
on a real mesh subdivided to >= --faces faces, and prints per-stage ms per step, peak memory,
achieved TFLOP/s of the UNet and VAE encoder, measured unwrap/bake/export times and a projection of
the default preset's end-to-end time. The reference loop is the CSD reference code's way: fp32
weights, one UNet call per prompt, one view per step, no compilation.

    python bench/gpu_speed.py                      # on a CUDA GPU: SD-2.1-base, 512 render, 1024 texture
    python bench/gpu_speed.py --arch tiny --device cpu --render-size 64 --texture-size 64 --faces 2000
"""
from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import trimesh

from csd_texture.bake import bake_maps
from csd_texture.config import Config, preset
from csd_texture.export import export_textured_mesh
from csd_texture.guidance.csd import CSDGuidance
from csd_texture.mesh_io import load_mesh
from csd_texture.optimize import CSDObjective, optimize, sample_views
from csd_texture.cameras import bounding_radius, view_bucket_index
from csd_texture.render import get_rasterizer
from csd_texture.render.views import Surface, render_views
from csd_texture.texture import make_texture
from csd_texture.uv import prepare_uv

ROOT = Path(__file__).resolve().parent
MESH = ROOT.parent / "tests" / "data" / "meshes" / "good" / "blub.obj"
H100_BF16_DENSE_TFLOPS = 989.0


@dataclass
class LoopSpec:
    name: str
    dtype: torch.dtype
    batch_prompts: bool
    views_per_step: int
    compile: bool


def build_guidance(arch: str, device: torch.device, spec: LoopSpec) -> CSDGuidance:
    """Random-weight models of the given architecture, injected like loaded ones."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from csd_texture.testing import build_tiny_pipeline, build_tokenizer

    torch.manual_seed(0)
    if arch == "tiny":
        pipe = build_tiny_pipeline()
        parts = dict(unet=pipe.unet, vae=pipe.vae, scheduler=pipe.scheduler, text_encoder=pipe.text_encoder,
                     tokenizer=pipe.tokenizer)
    else:
        config = lambda name: json.loads((ROOT / "sd21_base" / f"{name}.json").read_text())  # noqa: E731
        parts = dict(
            unet=UNet2DConditionModel.from_config(config("unet")),
            vae=AutoencoderKL.from_config(config("vae")),
            scheduler=DDPMScheduler.from_config(config("scheduler")),
            text_encoder=CLIPTextModel(CLIPTextConfig(**config("text_encoder"))),
            tokenizer=build_tokenizer(model_max_length=77),
        )
    guidance = CSDGuidance(**parts, device=device, dtype=spec.dtype, batch_prompts=spec.batch_prompts)
    if device.type == "cuda":
        guidance.unet.to(memory_format=torch.channels_last)
        guidance.vae.to(memory_format=torch.channels_last)
    if spec.compile:
        guidance.unet = torch.compile(guidance.unet)
    return guidance


def timed(device: torch.device, fn: Callable[[], object]) -> tuple[object, float]:
    """Result and milliseconds of fn, synchronising the GPU around it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, (time.perf_counter() - start) * 1000


def flops(fn: Callable[[], object]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def stage_breakdown(guidance: CSDGuidance, surface: Surface, config: Config, device: torch.device,
                    steps: int) -> dict[str, float]:
    """Mean ms per step of each stage of the CSD step (same calls as the loop, timed one by one)."""
    rasterizer = get_rasterizer(config.renderer, device)
    texture = make_texture(config.texture, config.texture_size).to(device)
    optimizer = torch.optim.Adam(texture.parameters(), lr=config.learning_rate)
    embeds = guidance.encode_prompts("a wooden chair", "blurry")
    generator = torch.Generator().manual_seed(0)
    radius = bounding_radius(surface.vertices)
    totals = {"render": 0.0, "vae_fwd_bwd": 0.0, "unet": 0.0, "optimizer": 0.0}
    unet_flops = vae_flops = 0
    for step in range(steps + 1):  # the first step warms up and is not counted
        views = sample_views(config, generator, radius, (0.0, 1.0, 0.0), device)
        out, t_render = timed(device, lambda: render_views(surface, texture, views.cameras, views.lighting,
                                                            rasterizer, views.background).image)
        latents, t_enc = timed(device, lambda: guidance.encode_images(out))
        t = guidance.sample_timestep(0.0, config, generator)
        noisy = guidance.scheduler.add_noise(latents.detach(), torch.randn_like(latents), torch.tensor([t]))
        index = view_bucket_index(views.cameras.elevation, views.cameras.azimuth).to(device)
        call = lambda: guidance.csd_gradient(noisy, t, embeds.cond[index], embeds.negative, embeds.null,  # noqa: E731
                                             guidance_weights())
        grad, t_unet = timed(device, call)
        loss = 0.5 * ((latents - (latents - grad).detach()) ** 2).sum()
        _, t_bwd = timed(device, loss.backward)
        _, t_opt = timed(device, lambda: (optimizer.step(), optimizer.zero_grad(set_to_none=True)))
        if step == 0:
            unet_flops = flops(call)
            vae_flops = 3 * flops(lambda: guidance.encode_images(out.detach()))  # forward + ~2x backward
            continue
        for key, value in zip(totals, (t_render, t_enc + t_bwd, t_unet, t_opt)):
            totals[key] += value / steps
    totals["unet_tflops"] = unet_flops / (totals["unet"] / 1000) / 1e12
    totals["vae_tflops"] = vae_flops / (totals["vae_fwd_bwd"] / 1000) / 1e12
    return totals


def guidance_weights():
    from csd_texture.guidance.csd import GuidanceWeights

    return GuidanceWeights.csd(1.0, 0.75)


def loop_ms_per_step(guidance: CSDGuidance, surface: Surface, config: Config, device: torch.device) -> float:
    """Mean ms per step of the real optimize() loop (after one warm-up step)."""
    rasterizer = get_rasterizer(config.renderer, device)
    objective = CSDObjective(guidance, guidance.encode_prompts("a wooden chair", "blurry"), config)
    texture = make_texture(config.texture, config.texture_size).to(device)
    optimize(texture, surface, rasterizer, objective, config.updated(steps=1))
    _, ms = timed(device, lambda: optimize(texture, surface, rasterizer, objective, config))
    return ms / config.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=["sd21-base", "tiny"], default="sd21-base")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per loop")
    parser.add_argument("--render-size", type=int, default=512)
    parser.add_argument("--texture-size", type=int, default=1024)
    parser.add_argument("--faces", type=int, default=50_000)
    parser.add_argument("--views-per-step", type=int, default=1, help="views per step of the fast loop")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet in the fast loop")
    parser.add_argument("--skip-reference", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    half = torch.bfloat16 if device.type == "cuda" else torch.float32

    mesh = trimesh.load(MESH, force="mesh")
    while len(mesh.faces) < args.faces:
        mesh = mesh.subdivide()
    start = time.perf_counter()
    data = load_mesh(mesh)
    data = prepare_uv(data)
    unwrap_s = time.perf_counter() - start
    surface = Surface.from_mesh(data, device)
    base = preset("balanced", render_size=args.render_size, texture_size=args.texture_size, steps=args.steps,
                  device=args.device, negative_prompt="blurry")

    specs = [LoopSpec("default", half, True, args.views_per_step, args.compile)]
    if not args.skip_reference:
        specs.append(LoopSpec("reference", torch.float32, False, 1, False))
    rows = []
    for spec in specs:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        guidance = build_guidance(args.arch, device, spec)
        config = base.updated(views_per_step=spec.views_per_step)
        stages = stage_breakdown(guidance, surface, config, device, max(2, args.steps // 4))
        total = loop_ms_per_step(guidance, surface, config, device)
        peak_gpu = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        rows.append((spec, stages, total, peak_gpu))
        del guidance

    texture = make_texture("image", args.texture_size).to(device)
    rasterizer = get_rasterizer("auto", device)
    _, bake_ms = timed(device, lambda: bake_maps(data, texture, args.texture_size, rasterizer))
    with torch.no_grad():
        maps = bake_maps(data, texture, args.texture_size, rasterizer)
    with tempfile.TemporaryDirectory() as tmp:
        _, export_ms = timed(device, lambda: export_textured_mesh(data, maps, Path(tmp) / "out.glb", {}))
    default_steps = preset("balanced").steps
    process_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    header = ("loop", "dtype", "views", "render", "vae f+b", "unet", "optim", "total ms/step", "steps/s",
              "unet TFLOP/s", "vae TFLOP/s", "peak GPU GiB", f"projected {default_steps}-step s")
    table = [header]
    for spec, s, total, peak in rows:
        projected = unwrap_s + default_steps * total / 1000 + (bake_ms + export_ms) / 1000
        table.append((spec.name, str(spec.dtype).replace("torch.", ""), spec.views_per_step,
                      *(f"{s[k]:.1f}" for k in ("render", "vae_fwd_bwd", "unet", "optimizer")), f"{total:.1f}",
                      f"{1000 / total:.2f}", f"{s['unet_tflops']:.2f}", f"{s['vae_tflops']:.2f}", f"{peak:.2f}",
                      f"{projected:.1f}"))
    widths = [max(len(str(r[i])) for r in table) for i in range(len(header))]
    for r in table:
        print("  ".join(str(c).rjust(w) for c, w in zip(r, widths)))
    if len(rows) == 2:
        print(f"\nspeed-up of the default loop over the reference: {rows[1][2] / rows[0][2]:.2f}x per step")
    print(f"mesh: {len(data.faces)} faces; unwrap {unwrap_s:.2f} s, bake {bake_ms / 1000:.2f} s, "
          f"export {export_ms / 1000:.2f} s; process peak RSS {process_peak:.2f} GiB")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {gpu}; arch {args.arch}; render {args.render_size}, texture {args.texture_size}; "
          f"H100 dense bf16 peak about {H100_BF16_DENSE_TFLOPS:.0f} TFLOP/s")


if __name__ == "__main__":
    main()
