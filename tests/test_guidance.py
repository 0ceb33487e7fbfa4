"""CSD guidance: model loading, the gradient formula, prompts and the loss's gradient."""
from __future__ import annotations

import logging
from pathlib import Path

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


@pytest.mark.parametrize("use_negative", [False, True])
def test_loss_gradient_equals_guidance_gradient(tiny_guidance: CSDGuidance, use_negative: bool) -> None:
    """d loss / d latents must be grad / B: the loss is only a carrier for the CSD direction. Checked
    through the encoder: d loss / d images must equal J^T (grad / B), J = d latents / d images,
    with grad recomputed from the public steps (same timestep and noise), so a sign flip, a lost
    1/B or a gradient through the UNet all fail."""
    g = tiny_guidance
    embeds = g.encode_prompts("a red chair", "blurry")
    images = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(3), requires_grad=True)
    views = torch.tensor([0, 1])
    config = Config(steps=10, guidance_scale=1.5, negative_weight=Schedule(0.6, 0.6),
                    timestep_min=Schedule(0.3, 0.3), timestep_max=Schedule(0.7, 0.7))
    out = g(images, views, embeds, config, 0.0, torch.Generator().manual_seed(0), use_negative,
            torch.Generator().manual_seed(5))
    out.loss.backward()

    latents = g.encode_images(images)
    timestep = g.sample_timesteps(0.0, config, torch.Generator().manual_seed(0), 2)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(5))
    noisy = g.scheduler.add_noise(latents.detach(), noise, timestep)
    weights = GuidanceWeights.csd(1.5, 0.6 if use_negative else 0.0)
    grad = g.csd_gradient(noisy, timestep, embeds.cond[views], embeds.negative if use_negative else None,
                          embeds.null, weights)
    (expected,) = torch.autograd.grad(latents, images, grad_outputs=grad / 2)
    assert expected.abs().max() > 1e-6
    assert torch.allclose(images.grad, expected, rtol=1e-4, atol=1e-7)
    assert out.loss.item() == pytest.approx(0.5 * (grad ** 2).sum().item() / 2, rel=1e-4)


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


def _newer_model(tiny_model_dir: str, tmp_path) -> Path:
    """A copy of the tiny model whose UNet names a block type this diffusers does not know
    (what a model made for a newer diffusers looks like)."""
    import json
    import shutil

    folder = tmp_path / "newer-model"
    shutil.copytree(tiny_model_dir, folder)
    config_path = folder / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    config["down_block_types"] = ["NoSuchDownBlock2D"] * len(config["down_block_types"])
    config_path.write_text(json.dumps(config))
    return folder


def test_a_library_error_is_not_called_a_missing_download(tiny_model_dir: str, tmp_path) -> None:
    """A block type this diffusers does not know (what a model made for a newer diffusers looks like):
    the message names the libraries and keeps the cause chained for --verbose."""
    folder = _newer_model(tiny_model_dir, tmp_path)
    with pytest.raises(ModelLoadError) as error:
        CSDGuidance.from_pretrained(str(folder))
    message = str(error.value)
    assert "with diffusers " in message and "version mismatch" in message and "NoSuchDownBlock2D" in message
    assert "hf download" not in message
    assert error.value.__cause__ is not None and "NoSuchDownBlock2D" in str(error.value.__cause__)


def test_cli_verbose_shows_the_cause_of_a_model_error(tiny_model_dir: str, tmp_path) -> None:
    from click.testing import CliRunner

    from csd_texture_cli.main import main

    folder = _newer_model(tiny_model_dir, tmp_path)
    mesh = tmp_path / "box.obj"
    import trimesh

    trimesh.creation.box().export(mesh)
    args = [str(mesh), "a box", "-o", str(tmp_path / "out.glb"), "--model", str(folder), "--steps", "1",
            "--texture-size", "16", "--render-size", "16"]
    quiet = CliRunner().invoke(main, args)
    verbose = CliRunner().invoke(main, [*args, "--verbose"])
    assert quiet.exit_code == verbose.exit_code == 2
    assert "error: cannot load model" in quiet.output and "version mismatch" in quiet.output
    assert "Traceback" not in quiet.output and "Traceback" in verbose.output
    assert "The above exception was the direct cause" in verbose.output and "NoSuchDownBlock2D" in verbose.output


def test_hub_check_goes_through_the_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Behind a proxy the hub's own name may not resolve; the reachability check must ask the proxy
    (HTTP_PROXY/HTTPS_PROXY), as the download will. A local proxy answers for hub.invalid."""
    import http.server
    import threading

    from huggingface_hub import close_session

    from csd_texture.guidance.families import _hub_reachable

    seen: list[str] = []

    class Proxy(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            seen.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for name in ("no_proxy", "NO_PROXY", "http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    try:
        close_session()  # the hub client reads the proxy settings when it is created
        direct = _hub_reachable("http://hub.invalid")
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.server_port}")
        close_session()
        proxied = _hub_reachable("http://hub.invalid")
    finally:
        server.shutdown()
        monkeypatch.undo()
        close_session()
    assert not direct and proxied
    assert seen and seen[0].startswith("http://hub.invalid")


def test_a_prompt_longer_than_the_tokenizer_is_named_not_cut_silently(tiny_guidance: CSDGuidance, caplog) -> None:
    limit = tiny_guidance.text.tokenizers[0].model_max_length
    with caplog.at_level(logging.WARNING, logger="csd_texture"):
        tiny_guidance.encode_prompts("a red ball", "", view_dependent=False)
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    long_prompt = "a red ball " + " ".join(["with blue stripes"] * limit)
    with caplog.at_level(logging.WARNING, logger="csd_texture"):
        tiny_guidance.encode_prompts(long_prompt, "ugly " * limit)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages  # the prompt (its suffixed form is not named again) and the negative prompt
    assert messages[0].startswith("the prompt is longer than the model's") and "stripes" in messages[0], messages
    assert messages[1].startswith("the negative prompt is longer") and "ugly" in messages[1], messages
