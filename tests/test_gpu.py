"""GPU-only checks (skipped without CUDA): fast vs reference loop, determinism on the device."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from csd_texture import texture_mesh
from csd_texture.guidance.csd import CSDGuidance, GuidanceWeights

pytestmark = pytest.mark.gpu


def test_fast_and_reference_loops_give_the_same_gradient(tiny_model_dir: str) -> None:
    fast = CSDGuidance.from_pretrained(tiny_model_dir, device="cuda", dtype=torch.bfloat16)
    reference = CSDGuidance.from_pretrained(tiny_model_dir, device="cuda", dtype=torch.float32)
    reference.batch_prompts = False
    embeds_fast = fast.encode_prompts("a red chair", "blurry")
    embeds_ref = reference.encode_prompts("a red chair", "blurry")
    noisy = torch.randn(2, 4, 8, 8, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    weights = GuidanceWeights.csd(1.0, 0.7)
    a = fast.csd_gradient(noisy, 500, embeds_fast.cond[:2], embeds_fast.negative, embeds_fast.null, weights)
    b = reference.csd_gradient(noisy, 500, embeds_ref.cond[:2], embeds_ref.negative, embeds_ref.null, weights)
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.99
    assert (a - b).abs().max() < 0.05 * b.abs().max()


def test_hundred_steps_on_cuda_twice_give_the_same_texture(tiny_model_dir: str) -> None:
    sphere = trimesh.creation.icosphere(subdivisions=3)
    run = lambda: texture_mesh(sphere, "a red ball", model=tiny_model_dir, device="cuda", steps=100,  # noqa: E731
                               texture_size=128, render_size=64, progress=False).maps.albedo
    assert np.array_equal(run(), run())
