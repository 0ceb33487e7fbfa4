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
from .base import check_rasterize_inputs

SUBPIXEL = 256  # fixed-point steps per pixel
_HALF = SUBPIXEL // 2
_COORD_LIMIT = float(2**29)  # keeps every edge-function product inside int64


@dataclass(frozen=True)
class _Triangles:
    """Set-up triangles, each wound so its screen area is positive.

    index: (N,) int64 global id b * F + f;
    raster: (N, 12) int64 rows [a0 a1 a2 b0 b1 b2 c0 c1 c2 row0 col0 cols]: the biased
    edge function a_k*px + b_k*py + c_k of the edge opposite vertex k is >= 0 exactly where
    the pixel centre (px, py) belongs to the triangle; row0, col0, cols: bounding box;
    rows: (N,) int64 bounding-box height; depth: (N, 4) float32 [z0 z1 z2 1/area] (NDC z);
    flipped: (N,) bool, vertices 1 and 2 swapped; screen: (N, 3, 2) float64 unsnapped
    positions in subpixel units; inv_w: (N, 3) float64."""

    index: torch.Tensor
    raster: torch.Tensor
    rows: torch.Tensor
    depth: torch.Tensor
    flipped: torch.Tensor
    screen: torch.Tensor
    inv_w: torch.Tensor


class TorchRasterizer:
    """Z-buffer rasterizer in PyTorch; runs on the device of its inputs.

    `device` is where callers should build those inputs (the protocol's device: the UV bake
    rasterizes there). max_candidates bounds the (triangle, pixel) pairs tested at once, and
    so memory (about 200 bytes each); a single triangle larger than that is still done in one go.
    """

    name = "torch"

    def __init__(self, max_candidates: int = 2**20, device: torch.device | str = "cpu") -> None:
        self.max_candidates = int(max_candidates)
        self.device = torch.device(device)

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
        device = tris.index.device
        zbuf = torch.full((num_pixels,), float("inf"), dtype=torch.float32, device=device)
        winner = torch.full((num_pixels,), -1, dtype=torch.int64, device=device)
        for chunk in _chunks(tris.rows * tris.raster[:, 11], self.max_candidates):
            tri, pixel, depth = _fragments(tris, chunk, num_faces, height, width)
            if tri.numel() == 0:
                continue
            chunk_z = torch.full_like(zbuf, float("inf")).scatter_reduce(0, pixel, depth, "amin")
            nearest = depth == chunk_z[pixel]
            chunk_id = torch.full_like(winner, tris.index.numel()).scatter_reduce(
                0, pixel[nearest], tri[nearest], "amin"
            )
            better = chunk_z < zbuf  # chunks run in id order, so ties keep the earlier id
            zbuf = torch.where(better, chunk_z, zbuf)
            winner = torch.where(better, chunk_id, winner)
        return winner


def _setup(pos: torch.Tensor, faces: torch.Tensor, height: int, width: int) -> _Triangles:
    """Project, snap and wind all B*F triangles; keep those that can cover a pixel.

    pos: (B, V, 4) float64 clip positions; faces: (F, 3) int64."""
    w = pos[..., 3]
    ok = (w > 0) & torch.isfinite(pos).all(dim=-1)
    inv_w = torch.where(ok, 1.0 / torch.where(ok, w, torch.ones_like(w)), torch.zeros_like(w))
    ndc = pos[..., :3] * inv_w.unsqueeze(-1)
    sx = ((ndc[..., 0] + 1.0) * (0.5 * width * SUBPIXEL)).clamp(-_COORD_LIMIT, _COORD_LIMIT)
    sy = ((1.0 - ndc[..., 1]) * (0.5 * height * SUBPIXEL)).clamp(-_COORD_LIMIT, _COORD_LIMIT)
    # One gather for every per-corner quantity: snapped x y, exact x y, NDC z, 1/w, valid.
    verts = torch.stack([sx.round(), sy.round(), sx, sy, ndc[..., 2], inv_w, ok.double()], -1)
    corners = verts.index_select(1, faces.reshape(-1)).view(-1, 3, verts.shape[-1])
    x, y = corners[..., 0].long(), corners[..., 1].long()
    area = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (y[:, 1] - y[:, 0]) * (x[:, 2] - x[:, 0])
    col0 = _ceil_div(x.min(dim=1).values - _HALF, SUBPIXEL).clamp(min=0)
    col1 = torch.div(x.max(dim=1).values - _HALF, SUBPIXEL, rounding_mode="floor").clamp(max=width - 1)
    row0 = _ceil_div(y.min(dim=1).values - _HALF, SUBPIXEL).clamp(min=0)
    row1 = torch.div(y.max(dim=1).values - _HALF, SUBPIXEL, rounding_mode="floor").clamp(max=height - 1)
    rows, cols = row1 - row0 + 1, col1 - col0 + 1
    valid = corners[..., 6].all(dim=1)
    keep = torch.nonzero(valid & (area != 0) & (rows > 0) & (cols > 0)).squeeze(1)

    corners, x, y, area = corners[keep], x[keep], y[keep], area[keep]
    flipped = area < 0
    swap = [0, 2, 1]
    corners = torch.where(flipped[:, None, None], corners[:, swap], corners)
    x = torch.where(flipped[:, None], x[:, swap], x)
    y = torch.where(flipped[:, None], y[:, swap], y)
    # The edge opposite vertex k runs from vertex k+1 to vertex k+2.
    edge_a = y[:, [1, 2, 0]] - y[:, [2, 0, 1]]
    edge_b = x[:, [2, 0, 1]] - x[:, [1, 2, 0]]
    edge_c = -edge_a * x[:, [1, 2, 0]] - edge_b * y[:, [1, 2, 0]]
    # Top-left rule: a centre exactly on an edge belongs to the triangle that owns the edge.
    owner = ((edge_a > 0) | ((edge_a == 0) & (edge_b > 0))).long()
    bbox = torch.stack([row0[keep], col0[keep], cols[keep]], dim=1)
    raster = torch.cat([edge_a, edge_b, edge_c + owner - 1, bbox], dim=1).contiguous()
    depth = torch.cat([corners[..., 4], 1.0 / area.abs().double().unsqueeze(1)], dim=1).float()
    return _Triangles(
        index=keep, raster=raster, rows=rows[keep], depth=depth, flipped=flipped,
        screen=corners[..., 2:4].contiguous(), inv_w=corners[..., 5].contiguous(),
    )


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
    counts = tris.rows[chunk] * tris.raster[chunk, 11]
    tri = torch.repeat_interleave(chunk, counts)
    offset = torch.arange(tri.numel(), device=chunk.device)
    offset -= torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    g = tris.raster.index_select(0, tri)  # (M, 12)
    drow = torch.div(offset, g[:, 11], rounding_mode="floor")
    row, col = g[:, 9] + drow, g[:, 10] + offset - drow * g[:, 11]
    px, py = col * SUBPIXEL + _HALF, row * SUBPIXEL + _HALF
    edges = [g[:, k] * px + g[:, 3 + k] * py + g[:, 6 + k] for k in range(3)]
    keep = torch.nonzero((edges[0] >= 0) & (edges[1] >= 0) & (edges[2] >= 0)).squeeze(1)
    tri, row, col = tri[keep], row[keep], col[keep]
    z = tris.depth.index_select(0, tri)
    depth = sum(e[keep].float() * z[:, k] for k, e in enumerate(edges)) * z[:, 3]
    view = torch.div(tris.index[tri], num_faces, rounding_mode="floor")
    pixel = (view * height + row) * width + col
    clip = (depth >= -1.0) & (depth <= 1.0)
    return tri[clip], pixel[clip], depth[clip]


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
    depth = (screen * tris.depth[tri, :3].double()).sum(dim=1)
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
