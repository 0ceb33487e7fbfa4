"""CSD guidance: model loading, the gradient formula, prompts and the loss's gradient."""
from __future__ import annotations

import pytest
import torch

from csd_texture.config import Config, Schedule
from csd_texture.errors import ModelLoadError
from csd_texture.guidance.csd import CSDGuidance, GuidanceWeights
from csd_texture.guidance.prompts import view_prompts


def independent_eps(guidance: CSDGuidance, noisy: torch.Tensor, t: int, emb: torch.Tensor) -> torch.Tensor:
    """One UNet call per prompt, separately from the guidance's batched call."""
    with torch.no_grad():
        steps = torch.full((noisy.shape[0],), t, dtype=torch.long)
        return guidance.unet(noisy, steps, encoder_hidden_states=emb.expand(noisy.shape[0], -1, -1)).sample


def test_sizes_come_from_the_model_config(tiny_guidance: CSDGuidance) -> None:
    assert tiny_guidance.vae_scale_factor == 8
    assert tiny_guidance.image_size == tiny_guidance.unet.config.sample_size * 8 == 64


@pytest.mark.parametrize("negative_weight", [0.0, 0.7])
def test_csd_gradient_matches_independent_computation(tiny_guidance: CSDGuidance, negative_weight: float) -> None:
    g = tiny_guidance
    embeds = g.encode_prompts("a red chair", "blurry")
    noisy = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    cond = embeds.cond[torch.tensor([0, 2])]
    t = 600
    weights = GuidanceWeights.csd(scale=1.5, negative_weight=negative_weight)
    grad = g.csd_gradient(noisy, t, cond, embeds.negative, embeds.null, weights)

    eps_c = torch.cat([independent_eps(g, noisy[i:i + 1], t, cond[i:i + 1]) for i in range(2)])
    eps_n = independent_eps(g, noisy, t, embeds.negative)
    eps_0 = independent_eps(g, noisy, t, embeds.null)
    w = 1 - g.scheduler.alphas_cumprod[t]
    expected = w * (1.5 * eps_c - negative_weight * eps_n + (negative_weight - 1.5) * eps_0)
    assert torch.allclose(grad, expected, atol=1e-5)
    plain = w * 1.5 * (eps_c - eps_0)
    assert torch.allclose(g.csd_gradient(noisy, t, cond, None, embeds.null, GuidanceWeights.csd(1.5, 0.0)),
                          plain, atol=1e-5)
    assert (grad - plain).abs().max() > 1e-6 or negative_weight == 0.0


def test_sds_gradient_matches_independent_computation(tiny_guidance: CSDGuidance) -> None:
    g = tiny_guidance
    embeds = g.encode_prompts("a blue cup")
    gen = torch.Generator().manual_seed(2)
    noisy, noise = torch.randn(1, 4, 8, 8, generator=gen), torch.randn(1, 4, 8, 8, generator=gen)
    grad = g.sds_gradient(noisy, noise, 300, embeds.cond[:1], embeds.null, scale=7.5)
    eps_c, eps_0 = independent_eps(g, noisy, 300, embeds.cond[:1]), independent_eps(g, noisy, 300, embeds.null)
    w = 1 - g.scheduler.alphas_cumprod[300]
    assert torch.allclose(grad, w * (eps_0 + 7.5 * (eps_c - eps_0) - noise), atol=1e-5)


def test_loss_gradient_equals_guidance_gradient(tiny_guidance: CSDGuidance) -> None:
    """d loss / d latents must be grad / B: the loss is only a carrier for the CSD direction."""
    g = tiny_guidance
    embeds = g.encode_prompts("a red chair")
    images = torch.rand(2, 64, 64, 3, requires_grad=True)
    config = Config(steps=10, timestep_min=Schedule(0.5, 0.5), timestep_max=Schedule(0.5, 0.5))
    out = g(images, torch.tensor([0, 1]), embeds, config, 0.0, torch.Generator().manual_seed(0), False)
    out.loss.backward()
    assert out.timestep == round(0.5 * 999)
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_timestep_range_anneals(tiny_guidance: CSDGuidance) -> None:
    config = Config(timestep_min=Schedule(0.02, 0.02), timestep_max=Schedule(0.98, 0.5))
    gen = torch.Generator().manual_seed(0)
    late = [tiny_guidance.sample_timestep(1.0, config, gen) for _ in range(200)]
    early = [tiny_guidance.sample_timestep(0.0, config, gen) for _ in range(200)]
    assert max(late) <= 500 and min(late) >= 20
    assert max(early) > 700


def test_view_prompts_have_one_suffix_per_bucket() -> None:
    assert view_prompts(" a chair ") == [
        "a chair, front view", "a chair, side view", "a chair, back view", "a chair, overhead view"
    ]


def test_missing_model_folder_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist; pass a local diffusers folder with --model"):
        CSDGuidance.from_pretrained(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="not a diffusers Stable Diffusion folder"):
        CSDGuidance.from_pretrained(str(tmp_path))


def test_unreachable_hub_fails_fast_with_instructions(monkeypatch, tmp_path) -> None:
    import time

    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match=r"hf download someone/some-model --local-dir DIR.*--model DIR"):
        CSDGuidance.from_pretrained("someone/some-model")
    assert time.perf_counter() - start < 20


def test_separate_unet_calls_give_the_batched_gradient(tiny_model_dir: str, tiny_guidance: CSDGuidance) -> None:
    """The reference loop's one-call-per-prompt UNet gives the same CSD gradient as the batched call."""
    separate = CSDGuidance.from_pretrained(tiny_model_dir)
    separate.batch_prompts = False
    embeds = tiny_guidance.encode_prompts("a red chair", "blurry")
    noisy = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    cond = embeds.cond[:2]
    weights = GuidanceWeights.csd(1.0, 0.5)
    batched = tiny_guidance.csd_gradient(noisy, 400, cond, embeds.negative, embeds.null, weights)
    one_by_one = separate.csd_gradient(noisy, 400, cond, embeds.negative, embeds.null, weights)
    assert torch.allclose(batched, one_by_one, atol=1e-5)
