"""The CSD gradient on a texture's roughness and metallic, measured through the loop's own code path.

Renders a sphere with a uniform HybridTexture (given roughness and metallic) from the loop's random
views and lights (`optimize.sample_views`), takes the loop's CSD loss (`optimize.CSDObjective`) and
back-propagates; the sum of the gradient over the coarsest grid's roughness (metallic) channel is
d loss / d(a uniform raw offset of that channel). Reports its mean over many views and noise draws,
the standard error, and the per-draw signal-to-noise ratio for each prompt, so one can tell a wrong
sign from a weak or masked gradient.

    OMP_NUM_THREADS=1 .venv/bin/python bench/material_gradient.py --model tests/data/pattern-prior \
        --prompts "a shiny metal ball" "a matte clay ball" "" --draws 200

Positive mean d/d raw roughness = the loss falls when roughness falls (the prompt wants it smoother).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import replace

import numpy as np
import torch
import trimesh

from csd_texture.cameras import bounding_radius
from csd_texture.config import Config
from csd_texture.datatypes import MeshData
from csd_texture.guidance.csd import CSDGuidance
from csd_texture.lighting import bundled_environments
from csd_texture.optimize import CSDObjective, sample_views
from csd_texture.render import get_rasterizer
from csd_texture.render.views import Surface, render_views
from csd_texture.texture import HYBRID_INIT, MaterialRange, make_texture
from csd_texture.uv import prepare_uv

log = logging.getLogger("material_gradient")
TIMESTEP_BINS = ((0, 100), (100, 300), (300, 600), (600, 1000))


def sphere_surface(texture_size: int) -> Surface:
    """The pattern-prior CLI tests' sphere (icosphere, 3 subdivisions), unwrapped as the CLI does."""
    tm = trimesh.creation.icosphere(subdivisions=3)
    mesh = MeshData(vertices=np.asarray(tm.vertices, np.float32), faces=np.asarray(tm.faces, np.int32),
                    normals=np.asarray(tm.vertex_normals, np.float32), uv=None, name="sphere")
    return Surface.from_mesh(prepare_uv(mesh, texture_size=texture_size), "cpu")


def _raw(value: float, bounds: tuple[float, float]) -> float:
    low, high = bounds
    p = min(max((value - low) / (high - low), 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


def uniform_texture(config: Config, roughness: float, metallic: float) -> torch.nn.Module:
    """The loop's HybridTexture with its coarsest grid set so every point has `roughness` and `metallic`."""
    material = MaterialRange(config.roughness, config.metallic)
    texture = make_texture(config.texture, config.texture_size, config.seed, material)
    with torch.no_grad():
        for channel, name, value, bounds in ((3, "roughness", roughness, material.roughness),
                                             (4, "metallic", metallic, material.metallic)):
            offset = _raw(value, bounds) - _raw(HYBRID_INIT[name], bounds)
            texture.grids[0][:, channel] = offset / texture.gain[channel]
    return texture


def measure(guidance: CSDGuidance, surface: Surface, config: Config, prompt: str, roughness: float, metallic: float,
            draws: int, seed: int) -> dict[str, float]:
    """d loss / d raw offset of roughness and metallic (their grid value / gain) per lit draw: mean,
    standard error and mean / standard deviation, in all and per timestep bin (TIMESTEP_BINS)."""
    texture = uniform_texture(config, roughness, metallic)
    embeds = guidance.encode_prompts(prompt, config.negative_prompt, config.view_prompts != "off")
    objective = CSDObjective(guidance, embeds, config.updated(seed=seed))
    rasterizer = get_rasterizer("torch", "cpu")
    environments = bundled_environments()
    generator = torch.Generator().manual_seed(seed)
    radius = bounding_radius(surface.vertices)
    grads = []
    for _ in range(draws):
        progress = float(torch.rand(1, generator=generator))
        views = sample_views(config, generator, radius, (0.0, 1.0, 0.0), torch.device("cpu"), environments)
        rendered = render_views(surface, texture, views.cameras, views.lighting, rasterizer, views.background)
        out = objective(rendered.image, replace(views, rendered=rendered), progress, generator)
        texture.zero_grad(set_to_none=True)
        out.loss.backward()
        g = texture.grids[0].grad[0].sum(dim=(1, 2, 3))  # (5,) d loss / d grid value, uniform over the box
        grads.append([float(g[3] / texture.gain[3]), float(g[4] / texture.gain[4]), float(g[:3].sum()),
                      float(views.lighting.unlit.any()), out.timestep])
    a = np.array(grads)
    lit = a[:, 3] < 0.5

    def stats(column: np.ndarray) -> tuple[float, float, float]:
        mean, sd = float(column.mean()), float(column.std(ddof=1))
        return mean, sd / math.sqrt(len(column)), mean / max(sd, 1e-30)

    r, m, c = stats(a[lit, 0]), stats(a[lit, 1]), stats(a[lit, 2])
    bins = {}
    for low, high in TIMESTEP_BINS:
        chosen = lit & (a[:, 4] >= low) & (a[:, 4] < high)
        if chosen.sum() >= 3:
            bins[f"{low}-{high}"] = (int(chosen.sum()), stats(a[chosen, 0]), stats(a[chosen, 1]))
    return {"prompt": prompt, "lit_draws": int(lit.sum()), "rough_mean": r[0], "rough_se": r[1], "rough_snr": r[2],
            "metal_mean": m[0], "metal_se": m[1], "metal_snr": m[2], "albedo_mean": c[0], "albedo_snr": c[2],
            "bins": bins}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tests/data/pattern-prior")
    parser.add_argument("--prompts", nargs="+", default=["a shiny metal ball", "a matte clay ball", ""])
    parser.add_argument("--roughness", type=float, nargs="+", default=[0.6])
    parser.add_argument("--metallic", type=float, default=0.4)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", default="{}", help="JSON Config overrides")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = Config(model=args.model, negative_prompt="", steps=120, texture_size=128, render_size=64,
                    device="cpu").updated(**json.loads(args.config))
    guidance = CSDGuidance.from_pretrained(args.model, device="cpu")
    surface = sphere_surface(config.texture_size)
    print("roughness metallic | prompt | lit | d/d raw roughness: mean +- se (snr) | metallic: the same "
          "| albedo snr")
    for roughness in args.roughness:
        for prompt in args.prompts:
            s = measure(guidance, surface, config, prompt, roughness, args.metallic, args.draws, args.seed)
            print(f"{roughness:.2f} {args.metallic:.2f} | {prompt!r:22} | {s['lit_draws']} | "
                  f"{s['rough_mean']:+.2e} +- {s['rough_se']:.1e} ({s['rough_snr']:+.3f}) | "
                  f"{s['metal_mean']:+.2e} +- {s['metal_se']:.1e} ({s['metal_snr']:+.3f}) | {s['albedo_snr']:+.3f}",
                  flush=True)
            for name, (count, r, m) in s["bins"].items():
                print(f"      t {name:9} n={count:3} rough {r[0]:+.2e} +- {r[1]:.1e} ({r[2]:+.3f}) "
                      f"metallic {m[0]:+.2e} +- {m[1]:.1e} ({m[2]:+.3f})", flush=True)


if __name__ == "__main__":
    main()
