"""An output GLB opens in a web viewer: three.js GLTFLoader in headless Chromium (WebGL on
SwiftShader, the CPU) renders it, and the screenshot shows the model with its texture.

Setup: tools/install_test_deps.sh installs the pinned three.js (tools/browser-check) and,
as root, Debian's chromium. Without them the test is skipped, or fails when CI is set.
"""
from __future__ import annotations

import functools
import http.server
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from csd_texture.bake import bake_maps
from csd_texture.datatypes import PBRMaps
from csd_texture.export import export_textured_mesh, map_images
from csd_texture.mesh_io import load_mesh
from csd_texture.render import get_rasterizer
from csd_texture.uv import prepare_uv

PAGE_DIR = Path(__file__).resolve().parents[1] / "tools" / "browser-check"
INSTALL_HINT = "run tools/install_test_deps.sh (as root it installs Debian's chromium; npm installs three.js)"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
    "--enable-logging=stderr", "--v=0", "--window-size=512,512", "--virtual-time-budget=15000",
)
TIMEOUT_S = 60
TOP, BOTTOM = (0.8, 0.1, 0.05), (0.05, 0.15, 0.8)  # linear albedo above / below the equator


def chromium() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)


def require_browser() -> str:
    """The chromium executable, or skip (fail under CI) saying what is missing."""
    missing = []
    if chromium() is None:
        missing.append("chromium is not on PATH")
    if not (PAGE_DIR / "node_modules" / "three" / "package.json").is_file():
        missing.append(f"three.js is not installed in {PAGE_DIR}")
    if missing:
        reason = f"browser check unavailable: {'; '.join(missing)}; {INSTALL_HINT}"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return chromium()


@pytest.fixture
def browser() -> str:
    return require_browser()


@pytest.fixture
def two_tone_glb(tmp_path: Path) -> tuple[Path, PBRMaps]:
    """A GLB written by the exporter: a sphere, unwrapped by xatlas, baked red above the
    equator and blue below."""
    mesh = prepare_uv(load_mesh(trimesh.creation.icosphere(subdivisions=3)))

    def sample(uv: torch.Tensor, position: torch.Tensor):
        albedo = torch.where(position[..., 1:2] > 0, torch.tensor(TOP), torch.tensor(BOTTOM))
        return albedo, torch.full_like(uv[..., :1], 0.8), torch.zeros_like(uv[..., :1])

    maps = bake_maps(mesh, sample, 128, get_rasterizer("torch"))
    return export_textured_mesh(mesh, maps, tmp_path / "two tone.glb", {}), maps


@pytest.fixture
def server(two_tone_glb: tuple[Path, PBRMaps]) -> Iterator[str]:
    """http://127.0.0.1:PORT serving tools/browser-check and the model as /model.glb."""
    model = two_tone_glb[0]

    class Handler(http.server.SimpleHTTPRequestHandler):
        def translate_path(self, path: str) -> str:
            return str(model) if path.split("?")[0] == "/model.glb" else super().translate_path(path)

        def log_message(self, format: str, *args) -> None:  # keep test output clean
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(PAGE_DIR)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def screenshot(browser: str, url: str, folder: Path) -> tuple[np.ndarray, str]:
    """(H, W, 3) uint8 screenshot of `url` and chromium's console lines."""
    shot = folder / "shot.png"
    command = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={folder / 'profile'}", f"--screenshot={shot}",
               url]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # chromium and its helper processes
        proc.communicate()
        pytest.fail(f"chromium did not finish within {TIMEOUT_S} s")
    console = "\n".join(line for line in stderr.splitlines() if ":CONSOLE" in line)
    assert proc.returncode == 0 and shot.is_file(), f"chromium failed ({proc.returncode}):\n{stderr[-3000:]}"
    return np.asarray(Image.open(shot).convert("RGB")), console


def chromaticity(rgb: np.ndarray) -> np.ndarray:
    return rgb / max(float(rgb.sum()), 1e-6)


def test_three_js_renders_the_glb_with_its_texture(browser: str, server: str, two_tone_glb, tmp_path: Path) -> None:
    image, console = screenshot(browser, f"{server}/index.html?model=/model.glb", tmp_path)
    assert "rendered /model.glb" in console, f"the page did not render the model; console:\n{console}"

    foreground = image.max(axis=-1) > 24  # the page clears to black
    rows = np.flatnonzero(foreground.any(axis=1))
    assert foreground.mean() > 0.05, f"model not visible ({foreground.mean():.1%} of the screenshot)\n{console}"
    top, bottom = rows[0] + (rows[-1] - rows[0]) // 4, rows[-1] - (rows[-1] - rows[0]) // 4
    rendered = {"top": image[:top][foreground[:top]].mean(0), "bottom": image[bottom:][foreground[bottom:]].mean(0)}

    _, maps = two_tone_glb
    texels = map_images(maps)["basecolor"][maps.coverage].astype(float)  # baseColor PNG over covered texels
    red = texels[:, 0] > texels[:, 2]
    baked = {"top": texels[red].mean(0), "bottom": texels[~red].mean(0)}
    for part in ("top", "bottom"):
        seen, expected = rendered[part], baked[part]
        assert np.abs(chromaticity(seen) - chromaticity(expected)).max() < 0.08, (part, seen, expected)
        assert 0.5 < seen.mean() / expected.mean() < 1.5, (part, seen, expected)  # neither black nor blown out
        assert seen.max() - seen.min() > 60, (part, seen)  # coloured, not grey
