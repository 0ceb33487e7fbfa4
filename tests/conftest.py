"""Shared pytest setup. Each part says whose it is; keep them separate."""
from __future__ import annotations

import os

import pytest
import torch


# --- parallel workers (make test runs pytest-xdist, one worker per core) -------------
def pytest_configure(config: pytest.Config) -> None:
    """In an xdist worker, torch and the CLIs the tests start use one thread each: the workers
    already fill the cores, and two workers of two threads each on two cores run slower than one
    thread each (measured while training the pattern prior on a busy 2-core machine)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


# --- gpu marker (render) -------------------------------------------------------------
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked `gpu` when no CUDA device is present."""
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


# --- Khronos glTF validator (export) -------------------------------------------------
@pytest.fixture
def gltf_validator():
    """`assert_valid_gltf(*paths)`: zero validator errors and warnings (tests/gltf_validator.py)."""
    from gltf_validator import assert_valid_gltf

    return assert_valid_gltf


# --- tiny diffusion models and meshes (pipeline) -------------------------------------
@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random tiny Stable Diffusion folder, saved once per session and loaded like a real one."""
    from csd_texture.testing import save_tiny_pipeline

    return str(save_tiny_pipeline(tmp_path_factory.mktemp("tiny-model")))


@pytest.fixture(scope="session")
def tiny_guidance(tiny_model_dir: str):
    """CSDGuidance loaded from the tiny folder through the public loader."""
    from csd_texture.guidance.csd import CSDGuidance

    return CSDGuidance.from_pretrained(tiny_model_dir)


# --- a real textured output (previews, seams, round trip) ----------------------------
@pytest.fixture(scope="session")
def tiny_textured_fuze(tiny_model_dir: str, tmp_path_factory: pytest.TempPathFactory):
    """TextureResult of the real pipeline (tiny model, 2 steps) on fuze.obj, saved as GLB."""
    from pathlib import Path

    from csd_texture import texture_mesh

    fuze = Path(__file__).parent / "data" / "meshes" / "good" / "fuze.obj"
    out = tmp_path_factory.mktemp("textured-fuze") / "fuze.glb"
    return texture_mesh(fuze, "a red soda bottle", out, model=tiny_model_dir, steps=2, texture_size=64,
                        render_size=64, progress=False)


# --- hypothesis (property tests) -----------------------------------------------------
try:
    import os

    from hypothesis import settings as _hypothesis_settings

    # The same examples every run (no flaky CI, no .hypothesis database); HYPOTHESIS_PROFILE=explore
    # draws fresh random cases when hunting for bugs locally.
    _hypothesis_settings.register_profile("repeatable", derandomize=True, database=None)
    _hypothesis_settings.register_profile("explore", derandomize=False)
    _hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))
except ImportError:  # the test extra installs it; without it only the property tests fail to import
    pass
