"""Everything Stable Diffusion: loading, text and image encoding, timesteps, and the
Classifier Score Distillation gradient (Yu et al. 2023).

    grad = w(t) * (s_cond * eps(x_t; prompt) + s_neg * eps(x_t; negative) + s_null * eps(x_t; ""))
    w(t) = 1 - alpha_bar_t
    loss = 0.5 * || z - stopgrad(z - grad) ||^2 / B       (so d loss / d z = grad / B)

Plain CSD: s_cond = scale, s_neg = 0, s_null = -scale. With an annealed negative prompt of
weight w2: s_neg = -w2, s_null = w2 - scale. SDS (for comparison) uses
eps_null + scale * (eps_cond - eps_null) - noise instead.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import kornia
import torch

from ..config import Config
from ..datatypes import PromptEmbeds
from ..errors import ModelLoadError
from .prompts import view_prompts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GuidanceWeights:
    """Coefficients of the three noise predictions in the gradient."""

    cond: float
    negative: float
    null: float

    @classmethod
    def csd(cls, scale: float, negative_weight: float) -> "GuidanceWeights":
        return cls(cond=scale, negative=-negative_weight, null=negative_weight - scale)


@dataclass(frozen=True)
class GuidanceOutput:
    """One guidance step: the loss to back-propagate and what went into it."""

    loss: torch.Tensor
    timestep: int
    negative_weight: float


class CSDGuidance:
    """CSD (or SDS) guidance from injected diffusers components."""

    def __init__(self, unet, vae, scheduler, text_encoder, tokenizer, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, name: str = "", batch_prompts: bool = True) -> None:
        """`batch_prompts=False` makes one UNet call per prompt (the CSD reference code's way; benchmarks)."""
        self.device = torch.device(device)
        self.batch_prompts = batch_prompts
        self.dtype = dtype
        self.name = name
        self.unet = _frozen(unet, self.device, dtype)
        self.vae = _frozen(vae, self.device, dtype)
        self.text_encoder = _frozen(text_encoder, self.device, dtype)
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.alphas_cumprod = scheduler.alphas_cumprod.to(self.device, torch.float32)
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.image_size = int(unet.config.sample_size) * self.vae_scale_factor
        self.scaling_factor = float(vae.config.scaling_factor)

    @classmethod
    def from_pretrained(cls, model: str, revision: str | None = None, device: torch.device | str = "cpu",
                        dtype: torch.dtype | None = None) -> "CSDGuidance":
        """Load a diffusers Stable Diffusion folder or hub id; ModelLoadError says how to fix it."""
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        device = torch.device(device)
        dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
        folder = resolve_model_folder(model, revision)
        try:
            parts = {
                "tokenizer": CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer"),
                "text_encoder": CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=dtype),
                "vae": AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype),
                "unet": UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype),
                "scheduler": DDPMScheduler.from_pretrained(folder, subfolder="scheduler"),
            }
        except Exception as exc:  # noqa: BLE001 - missing files and format errors all mean "cannot load"
            raise ModelLoadError(_model_error_message(model, exc)) from None
        log.info("loaded model %s on %s (%s)", model, device, str(dtype).replace("torch.", ""))
        return cls(**parts, device=device, dtype=dtype, name=model)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """(N, L, D) text embeddings in the model's dtype."""
        tokens = self.tokenizer(texts, padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        return self.text_encoder(tokens.input_ids.to(self.device))[0].to(self.dtype)

    def encode_prompts(self, prompt: str, negative_prompt: str = "") -> PromptEmbeds:
        """View-dependent prompt embeddings, the negative prompt and the empty prompt."""
        cond = self.encode_text(view_prompts(prompt))
        negative, null = self.encode_text([negative_prompt, ""]).chunk(2)
        return PromptEmbeds(cond=cond, negative=negative, null=null)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) sRGB in [0, 1] -> (B, 4, h, w) latents (differentiable)."""
        x = images.permute(0, 3, 1, 2)
        if x.shape[-1] != self.image_size:
            x = kornia.geometry.transform.resize(x, (self.image_size, self.image_size), antialias=True)
        x = (x * 2 - 1).to(self.dtype)
        return self.vae.encode(x).latent_dist.mean.float() * self.scaling_factor

    def sample_timestep(self, progress: float, config: Config, generator: torch.Generator) -> int:
        """A timestep uniform in the annealed [t_min, t_max] range (fractions of the schedule)."""
        top = self.num_train_timesteps - 1
        low = int(round(config.timestep_min.at(progress) * top))
        high = max(low, int(round(config.timestep_max.at(progress) * top)))
        return int(torch.randint(low, high + 1, (1,), generator=generator))

    def weight(self, timestep: int) -> torch.Tensor:
        """w(t) = 1 - alpha_bar_t."""
        return 1.0 - self.alphas_cumprod[timestep]

    @torch.no_grad()
    def predict_noise(self, noisy: torch.Tensor, timestep: int, embeds: list[torch.Tensor]) -> list[torch.Tensor]:
        """eps(x_t; e) for each (B, L, D) embedding in `embeds`: one batched UNet call, or one call
        per embedding when `batch_prompts` is off."""
        groups = [embeds] if self.batch_prompts else [[e] for e in embeds]
        return [eps for group in groups for eps in self._unet_eps(noisy, timestep, group)]

    def _unet_eps(self, noisy: torch.Tensor, timestep: int, embeds: list[torch.Tensor]) -> list[torch.Tensor]:
        latents = noisy.to(self.dtype).repeat(len(embeds), 1, 1, 1)
        t = torch.full((latents.shape[0],), timestep, device=self.device, dtype=torch.long)
        eps = self.unet(latents, t, encoder_hidden_states=torch.cat(embeds)).sample.float()
        return list(eps.split(noisy.shape[0]))

    def csd_gradient(self, noisy: torch.Tensor, timestep: int, cond: torch.Tensor, negative: torch.Tensor | None,
                     null: torch.Tensor, weights: GuidanceWeights) -> torch.Tensor:
        """w(t) * (s_cond eps_c + s_neg eps_n + s_null eps_0); the negative term is skipped when absent."""
        batch = noisy.shape[0]
        embeds = [cond, null.expand(batch, -1, -1)]
        if negative is not None:
            embeds.append(negative.expand(batch, -1, -1))
        eps = self.predict_noise(noisy, timestep, embeds)
        grad = weights.cond * eps[0] + weights.null * eps[1]
        if negative is not None:
            grad = grad + weights.negative * eps[2]
        return self.weight(timestep) * grad

    def sds_gradient(self, noisy: torch.Tensor, noise: torch.Tensor, timestep: int, cond: torch.Tensor,
                     null: torch.Tensor, scale: float) -> torch.Tensor:
        """w(t) * (eps_0 + scale (eps_c - eps_0) - noise), classic SDS with classifier-free guidance."""
        eps_cond, eps_null = self.predict_noise(noisy, timestep, [cond, null.expand(noisy.shape[0], -1, -1)])
        return self.weight(timestep) * (eps_null + scale * (eps_cond - eps_null) - noise)

    def __call__(self, images: torch.Tensor, view_index: torch.Tensor, embeds: PromptEmbeds, config: Config,
                 progress: float, generator: torch.Generator, use_negative: bool,
                 noise_generator: torch.Generator | None = None) -> GuidanceOutput:
        """The guidance loss for rendered (B, H, W, 3) sRGB images whose views are `view_index` (B,).
        Timesteps come from the CPU `generator`; noise from `noise_generator` on the model's device."""
        latents = self.encode_images(images)
        timestep = self.sample_timestep(progress, config, generator)
        noise = torch.randn(latents.shape, generator=noise_generator, device=self.device)
        noisy = self.scheduler.add_noise(latents.detach(), noise, torch.full((1,), timestep, device=self.device))
        cond = embeds.cond[view_index.to(self.device)]
        negative_weight = config.negative_weight.at(progress) if use_negative else 0.0
        if config.guidance == "sds":
            grad = self.sds_gradient(noisy, noise, timestep, cond, embeds.null, config.guidance_scale)
        else:
            weights = GuidanceWeights.csd(config.guidance_scale, negative_weight)
            grad = self.csd_gradient(noisy, timestep, cond, embeds.negative if use_negative else None,
                                     embeds.null, weights)
        target = (latents - grad).detach()
        loss = 0.5 * ((latents - target) ** 2).sum() / latents.shape[0]
        return GuidanceOutput(loss=loss, timestep=timestep, negative_weight=negative_weight)


def _frozen(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The module on `device` in `dtype` (cast only when needed), in eval mode, without gradients."""
    module = module.to(device)
    if next(module.parameters()).dtype != dtype:
        module = module.to(dtype)
    return module.eval().requires_grad_(False)


MODEL_FILES = [
    "model_index.json",
    "scheduler/*.json",
    "tokenizer/*",
    "text_encoder/*.json",
    "text_encoder/model.safetensors",
    "vae/*.json",
    "vae/diffusion_pytorch_model.safetensors",
    "unet/*.json",
    "unet/diffusion_pytorch_model.safetensors",
]


def resolve_model_folder(model: str, revision: str | None = None) -> Path:
    """A local folder holding the model: `model` itself, the hub cache, or a fresh download of
    only the files the guidance needs. Fails fast (no minutes of retries) when the hub is unreachable."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "unet").is_dir():
            raise ModelLoadError(
                f"model folder {model} is not a diffusers Stable Diffusion folder (expected unet/, vae/, "
                "text_encoder/, tokenizer/ and scheduler/ inside); pass such a folder with --model"
            )
        return path
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise ModelLoadError(f"model folder {model} does not exist; pass a local diffusers folder with --model DIR")
    from huggingface_hub import constants, snapshot_download

    try:
        return Path(snapshot_download(model, revision=revision, allow_patterns=MODEL_FILES, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached: try the hub below
        pass
    if constants.HF_HUB_OFFLINE:
        raise ModelLoadError(_model_error_message(model, "not in the local cache and HF_HUB_OFFLINE is set"))
    if not _hub_reachable(constants.ENDPOINT):
        raise ModelLoadError(_model_error_message(model, f"not in the local cache and {constants.ENDPOINT} is unreachable"))
    log.info("downloading %s from the hub (first use only)", model)
    try:
        return Path(snapshot_download(model, revision=revision, allow_patterns=MODEL_FILES))
    except Exception as exc:  # noqa: BLE001 - any hub error means "cannot load"
        raise ModelLoadError(_model_error_message(model, exc)) from None


def _hub_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    """One quick TCP connection to the hub, instead of the client's minutes of retries."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(endpoint)
    try:
        with socket.create_connection((url.hostname or "", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _model_error_message(model: str, reason: object) -> str:
    text = str(reason).strip().splitlines()[0] if str(reason).strip() else type(reason).__name__
    return (
        f"cannot load model {model!r}: {text[:200]}. Download it where you have internet "
        f"(`hf download {model} --local-dir DIR`) and pass --model DIR "
        "(or set CSD_TEXTURE_MODEL=DIR)"
    )
