"""Measure a trained pattern prior (tools/train_pattern_prior.py --eval-only calls `evaluate`):
autoencoder reconstruction error per pattern on held-out renders, and samples drawn with the
pipeline's own sampler (DDIM) judged by `csd_texture.pattern_metrics`: pattern class, named
colours and highlight peak per caption; the same captions on random weights as the baseline; and
how much the pattern word lowers the UNet's denoising loss (`pattern_word_gain`).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch
from train_pattern_prior import OBJECT_WORDS, PATTERN_ADJ, PATTERNS, DataMix, draw_scenes

from csd_texture.pattern_metrics import (
    central_crop,
    classify_patterns,
    colour_matches,
    highlight_peak,
    pattern_features,
)
from csd_texture.testing import load_ddim_pipeline

# caption -> (pattern class, colour names) the samples must show
PATTERN_CAPTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "a red and white striped ball": ("stripes", ("red", "white")),
    "blue and yellow stripes": ("stripes", ("blue", "yellow")),
    "a black and white checkered cube": ("checkerboard", ("black", "white")),
    "a green and white checkered ball": ("checkerboard", ("green", "white")),
    "a blue ball with white dots": ("dots", ("blue", "white")),
    "a plain red object": ("plain", ("red",)),
    "a plain blue ball": ("plain", ("blue",)),
}
# caption -> whether the samples should have a sharp highlight
MATERIAL_CAPTIONS: dict[str, bool] = {
    "a shiny metal ball": True,
    "a glossy red plastic ball": True,
    "a matte clay ball": False,
    "a matte red clay ball": False,
}
HIGHLIGHT_THRESHOLD = 0.18  # highlight_peak between matte (75% below 0.15) and glossy/metal renders (75% above 0.22)


def sample(pipe, caption: str, n: int, seed: int, steps: int = 20, guidance: float = 7.5):
    """(n, 64, 64, 3) sRGB samples for `caption`."""
    return torch.from_numpy(pipe([caption] * n, num_inference_steps=steps, guidance_scale=guidance,
                                 generator=torch.Generator().manual_seed(seed), output_type="np").images)


def judge_pattern(images, pattern: str, colours: tuple[str, ...]) -> dict:
    """Per-sample pattern class and colour check; accuracy = both right."""
    classes = classify_patterns(images)
    feats = pattern_features(images)
    crops = central_crop(images)
    ok_colour = []
    for i in range(len(classes)):
        centres = feats.centres[i]
        if len(colours) == 1:
            ok_colour.append(bool(colour_matches(crops[i].mean((0, 1)), colours[0])))
        else:
            a, b = colours
            ok_colour.append(bool((colour_matches(centres[0], a) & colour_matches(centres[1], b))
                                  | (colour_matches(centres[0], b) & colour_matches(centres[1], a))))
    ok_pattern = [c == pattern for c in classes]
    return {"pattern_accuracy": sum(ok_pattern) / len(classes), "colour_accuracy": sum(ok_colour) / len(classes),
            "accuracy": sum(p and c for p, c in zip(ok_pattern, ok_colour)) / len(classes), "classes": classes}


def judge_material(images, glossy: bool) -> dict:
    peak = highlight_peak(images)
    ok = (peak >= HIGHLIGHT_THRESHOLD) if glossy else (peak < HIGHLIGHT_THRESHOLD)
    return {"accuracy": ok.double().mean().item(), "highlight_peak_median": peak.median().item(),
            "highlight_peaks": [round(x, 3) for x in peak.tolist()]}


@torch.no_grad()
def reconstruction(vae, n_per_pattern: int = 48, seed: int = 10**6, mix: DataMix = DataMix()) -> dict:
    """Held-out renders per pattern: MSE and PSNR (0..1 images) of decode(encode(x)), and how often
    the classifier gives the reconstruction the same class as the original."""
    g = torch.Generator().manual_seed(seed)
    per: dict[str, list] = {p: [] for p in PATTERNS}
    while min(len(v) for v in per.values()) < n_per_pattern:
        x, labels = draw_scenes(96, g, named_fraction=1.0, mix=mix)
        for image, label in zip(x, labels):
            if len(per[label["pattern"]]) < n_per_pattern:
                per[label["pattern"]].append(image)
    out = {}
    for pattern, images in per.items():
        x = torch.stack(images)
        recon = ((vae.decode(vae.encode(x * 2 - 1).latent_dist.mode()).sample + 1) / 2).clamp(0, 1)
        mse = (recon - x).pow(2).mean((1, 2, 3))
        same = [a == b for a, b in zip(classify_patterns(x.permute(0, 2, 3, 1)), classify_patterns(recon.permute(0, 2, 3, 1)))]
        out[pattern] = {"mse": mse.mean().item(), "psnr_db": (-10 * torch.log10(mse.mean())).item(),
                        "same_class_after_reconstruction": sum(same) / len(same)}
    return out


def classifier_confusion(n: int = 600, seed: int = 7, mix: DataMix = DataMix()) -> dict[str, dict[str, float]]:
    """How often the classifier gives each class to held-out training renders (named colours, data
    mix `mix`) of each true pattern: the ceiling a sample's pattern accuracy can be read against."""
    images, labels = draw_scenes(n, torch.Generator().manual_seed(seed), named_fraction=1.0, mix=mix)
    classes = classify_patterns(images.permute(0, 2, 3, 1))
    out: dict[str, dict[str, float]] = {}
    for pattern in PATTERNS:
        got = [c for c, label in zip(classes, labels) if label["pattern"] == pattern]
        out[pattern] = {c: round(got.count(c) / len(got), 3) for c in sorted(set(got), key=got.count, reverse=True)}
    return out


def caption_with(colours: list[str], adjective: str, noun: str) -> str:
    """"a red and white striped ball", "an orange and black dotted cube" (the training captions' article)."""
    article = "an" if colours[0][0] in "aeiou" else "a"
    return f"{article} {colours[0]} and {colours[1]} {adjective} {noun}"


def format_gains(gains: dict[str, float]) -> str:
    """One line of `pattern_word_gain`'s figures for one pattern."""
    return "  ".join(f"{k} {v:+.4f}" for k, v in gains.items())


@torch.no_grad()
def pattern_word_gain(pipe, n: int = 96, seed: int = 5, timesteps: tuple[int, ...] = (900, 700, 500, 300, 100),
                      repeats: int = 4, mix: DataMix = DataMix()) -> dict[str, dict[str, float]]:
    """How much the pattern word helps the UNet denoise renders of that pattern: per pattern
    (stripes, checkerboard, dots) and timestep, 1 - loss(right word) / loss(best wrong word), where
    the captions are "a {colour} and {colour} {striped|checkered|dotted} {object}" and the loss is
    the epsilon MSE on the same noised latents (`repeats` noise draws of `n` held-out two-coloured
    renders). 0: the UNet ignores the word; the shipped folder's stripes, which it draws, about
    0.01-0.025 at t 500-700; "mean" over the timesteps."""
    g = torch.Generator().manual_seed(seed)
    words = {p: PATTERN_ADJ[p] for p in ("stripes", "checkerboard", "dots")}
    out: dict[str, dict[str, float]] = {}
    for pattern in words:
        weights = tuple(1.0 if p == pattern else 0.0 for p in PATTERNS)
        x, labels = draw_scenes(n, g, named_fraction=1.0, mix=dataclasses.replace(mix, pattern_weights=weights))
        keep = [i for i, label in enumerate(labels) if len(label["colours"]) == 2]
        z0 = pipe.vae.encode(x[keep] * 2 - 1).latent_dist.mean * pipe.vae.config.scaling_factor
        cond = {}
        for p, adj in words.items():
            captions = [caption_with(labels[i]["colours"], adj, OBJECT_WORDS[labels[i]["shape"]][0]) for i in keep]
            ids = pipe.tokenizer(captions, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                 return_tensors="pt").input_ids
            cond[p] = pipe.text_encoder(ids)[0]
        gains = {}
        for t in timesteps:
            loss = dict.fromkeys(words, 0.0)
            a = pipe.scheduler.alphas_cumprod[t]
            for _ in range(repeats):
                noise = torch.randn(z0.shape, generator=g)
                zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
                steps = torch.full((len(keep),), t)
                for p, c in cond.items():
                    loss[p] += (pipe.unet(zt, steps, c).sample - noise).pow(2).mean().item()
            gains[f"t{t}"] = 1 - loss[pattern] / min(v for p, v in loss.items() if p != pattern)
        gains["mean"] = sum(gains.values()) / len(timesteps)
        out[pattern] = gains
    return out


def random_baseline(pipe):
    """The same pipeline with freshly initialised UNet and text encoder weights (seed 0)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(pipe.unet.config)
    text_encoder = CLIPTextModel(pipe.text_encoder.config)
    baseline = StableDiffusionPipeline(vae=pipe.vae, text_encoder=text_encoder, tokenizer=pipe.tokenizer, unet=unet,
                                       scheduler=pipe.scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    baseline.set_progress_bar_config(disable=True)
    return baseline


def evaluate(folder: Path, log, seed: int = 0, n: int = 12, mix: DataMix = DataMix()) -> dict:
    """The figures of train_report.json; renders (confusion, reconstruction) drawn with the
    training's data mix `mix`."""
    t0 = time.time()
    pipe = load_ddim_pipeline(folder)
    report: dict = {"classifier_on_training_renders": classifier_confusion(mix=mix),
                    "vae_reconstruction": reconstruction(pipe.vae, mix=mix)}
    for pattern, shares in report["classifier_on_training_renders"].items():
        log(f"classifier on {pattern:12s} renders: {shares}")
    for pattern, r in report["vae_reconstruction"].items():
        log(f"vae {pattern:12s} mse {r['mse']:.4f}  psnr {r['psnr_db']:.1f} dB  same class {r['same_class_after_reconstruction']:.2f}")
    report["pattern_word_gain"] = pattern_word_gain(pipe, mix=mix)
    for pattern, gains in report["pattern_word_gain"].items():
        log(f"pattern word gain {pattern:12s} {format_gains(gains)}")
    baseline = random_baseline(pipe)
    for name, model in (("samples", pipe), ("random_weights_samples", baseline)):
        result = {}
        for i, (caption, (pattern, colours)) in enumerate(PATTERN_CAPTIONS.items()):
            result[caption] = judge_pattern(sample(model, caption, n, seed + i), pattern, colours)
            log(f"{name}: '{caption}': pattern {result[caption]['pattern_accuracy']:.2f} colour "
                f"{result[caption]['colour_accuracy']:.2f} both {result[caption]['accuracy']:.2f} {result[caption]['classes']}")
        for i, (caption, glossy) in enumerate(MATERIAL_CAPTIONS.items()):
            result[caption] = judge_material(sample(model, caption, n, seed + 100 + i), glossy)
            log(f"{name}: '{caption}': highlight accuracy {result[caption]['accuracy']:.2f} "
                f"median peak {result[caption]['highlight_peak_median']:.3f}")
        report[name] = result
    report["eval_seconds"] = time.time() - t0
    return report


SHEET_CAPTIONS = ("a red and white striped ball", "blue and yellow stripes", "a black and white checkered cube",
                  "a blue ball with white dots", "a shiny metal ball", "a matte clay ball", "a shiny gold metal ball",
                  "a plain red object")


def sample_sheet(folder: Path, path: Path, n: int = 8, seed: int = 0) -> None:
    """Write a contact sheet PNG: one row of `n` samples (64x64) per caption of SHEET_CAPTIONS."""
    from PIL import Image

    pipe = load_ddim_pipeline(folder)
    rows = [torch.cat(list(sample(pipe, caption, n, seed)), 1) for caption in SHEET_CAPTIONS]
    image = (torch.cat(rows, 0).clamp(0, 1) * 255).round().byte().numpy()
    Image.fromarray(image).save(path)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Contact sheet of a pattern prior's samples (rows: SHEET_CAPTIONS), "
                                                 "the classifier's confusion on training renders, or how much a "
                                                 "prior's UNet uses the pattern word.")
    parser.add_argument("folder", type=Path, nargs="?")
    parser.add_argument("--sheet", type=Path, help="PNG to write")
    parser.add_argument("--confusion", action="store_true", help="print the classifier's classes per true pattern")
    parser.add_argument("--word-gain", action="store_true",
                        help="print how much the pattern word lowers FOLDER's denoising loss (pattern_word_gain)")
    args = parser.parse_args()
    if args.word_gain:
        if args.folder is None:
            parser.error("--word-gain needs FOLDER")
        for pattern, gains in pattern_word_gain(load_ddim_pipeline(args.folder)).items():
            print(f"{pattern:12s} {format_gains(gains)}")
    if args.confusion:
        for pattern, shares in classifier_confusion().items():
            print(f"{pattern:12s} {shares}")
    if args.sheet:
        if args.folder is None:
            parser.error("--sheet needs FOLDER")
        sample_sheet(args.folder, args.sheet)
