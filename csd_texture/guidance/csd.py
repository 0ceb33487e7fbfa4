"""Everything Stable Diffusion: loading, text and image encoding, timesteps, and the
Classifier Score Distillation gradient (Yu et al. 2023).

    grad = w(t) * (s_cond * eps(x_t; prompt) + s_neg * eps(x_t; negative) + s_null * eps(x_t; ""))
    w(t) = 1 - alpha_bar_t
    loss = 0.5 * || z - stopgrad(z - grad) ||^2 / B       (so d loss / d z = grad / B)

eps is the UNet's noise prediction; a v-prediction model's output v is converted with the
schedule: eps = sqrt(alpha_bar_t) * v + sqrt(1 - alpha_bar_t) * x_t. Loading a model (SD 1/2,
SDXL, single files) is `families.py`; text conditioning per family `conditioning.py`; LoRA
`lora.py`; the optional depth/normal ControlNet `controlnet.py`.

Plain CSD: s_cond = scale, s_neg = 0, s_null = -scale. With an annealed negative prompt of
weight w2: s_neg = -w2, s_null = w2 - scale. SDS (for comparison) uses
eps_null + scale * (eps_cond - eps_null) - noise instead.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import kornia
import torch

from ..cameras import VIEW_BUCKETS
from ..config import Config
from ..datatypes import PromptEmbeds
from .conditioning import TextConditioning
from .controlnet import GeometryControl, load_controlnet
from .families import ModelInfo, load_model
from .lora import LoraSpec, apply_loras
from .prompts import view_prompts
from .regional import compose_scores, latent_masks

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
                 dtype: torch.dtype = torch.float32, name: str = "", batch_prompts: bool = True,
                 text_encoder_2=None, tokenizer_2=None, control: GeometryControl | None = None,
                 info: ModelInfo | None = None, zero_empty_prompt: bool = False) -> None:
        """`batch_prompts=False` makes one UNet call per prompt (the CSD reference code's way; benchmarks).
        SDXL passes its second text encoder (with projection) and tokenizer; `control` adds a ControlNet."""
        self.device = torch.device(device)
        self.batch_prompts = batch_prompts
        self.dtype = dtype
        self.name = name
        self.unet = _frozen(unet, self.device, dtype)
        # SDXL's VAE overflows in fp16 unless its config says it was fixed (force_upcast false): keep it in fp32.
        sdxl = getattr(unet.config, "addition_embed_type", None) == "text_time"
        upcast = sdxl and dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
        self.vae_dtype = torch.float32 if upcast else dtype
        self.vae = _frozen(vae, self.device, self.vae_dtype)
        self.scheduler = scheduler
        self.prediction_type = str(scheduler.config.prediction_type)
        self.alphas_cumprod = scheduler.alphas_cumprod.to(self.device, torch.float32)
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.image_size = int(unet.config.sample_size) * self.vae_scale_factor
        self.scaling_factor = float(vae.config.scaling_factor)
        encoders = [text_encoder] + ([text_encoder_2] if text_encoder_2 is not None else [])
        tokenizers = [tokenizer] + ([tokenizer_2] if tokenizer_2 is not None else [])
        self.text = TextConditioning([_frozen(e, self.device, dtype) for e in encoders], tokenizers, unet.config,
                                     self.image_size, self.device, dtype, zero_empty_prompt)
        self.control = control
        if control is not None:
            control.model = _frozen(control.model, self.device, dtype)
        self.info = info

    @classmethod
    def from_pretrained(cls, model: str, revision: str | None = None, device: torch.device | str = "cpu",
                        dtype: torch.dtype | None = None, family: str | None = None, model_config: str | None = None,
                        loras: tuple[str, ...] = (), controlnet: str | None = None) -> "CSDGuidance":
        """Load an SD 1/2 or SDXL folder, hub id or single-file checkpoint (`families.load_model`),
        then `loras` ("PATH[:SCALE]") and a `controlnet` ("depth|normal[=ID_OR_FOLDER]");
        ModelLoadError says how to fix what cannot be loaded."""
        device = torch.device(device)
        dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
        parts = load_model(model, revision, dtype, family, model_config)
        specs = [LoraSpec.parse(text) for text in loras]
        apply_loras(parts, specs)
        control = load_controlnet(controlnet, parts.info.family, dtype) if controlnet else None
        info = replace(parts.info, loras=tuple(str(s) for s in specs),
                       controlnet=f"{control.kind}={control.source}" if control else None)
        log.info("loaded model %s on %s (%s): %s", model, device, str(dtype).replace("torch.", ""), info.describe())
        encoders, tokenizers = parts.text_encoders, parts.tokenizers
        return cls(parts.unet, parts.vae, parts.scheduler, encoders[0], tokenizers[0], device=device, dtype=dtype,
                   name=model, text_encoder_2=encoders[1] if len(encoders) > 1 else None,
                   tokenizer_2=tokenizers[1] if len(tokenizers) > 1 else None, control=control, info=info,
                   zero_empty_prompt=parts.zero_empty_prompt)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """(N, L, D) text embeddings in the model's dtype (SDXL: with its pooled row, see conditioning.py)."""
        return self.text.encode(texts)

    def encode_prompts(self, prompt: str, negative_prompt: str = "", view_dependent: bool = True) -> PromptEmbeds:
        """View-dependent prompt embeddings (or the prompt as given for every view bucket when
        `view_dependent` is off), the negative prompt and the empty prompt."""
        conditioned = view_prompts(prompt) if view_dependent else [prompt.strip()] * len(VIEW_BUCKETS)
        self._warn_if_cut(prompt.strip(), negative_prompt, conditioned)
        cond = self.encode_text(conditioned)
        negative, null = self.encode_text([negative_prompt, ""]).chunk(2)
        return PromptEmbeds(cond=cond, negative=negative, null=null)

    def _warn_if_cut(self, prompt: str, negative_prompt: str, conditioned: list[str]) -> None:
        """Warn about what the tokenizer would drop unseen: the end of the prompt, of the negative
        prompt, or (when the prompt itself fits) of the prompt with its view suffix."""
        limit = self.text.tokenizers[0].model_max_length
        prompt_cut = self.text.cut_off(prompt)
        cuts = {"the prompt": prompt_cut, "the negative prompt": self.text.cut_off(negative_prompt)}
        if prompt_cut is None:  # a prompt that is cut is cut with its suffix too: one line is enough
            cuts["the prompt with its view suffix (--view-prompts off drops the suffix)"] = \
                self.text.cut_off(max(conditioned, key=len))
        for label, cut in cuts.items():
            if cut is not None:
                log.warning("%s is longer than the model's %d tokens; the model ignores its end: %r", label, limit, cut)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) sRGB in [0, 1] -> (B, 4, h, w) latents (differentiable)."""
        x = images.permute(0, 3, 1, 2)
        if x.shape[-1] != self.image_size:
            x = kornia.geometry.transform.resize(x, (self.image_size, self.image_size), antialias=True)
        x = (x * 2 - 1).to(self.vae_dtype)
        return self.vae.encode(x).latent_dist.mean.float() * self.scaling_factor

    def sample_timestep(self, progress: float, config: Config, generator: torch.Generator) -> int:
        """A timestep uniform in the annealed [t_min, t_max] range (fractions of the schedule)."""
        return int(self.sample_timesteps(progress, config, generator, 1)[0])

    def sample_timesteps(self, progress: float, config: Config, generator: torch.Generator,
                         count: int) -> torch.Tensor:
        """(count,) long timesteps uniform in the annealed range: one per view when
        `config.timestep_per_view` (a batch then sees several noise levels), else one for all."""
        top = self.num_train_timesteps - 1
        low = int(round(config.timestep_min.at(progress) * top))
        high = max(low, int(round(config.timestep_max.at(progress) * top)))
        draws = count if config.timestep_per_view else 1
        return torch.randint(low, high + 1, (draws,), generator=generator).expand(count).to(self.device)

    def weight(self, timestep: int | torch.Tensor) -> torch.Tensor:
        """w(t) = 1 - alpha_bar_t; (B, 1, 1, 1) for a (B,) tensor of timesteps."""
        if isinstance(timestep, torch.Tensor) and timestep.ndim == 1:
            return (1.0 - self.alphas_cumprod[timestep]).view(-1, 1, 1, 1)
        return 1.0 - self.alphas_cumprod[timestep]

    @torch.no_grad()
    def predict_noise(self, noisy: torch.Tensor, timestep: int, embeds: list[torch.Tensor],
                      control: torch.Tensor | None = None) -> list[torch.Tensor]:
        """eps(x_t; e) for each (B, L, D) embedding in `embeds`: one batched UNet call, or one call
        per embedding when `batch_prompts` is off. `control`: (B, 3, H, W) ControlNet images,
        the same for every prompt branch."""
        groups = [embeds] if self.batch_prompts else [[e] for e in embeds]
        return [eps for group in groups for eps in self._unet_eps(noisy, timestep, group, control)]

    def _unet_eps(self, noisy: torch.Tensor, timestep: int, embeds: list[torch.Tensor],
                  control: torch.Tensor | None = None) -> list[torch.Tensor]:
        latents = noisy.to(self.dtype).repeat(len(embeds), 1, 1, 1)
        if isinstance(timestep, torch.Tensor) and timestep.ndim == 1:  # one per view
            t = timestep.to(self.device).repeat(len(embeds))
        else:
            t = torch.full((latents.shape[0],), int(timestep), device=self.device, dtype=torch.long)
        kwargs = self.text.unet_kwargs(torch.cat(embeds))
        if self.control is not None and control is not None:
            kwargs |= self.control.residuals(latents, t, kwargs, control.repeat(len(embeds), 1, 1, 1), self.image_size)
        out = self.unet(latents, t, **kwargs).sample.float()
        if self.prediction_type == "v_prediction":  # v -> eps with the schedule's alpha_bar_t
            alpha_bar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
            out = alpha_bar.sqrt() * out + (1 - alpha_bar).sqrt() * latents.float()
        return list(out.split(noisy.shape[0]))

    def csd_gradient(self, noisy: torch.Tensor, timestep: int, cond: torch.Tensor, negative: torch.Tensor | None,
                     null: torch.Tensor, weights: GuidanceWeights, control: torch.Tensor | None = None,
                     masks: torch.Tensor | None = None) -> torch.Tensor:
        """w(t) * (s_cond eps_c + s_neg eps_n + s_null eps_0); the negative term is skipped when absent.
        `cond` (B, L, D), or (K, B, L, D) for K part prompts whose eps_c are composed by `masks`
        (B, K, h, w) (guidance.regional); all in one batched UNet call."""
        batch = noisy.shape[0]
        conds = list(cond) if masks is not None else [cond]
        embeds = [*conds, null.expand(batch, -1, -1)]
        if negative is not None:
            embeds.append(negative.expand(batch, -1, -1))
        eps = self.predict_noise(noisy, timestep, embeds, control)
        eps_cond = compose_scores(eps[:len(conds)], masks) if masks is not None else eps[0]
        grad = weights.cond * eps_cond + weights.null * eps[len(conds)]
        if negative is not None:
            grad = grad + weights.negative * eps[len(conds) + 1]
        return self.weight(timestep) * grad

    def sds_gradient(self, noisy: torch.Tensor, noise: torch.Tensor, timestep: int, cond: torch.Tensor,
                     null: torch.Tensor, scale: float, control: torch.Tensor | None = None,
                     masks: torch.Tensor | None = None) -> torch.Tensor:
        """w(t) * (eps_0 + scale (eps_c - eps_0) - noise), classic SDS with classifier-free guidance;
        part prompts (`cond` (K, B, L, D)) are composed by `masks` as in csd_gradient."""
        conds = list(cond) if masks is not None else [cond]
        eps = self.predict_noise(noisy, timestep, [*conds, null.expand(noisy.shape[0], -1, -1)], control)
        eps_cond = compose_scores(eps[:-1], masks) if masks is not None else eps[0]
        return self.weight(timestep) * (eps[-1] + scale * (eps_cond - eps[-1]) - noise)

    def __call__(self, images: torch.Tensor, view_index: torch.Tensor, embeds: PromptEmbeds, config: Config,
                 progress: float, generator: torch.Generator, use_negative: bool,
                 noise_generator: torch.Generator | None = None, control: torch.Tensor | None = None,
                 parts: torch.Tensor | None = None) -> GuidanceOutput:
        """The guidance loss for rendered (B, H, W, 3) sRGB images whose views are `view_index` (B,).
        Timesteps come from the CPU `generator`; noise from `noise_generator` on the model's device.
        `control`: (B, 3, H, W) depth/normal images of the same views for the ControlNet, if any.
        `parts`: (B, H, W) index of each pixel's part prompt (-1 on the background), needed when
        `embeds.cond` holds K part prompts (K, N_views, L, D)."""
        latents = self.encode_images(images)
        timestep = self.sample_timesteps(progress, config, generator, latents.shape[0])
        noise = torch.randn(latents.shape, generator=noise_generator, device=self.device)
        noisy = self.scheduler.add_noise(latents.detach(), noise, timestep)
        cond = embeds.cond[..., view_index.to(self.device), :, :]  # (B, L, D), or (K, B, L, D) for part prompts
        masks = None
        if cond.ndim == 4:
            if parts is None:
                raise ValueError("part prompts need the part index of every pixel (parts)")
            masks = latent_masks(parts.to(self.device), cond.shape[0], tuple(latents.shape[-2:]))
        negative_weight = config.negative_weight.at(progress) if use_negative else 0.0
        if config.guidance == "sds":
            grad = self.sds_gradient(noisy, noise, timestep, cond, embeds.null, config.guidance_scale, control, masks)
        else:
            weights = GuidanceWeights.csd(config.guidance_scale, negative_weight)
            grad = self.csd_gradient(noisy, timestep, cond, embeds.negative if use_negative else None,
                                     embeds.null, weights, control, masks)
        target = (latents - grad).detach()
        loss = 0.5 * ((latents - target) ** 2).sum() / latents.shape[0]
        return GuidanceOutput(loss=loss, timestep=int(timestep.float().mean().round()), negative_weight=negative_weight)


def _frozen(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The module on `device` in `dtype` (cast only when needed), in eval mode, without gradients."""
    module = module.to(device)
    if next(module.parameters()).dtype != dtype:
        module = module.to(dtype)
    return module.eval().requires_grad_(False)
