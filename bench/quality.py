"""Quality proxies we can measure offline, printed as tables: today's recipe (LEGACY_RECIPE: UV
pyramid, one directional light, unbounded materials) beside the new default (hybrid-field texture,
HDR environment light, material prior, schedule) and the default with `texture="hybrid"` (no field).

- seam jump: mean base-colour difference of surface point pairs closer than 1% of the bounding
  diagonal across two UV charts over that within one chart, after optimising under a zero-mean
  noise objective of CSD's magnitude; beside it the same number for a smooth function of position
  baked onto the same UVs (the target: within 1.2x of it); on an xatlas-unwrapped sphere and fuze;
- drift: roughness/metallic 5th-95th percentiles after that noise run (nothing prefers a material);
- PBR recovery under the environments: known albedo/roughness/metallic maps on a sphere, the
  photometric objective, albedo PSNR and roughness/metallic MAE over covered texels;
- tiny prior: CSD with tests/data/tiny-prior, prompt "a blue ball": mean base colour (hue must stay
  blue) and the share of texels with a channel clipped at 0 or 255;
- saturation: the same prior pushed hard (prompt "a red ball", learning rate 0.1, 200 steps, 64^2
  texels on an icosphere): the share of base-colour texels clipped at 0 or 255;
- texture recovery (fuze's photo texture, held-out views, >= 30 dB) and determinism, as before.

    python bench/quality.py [--steps 100] [--texture-size 256] [--render-size 64] [--threads 2] [--quick]
                            [--sections noise,pbr,prior,saturation]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import trimesh

from csd_texture import texture_mesh
from csd_texture.config import LEGACY_RECIPE, Config
from csd_texture.evaluation import (NoiseObjective, map_errors, material_band, material_reference, run_recipe,
                                    saturation_share, seam_jump, seamless_bake, surface_pairs, texture_recovery)
from csd_texture.mesh_io import load_mesh
from csd_texture.optimize import CSDObjective, PhotometricObjective
from csd_texture.render import get_rasterizer
from csd_texture.render.views import Surface
from csd_texture.testing import save_tiny_pipeline
from csd_texture.texture import ImageTexture
from csd_texture.uv import prepare_uv

ROOT = Path(__file__).resolve().parents[1]
FUZE = ROOT / "assets" / "fuze.obj"
TINY_PRIOR = ROOT / "tests" / "data" / "tiny-prior"
SECTIONS = ("noise", "pbr", "prior", "saturation", "speed", "recovery", "determinism")


def table(rows: list[tuple]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for i, r in enumerate(rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print()


def recipes(base: Config) -> list[tuple[str, Config]]:
    return [("old (legacy)", base.updated(**LEGACY_RECIPE)), ("new (default)", base),
            ("new, hybrid (no field)", base.updated(texture="hybrid"))]


def unwrapped(name: str, texture_size: int):
    source = trimesh.creation.icosphere(subdivisions=3) if name == "sphere" else FUZE
    return prepare_uv(load_mesh(source), keep_uv=False, texture_size=texture_size)


def noise_section(base: Config, meshes: list[str]) -> None:
    rows = [("mesh", "recipe", "seam jump", "seamless bake", "ratio to bake", "rough p5-p95", "metal p5-p95",
             "saturated", "s/step")]
    for name in meshes:
        mesh = unwrapped(name, base.texture_size)
        pairs = surface_pairs(mesh)
        target = seam_jump(seamless_bake(mesh, base.texture_size), pairs)
        for label, config in recipes(base):
            maps, seconds = run_recipe(mesh, NoiseObjective(config.seed), config)
            jump, band = seam_jump(maps, pairs), material_band(maps)
            rows.append((name, label, f"{jump:.2f}", f"{target:.2f}", f"{jump / target:.2f}",
                         f"{band['roughness_p5']:.2f}-{band['roughness_p95']:.2f}",
                         f"{band['metallic_p5']:.2f}-{band['metallic_p95']:.2f}",
                         f"{saturation_share(maps):.3f}", f"{seconds:.2f}"))
    print(f"zero-mean noise objective (CSD magnitude), {base.steps} steps, {base.views_per_step} views of "
          f"{base.render_size} px, {base.texture_size}^2 texels; seam target: ratio to bake <= 1.2")
    table(rows)


def pbr_section(base: Config) -> None:
    mesh = unwrapped("sphere", base.texture_size)
    want = material_reference(mesh, base.texture_size)
    rasterizer = get_rasterizer("torch")
    objective = PhotometricObjective(Surface.from_mesh(mesh, "cpu"), ImageTexture.from_maps(want), rasterizer)
    rows = [("recipe", "lighting", "albedo PSNR dB", "roughness MAE", "metallic MAE", "s/step")]
    for label, config in recipes(base.updated(unlit_fraction=0.2)):
        maps, seconds = run_recipe(mesh, objective, config)
        errors = map_errors(maps, want)
        rows.append((label, config.lighting, f"{errors['albedo_psnr_db']:.2f}", f"{errors['roughness_mae']:.3f}",
                     f"{errors['metallic_mae']:.3f}", f"{seconds:.2f}"))
    print(f"PBR recovery: sphere with known maps (roughness 0.15-0.85, metallic 0/1 regions), photometric "
          f"objective under each recipe's own light, {base.steps} steps")
    table(rows)


def prior_section(base: Config) -> None:
    from csd_texture.guidance.csd import CSDGuidance

    if not (TINY_PRIOR / "unet").is_dir():
        print(f"tiny prior: {TINY_PRIOR} not found, skipped\n")
        return
    guidance = CSDGuidance.from_pretrained(str(TINY_PRIOR))
    mesh = unwrapped("sphere", base.texture_size)
    rows = [("recipe", "prompt", "mean base colour (sRGB)", "saturated", "s/step")]
    for label, config in recipes(base.updated(prompt="a blue ball")):
        embeds = guidance.encode_prompts(config.prompt, config.negative_prompt, config.view_prompts != "off")
        maps, seconds = run_recipe(mesh, CSDObjective(guidance, embeds, config), config)
        srgb = np.clip(maps.albedo[maps.coverage], 0, 1) ** (1 / 2.2)
        rows.append((label, config.prompt, " ".join(f"{c:.2f}" for c in srgb.mean(0)),
                     f"{saturation_share(maps):.3f}", f"{seconds:.2f}"))
    print(f"tiny trained prior, CSD, {base.steps} steps")
    table(rows)


def saturation_section() -> None:
    """Base-colour clipping under a strong objective: the tiny colour prior, a saturated prompt, a high
    learning rate and 200 steps (the setting tests/test_recipe.py pins)."""
    from csd_texture.guidance.csd import CSDGuidance

    if not (TINY_PRIOR / "unet").is_dir():
        print(f"saturation: {TINY_PRIOR} not found, skipped\n")
        return
    guidance = CSDGuidance.from_pretrained(str(TINY_PRIOR))
    mesh = prepare_uv(load_mesh(trimesh.creation.icosphere(subdivisions=2)), keep_uv=False, texture_size=64)
    base = Config(prompt="a red ball", steps=200, texture_size=64, render_size=64, views_per_step=2, pad_texels=2,
                  learning_rate=0.1)
    rows = [("recipe", "prompt", "mean base colour (sRGB)", "saturated", "s/step")]
    for label, config in recipes(base):
        embeds = guidance.encode_prompts(config.prompt, config.negative_prompt, config.view_prompts != "off")
        maps, seconds = run_recipe(mesh, CSDObjective(guidance, embeds, config), config)
        srgb = np.clip(maps.albedo[maps.coverage], 0, 1) ** (1 / 2.2)
        rows.append((label, config.prompt, " ".join(f"{c:.2f}" for c in srgb.mean(0)),
                     f"{saturation_share(maps):.3f}", f"{seconds:.2f}"))
    print(f"saturation: tiny prior CSD pushed hard (learning rate {base.learning_rate}, {base.steps} steps, "
          f"{base.texture_size}^2 texels, icosphere)")
    table(rows)


def speed_section(steps: int = 3) -> None:
    """Seconds per step at the default settings (texture 1024, render 512, one view), CSD with the tiny
    prior, so the difference is the recipe's (render, texture, light, regulariser), not the model's."""
    from csd_texture.guidance.csd import CSDGuidance

    if not (TINY_PRIOR / "unet").is_dir():
        return
    guidance = CSDGuidance.from_pretrained(str(TINY_PRIOR))
    mesh = unwrapped("fuze", 1024)
    rows = [("recipe", "texture", "render", "s/step")]
    for label, config in recipes(Config(prompt="a blue bottle", steps=steps)):
        embeds = guidance.encode_prompts(config.prompt, config.negative_prompt, config.view_prompts != "off")
        _, seconds = run_recipe(mesh, CSDObjective(guidance, embeds, config), config, size=64)
        rows.append((label, config.texture_size, config.render_size, f"{seconds:.2f}"))
    print(f"speed at default settings: fuze.obj, tiny prior CSD, {steps} steps")
    table(rows)


def recovery_section(steps: int, texture_size: int) -> None:
    rows = [("recipe", "steps", "held-out PSNR dB", "s/step")]
    for label, settings in (("old (legacy)", LEGACY_RECIPE), ("new (default)", {}),
                            ("new, hybrid (no field)", {"texture": "hybrid"})):
        result = texture_recovery(FUZE, resolution=128, steps=steps, texture_size=texture_size, views_per_step=2,
                                  learning_rate=0.05, unlit_fraction=0.5, **settings)
        rows.append((label, steps, f"{result.psnr_db:.2f}", f"{result.seconds_per_step:.3f}"))
    print("texture recovery: fuze.obj's own texture, photometric objective, 128 px views")
    table(rows)


def determinism(model: str) -> tuple[bool, bool]:
    sphere = trimesh.creation.icosphere(subdivisions=2)
    run = lambda seed: texture_mesh(sphere, "a red ball", model=model, seed=seed, steps=5, texture_size=64,  # noqa: E731
                                    render_size=64, progress=False).maps.albedo
    first = run(1)
    return bool(np.array_equal(first, run(1))), not np.array_equal(first, run(2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--texture-size", type=int, default=256)
    parser.add_argument("--render-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true", help="sphere only; skip fuze recovery and determinism")
    parser.add_argument("--speed-only", action="store_true", help="only seconds per step at default settings")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run, of {', '.join(SECTIONS)} (--quick drops the last "
                             "three and fuze from noise)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if args.speed_only:
        speed_section()
        return
    base = Config(prompt="-", steps=args.steps, texture_size=args.texture_size, render_size=args.render_size,
                  views_per_step=2, pad_texels=4)
    sections = set(args.sections.split(",")) - ({"speed", "recovery", "determinism"} if args.quick else set())
    unknown = sections - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    if "noise" in sections:
        noise_section(base, ["sphere"] if args.quick else ["sphere", "fuze"])
    if "pbr" in sections:
        pbr_section(base)
    if "prior" in sections:
        prior_section(base)
    if "saturation" in sections:
        saturation_section()
    if "speed" in sections:
        speed_section()
    if "recovery" in sections:
        recovery_section(120, args.texture_size)
    if "determinism" in sections:
        with tempfile.TemporaryDirectory() as tmp:
            same, differs = determinism(str(save_tiny_pipeline(Path(tmp) / "tiny")))
        print(f"determinism: same seed identical maps: {same}; other seed differs: {differs}")
    print(f"machine: {torch.get_num_threads()} CPU thread(s), torch {torch.__version__}, "
          f"{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
