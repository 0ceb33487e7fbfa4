"""The pattern prior in tests/data/pattern-prior knows patterns, colours and materials.

It was trained by tools/train_pattern_prior.py (see tests/data/pattern-prior/README.md). Its
samples, drawn with the pipeline's own sampler, are judged by the measurable classifiers of
`csd_texture.pattern_metrics` (on the largest crop that lies on the object: local gradient coherence
and edges across one direction for stripes, along two perpendicular ones for checks, islands in a
ground for dots, colour clusters, highlight peak), and the same captions on random weights must fail
the same judges. Blotches are neither checks nor stripes; the shipped prior draws blotches for "blue
and yellow stripes" and checks, which are strict xfails. The slow tests run the normal CLI with the
prior on a sphere and a standing can (a cylinder) and measure the textures it writes: "red and white
stripes" paints periodic red and white stripes where "a plain red object" is plain red, a flipped
guidance sign moves away from them, and "a shiny metal ball" ends more metallic and smoother than "a
matte clay ball" (with a weaker material prior). The cylinder lying on its side, a pose the prior
never rendered, is a strict xfail with its measured figures.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from csd_texture.mesh_io import load_mesh
from csd_texture.pattern_metrics import (
    central_crop,
    classify_patterns,
    colour_matches,
    highlight_peak,
    rgb_to_hsv,
    two_colours,
)
from csd_texture.testing import load_ddim_pipeline

PRIOR = Path(__file__).parent / "data" / "pattern-prior"
TOOLS = Path(__file__).parents[1] / "tools"
N = 10  # samples per caption
# measured figures of the shipped prior are in tests/data/pattern-prior/README.md
PATTERN_COLOURS_TARGET = 0.8
HIGHLIGHT_THRESHOLD = 0.18  # between matte renders (75% below 0.15) and glossy/metal ones (75% above 0.22)


@pytest.fixture(scope="module")
def pipe():
    return load_ddim_pipeline(PRIOR)


@pytest.fixture(scope="module")
def random_pipe(pipe):
    """The same pipeline with freshly initialised UNet and text encoder: the baseline that must fail."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    baseline = StableDiffusionPipeline(
        vae=pipe.vae, text_encoder=CLIPTextModel(pipe.text_encoder.config), tokenizer=pipe.tokenizer,
        unet=UNet2DConditionModel.from_config(pipe.unet.config), scheduler=pipe.scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    baseline.set_progress_bar_config(disable=True)
    return baseline


def sample(pipe, caption: str, seed: int = 0, n: int = N) -> torch.Tensor:
    images = pipe([caption] * n, num_inference_steps=20, guidance_scale=7.5,
                  generator=torch.Generator().manual_seed(seed), output_type="np").images
    return torch.from_numpy(images)


def colour_shares(images: torch.Tensor, name: str) -> torch.Tensor:
    """(B,) share of the central crop's pixels that look like the colour `name`."""
    return colour_matches(central_crop(images), name).double().mean((1, 2))


def two_coloured_pattern(images: torch.Tensor, colours: tuple[str, str], min_share: float = 0.08) -> list[bool]:
    """Per sample: not plain, and each named colour covers at least `min_share` of the crop."""
    classes = classify_patterns(images)
    a, b = (colour_shares(images, c) for c in colours)
    return [cls != "plain" and bool(x >= min_share) and bool(y >= min_share) for cls, x, y in zip(classes, a, b)]


def captioned_pattern(images: torch.Tensor, colours: tuple[str, str], pattern: str) -> list[bool]:
    """Per sample: `two_coloured_pattern` and the classifier's class is `pattern`."""
    return [c == pattern and ok for c, ok in zip(classify_patterns(images), two_coloured_pattern(images, colours))]


def test_folder_is_small_and_loads_like_stable_diffusion(pipe):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    size = sum(f.stat().st_size for f in PRIOR.rglob("*") if f.is_file())
    assert size <= 20 * 2**20, f"pattern prior folder is {size / 2**20:.1f} MiB"
    assert isinstance(pipe.unet, UNet2DConditionModel)
    assert isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.text_encoder, CLIPTextModel)
    assert pipe.vae_scale_factor == 8 and pipe.unet.config.sample_size * pipe.vae_scale_factor == 64
    assert pipe.scheduler.config.prediction_type == "epsilon"
    for word in ("striped", "stripes", "checkered", "dots", "plain", "shiny", "matte", "metal", "clay", "white", "gold"):
        assert len(pipe.tokenizer(word).input_ids) == 3, word  # one token each


@pytest.fixture(scope="module")
def held_out_renders():
    """Renders from the training data generator with a seed the training never used."""
    sys.path.insert(0, str(TOOLS))
    from train_pattern_prior import draw_scenes

    images, labels = draw_scenes(144, torch.Generator().manual_seed(4242), named_fraction=1.0)
    return images, labels


# the judge's floors per data mix, measured (400 renders, seed 99): shipped mix plain 0.75, stripes
# 0.86, checks 0.75, dots 0.70 (the judge before object-sized crops and cross energy: 0.75, 0.89,
# 0.71, 0.58); checks laid on the surface with large dots: 0.78, 0.86, 0.71, 0.41 (before: checks
# about 0.44, most called stripes: a large check's edges are locally coherent)
@pytest.mark.parametrize(("mix", "floors"), [
    ({}, {"plain": 0.7, "stripes": 0.8, "checkerboard": 0.55, "dots": 0.62}),
    ({"dot_spacing": (0.55, 0.8), "checker_cell": (0.4, 0.6), "checker_kind": "surface"},
     {"plain": 0.7, "stripes": 0.8, "checkerboard": 0.62, "dots": 0.35}),
], ids=["shipped-mix", "surface-checks"])
def test_classifier_recognises_the_training_renders(mix, floors):
    """The judge itself: on held-out renders of the training generator (lit, all shapes and framings)
    each pattern gets its own class most often. Its per-pattern shares are the ceiling a sample's
    accuracy is read against (tools/pattern_prior_eval.py --confusion prints them)."""
    sys.path.insert(0, str(TOOLS))
    from pattern_prior_eval import classifier_confusion
    from train_pattern_prior import DataMix

    shares = classifier_confusion(n=400, seed=99, mix=DataMix(**mix))  # {true pattern: {class: share}}
    assert all(shares[p].get(p, 0.0) >= floors[p] for p in floors), shares
    assert shares["stripes"].get("dots", 0.0) <= 0.05 and shares["plain"].get("dots", 0.0) <= 0.05, shares


@pytest.mark.parametrize("blotch_px", [2.5, 3.0])
def test_classifier_does_not_call_blotches_a_pattern(blotch_px):
    """Two-coloured blotches (smoothed noise thresholded at its median, black and white, filling the
    image) are neither checks nor stripes: their edges run every way. Measured (40 images): 0.05 and
    0.20 called either at 2.5 and 3 px; the judge before edge directions called 0.82 and 0.80."""
    from csd_texture.pattern_metrics import _blur

    noise = torch.randn(40, 1, 64, 64, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    field = _blur(noise, blotch_px)[:, 0]
    white = (field > field.flatten(1).median(1).values[:, None, None]).double()[..., None]
    images = _blur((0.1 + 0.85 * white).expand(-1, -1, -1, 3).permute(0, 3, 1, 2), 0.7).permute(0, 2, 3, 1)
    classes = classify_patterns(images)
    assert np.mean([c in ("checkerboard", "stripes") for c in classes]) <= 0.25, classes


def test_min_snr_weighting_keeps_noisy_steps_and_damps_clean_ones():
    """train_pattern_prior --min-snr: weight 1 where SNR <= gamma (the noisy steps that decide the
    layout), gamma / SNR above it; gamma 0 is the plain objective."""
    sys.path.insert(0, str(TOOLS))
    from train_pattern_prior import snr_weight

    alpha_bar = torch.tensor([0.01, 0.5, 5 / 6, 0.99])  # SNR 0.0101, 1, 5, 99
    assert torch.allclose(snr_weight(alpha_bar, 5.0), torch.tensor([1.0, 1.0, 1.0, 5 / 99]))
    assert torch.equal(snr_weight(alpha_bar, 0.0), torch.ones(4))


def test_pattern_word_gain_sees_the_stripes_word_and_not_random_weights(pipe, random_pipe):
    """pattern_prior_eval.pattern_word_gain: the shipped UNet denoises stripes renders better with
    "striped" than with "checkered" or "dotted" (measured 0.018 at these settings, the word it draws
    from); a UNet of random weights gets no such gain from any word (measured |gain| 0.0008-0.0013)."""
    sys.path.insert(0, str(TOOLS))
    from pattern_prior_eval import pattern_word_gain

    shipped = pattern_word_gain(pipe, n=48, timesteps=(700, 500), repeats=2)
    random = pattern_word_gain(random_pipe, n=48, timesteps=(700, 500), repeats=2)
    assert shipped["stripes"]["mean"] > 0.008, shipped
    assert all(abs(gains["mean"]) < 0.004 for gains in random.values()), random


def test_autoencoder_reconstructs_patterns(pipe, held_out_renders):
    images, labels = held_out_renders
    with torch.no_grad():
        recon = ((pipe.vae.decode(pipe.vae.encode(images * 2 - 1).latent_dist.mode()).sample + 1) / 2).clamp(0, 1)
    mse = (recon - images).pow(2).mean((1, 2, 3))
    patterned = torch.tensor([lab["pattern"] in ("stripes", "checkerboard") for lab in labels])
    assert mse.mean() < 0.01, mse.mean()
    # stripes survive the 8x8x4 latent (the classifier sees the same class afterwards), checks often
    # do (measured here: 0.79 and 0.54; --eval-only's 48 renders each: 0.98 and 0.54; their 1-1.5
    # latent-cell squares blur)
    before = classify_patterns(images[patterned].permute(0, 2, 3, 1))
    after = classify_patterns(recon[patterned].permute(0, 2, 3, 1))
    kinds = [lab["pattern"] for lab in labels if lab["pattern"] in ("stripes", "checkerboard")]
    same = {k: np.mean([a == b for a, b, kind in zip(before, after, kinds) if kind == k]) for k in ("stripes", "checkerboard")}
    assert same["stripes"] >= 0.7 and same["checkerboard"] >= 0.35, (same, list(zip(kinds, before, after)))
    # a mean-colour autoencoder (what the colour prior has) would not keep them
    blurred = images[patterned].mean((2, 3), keepdim=True).expand_as(images[patterned])
    assert np.mean([a == b for a, b in zip(before, classify_patterns(blurred.permute(0, 2, 3, 1)))]) < 0.3


BLOTCHES = "the shipped prior draws two-coloured blotches here, which the judge no longer counts as the pattern"


# the captioned pattern's floor: the 0.8 for stripes, 0.5 for checks. With the judge that
# counted any balanced two-colour field as checks and large blotches as stripes, all three passed;
# the judge now asks for edges along two perpendicular directions (checks) or across only one
# (stripes), and the shipped prior's blue and yellow stripes and black and white checks are what
# its sample sheet shows, blotches (bench/results/pattern-prior-samples.png): strict xfails.
@pytest.mark.parametrize(("caption", "colours", "pattern", "floor"), [
    ("a red and white striped ball", ("red", "white"), "stripes", PATTERN_COLOURS_TARGET),
    pytest.param("blue and yellow stripes", ("blue", "yellow"), "stripes", PATTERN_COLOURS_TARGET,
                 marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason=BLOTCHES + " (0.20 striped)")),
    pytest.param("a black and white checkered cube", ("black", "white"), "checkerboard", 0.5,
                 marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason=BLOTCHES + " (0.20 checks)")),
])
def test_pattern_captions_give_patterns_in_the_captioned_colours(pipe, random_pipe, caption, colours, pattern, floor):
    """Both colours and not plain in >= 80% of the samples, and the classifier's class is the
    caption's pattern in `floor` of them (measured at this seed: 0.9, 0.2, 0.2)."""
    images = sample(pipe, caption)
    coloured, right = two_coloured_pattern(images, colours), captioned_pattern(images, colours, pattern)
    assert np.mean(coloured) >= PATTERN_COLOURS_TARGET, f"'{caption}': {np.mean(coloured):.2f}"
    assert np.mean(right) >= floor, f"'{caption}': {np.mean(right):.2f}"
    # random weights draw coloured noise: it sometimes holds both colours, rarely in the pattern
    baseline = captioned_pattern(sample(random_pipe, caption), colours, pattern)
    assert np.mean(baseline) <= np.mean(right) - 0.3, (np.mean(right), np.mean(baseline))


def test_plain_captions_give_plain_samples_of_that_colour(pipe, random_pipe):
    images = sample(pipe, "a plain red object")
    classes = classify_patterns(images)
    red = [bool(colour_matches(c, "red")) for c in images.flatten(1, 2).mean(1)]
    right = [c == "plain" and r for c, r in zip(classes, red)]
    assert np.mean(right) >= 0.8, list(zip(classes, red))
    baseline = sample(random_pipe, "a plain red object")
    assert np.mean([bool(colour_matches(c, "red")) for c in baseline.flatten(1, 2).mean(1)]) <= 0.2


def test_material_shows_as_a_highlight(pipe, random_pipe):
    shiny = highlight_peak(sample(pipe, "a shiny metal ball", seed=1))
    matte = highlight_peak(sample(pipe, "a matte clay ball", seed=2))
    accuracy = ((shiny >= HIGHLIGHT_THRESHOLD).double().mean() + (matte < HIGHLIGHT_THRESHOLD).double().mean()) / 2
    # measured here: accuracy 0.85, medians 0.60 against 0.04 (random weights: 0.01 against 0.10)
    assert accuracy >= 0.8, (shiny.tolist(), matte.tolist())
    # random weights: the two captions' medians differ by chance only (10 samples each), far less
    r_shiny = highlight_peak(sample(random_pipe, "a shiny metal ball", seed=1))
    r_matte = highlight_peak(sample(random_pipe, "a matte clay ball", seed=2))
    gap, chance = float(shiny.median() - matte.median()), abs(float(r_shiny.median() - r_matte.median()))
    assert gap > chance + 0.2, (gap, chance)


def test_empty_prompt_is_trained_and_covers_many_patterns(pipe):
    images = sample(pipe, "", n=16)
    classes = classify_patterns(images)
    assert len(set(classes)) >= 3, classes
    hue, saturation, _ = rgb_to_hsv(images.flatten(1, 2).mean(1).double())
    sectors = {int(h // 60) for h, s in zip(hue.tolist(), saturation.tolist()) if s > 0.2}
    assert len(sectors) >= 3, (hue.tolist(), saturation.tolist())


# ----------------------------------------------------------------------------------------------
# end to end: the normal CLI with the prior

CLI = ["--steps", "120", "--texture-size", "128", "--render-size", "64", "--seed", "0", "--quiet"]


@pytest.fixture(scope="module")
def meshes(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("meshes")
    paths = {"sphere": folder / "sphere.ply", "cylinder": folder / "cylinder.ply", "can": folder / "can.ply"}
    trimesh.creation.icosphere(subdivisions=3).export(paths["sphere"])
    cylinder = trimesh.creation.cylinder(radius=0.6, height=1.6, sections=48)  # axis +Z: lying on its side (+Y is up)
    cylinder.export(paths["cylinder"])
    cylinder.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))
    cylinder.export(paths["can"])  # the same cylinder standing, as a soda can
    return paths


def run_cli(mesh: Path, prompt: str, out: Path, *extra: str) -> dict[str, np.ndarray]:
    """Texture `mesh` with the prior through the CLI; return base colour (sRGB), roughness and
    metallic sampled at 4000 evenly spread surface points (via the output's UVs)."""
    exe = Path(sys.executable).parent / "csd-texture"
    maps = out.with_suffix("")
    proc = subprocess.run([str(exe), str(mesh), prompt, "-o", str(out), "--model", str(PRIOR), "--save-maps", str(maps),
                           *CLI, *extra], capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    mesh_data = load_mesh(out)
    tm = trimesh.Trimesh(mesh_data.vertices, mesh_data.faces, process=False)
    points, face = trimesh.sample.sample_surface_even(tm, 4000, seed=0)
    bary = trimesh.triangles.points_to_barycentric(tm.triangles[face], points)
    uv = (mesh_data.uv[mesh_data.faces[face]] * bary[..., None]).sum(1)

    def lookup(image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        x = np.clip((uv[:, 0] * w).astype(int), 0, w - 1)
        y = np.clip(((1 - uv[:, 1]) * h).astype(int), 0, h - 1)
        return image[y, x]

    def grey(name: str) -> np.ndarray:
        return lookup(np.asarray(Image.open(maps / f"{name}.png"), np.float64) / 255.0)

    return {"points": points, "base": lookup(mesh_data.base_color_image), "roughness": grey("roughness"),
            "metallic": grey("metallic")}


def banding(points: np.ndarray, colours: np.ndarray) -> dict:
    """Two dominant colours and how periodic their layout is on the surface.

    Splits the surface colours in two (2-means); for 49 directions, bins the points by their
    position along the direction (24 bins) and measures how much of the split's variance the
    bins explain and how often the binned majority colour alternates. Returns separation,
    minority share, the best direction's explained share and its number of alternations."""
    split = two_colours(torch.from_numpy(colours)[None, :, None].double())
    label = split.labels[0, :, 0].double().numpy()
    best = (0.0, 0)
    g = np.random.default_rng(0)
    directions = np.vstack([[0, 1, 0], [1, 0, 0], [0, 0, 1], g.normal(size=(46, 3))])
    for d in directions / np.linalg.norm(directions, axis=1, keepdims=True):
        t = points @ d
        bins = np.clip(((t - t.min()) / (np.ptp(t) + 1e-9) * 24).astype(int), 0, 23)
        counts = np.bincount(bins, minlength=24)
        means = np.bincount(bins, weights=label, minlength=24) / np.maximum(counts, 1)
        full = counts >= 20
        explained = float(np.sum(counts * (means - label.mean()) ** 2) / max(np.sum((label - label.mean()) ** 2), 1e-9))
        majority = (means[full] > 0.5).astype(int)
        alternations = int(np.abs(np.diff(majority)).sum())
        if explained > best[0]:
            best = (explained, alternations)
    return {"separation": float(split.separation[0]), "minority": float(split.minority[0]), "explained": best[0],
            "alternations": best[1], "centres": split.centres[0].numpy()}


def is_striped(b: dict, colours: tuple[str, str]) -> bool:
    two = b["separation"] >= 0.25 and b["minority"] >= 0.15
    named = all(any(bool(colour_matches(torch.from_numpy(c), name)) for c in b["centres"]) for name in colours)
    periodic = b["explained"] >= 0.4 and b["alternations"] >= 3
    return two and named and periodic


def saturation(rgb: np.ndarray) -> float:
    return float(rgb_to_hsv(torch.from_numpy(rgb))[1])


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["sphere", "can"])
def test_cli_red_and_white_stripes_are_periodic_and_plain_red_is_one_colour(meshes, shape, tmp_path):
    """The issue's target through the normal CLI (default texture: the hybrid plus the albedo field
    every view moves as a whole): "red and white stripes" becomes periodic red and white stripes,
    horizontal bands on the sphere, vertical stripes around the standing can; "a plain red object"
    one red colour. Measured (seed 0): sphere best direction explains 0.60 of the red/white split,
    7 alternations (seeds 1, 2: 0.71, 0.73); can 0.50, 6 (0.69, 0.65); plain red clusters 0.05 /
    0.07 apart. `--texture hybrid` (no field): sphere 0.12, can 0.11, blotchy pink, not striped."""
    stripes = run_cli(meshes[shape], "red and white stripes", tmp_path / "stripes.glb")
    plain = run_cli(meshes[shape], "a plain red object", tmp_path / "plain.glb")
    b, p = banding(stripes["points"], stripes["base"]), banding(plain["points"], plain["base"])
    assert is_striped(b, ("red", "white")), b
    assert not is_striped(p, ("red", "white")), p
    # one colour: its two clusters closer than is_striped's 0.25 (a field centred on the surface painted
    # cyan patches here, 1.09 / 1.15 apart, and still passed the line above)
    assert p["separation"] < 0.25, p
    assert bool(colour_matches(torch.from_numpy(plain["base"].mean(0)), "red")), plain["base"].mean(0)
    assert saturation(stripes["base"].mean(0)) < saturation(plain["base"].mean(0)) - 0.05


@pytest.mark.slow
def test_cli_flipped_guidance_moves_away_from_red_and_white(meshes, tmp_path):
    """Measured: guidance scale -1 paints the sphere cyan (mean 0.07, 0.97, 0.85)."""
    flipped = run_cli(meshes["sphere"], "red and white stripes", tmp_path / "flipped.glb", "--guidance-scale", "-1")
    b = banding(flipped["points"], flipped["base"])
    assert not is_striped(b, ("red", "white")), b
    assert not bool(colour_matches(torch.from_numpy(flipped["base"].mean(0)), "red")), flipped["base"].mean(0)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=AssertionError, reason="the prior rendered cylinders upright only: lying on its "
                   "side, \"red and white stripes\" ends red (seed 0: clusters 0.08 apart, best direction 0.14 with 3 "
                   "alternations; \"a plain red object\" 0.05; seeds 1 and 2 are striped: 0.42 / 4, 0.88 / 3); "
                   "the plain hybrid's blotchy pink was 0.33 apart, not striped")
def test_cli_stripes_on_a_lying_cylinder(meshes, tmp_path):
    """Flags the day a prior (or the recipe) paints stripes on a pose the prior did not see."""
    stripes = run_cli(meshes["cylinder"], "red and white stripes", tmp_path / "stripes.glb")
    assert is_striped(banding(stripes["points"], stripes["base"]), ("red", "white"))


# What a user who asks for materials sets with this prior: no negative prompt (its words are
# outside the prior's vocabulary: the tokenizer cuts them into 45 letters, truncated at 24, which
# points the negative push anywhere) and a weaker material prior (the default, 1.0, holds metallic
# near 0.01 against this weak guidance; 0.3 still keeps "a matte clay ball" at metallic 0.05).
MATERIAL_CLI = ("--negative-prompt", "", "--material-prior", "0.3")


@pytest.fixture(scope="module")
def material_runs(meshes, tmp_path_factory) -> dict[str, dict[str, np.ndarray]]:
    folder = tmp_path_factory.mktemp("materials")
    args = MATERIAL_CLI
    return {"metal": run_cli(meshes["sphere"], "a shiny metal ball", folder / "metal.glb", *args),
            "clay": run_cli(meshes["sphere"], "a matte clay ball", folder / "clay.glb", *args),
            "flipped": run_cli(meshes["sphere"], "a shiny metal ball", folder / "flipped.glb", *args,
                               "--guidance-scale", "-1")}


@pytest.mark.slow
def test_cli_shiny_metal_is_more_metallic_than_matte_clay(material_runs):
    """Measured (seed 0, material prior 0.3, no negative prompt): metallic 0.379 for "a shiny metal
    ball" against 0.065 for "a matte clay ball"; flipped sign 0.012. With the default material prior
    it holds both near its 0.01."""
    metal, clay, flipped = (material_runs[k]["metallic"].mean() for k in ("metal", "clay", "flipped"))
    assert metal > clay + 0.1, (metal, clay)
    assert not flipped > clay + 0.1, (flipped, clay)


@pytest.mark.slow
def test_cli_shiny_metal_is_smoother_than_matte_clay(material_runs):
    """Measured (seed 0, same settings): roughness 0.430 for "a shiny metal ball" against 0.579 for
    "a matte clay ball" (seeds 1, 2: 0.437 / 0.599, 0.454 / 0.596); flipped sign 0.743. Before
    roughness learnt only from the reflection's sharpness (render/shading.py) both ended at 0.60."""
    metal, clay, flipped = (material_runs[k]["roughness"].mean() for k in ("metal", "clay", "flipped"))
    assert metal < clay - 0.1, (metal, clay)
    assert not flipped < clay - 0.1, (flipped, clay)
