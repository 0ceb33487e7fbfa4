"""CUDA rasterizer backed by nvdiffrast (PyPI package `diffrp-nvdiffrast`), imported lazily.

nvdiffrast returns per pixel (u, v, z/w, triangle_id + 1) with row 0 at NDC y = -1
(the bottom). Its interpolation weights the face's vertices as (u, v, 1 - u - v)
(`interpolate.cu`: b0 = u, b1 = v, b2 = 1 - u - v), already perspective-correct. Here the
rows are flipped once so row 0 is the top, and the weights become our barycentrics in
`faces` order. nvdiffrast clips triangles against the frustum where the torch backend
drops triangles crossing w = 0; elsewhere both agree up to edge pixels (nvdiffrast snaps
coverage to 1/16 pixel and does not clamp the weights there). Triangle ids travel as
float32, exact below 2**24 faces.
"""
from __future__ import annotations

from types import ModuleType

import torch

from ..datatypes import Fragments
from ..errors import BackendUnavailableError
from .base import check_rasterize_inputs

INSTALL_HINT = "install it with `pip install diffrp-nvdiffrast` (needs a CUDA build of torch)"


def import_nvdiffrast() -> ModuleType:
    """Return `nvdiffrast.torch`, or raise BackendUnavailableError saying how to install it."""
    try:
        import nvdiffrast.torch as dr
    except ImportError as exc:
        raise BackendUnavailableError(
            f"nvdiffrast is not installed ({exc}); {INSTALL_HINT}, or use --renderer torch"
        ) from exc
    return dr


class NvdiffrastRasterizer:
    """nvdiffrast's CUDA rasterizer (`RasterizeCudaContext`) on one CUDA device.

    Construction checks that it runs (CUDA present, package importable, plugin builds and
    rasterizes one triangle) and raises BackendUnavailableError with the reason otherwise.
    """

    name = "nvdiffrast"

    def __init__(self, device: torch.device | str = "cuda") -> None:
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise BackendUnavailableError(
                f"nvdiffrast needs a CUDA device, got {self.device}; use --renderer torch"
            )
        if not torch.cuda.is_available():
            raise BackendUnavailableError(
                "nvdiffrast needs CUDA but torch.cuda.is_available() is False "
                f"(torch {torch.__version__}); use --renderer torch"
            )
        self._dr = import_nvdiffrast()
        try:
            self._ctx = self._dr.RasterizeCudaContext(device=self.device)
            self._smoke_test()
        except Exception as exc:  # plugin build or launch failures surface as many types
            raise BackendUnavailableError(
                f"nvdiffrast failed to build or run on {self.device}: {exc}; "
                "check the CUDA toolkit matches torch, or use --renderer torch"
            ) from exc

    def _smoke_test(self) -> None:
        pos = torch.tensor([[[-1.0, -1.0, 0.0, 1.0], [1.0, -1.0, 0.0, 1.0], [-1.0, 1.0, 0.0, 1.0]]],
                           device=self.device)
        faces = torch.tensor([[0, 1, 2]], dtype=torch.int32, device=self.device)
        self.rasterize(pos, faces, (8, 8))
        torch.cuda.synchronize(self.device)

    def rasterize(
        self, pos_clip: torch.Tensor, faces: torch.Tensor, resolution: tuple[int, int]
    ) -> Fragments:
        """pos_clip: (B, V, 4) float clip positions on CUDA; faces: (F, 3) int; (H, W).
        Returns Fragments with row 0 at the top, triangle ids indexing `faces`."""
        check_rasterize_inputs(pos_clip, faces, resolution)
        pos = pos_clip.detach().to(self.device, torch.float32).contiguous()
        tri = faces.to(self.device, torch.int32).contiguous()
        rast, _ = self._dr.rasterize(
            self._ctx, pos, tri, resolution=[int(resolution[0]), int(resolution[1])], grad_db=False
        )
        rast = rast.flip(1)  # nvdiffrast row 0 is NDC y = -1; ours is the top
        u, v, z, tri_plus_one = rast.unbind(dim=-1)
        triangle_id = tri_plus_one.round().long() - 1
        mask = triangle_id >= 0
        bary = torch.stack([u, v, 1.0 - u - v], dim=-1) * mask.unsqueeze(-1)
        depth = torch.where(mask, z, torch.full_like(z, float("inf")))
        return Fragments(triangle_id=triangle_id, barycentrics=bary.float(), depth=depth.float())
