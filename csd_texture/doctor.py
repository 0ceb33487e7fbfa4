"""`csd-texture doctor`: what works on this machine, checked by running it."""
from __future__ import annotations

import importlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .devices import resolve_device


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = True


def _attempt(name: str, probe: Callable[[], str], required: bool = True) -> Check:
    try:
        return Check(name, True, probe(), required)
    except Exception as exc:  # noqa: BLE001 - doctor reports every failure as a line
        return Check(name, False, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", required)


def check_torch() -> str:
    cuda = f"CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no CUDA GPU"
    return f"torch {torch.__version__} ({cuda})"


def check_packages() -> str:
    names = ["diffusers", "transformers", "xatlas", "trimesh", "pygltflib", "kornia"]
    return ", ".join(f"{n} {getattr(importlib.import_module(n), '__version__', '?')}" for n in names)


def check_nvdiffrast() -> str:
    if not torch.cuda.is_available():
        raise RuntimeError("needs a CUDA GPU; the torch rasterizer will be used (slower, same results)")
    from .render import get_rasterizer

    rasterizer = get_rasterizer("nvdiffrast", "cuda")
    pos = torch.tensor([[[-0.5, -0.5, 0, 1], [0.5, -0.5, 0, 1], [0, 0.5, 0, 1]]], device="cuda")
    fragments = rasterizer.rasterize(pos, torch.tensor([[0, 1, 2]], dtype=torch.int32, device="cuda"), (16, 16))
    covered = int(fragments.mask.sum())
    if covered == 0:
        raise RuntimeError("compiled, but a test triangle covered no pixel")
    return f"compiled and rasterized a test triangle ({covered} pixels)"


def check_model(model: str) -> str:
    """Where the model is and its family (sd1, sd2, sdxl) and prediction type; refuses others."""
    from .guidance.families import inspect_model

    return inspect_model(model)


def check_trial_run(device: str) -> str:
    """A few steps of the real pipeline with a tiny random model built on the fly."""
    import trimesh

    from .api import texture_mesh
    from .testing import save_tiny_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        model = save_tiny_pipeline(Path(tmp) / "tiny-model")
        output = Path(tmp) / "trial.glb"
        result = texture_mesh(trimesh.creation.icosphere(subdivisions=2), "a red ball", output,
                              model=str(model), steps=3, texture_size=64, render_size=64, device=device,
                              progress=False)
        size = output.stat().st_size
    seconds = sum(result.timings.values())
    return f"textured a sphere in {seconds:.1f} s on {result.metadata['device']} ({result.metadata['renderer']}" \
           f" rasterizer, tiny {result.metadata['model_loaded']} model), wrote a {size // 1024} KiB GLB"


def run_checks(model: str, device: str = "auto") -> list[Check]:
    """Every check, in order; the required ones decide the verdict."""
    return [
        _attempt("torch", check_torch),
        _attempt("packages", check_packages),
        _attempt("device", lambda: str(resolve_device(device))),
        _attempt("nvdiffrast", check_nvdiffrast, required=False),
        _attempt(f"model {model}", lambda: check_model(model), required=False),
        _attempt("trial run", lambda: check_trial_run(device)),
    ]
