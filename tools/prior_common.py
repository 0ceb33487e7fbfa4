"""Pieces shared by the scripts that train the small priors shipped under tests/data/
(tools/train_tiny_prior.py: colours; tools/train_pattern_prior.py: patterns and materials).

Run the scripts as `python tools/<script>.py`: Python then puts tools/ on the import path and
`import prior_common` finds this module.
"""
from __future__ import annotations

import copy
import math

import torch


def hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """h in degrees, s and v in [0, 1], shape (N,) -> sRGB (N, 3) in [0, 1]."""
    out = []
    for n in (5.0, 3.0, 1.0):
        k = (n + h / 60.0) % 6.0
        out.append(v - v * s * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))
    return torch.stack(out, -1)


def uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    """(n,) uniform draws in [lo, hi)."""
    return lo + (hi - lo) * torch.rand(n, generator=g)


@torch.no_grad()
def init_colour_path(vae, offset: float = 6.0) -> None:
    """Start the autoencoder as an exact mean-colour autoencoder, then let training add patterns.

    Trained from random weights, a GroupNorm autoencoder learns flat colours very slowly: every
    path to the output goes through a GroupNorm, which removes the spatial mean (the colour) of a
    flat image, and a random path attenuates the colour long before that. So here the skip path
    is set by hand: residual branches and attention outputs start at zero (identity blocks), the
    encoder is an 8x8 average pool of (+rgb, -rgb) channel pairs next to a constant pair (+B, -B)
    that fixes the GroupNorm scale (norm_num_groups=1), the readout uses silu(a) - silu(-a) = a, and
    the decoder is the nearest-neighbour mirror. Latent channels 0..2 start as the block's mean rgb
    in [-1, 1], channel 3 at zero; the posterior log-variance starts at -6.
    """
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D

    def eye_(weight, i=None, j=None):  # identity between the first min(out, in) channels
        n = min(weight.shape[0], weight.shape[1])
        idx = torch.arange(n)
        if i is None:
            weight[idx, idx] = 1.0
        else:
            weight[idx, idx, i, j] = 1.0

    def centre(conv):
        conv.weight.zero_()
        conv.bias.zero_()
        return conv.weight[:, :, 1, 1]

    for m in vae.modules():
        if isinstance(m, ResnetBlock2D):
            m.conv2.weight.zero_()
            m.conv2.bias.zero_()
            if m.conv_shortcut is not None:
                m.conv_shortcut.weight.zero_()
                m.conv_shortcut.bias.zero_()
                eye_(m.conv_shortcut.weight, 0, 0)
        if isinstance(m, Attention):
            m.to_out[0].weight.zero_()
            m.to_out[0].bias.zero_()
    for coder in (vae.encoder, vae.decoder):
        w = centre(coder.conv_in)
        for k in range(3):
            w[2 * k, k], w[2 * k + 1, k] = 1.0, -1.0
        coder.conv_in.bias[6], coder.conv_in.bias[7] = offset, -offset
        coder.conv_norm_out.weight.fill_(1.0)
        coder.conv_norm_out.bias.zero_()
        w = centre(coder.conv_out)
        sigma = (2 * offset**2 / coder.conv_out.in_channels) ** 0.5  # GroupNorm std of a flat grey image
        for k in range(3):
            w[k, 2 * k], w[k, 2 * k + 1] = sigma, -sigma
    vae.encoder.conv_out.bias[vae.config.latent_channels:] = -6.0
    for block in vae.encoder.down_blocks:
        if block.downsamplers is not None:  # pads right/bottom, stride 2: taps (0..1, 0..1) = 2x2 average
            conv = block.downsamplers[0].conv
            conv.weight.zero_()
            conv.bias.zero_()
            for i in (0, 1):
                for j in (0, 1):
                    eye_(conv.weight, i, j)
            conv.weight.mul_(0.25)
    for block in vae.decoder.up_blocks:
        if block.upsamplers is not None:
            eye_(centre(block.upsamplers[0].conv))
    for q in (vae.quant_conv, vae.post_quant_conv):
        q.weight.zero_()
        q.bias.zero_()
        eye_(q.weight, 0, 0)


def build_text_encoder(tokenizer, width: int, layers: int = 2, heads: int = 4):
    """A small `CLIPTextModel` for `tokenizer` (width, MLP 2 x width, one position per token)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=width,
            intermediate_size=2 * width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def cosine_lr(step: float, total: float, base: float, warmup: float = 100, floor: float = 0.1) -> float:
    """Linear warm-up over `warmup`, then cosine decay to `floor * base` at `total` (steps or seconds)."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


class TokenCache:
    """Token ids of captions (padded to the tokenizer's length), tokenised once per distinct caption."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: dict[str, list[int]] = {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        missing = [c for c in dict.fromkeys(captions) if c not in self.ids]
        if missing:
            enc = self.tokenizer(missing, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True)
            self.ids.update(zip(missing, enc.input_ids))
        return torch.tensor([self.ids[c] for c in captions])


def save_pipeline(folder, vae, text_encoder, tokenizer, unet, scheduler, unet_dtype: torch.dtype = torch.float32) -> None:
    """Write the five parts as a diffusers StableDiffusionPipeline folder.

    unet_dtype=torch.float16 stores the UNet's weights at half size (a copy is cast; the model trained goes on in
    float32); diffusers loads them back as float32 unless told otherwise.
    """
    from diffusers import StableDiffusionPipeline

    if unet_dtype != torch.float32:
        unet = copy.deepcopy(unet).to(unet_dtype)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
