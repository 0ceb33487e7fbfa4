"""Tiny Stable Diffusion pipelines built in code, for tests, `doctor` and benchmarks.

The folders written here load with the same public code path as a real model
(``--model FOLDER``), so nothing downstream knows it is tiny.
"""
from __future__ import annotations

from pathlib import Path

import torch

SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


def byte_level_alphabet() -> list[str]:
    """The 256 printable stand-ins for bytes used by CLIP's byte-level BPE."""
    codes = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    extra = [b for b in range(256) if b not in codes]
    return [chr(c) for c in codes] + [chr(256 + i) for i in range(len(extra))]


def build_tokenizer(words: tuple[str, ...] = ()):
    """A CLIP tokenizer with a byte-level vocabulary plus whole-word tokens for `words`."""
    from transformers import CLIPTokenizer

    symbols = byte_level_alphabet()
    vocab: dict[str, int] = {}
    for s in symbols + [s + "</w>" for s in symbols]:
        vocab.setdefault(s, len(vocab))
    merges: list[str] = []
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:  # left-to-right merges spell out the whole word
            merges.append(f"{pieces[0]} {pieces[1]}")
            merged = pieces[0] + pieces[1]
            vocab.setdefault(merged, len(vocab))
            pieces = [merged] + pieces[2:]
    for token in SPECIAL_TOKENS:
        vocab.setdefault(token, len(vocab))
    merges = list(dict.fromkeys(merges))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=16)


def build_tiny_pipeline(
    seed: int = 0,
    image_size: int = 64,
    words: tuple[str, ...] = (),
    text_width: int = 32,
):
    """A randomly initialised StableDiffusionPipeline: tiny UNet, a VAE whose latent is 1/8 of
    the image, a tiny CLIP text encoder and a tokenizer built in code."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(words)
    unet = UNet2DConditionModel(
        sample_size=image_size // 8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=text_width,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=image_size,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=text_width,
            intermediate_size=2 * text_width,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        clip_sample=False,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_tiny_pipeline(folder: str | Path, seed: int = 0, image_size: int = 64) -> Path:
    """Build a tiny random pipeline and `save_pretrained` it to `folder`; returns the folder."""
    folder = Path(folder)
    build_tiny_pipeline(seed=seed, image_size=image_size).save_pretrained(folder)
    return folder
