"""The tiny trained prior in tests/data/tiny-prior is a real text-to-image model.

It was trained by tools/train_tiny_prior.py (see tests/data/tiny-prior/README.md). These tests load
it through the same public path as Stable Diffusion and check what guidance tests rely on: the
pipeline's own sampler draws the captioned colour, the empty prompt is trained, and a CSD update
from a grey image moves it toward the prompt's hue (and away from a negative prompt's hue).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from csd_texture.testing import (
    NAMED_HUES,
    hue_distance,
    load_ddim_pipeline,
    mean_color_hsv,
    nearest_named_hue,
)

TINY_PRIOR = Path(__file__).parent / "data" / "tiny-prior"
COLOURS = ("red", "yellow", "green", "blue")
WORDS = ("a", "an", "with", "view", "red", "yellow", "green", "blue", "plain", "stripes", "dots",
         "checkerboard", "object", "ball", "cube", "sphere", "surface", "front", "side", "back", "overhead")


@pytest.fixture(scope="module")
def pipe():
    return load_ddim_pipeline(TINY_PRIOR)


def embed(pipe, texts: list[str]) -> torch.Tensor:
    """Prompt embeddings exactly as StableDiffusionPipeline builds them."""
    tok = pipe.tokenizer
    ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids)[0]


def test_folder_is_small_and_loads_like_stable_diffusion(pipe):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    size = sum(f.stat().st_size for f in TINY_PRIOR.rglob("*") if f.is_file())
    assert size < 10 * 2**20, f"tiny prior folder is {size / 2**20:.1f} MiB"
    assert isinstance(pipe.unet, UNet2DConditionModel)
    assert isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.text_encoder, CLIPTextModel)
    assert pipe.vae_scale_factor == 8
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 64
    assert pipe.scheduler.config.prediction_type == "epsilon"
    assert pipe.scheduler.config.num_train_timesteps == 1000
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"
    assert all(p.dtype == torch.float32 for p in pipe.unet.parameters())
    for word in WORDS:  # every caption word is a single token, so prompts are not spelled out
        assert len(pipe.tokenizer(word).input_ids) == 3, word


def test_scaled_latents_have_roughly_unit_std(pipe):
    g = torch.Generator().manual_seed(0)
    colours = torch.rand(32, 3, 1, 1, generator=g)
    images = colours.expand(32, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        z = pipe.vae.encode(images).latent_dist.mode() * pipe.vae.config.scaling_factor
        recon = pipe.vae.decode(z / pipe.vae.config.scaling_factor).sample
    assert 0.4 < z.std().item() < 2.5
    # the autoencoder reproduces arbitrary flat colours (not just the named ones)
    assert (recon - images).abs().mean().item() < 0.1


@pytest.mark.parametrize("colour", COLOURS)
def test_samples_have_the_captioned_hue(pipe, colour):
    images = pipe(
        [f"a {colour} object"] * 10,
        num_inference_steps=20,
        guidance_scale=7.5,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    h, s, _ = mean_color_hsv(images)
    ok = (hue_distance(h, NAMED_HUES[colour]) <= 30.0) & (s >= 0.15)
    accuracy = ok.double().mean().item()
    assert accuracy >= 0.9, f"'a {colour} object': hues {h.round().tolist()}, saturations {s.round(decimals=2).tolist()}"


def test_view_suffixed_prompts_keep_the_colour(pipe):
    prompts = [f"a {c} ball, {v} view" for c in COLOURS for v in ("front", "overhead")]
    images = pipe(prompts, num_inference_steps=20, guidance_scale=7.5, generator=torch.Generator().manual_seed(1), output_type="np").images
    names = nearest_named_hue(mean_color_hsv(images)[0])
    expected = [c for c in COLOURS for _ in range(2)]
    assert sum(a == b for a, b in zip(names, expected)) >= 7, list(zip(prompts, names))


def test_empty_prompt_is_trained_and_covers_many_hues(pipe):
    # unconditional samples (what eps(x_t; "") models) come in many colours, not one
    images = pipe([""] * 16, num_inference_steps=20, guidance_scale=1.0, generator=torch.Generator().manual_seed(0), output_type="np").images
    h, s, _ = mean_color_hsv(images)
    assert len(set(nearest_named_hue(h[s > 0.15]))) >= 3, h.round().tolist()
    # and the empty prompt is not ignored: eps(x_t; "") differs from eps(x_t; "a red object")
    g = torch.Generator().manual_seed(0)
    zt = torch.randn(1, 4, 8, 8, generator=g)
    emb = torch.cat([embed(pipe, [""]), embed(pipe, ["a red object"])])
    with torch.no_grad():
        eps = pipe.unet(zt.repeat(2, 1, 1, 1), torch.tensor([500, 500]), emb).sample
    assert (eps[0] - eps[1]).abs().mean().item() > 1e-3


def csd_from_grey(pipe, prompt: str, negative: str | None = None, neg_weight: float = 1.0, sign: float = 1.0, steps: int = 40):
    """Optimise a grey 64x64 image with CSD through the VAE encoder; returns (hue, saturation) reached.

    grad = w(t) * [(eps(prompt) - eps("")) - neg_weight * (eps(negative) - eps(""))], w(t) = 1 - alpha_bar_t.
    """
    vae, unet, sched = pipe.vae, pipe.unet, pipe.scheduler
    sf = vae.config.scaling_factor
    texts = [prompt, ""] + ([negative] if negative is not None else [])
    emb = embed(pipe, texts)
    g = torch.Generator().manual_seed(0)
    image = torch.full((1, 3, 64, 64), 0.5, requires_grad=True)
    opt = torch.optim.Adam([image], lr=0.02)
    for _ in range(steps):
        z = vae.encode(image * 2 - 1).latent_dist.mode() * sf
        t = int(torch.randint(200, 800, (1,), generator=g))
        a = sched.alphas_cumprod[t]
        with torch.no_grad():
            zt = a.sqrt() * z + (1 - a).sqrt() * torch.randn(z.shape, generator=g)
            eps = unet(zt.repeat(len(texts), 1, 1, 1), torch.full((len(texts),), t), emb).sample
            direction = eps[0] - eps[1]
            if negative is not None:
                direction = direction - neg_weight * (eps[2] - eps[1])
            grad = sign * (1 - a) * direction[None]
        loss = 0.5 * ((z - (z - grad).detach()) ** 2).sum()  # d loss / d z = grad
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            image.clamp_(0, 1)
    h, s, _ = mean_color_hsv(image.detach().permute(0, 2, 3, 1))
    return h.item(), s.item()


@pytest.mark.parametrize("colour", ["red", "blue", "green"])
def test_csd_moves_a_grey_image_to_the_prompt_hue(pipe, colour):
    hue, sat = csd_from_grey(pipe, f"a {colour} object")
    assert hue_distance(hue, NAMED_HUES[colour]) <= 30.0 and sat >= 0.15, (hue, sat)
    # the same update with the wrong sign does not reach the prompt's hue
    hue_wrong, sat_wrong = csd_from_grey(pipe, f"a {colour} object", sign=-1.0)
    assert hue_distance(hue_wrong, NAMED_HUES[colour]) > 60.0 or sat_wrong < 0.05, (hue_wrong, sat_wrong)


def test_csd_negative_prompt_pushes_away_from_its_hue(pipe):
    hue, sat = csd_from_grey(pipe, "a plain object", negative="red", neg_weight=1.0)
    assert sat >= 0.1 and hue_distance(hue, NAMED_HUES["red"]) > 90.0, (hue, sat)
