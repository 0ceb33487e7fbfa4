"""Reference rasterizer in plain PyTorch (CPU or CUDA): a chunked z-buffer.

Per chunk of triangles it enumerates the pixels inside each triangle's bounding box,
tests them with exact integer edge functions and keeps the nearest fragment per pixel.

Rules (shared with the nvdiffrast backend where it matters):
- pixel (i, j) has its centre at NDC ((j + 0.5) / W * 2 - 1, 1 - (i + 0.5) / H * 2):
  row 0 is the top (NDC y = +1);
- vertices are snapped to 1/256 pixel and edge functions are evaluated in int64, so a
  pixel centre on an edge shared by two triangles is owned by exactly one of them
  (top-left rule): no cracks, no double coverage;
- nothing is culled (both windings render); fragments with NDC depth outside [-1, 1] are
  dropped (near/far planes); triangles with any vertex at w <= 0 are discarded whole
  instead of being clipped (cameras look at the mesh from outside it, so this is rare);
- the nearest fragment wins; on equal depth the lower triangle id wins;
- barycentrics are perspective-correct weights of the face's vertices in `faces` order,
  computed in float64 from the unsnapped positions (clamped to the triangle), so the
  1/256-pixel snapping only decides coverage.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..datatypes import Fragments
from .rasterizer import check_rasterize_inputs

SUBPIXEL = 256  # fixed-point steps per pixel
_HALF = SUBPIXEL // 2
_COORD_LIMIT = float(2**29)  # keeps every edge-function product inside int64


@dataclass(frozen=True)
class _Triangles:
    """Set-up triangles, each wound so its screen area is positive.

    index: (N,) int64 global id b * F + f; edge_a, edge_b, edge_c: (N, 3) int64 with
    E_k(p) = a*px + b*py + c for the edge opposite vertex k; owner: (N, 3) int64, 1 where
    a pixel centre exactly on that edge belongs to the triangle; area: (N,) int64;
    flipped: (N,) bool, vertices 1 and 2 swapped; screen: (N, 3, 2) float64 unsnapped
    positions in subpixel units; depth: (N, 3) NDC z; inv_w: (N, 3) float64;
    bbox: (N, 4) int64 (row0, col0, rows, cols)."""

    index: torch.Tensor
    edge_a: torch.Tensor
    edge_b: torch.Tensor
    edge_c: torch.Tensor
    owner: torch.Tensor
    area: torch.Tensor
    flipped: torch.Tensor
    screen: torch.Tensor
    depth: torch.Tensor
    inv_w: torch.Tensor
    bbox: torch.Tensor

    def __getitem__(self, sel: torch.Tensor) -> "_Triangles":
        return _Triangles(*(getattr(self, f)[sel] for f in self.__dataclass_fields__))


class TorchRasterizer:
    """Z-buffer rasterizer in PyTorch; runs on the device of its inputs.

    max_candidates bounds the (triangle, pixel) pairs tested at once, and so memory
    (about 100 bytes each); a single triangle larger than that is still done in one go.
    """

    name = "torch"

    def __init__(self, max_candidates: int = 2**21) -> None:
        self.max_candidates = int(max_candidates)

    def rasterize(
        self, pos_clip: torch.Tensor, faces: torch.Tensor, resolution: tuple[int, int]
    ) -> Fragments:
        """pos_clip: (B, V, 4) float clip positions; faces: (F, 3) int; resolution (H, W).
        Returns Fragments: triangle_id (B, H, W) int64, barycentrics (B, H, W, 3) float32,
        depth (B, H, W) float32 NDC z (inf where empty)."""
        check_rasterize_inputs(pos_clip, faces, resolution)
        height, width = int(resolution[0]), int(resolution[1])
        batch = pos_clip.shape[0]
        with torch.no_grad():
            tris = _setup(pos_clip.detach().double(), faces.long(), height, width)
            ids = self._visibility(tris, batch * height * width, faces.shape[0], height, width)
            return _resolve(tris, ids, faces.shape[0], (batch, height, width))

    def _visibility(
        self, tris: _Triangles, num_pixels: int, num_faces: int, height: int, width: int
    ) -> torch.Tensor:
        """(num_pixels,) int64 position in `tris` of the winning triangle, -1 where empty."""
        device = tris.area.device
        zbuf = torch.full((num_pixels,), float("inf"), dtype=torch.float32, device=device)
        winner = torch.full((num_pixels,), -1, dtype=torch.int64, device=device)
        for chunk in _chunks(tris.bbox[:, 2] * tris.bbox[:, 3], self.max_candidates):
            tri, pixel, depth = _fragments(tris, chunk, num_faces, height, width)
            if tri.numel() == 0:
                continue
            chunk_z = torch.full_like(zbuf, float("inf")).scatter_reduce(0, pixel, depth, "amin")
            nearest = depth == chunk_z[pixel]
            chunk_id = torch.full_like(winner, tris.area.numel()).scatter_reduce(
                0, pixel[nearest], tri[nearest], "amin"
            )
            better = chunk_z < zbuf  # chunks run in id order, so ties keep the earlier id
            zbuf = torch.where(better, chunk_z, zbuf)
            winner = torch.where(better, chunk_id, winner)
        return winner


def _setup(pos: torch.Tensor, faces: torch.Tensor, height: int, width: int) -> _Triangles:
    """Project, snap and wind all B*F triangles; keep those that can cover a pixel."""
    w = pos[..., 3]
    ok = (w > 0) & torch.isfinite(pos).all(dim=-1)
    inv_w = torch.where(ok, 1.0 / torch.where(ok, w, torch.ones_like(w)), torch.zeros_like(w))
    ndc = pos[..., :3] * inv_w.unsqueeze(-1)
    sx = ((ndc[..., 0] + 1.0) * (0.5 * width * SUBPIXEL)).clamp(-_COORD_LIMIT, _COORD_LIMIT)
    sy = ((1.0 - ndc[..., 1]) * (0.5 * height * SUBPIXEL)).clamp(-_COORD_LIMIT, _COORD_LIMIT)
    screen = torch.stack([sx, sy], dim=-1)
    sx, sy = sx.round().long(), sy.round().long()

    def corners(v: torch.Tensor) -> torch.Tensor:  # (B, V) -> (B*F, 3)
        return v[:, faces].reshape(-1, 3)

    x, y, z, iw = corners(sx), corners(sy), corners(ndc[..., 2]), corners(inv_w)
    exact = screen[:, faces].reshape(-1, 3, 2)
    valid = corners(ok).all(dim=1)
    area = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (y[:, 1] - y[:, 0]) * (x[:, 2] - x[:, 0])
    flipped = area < 0
    order = torch.tensor([0, 1, 2], device=pos.device).expand(x.shape[0], 3).clone()
    order[flipped] = torch.tensor([0, 2, 1], device=pos.device)
    x, y, z, iw = (t.gather(1, order) for t in (x, y, z, iw))
    exact = exact.gather(1, order.unsqueeze(-1).expand(-1, 3, 2))
    area = area.abs()

    col0 = _ceil_div(x.min(dim=1).values - _HALF, SUBPIXEL).clamp(min=0)
    col1 = torch.div(x.max(dim=1).values - _HALF, SUBPIXEL, rounding_mode="floor").clamp(max=width - 1)
    row0 = _ceil_div(y.min(dim=1).values - _HALF, SUBPIXEL).clamp(min=0)
    row1 = torch.div(y.max(dim=1).values - _HALF, SUBPIXEL, rounding_mode="floor").clamp(max=height - 1)
    rows, cols = (row1 - row0 + 1).clamp(min=0), (col1 - col0 + 1).clamp(min=0)
    keep = torch.nonzero(valid & (area > 0) & (rows > 0) & (cols > 0)).squeeze(1)

    x, y = x[keep], y[keep]  # the edge opposite vertex k runs from vertex k+1 to vertex k+2
    edge_a = y[:, [1, 2, 0]] - y[:, [2, 0, 1]]
    edge_b = x[:, [2, 0, 1]] - x[:, [1, 2, 0]]
    edge_c = -edge_a * x[:, [1, 2, 0]] - edge_b * y[:, [1, 2, 0]]
    owner = ((edge_a > 0) | ((edge_a == 0) & (edge_b > 0))).long()
    bbox = torch.stack([row0, col0, rows, cols], dim=1)[keep]
    return _Triangles(keep, edge_a, edge_b, edge_c, owner, area[keep], flipped[keep],
                      exact[keep], z[keep].float(), iw[keep], bbox)


def _ceil_div(a: torch.Tensor, b: int) -> torch.Tensor:
    return -torch.div(-a, b, rounding_mode="floor")


def _chunks(counts: torch.Tensor, limit: int) -> Iterator[torch.Tensor]:
    """Consecutive index ranges of `counts` whose sums stay within `limit` (at least one each)."""
    total = torch.cumsum(counts, 0).cpu()
    start, n = 0, total.numel()
    while start < n:
        base = int(total[start - 1]) if start else 0
        end = max(int(torch.searchsorted(total, base + limit, right=True)), start + 1)
        yield torch.arange(start, end, device=counts.device)
        start = end


def _fragments(
    tris: _Triangles, chunk: torch.Tensor, num_faces: int, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Candidate pixels of the triangles in `chunk` that pass the inside and depth tests.

    Returns tri (M,) int64 position in `tris`, pixel (M,) int64 flat index
    b*H*W + i*W + j, depth (M,) float32 NDC z."""
    bbox = tris.bbox[chunk]
    counts = bbox[:, 2] * bbox[:, 3]
    local_tri = torch.repeat_interleave(torch.arange(chunk.numel(), device=chunk.device), counts)
    offset = torch.arange(local_tri.numel(), device=chunk.device)
    offset = offset - (torch.cumsum(counts, 0) - counts)[local_tri]
    cols = bbox[local_tri, 3]
    row = bbox[local_tri, 0] + torch.div(offset, cols, rounding_mode="floor")
    col = bbox[local_tri, 1] + offset % cols
    tri = chunk[local_tri]
    px, py = col * SUBPIXEL + _HALF, row * SUBPIXEL + _HALF

    inside = torch.ones_like(tri, dtype=torch.bool)
    weights = []
    for k in range(3):
        e = tris.edge_a[tri, k] * px + tris.edge_b[tri, k] * py + tris.edge_c[tri, k]
        inside &= e + tris.owner[tri, k] > 0
        weights.append(e)
    depth = sum(e.float() * tris.depth[tri, k] for k, e in enumerate(weights))
    depth = depth / tris.area[tri].float()
    inside &= (depth >= -1.0) & (depth <= 1.0)
    view = torch.div(tris.index[tri], num_faces, rounding_mode="floor")
    pixel = (view * height + row) * width + col
    return tri[inside], pixel[inside], depth[inside]


def _screen_barycentrics(corners: torch.Tensor, pixel: torch.Tensor) -> torch.Tensor:
    """corners (M, 3, 2), pixel (M, 2) float64 -> (M, 3) screen-space weights, clamped to
    the triangle: pixels that the snapped triangle covers may lie a hair outside it."""
    a, b = corners[:, [1, 2, 0]], corners[:, [2, 0, 1]]  # edge opposite vertex k
    p = pixel.unsqueeze(1)
    edge = (b[..., 0] - a[..., 0]) * (p[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (p[..., 0] - a[..., 0])
    edge = edge.clamp(min=0.0)
    total = edge.sum(dim=1, keepdim=True)
    fallback = torch.full_like(edge, 1.0 / 3.0)  # sliver thinner than the snapping step
    return torch.where(total > 0, edge / total.clamp(min=1e-300), fallback)


def _resolve(
    tris: _Triangles, winner: torch.Tensor, num_faces: int, shape: tuple[int, int, int]
) -> Fragments:
    """Exact barycentrics and depth of the winning triangle at each covered pixel."""
    batch, height, width = shape
    covered = torch.nonzero(winner >= 0).squeeze(1)
    tri = winner[covered]
    col = covered % width
    row = torch.div(covered, width, rounding_mode="floor") % height
    pixel = torch.stack([col, row], dim=1).double() * SUBPIXEL + _HALF
    screen = _screen_barycentrics(tris.screen[tri], pixel)
    depth = (screen * tris.depth[tri].double()).sum(dim=1)
    persp = screen * tris.inv_w[tri]
    persp = persp / persp.sum(dim=1, keepdim=True)
    flip = tris.flipped[tri]
    persp[flip] = persp[flip][:, [0, 2, 1]]

    num_pixels = batch * height * width
    triangle_id = torch.full((num_pixels,), -1, dtype=torch.int64, device=winner.device)
    triangle_id[covered] = tris.index[tri] % num_faces
    bary = torch.zeros((num_pixels, 3), dtype=torch.float32, device=winner.device)
    bary[covered] = persp.float()
    zbuf = torch.full((num_pixels,), float("inf"), dtype=torch.float32, device=winner.device)
    zbuf[covered] = depth.float()
    return Fragments(
        triangle_id=triangle_id.view(batch, height, width),
        barycentrics=bary.view(batch, height, width, 3),
        depth=zbuf.view(batch, height, width),
    )
