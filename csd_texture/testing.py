"""Tiny Stable Diffusion (SD, SDXL, ControlNet) models built in code, for tests, `doctor` and benchmarks.

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


def _apply_bpe(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encoding of one word: repeatedly merge the best-ranked adjacent pair (all occurrences)."""
    while len(pieces) > 1:
        best = min(zip(pieces, pieces[1:]), key=lambda pair: ranks.get(pair, len(ranks)))
        if best not in ranks:
            break
        out, i = [], 0
        while i < len(pieces):
            if i + 1 < len(pieces) and (pieces[i], pieces[i + 1]) == best:
                out.append(pieces[i] + pieces[i + 1])
                i += 2
            else:
                out.append(pieces[i])
                i += 1
        pieces = out
    return pieces


def build_tokenizer(words: tuple[str, ...] = (), model_max_length: int = 16):
    """A CLIP tokenizer with a byte-level vocabulary plus whole-word tokens for `words`.

    Prompts are padded/truncated to `model_max_length` tokens (start and end tokens included).
    """
    from transformers import CLIPTokenizer

    symbols = byte_level_alphabet()
    vocab: dict[str, int] = {}
    for s in symbols + [s + "</w>" for s in symbols]:
        vocab.setdefault(s, len(vocab))
    merges: list[tuple[str, str]] = []  # transformers>=5 wants pairs, not "a b" strings
    for word in words:
        # Apply the merges so far (as BPE will); if they leave the word in pieces, append merges
        # that join those pieces left to right. Appended merges rank last, so they never change
        # how an earlier word is split: every word in `words` ends up as one token.
        pieces = _apply_bpe(list(word[:-1]) + [word[-1] + "</w>"], {m: i for i, m in enumerate(merges)})
        while len(pieces) > 1:
            merges.append((pieces[0], pieces[1]))
            merged = pieces[0] + pieces[1]
            vocab.setdefault(merged, len(vocab))
            pieces = [merged] + pieces[2:]
    for token in SPECIAL_TOKENS:
        vocab.setdefault(token, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def sd_ddpm_scheduler(prediction_type: str = "epsilon"):
    """Stable Diffusion's training noise schedule (scaled-linear betas; epsilon or v_prediction)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        clip_sample=False,
        prediction_type=prediction_type,
    )


def build_tiny_pipeline(
    seed: int = 0,
    image_size: int = 64,
    words: tuple[str, ...] = (),
    text_width: int = 32,
    prediction_type: str = "epsilon",
):
    """A randomly initialised StableDiffusionPipeline: tiny UNet, a VAE whose latent is 1/8 of
    the image, a tiny CLIP text encoder and a tokenizer built in code. A v_prediction model gets
    SD 2's linear-projection attention (so it is detected as sd2, like SD-2.1-768)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

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
        use_linear_projection=prediction_type == "v_prediction",
    )
    return StableDiffusionPipeline(
        vae=_tiny_vae(image_size),
        text_encoder=_tiny_text_encoder(tokenizer, text_width),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=sd_ddpm_scheduler(prediction_type),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _tiny_vae(image_size: int):
    """A random AutoencoderKL with 4 latent channels at 1/8 of the image size."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
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


def _tiny_text_encoder(tokenizer, text_width: int, with_projection: bool = False):
    """A random 2-layer CLIP text encoder (with a `text_width` projection for SDXL's second encoder)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return model_class(
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
            projection_dim=text_width,
        )
    )


def build_tiny_sdxl_pipeline(seed: int = 0, image_size: int = 64, words: tuple[str, ...] = (), text_width: int = 32):
    """A randomly initialised StableDiffusionXLPipeline: two tiny text encoders (the second with a
    projection, whose pooled output and the size `time_ids` go into the UNet's added embedding),
    a tiny UNet with `text_time` conditioning, the tiny VAE and an Euler sampler on SD's schedule."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(words)
    time_embed_dim = 8
    unet = UNet2DConditionModel(
        sample_size=image_size // 8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=2 * text_width,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=text_width + 6 * time_embed_dim,
        norm_num_groups=8,
    )
    return StableDiffusionXLPipeline(
        vae=_tiny_vae(image_size),
        text_encoder=_tiny_text_encoder(tokenizer, text_width),
        text_encoder_2=_tiny_text_encoder(tokenizer, text_width, with_projection=True),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(sd_ddpm_scheduler().config),
    )


def build_tiny_controlnet(unet, seed: int = 0):
    """A ControlNet copied from a tiny UNet (`ControlNetModel.from_unet`) with random zero-convolutions
    (a fresh ControlNet's are all zero, so it would change nothing)."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16))
    with torch.no_grad():
        for block in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            torch.nn.init.normal_(block.weight, std=0.02)
    return controlnet


def save_tiny_pipeline(folder: str | Path, seed: int = 0, image_size: int = 64, family: str = "sd",
                       prediction_type: str = "epsilon") -> Path:
    """Build a tiny random pipeline (`family` sd or sdxl) and `save_pretrained` it to `folder`;
    returns the folder."""
    folder = Path(folder)
    if family == "sdxl":
        pipe = build_tiny_sdxl_pipeline(seed=seed, image_size=image_size)
    else:
        pipe = build_tiny_pipeline(seed=seed, image_size=image_size, prediction_type=prediction_type)
    pipe.save_pretrained(folder)
    return folder


# Hue of named colours (degrees on the HSV wheel of sRGB) used by the tiny trained prior
# (tests/data/tiny-prior, tools/train_tiny_prior.py) and the tests that check it.
NAMED_HUES: dict[str, float] = {"red": 0.0, "yellow": 60.0, "green": 120.0, "blue": 240.0}


def mean_color_hsv(images) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
    """Hue (degrees, [0, 360)), saturation and value ([0, 1]) of the mean colour of each image.

    `images`: sRGB in [0, 1], shape `(H, W, 3)` or `(B, H, W, 3)` (numpy array, PIL image or tensor).
    Returns three float64 tensors of shape `()` or `(B,)`. The hue of a grey (saturation 0) is 0.
    """
    import numpy as np

    rgb = images if torch.is_tensor(images) else torch.from_numpy(np.array(images))
    if rgb.dtype == torch.uint8:
        rgb = rgb.double() / 255.0
    rgb = rgb.double()
    if rgb.ndim not in (3, 4) or rgb.shape[-1] != 3:
        raise ValueError(f"expected images of shape (H, W, 3) or (B, H, W, 3), got {tuple(rgb.shape)}")
    from .pattern_metrics import rgb_to_hsv

    return rgb_to_hsv(rgb.mean(dim=(-3, -2)))


def mean_hue_degrees(images) -> "torch.Tensor":
    """Hue in degrees [0, 360) of the mean colour of each image; see `mean_color_hsv`."""
    return mean_color_hsv(images)[0]


def hue_distance(a, b) -> "torch.Tensor":
    """Shortest angular distance in degrees (0..180) between hues `a` and `b` (broadcast)."""
    d = (torch.as_tensor(a, dtype=torch.float64) - torch.as_tensor(b, dtype=torch.float64)) % 360.0
    return torch.minimum(d, 360.0 - d)


def nearest_named_hue(hue) -> list[str]:
    """Name in `NAMED_HUES` whose hue is nearest to each given hue (degrees)."""
    hue = torch.as_tensor(hue, dtype=torch.float64).reshape(-1)
    names = list(NAMED_HUES)
    centres = torch.tensor([NAMED_HUES[n] for n in names], dtype=torch.float64)
    return [names[i] for i in hue_distance(hue[:, None], centres[None, :]).argmin(-1).tolist()]


def _ldm_unet_key(key: str, layers_per_block: int, attention_blocks: set[int]) -> str:
    """The original (LDM) name of a diffusers UNet weight: the inverse of diffusers'
    `convert_ldm_unet_checkpoint` renaming (hand-written: diffusers only converts the other way)."""
    import re

    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    head, _, param = key.rpartition(".")
    if head in fixed:
        return f"{fixed[head]}.{param}"
    resnet = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
              "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
    per = layers_per_block + 1
    if m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(\w+)", key):
        b, layer, part, param = int(m[1]), int(m[2]), m[3], m[4]
        return f"input_blocks.{1 + b * per + layer}.0.{resnet[part]}.{param}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
        return f"input_blocks.{1 + int(m[1]) * per + int(m[2])}.1.{m[3]}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
        return f"input_blocks.{(int(m[1]) + 1) * per}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d)\.(\w+)\.(\w+)", key):
        return f"middle_block.{2 * int(m[1])}.{resnet[m[2]]}.{m[3]}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(\w+)", key):
        return f"output_blocks.{int(m[1]) * per + int(m[2])}.0.{resnet[m[3]]}.{m[4]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
        return f"output_blocks.{int(m[1]) * per + int(m[2])}.1.{m[3]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
        b = int(m[1])
        return f"output_blocks.{b * per + layers_per_block}.{2 if b in attention_blocks else 1}.conv.{m[2]}"
    raise ValueError(f"no original name for UNet weight {key}")


def _ldm_vae_key(key: str, num_up_blocks: int) -> str:
    """The original (LDM) name of a diffusers AutoencoderKL weight (inverse of `convert_ldm_vae_checkpoint`)."""
    import re

    key = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
    key = re.sub(r"mid_block\.resnets\.(\d)", lambda m: f"mid.block_{int(m[1]) + 1}", key)
    for new, old in (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
        key = key.replace(f"mid_block.attentions.0.{new}.", f"mid.attn_1.{old}.")
    key = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets", r"encoder.down.\1.block", key)
    key = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0", r"encoder.down.\1.downsample", key)
    key = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets",
                 lambda m: f"decoder.up.{num_up_blocks - 1 - int(m[1])}.block", key)
    return re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0",
                  lambda m: f"decoder.up.{num_up_blocks - 1 - int(m[1])}.upsample", key)


def save_single_file(folder: str | Path, path: str | Path) -> Path:
    """Write a tiny SD 1.x-style diffusers `folder` as one original-layout `.safetensors` checkpoint
    (`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.transformer.*`), the format
    users download fine-tuned checkpoints in; `from_single_file` reads it back."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    unet_config = pipe.unet.config
    attention_blocks = {i for i, kind in enumerate(unet_config.up_block_types) if "CrossAttn" in kind}
    state: dict[str, torch.Tensor] = {}
    for key, value in pipe.unet.state_dict().items():
        name = _ldm_unet_key(key, unet_config.layers_per_block, attention_blocks)
        state[f"model.diffusion_model.{name}"] = value
    for key, value in pipe.vae.state_dict().items():
        name = _ldm_vae_key(key, len(pipe.vae.config.up_block_types))
        if ".attn_1." in name and name.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]  # LDM's VAE attention uses 1x1 convolutions
        state[f"first_stage_model.{name}"] = value
    for key, value in pipe.text_encoder.state_dict().items():  # transformers>=5 drops the text_model. prefix
        state[f"cond_stage_model.transformer.{key if key.startswith('text_model.') else 'text_model.' + key}"] = value
    path = Path(path)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def textured_red_ball(path: Path, size: int = 32, subdivisions: int = 2) -> Path:
    """Write an icosphere with a uniform red `size` x `size` base colour texture (linear
    (0.5, 0.04, 0.04): no channel at exactly 0, where the texture's sigmoid is flat) to `path`
    (.glb), recorded as made from "a red ball": a source for edit and region-repaint tests."""
    import numpy as np
    import trimesh

    from .datatypes import PBRMaps
    from .export import export_textured_mesh
    from .mesh_io import load_mesh
    from .uv import prepare_uv

    mesh = prepare_uv(load_mesh(trimesh.creation.icosphere(subdivisions=subdivisions)), texture_size=size)
    red = np.full((size, size, 3), 0.04, np.float32)
    red[..., 0] = 0.5
    maps = PBRMaps(albedo=red, roughness=np.full((size, size, 1), 0.6, np.float32),
                   metallic=np.zeros((size, size, 1), np.float32), coverage=np.ones((size, size), bool))
    return export_textured_mesh(mesh, maps, path, {"prompt": "a red ball"})


def bump_reference(size: int):
    """A grey, fairly smooth dielectric ImageTexture with a sine bump pattern (period 8 texels), and
    its (S, S, 3) tangent-space normals: the known answer of the normal-map recovery test and bench."""
    from .texture import BumpMap, ImageTexture

    bump = BumpMap(size)
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    with torch.no_grad():
        bump.height.copy_(1.5 * torch.sin(2 * torch.pi * cols / 8) * torch.sin(2 * torch.pi * rows / 8))
        normal = torch.nn.functional.normalize(bump.normal_image(), dim=1)[0].permute(1, 2, 0)
    ones = torch.ones(size, size, 1)
    return ImageTexture(torch.full((size, size, 3), 0.5), ones * 0.3, ones * 0.0, normal * 0.5 + 0.5), normal


def load_ddim_pipeline(folder):
    """A StableDiffusionPipeline from `folder` with a DDIM sampler and no progress bar: how the test
    priors are sampled by their tests and their training scripts' checks."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe
