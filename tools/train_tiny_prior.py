"""Train the tiny text-to-image prior shipped at tests/data/tiny-prior.

Random tiny weights make every guidance test pass whether the CSD gradient has the right sign,
timestep weighting and prompt routing or not, and real Stable Diffusion weights cannot be
downloaded here. So this script draws a synthetic captioned image set procedurally and trains a
small Stable Diffusion on it, on CPU, in the exact diffusers folder format of a real model
(`StableDiffusionPipeline.from_pretrained(folder)` loads it):

* images: 64x64 flat surfaces, one colour or two, plain / stripes / dots / checkerboard, with a
  soft shading gradient. Half of them have a *named* colour (red, yellow, green, blue: hue within
  12 degrees of `NAMED_HUES`, the pattern's second colour a lighter or darker shade of the same hue)
  and colour captions ("a red ball, side view", "blue stripes", "red"); the other half have
  *arbitrary* colours (any hue, saturation and value, greys, two-colour mixtures) and colour-free
  captions ("an object", "a plain surface", "stripes"). The autoencoder trains on mostly arbitrary
  colours so that it is smooth between the named ones: CSD moves latents through the in-between
  colours, and an autoencoder that only saw a few colour clusters pushes a grey texture toward
  the wrong hue there.
* 15% of captions are replaced by "" so the unconditional eps(x_t; "") that CSD subtracts is trained.
* models: `AutoencoderKL` (latent 8x8x4 = 1/8 of the image, started as an exact mean-colour
  autoencoder, see `init_colour_path`; `scaling_factor` measured after training so scaled latents
  have unit std), a `CLIPTextModel` (width 64, 2 layers) with the tokenizer from
  `csd_texture.testing.build_tokenizer` (every caption word one token), a `UNet2DConditionModel`
  (32, 64 channels, cross-attention at the 4x4 level and the middle), Stable Diffusion's DDPM
  schedule, epsilon prediction. The UNet and text encoder train together on the encoded latents;
  their exponential moving average (0.999) is saved.

Usage (about 11 minutes on one CPU thread; the shipped folder was made with exactly this):

    python tools/train_tiny_prior.py --out tests/data/tiny-prior --seed 0

One thread is the default because the CPU here is shared: with two threads on two busy cores a
training step ran up to eight times slower than with one. `--threads 2` is faster on an idle machine
but gives slightly different numbers.

`--eval-only` re-runs the checks on an existing folder: sampled images per colour caption must have
the captioned hue, and a CSD step from a grey image must move it toward the prompt's hue.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from prior_common import (
    TokenCache,
    build_text_encoder,
    cosine_lr,
    hsv_to_rgb,
    init_colour_path,
    n_params,
    save_pipeline,
    uniform,
)

from csd_texture.testing import (
    NAMED_HUES,
    build_tokenizer,
    hue_distance,
    mean_color_hsv,
    sd_ddpm_scheduler,
)

IMAGE_SIZE = 64
COLOURS = ("red", "yellow", "green", "blue")
PATTERNS = ("plain", "stripes", "dots", "checkerboard")
OBJECTS = ("object", "ball", "cube", "sphere", "surface")
VIEWS = ("front", "side", "back", "overhead")
WORDS = ("a", "an", "with", "view") + COLOURS + PATTERNS + OBJECTS + VIEWS
HUE_JITTER = 12.0  # degrees around NAMED_HUES for named-colour images
TEXT_WIDTH = 64
MAX_TOKENS = 16


# ----------------------------------------------------------------------------------------------
# synthetic data


def _shade_of(h, s, v, g):
    """A lighter or darker colour of the same hue (so the mean colour keeps the hue)."""
    n = h.shape[0]
    lighter = torch.rand(n, generator=g) < 0.5
    s2 = torch.where(lighter, s * uniform(n, 0.15, 0.6, g), s)
    v2 = torch.where(lighter, torch.clamp(v + uniform(n, 0.0, 0.3, g), max=1.0), v * uniform(n, 0.25, 0.6, g))
    return s2, v2


def pattern_masks(pattern: torch.Tensor, g: torch.Generator, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Soft-edged masks (N, size, size) in [0, 1] of the second colour: 0 plain, 1 stripes, 2 dots, 3 checkerboard."""
    n = pattern.shape[0]
    c = torch.arange(size, dtype=torch.float32) + 0.5
    y, x = torch.meshgrid(c, c, indexing="ij")
    x, y = x[None], y[None]
    col = lambda t: t[:, None, None]  # noqa: E731

    theta = col(uniform(n, 0.0, math.pi, g))
    period = col(uniform(n, 8.0, 20.0, g))
    phase = col(uniform(n, 0.0, 1.0, g))
    t = (x * torch.cos(theta) + y * torch.sin(theta)) / period + phase
    stripes = 0.5 + 0.5 * torch.clamp(torch.sin(2 * math.pi * t) * period / (2 * math.pi), -1.0, 1.0)

    spacing = col(uniform(n, 10.0, 20.0, g))
    radius = spacing * col(uniform(n, 0.2, 0.38, g))
    ox, oy = col(uniform(n, 0.0, 1.0, g)), col(uniform(n, 0.0, 1.0, g))
    dx = ((x / spacing + ox) % 1.0 - 0.5) * spacing
    dy = ((y / spacing + oy) % 1.0 - 0.5) * spacing
    dots = torch.clamp(radius - torch.sqrt(dx**2 + dy**2) + 0.5, 0.0, 1.0)

    cell = col(uniform(n, 6.0, 16.0, g))
    rot = col(torch.where(torch.rand(n, generator=g) < 0.5, torch.zeros(n), uniform(n, 0.0, math.pi / 2, g)))
    u = (x * torch.cos(rot) + y * torch.sin(rot)) / cell + ox
    w = (-x * torch.sin(rot) + y * torch.cos(rot)) / cell + oy
    soft = lambda a: torch.clamp(torch.sin(math.pi * a) * cell / math.pi, -1.0, 1.0)  # noqa: E731
    checker = 0.5 + 0.5 * soft(u) * soft(w)

    masks = torch.zeros(n, size, size)
    for index, m in ((1, stripes), (2, dots), (3, checker)):
        masks = torch.where(col(pattern == index), m, masks)
    return masks


def sample_images(n: int, named_fraction: float, g: torch.Generator, size: int = IMAGE_SIZE):
    """Draw `n` images. Returns (images (N, 3, size, size) sRGB in [0, 1], colour index (N,) with
    -1 for arbitrary colours, pattern index (N,))."""
    named = torch.rand(n, generator=g) < named_fraction
    colour = torch.where(named, torch.randint(0, len(COLOURS), (n,), generator=g), torch.full((n,), -1))
    pattern = torch.randint(0, len(PATTERNS), (n,), generator=g)

    centres = torch.tensor([NAMED_HUES[c] for c in COLOURS])
    h_named = centres[colour.clamp(min=0)] + uniform(n, -HUE_JITTER, HUE_JITTER, g)
    h_any = uniform(n, 0.0, 360.0, g)
    h = torch.where(named, h_named, h_any) % 360.0
    grey = (torch.rand(n, generator=g) < 0.25) & ~named
    s = torch.where(named, uniform(n, 0.55, 1.0, g), torch.where(grey, torch.zeros(n), uniform(n, 0.0, 1.0, g)))
    v = torch.where(named, uniform(n, 0.55, 1.0, g), uniform(n, 0.03, 1.0, g))
    first = hsv_to_rgb(h, s, v)

    s2, v2 = _shade_of(h, s, v, g)
    shade = hsv_to_rgb(h, s2, v2)
    mixture = hsv_to_rgb(uniform(n, 0.0, 360.0, g), uniform(n, 0.0, 1.0, g) * (torch.rand(n, generator=g) > 0.2), uniform(n, 0.03, 1.0, g))
    use_mixture = (~named) & (torch.rand(n, generator=g) < 0.5)
    second = torch.where(use_mixture[:, None], mixture, shade)

    m = pattern_masks(pattern, g, size)[:, None]
    images = first[:, :, None, None] * (1 - m) + second[:, :, None, None] * m

    # soft shading gradient (multiplicative, keeps the hue) and a little noise, like a lit render
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    psi = uniform(n, 0.0, 2 * math.pi, g)[:, None, None]
    gain = uniform(n, -0.2, 0.2, g)[:, None, None] * (torch.rand(n, generator=g) < 0.7)[:, None, None]
    images = images * (1 + gain * (xx * torch.cos(psi) + yy * torch.sin(psi)))[:, None]
    images = images + 0.01 * torch.randn(images.shape, generator=g)
    return images.clamp(0.0, 1.0), colour, pattern


def make_caption(colour: int, pattern: int, g: torch.Generator) -> str:
    """A caption for an image: colour words only for named colours; view suffix sometimes."""
    pick = lambda seq: seq[int(torch.randint(0, len(seq), (1,), generator=g))]  # noqa: E731
    p = PATTERNS[pattern]
    obj = pick(OBJECTS)
    if colour >= 0:
        w = COLOURS[colour]
        templates = [
            w,
            f"plain {w}" if p == "plain" else f"{w} {p}",
            f"a {w} {obj}",
            f"a plain {w} {obj}" if p == "plain" else f"a {w} {obj} with {p}",
        ]
    else:
        article = "an" if obj[0] in "aeiou" else "a"
        templates = [
            f"{article} {obj}",
            "plain" if p == "plain" else p,
            f"a plain {obj}" if p == "plain" else f"{article} {obj} with {p}",
        ]
    caption = pick(templates)
    if torch.rand(1, generator=g).item() < 0.35:
        caption += f", {pick(VIEWS)} view"
    return caption


# ----------------------------------------------------------------------------------------------
# models


def build_models(tokenizer):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=1,  # groups of one channel would erase a flat colour at the last GroupNorm
        sample_size=IMAGE_SIZE,
    )
    init_colour_path(vae)
    text_encoder = build_text_encoder(tokenizer, TEXT_WIDTH)
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    scheduler = sd_ddpm_scheduler()
    return vae, text_encoder, unet, scheduler


# ----------------------------------------------------------------------------------------------
# training


def train_vae(vae, args, g, log):
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    vae.train()
    t0 = time.time()
    for step in range(args.vae_steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, args.vae_steps, args.vae_lr)
        x, _, _ = sample_images(args.vae_batch, named_fraction=0.25, g=g)  # mostly arbitrary colours
        x = x * 2 - 1
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g)
        recon = vae.decode(z).sample
        rec = F.mse_loss(recon, x)
        kl = 0.5 * (posterior.mean**2 + posterior.var - 1.0 - posterior.logvar).mean()
        loss = rec + args.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == args.vae_steps - 1:
            log(f"vae step {step:5d}  rec {rec.item():.5f}  kl {kl.item():.3f}  {time.time() - t0:6.1f}s")
    vae.eval()
    seconds = time.time() - t0
    with torch.no_grad():  # held-out check: reconstruction and the hue of the mean colour
        x, _, _ = sample_images(256, named_fraction=0.25, g=torch.Generator().manual_seed(10**6 + args.seed))
        recon = ((vae.decode(vae.encode(x * 2 - 1).latent_dist.mode()).sample + 1) / 2).clamp(0, 1)
        h0, s0, _ = mean_color_hsv(x.permute(0, 2, 3, 1))
        h1, _, _ = mean_color_hsv(recon.permute(0, 2, 3, 1))
        hue_err = hue_distance(h0, h1)[s0 > 0.2]
        colour_rmse = (recon.mean((2, 3)) - x.mean((2, 3))).pow(2).mean().sqrt().item()
    report = {
        "vae_seconds": seconds, "vae_heldout_mse_01": F.mse_loss(recon, x).item(),
        "vae_heldout_mean_colour_rmse_01": colour_rmse,
        "vae_heldout_hue_error_median_deg": hue_err.median().item(), "vae_heldout_hue_error_max_deg": hue_err.max().item(),
    }
    log(f"vae held-out: {report}")
    return report


@torch.no_grad()
def encode_pool(vae, args, g, log):
    """Draw the UNet's image pool once and store the encoder's posterior mean and std."""
    means, stds, colours, patterns = [], [], [], []
    t0 = time.time()
    for start in range(0, args.pool, 256):
        x, colour, pattern = sample_images(min(256, args.pool - start), named_fraction=0.55, g=g)
        posterior = vae.encode(x * 2 - 1).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
        colours.append(colour)
        patterns.append(pattern)
    means, stds = torch.cat(means), torch.cat(stds)
    samples = means + stds * torch.randn(means.shape, generator=g)
    scaling = 1.0 / samples.std().item()
    log(f"encoded pool of {args.pool} in {time.time() - t0:.1f}s; latent std {samples.std().item():.4f} "
        f"-> scaling_factor {scaling:.4f}; posterior std mean {stds.mean().item():.4f}")
    return means, stds, torch.cat(colours), torch.cat(patterns), scaling


def train_unet(unet, text_encoder, scheduler, pool, tokens, args, g, log):
    means, stds, colours, patterns, scaling = pool
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.unet_lr, weight_decay=0.01)
    ema = [p.detach().clone() for p in params]
    alphas = scheduler.alphas_cumprod
    unet.train()
    text_encoder.train()
    t0 = time.time()
    running = 0.0
    for step in range(args.unet_steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, args.unet_steps, args.unet_lr)
        idx = torch.randint(0, means.shape[0], (args.unet_batch,), generator=g)
        z0 = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=g)) * scaling
        captions = [
            "" if torch.rand(1, generator=g).item() < args.uncond_prob else make_caption(int(c), int(p), g)
            for c, p in zip(colours[idx], patterns[idx])
        ]
        cond = text_encoder(tokens(captions))[0]
        t = torch.randint(0, scheduler.config.num_train_timesteps, (args.unet_batch,), generator=g)
        noise = torch.randn(z0.shape, generator=g)
        a = alphas[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        loss = F.mse_loss(unet(zt, t, cond).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.lerp_(p.detach(), 1 - decay)
        running = loss.item() if step == 0 else 0.98 * running + 0.02 * loss.item()
        if step % 100 == 0 or step == args.unet_steps - 1:
            log(f"unet step {step:5d}  loss {running:.4f}  {time.time() - t0:6.1f}s")
    with torch.no_grad():
        for e, p in zip(ema, params):
            p.copy_(e)
    unet.eval()
    text_encoder.eval()
    return {"unet_loss_last": running, "unet_seconds": time.time() - t0}


# ----------------------------------------------------------------------------------------------
# checks


def colour_accuracy(pipe, n_per_colour=16, steps=25, guidance=7.5, seed=0, template="a {} object", ddim=True):
    """Fraction of sampled images whose mean colour has the captioned hue (within 30 degrees,
    saturation >= 0.15), per colour. Uses the pipeline's own sampler with a DDIM scheduler
    (or, `ddim=False`, the saved DDPM scheduler)."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(pipe.scheduler.config) if ddim else pipe.scheduler
    sampler = type(pipe)(**{**pipe.components, "scheduler": scheduler})
    sampler.set_progress_bar_config(disable=True)
    result = {}
    for name in COLOURS:
        images = sampler(
            [template.format(name)] * n_per_colour,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=torch.Generator().manual_seed(seed),
            output_type="np",
        ).images
        h, s, _ = mean_color_hsv(images)
        ok = (hue_distance(h, NAMED_HUES[name]) <= 30.0) & (s >= 0.15)
        result[name] = {"accuracy": ok.double().mean().item(), "hues": [round(x, 1) for x in h.tolist()]}
    return result


def csd_direction(pipe, prompts=("a red object", "a blue object"), t=500, lr=1.0, seed=0, optimise_steps=40):
    """From a grey image, (a) one step z - lr * (eps(prompt) - eps("")) in latent space, decoded;
    (b) a short CSD optimisation of the image itself through the encoder. Returns hue/saturation
    reached per prompt."""
    vae, unet, sched = pipe.vae, pipe.unet, pipe.scheduler
    sf = vae.config.scaling_factor

    def embed(texts):
        ids = pipe.tokenizer(texts, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
        return pipe.text_encoder(ids)[0]

    out = {}
    g = torch.Generator().manual_seed(seed)
    grey = torch.full((1, 3, IMAGE_SIZE, IMAGE_SIZE), 0.5)
    with torch.no_grad():
        uncond = embed([""])
    for prompt in prompts:
        with torch.no_grad():
            cond = embed([prompt])
            emb = torch.cat([cond, uncond])
            z = vae.encode(grey * 2 - 1).latent_dist.mode() * sf
            a = sched.alphas_cumprod[t]
            diffs = []
            for _ in range(8):  # average a few noise draws
                noise = torch.randn(z.shape, generator=g)
                zt = a.sqrt() * z + (1 - a).sqrt() * noise
                eps = unet(zt.repeat(2, 1, 1, 1), torch.tensor([t, t]), emb).sample
                diffs.append(eps[:1] - eps[1:])
            diff = torch.stack(diffs).mean(0)
            stepped = vae.decode((z - lr * diff) / sf).sample
            h1, s1, _ = mean_color_hsv(((stepped + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1))

        # (b) CSD on the image through the encoder (what the texture pipeline does)
        image = grey.clone().requires_grad_(True)
        opt = torch.optim.Adam([image], lr=0.02)
        for i in range(optimise_steps):
            z = vae.encode(image * 2 - 1).latent_dist.mode() * sf
            ti = int(torch.randint(200, 800, (1,), generator=g))
            ai = sched.alphas_cumprod[ti]
            with torch.no_grad():
                noise = torch.randn(z.shape, generator=g)
                zt = ai.sqrt() * z + (1 - ai).sqrt() * noise
                eps = unet(zt.repeat(2, 1, 1, 1), torch.tensor([ti, ti]), emb).sample
                grad = (1 - ai) * (eps[:1] - eps[1:])
            loss = 0.5 * ((z - (z - grad).detach()) ** 2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                image.clamp_(0, 1)
        h2, s2, _ = mean_color_hsv(image.detach().permute(0, 2, 3, 1))
        out[prompt] = {
            "one_step_hue": round(h1.item(), 1), "one_step_saturation": round(s1.item(), 3),
            "optimised_hue": round(h2.item(), 1), "optimised_saturation": round(s2.item(), 3),
        }
    return out


def evaluate(folder: Path, log) -> dict:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    t0 = time.time()
    report = {"sample_accuracy": colour_accuracy(pipe)}
    report["sample_accuracy_ball_front_view"] = colour_accuracy(pipe, n_per_colour=8, seed=1, template="a {} ball, front view")
    report["sample_accuracy_saved_ddpm_scheduler"] = colour_accuracy(pipe, n_per_colour=8, seed=2, ddim=False)
    report["csd_direction"] = csd_direction(pipe)
    report["eval_seconds"] = time.time() - t0
    for k, v in report["sample_accuracy"].items():
        log(f"sample accuracy {k:7s} {v['accuracy']:.3f}  hues {v['hues']}")
    for k, v in report["sample_accuracy_ball_front_view"].items():
        log(f"'a {k} ball, front view' accuracy {v['accuracy']:.3f}")
    for k, v in report["sample_accuracy_saved_ddpm_scheduler"].items():
        log(f"'a {k} object' with the saved DDPM scheduler, accuracy {v['accuracy']:.3f}")
    for k, v in report["csd_direction"].items():
        log(f"csd from grey, '{k}': {v}")
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("tests/data/tiny-prior"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the shipped folder: 1)")
    parser.add_argument("--vae-steps", type=int, default=1000)
    parser.add_argument("--vae-batch", type=int, default=16)
    parser.add_argument("--vae-lr", type=float, default=1e-3)
    parser.add_argument("--kl-weight", type=float, default=1e-4)
    parser.add_argument("--pool", type=int, default=20000)
    parser.add_argument("--unet-steps", type=int, default=2500)
    parser.add_argument("--unet-batch", type=int, default=64)
    parser.add_argument("--unet-lr", type=float, default=1e-3)
    parser.add_argument("--uncond-prob", type=float, default=0.15)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--eval-only", action="store_true", help="only run the checks on --out")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    if args.eval_only:
        print(json.dumps(evaluate(args.out, log), indent=1))
        return

    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    tokenizer = build_tokenizer(WORDS, model_max_length=MAX_TOKENS)
    vae, text_encoder, unet, scheduler = build_models(tokenizer)
    sizes = {"vae_params": n_params(vae), "text_encoder_params": n_params(text_encoder), "unet_params": n_params(unet)}
    log(f"params {sizes}")
    t_start = time.time()
    info = dict(args=vars(args) | {"out": str(args.out)}, **sizes)
    info.update(train_vae(vae, args, g, log))
    pool = encode_pool(vae, args, g, log)
    vae.register_to_config(scaling_factor=round(pool[-1], 5))
    info["scaling_factor"] = vae.config.scaling_factor
    info.update(train_unet(unet, text_encoder, scheduler, pool, TokenCache(tokenizer), args, g, log))
    info["train_seconds"] = time.time() - t_start
    log(f"trained in {info['train_seconds'] / 60:.1f} min")

    save_pipeline(args.out, vae, text_encoder, tokenizer, unet, scheduler)
    info.update(evaluate(args.out, log))
    (args.out / "train_report.json").write_text(json.dumps(info, indent=1) + "\n")
    log(f"saved {args.out}")


if __name__ == "__main__":
    main()
