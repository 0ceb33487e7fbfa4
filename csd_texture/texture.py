"""Learnable textures. The one place where raw parameters become PBR values.

A texture maps surface points (their UV, normalised position and, optionally, the pixel's
footprint in UV units) to linear albedo, roughness and metallic. Albedo lies in [0, 1]
through a sigmoid; roughness and metallic lie in a `MaterialRange` (a pinned value when
low == high), so the optimiser can never reach a mirror or an unasked-for metal.

`HybridTexture` keeps coarse and mid frequencies in dense 3D grids over position, where
neighbours on the surface are neighbours in the parameters whatever the UV layout, and only the
finest albedo detail in a UV image, sampled through a mip pyramid by the pixel's footprint.
`UVPyramidTexture` (the old recipe, `texture="image"`) keeps every level in UV space, so a coarse
texel spans many unrelated charts and blobs are cut at chart borders. The default,
`texture="hybrid-field"`, adds to the hybrid a small bounded albedo field over position
(`AlbedoField`): each view's update moves it over the whole surface, so the views agree on one
global pattern (periodic stripes) where the grids' voxels learn only from the views that see them
(`texture="hybrid"` leaves it out). Its share fades where the grids and detail already hold a
decided colour (FIELD_FADE), the summed albedo logits are softly bounded (ALBEDO_BOUND), so it does
not push them past the sigmoid's ends, and the grids' and detail's albedo move at half their
step (FIELD_GRID_ALBEDO_GAIN), so the two together do not overshoot.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .config import TEXTURES
from .datatypes import PBRMaps

CHANNELS = 5  # albedo RGB, roughness, metallic
DEFAULT_INIT = {"albedo": 0.25, "roughness": 0.6, "metallic": 0.05}
# HybridTexture's metallic: it starts (and the material prior pulls it) deeper in the sigmoid's tail and
# its grid values count METALLIC_GAIN times (Adam then moves it that much faster, a per-channel learning
# rate): a metal region must travel ~6.8 raw units to reach 0.9 within the run, while a gradient that
# prefers no material must not lift the 95th percentile past 0.15 (bench/quality.py: PBR recovery, drift).
HYBRID_INIT = {**DEFAULT_INIT, "metallic": 0.01}
METALLIC_GAIN = 6.0
# ... and its roughness 1.5 times: CSD's roughness signal (the reflection's sharpness, render.shading) is weak
# beside its noise; through the CLI (pattern prior, sphere, 120 steps) "a shiny metal ball" ends at roughness
# 0.50 against 0.58 for "a matte clay ball" at 1x, 0.46 against 0.57 at 1.5x. At 2x a noise objective
# pushes the 5th percentile below 0.35 (0.33 on one of 4 seeds; 1.5x: 0.39-0.44; tests/test_recipe.py drift).
ROUGHNESS_GAIN = 1.5
GRID_SIZES = (8, 16, 32, 64)  # dense 3D grid levels of HybridTexture over [-1, 1]^3
# AlbedoField: octaves pi * (1, 2, 4, 8) over [-1, 1] (finest wavelength a quarter of the box) and a
# bound of +-2 on its albedo logits. Measured with the pattern prior (tests/data/pattern-prior/README.md):
# 6 octaves or bound 3 lose the stripes on some seeds, bound 1 draws none, no bound saturates
# every colour to pure red, white or black.
FIELD_OCTAVES = 4
FIELD_BOUND = 2.0
# The field's share fades where the rest of the texture is already decisive: it is multiplied by
# 1 - tanh(logit / FIELD_FADE)^2 of the hybrid's own albedo logit. bench/quality.py's hard push ("a red ball",
# learning rate 0.1) clipped 40% of base-colour texels without the fade, 6% with it (3: 5%, but the stripes
# weaken; 2: they are lost on the can); the pattern prior's stripes and plain red stay as they were.
FIELD_FADE = 4.0
# ... and the sum of albedo logits is softly bounded, ALBEDO_BOUND * tanh(logit / ALBEDO_BOUND): with a field the
# grids themselves end further out (hard push: red logit 99th percentile 5.39 against the plain hybrid's 5.22,
# and 8-bit sRGB reaches 255 at 5.4), so the fade alone left 5.7% clipped. Bound 8: 0.1% clipped, PBR albedo
# 29.6 dB (29.3 without), fuze photo recovery 29.6 (30.4); 7: 0.0%, 29.4 on fuze; 9: 0.2%; a hard bound of 5
# (tanh at 5) stops dark texels at sRGB 17 (fuze 28.0). The pattern prior's stripes and plain red stay as they were.
ALBEDO_BOUND = 8.0
# ... and with a field the grids' and the UV detail's albedo count FIELD_GRID_ALBEDO_GAIN times (a per-channel
# learning rate, as METALLIC_GAIN): field and grids both chase the same albedo error, each at Adam's full step,
# so together they overshoot the hybrid's tuned step (the hybrid itself at twice the learning rate: PBR recovery
# 25.9 dB, metallic MAE 0.20). tests/test_recipe.py's 80-step fit: metallic MAE 0.104 at 0.5 (0.112 at 0.7;
# 0.137 at 1; the plain hybrid 0.097); the pattern prior's stripes stay on sphere and can at seeds 0-2. Its cost is
# speed on photo textures: bench/quality.py's fuze recovery 27.1 dB at 120 steps (plain hybrid 31.1), 30.4 at 300
# (31.0), 30.9 at the CLI's 600 (31.1).
FIELD_GRID_ALBEDO_GAIN = 0.5
MIN_MIP_SIZE = 4


class SurfaceSample(NamedTuple):
    """PBR values at sample points: albedo (..., 3) linear, roughness (..., 1), metallic (..., 1)."""

    albedo: torch.Tensor
    roughness: torch.Tensor
    metallic: torch.Tensor


class NormalMappedSample(NamedTuple):
    """A SurfaceSample plus normal (..., 3): the unit tangent-space normal of a normal map
    (render.tangents' convention). A separate type, so code that unpacks three values keeps working."""

    albedo: torch.Tensor
    roughness: torch.Tensor
    metallic: torch.Tensor
    normal: torch.Tensor


class MaterialRange(NamedTuple):
    """Where roughness and metallic may go: (low, high) each, low == high pins the value."""

    roughness: tuple[float, float] = (0.0, 1.0)
    metallic: tuple[float, float] = (0.0, 1.0)


def _logit(p: float | torch.Tensor) -> torch.Tensor:
    p = torch.as_tensor(p, dtype=torch.float32).clamp(1e-4, 1 - 1e-4)
    return torch.log(p / (1 - p))


def _in_range(raw: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    low, high = bounds
    return low + (high - low) * torch.sigmoid(raw)


def _to_sample(raw: torch.Tensor, material: MaterialRange = MaterialRange()) -> SurfaceSample:
    return SurfaceSample(torch.sigmoid(raw[..., :3]), _in_range(raw[..., 3:4], material.roughness),
                         _in_range(raw[..., 4:5], material.metallic))


def _init_bias(material: MaterialRange = MaterialRange(), init: dict[str, float] = DEFAULT_INIT) -> torch.Tensor:
    """Raw values that give `init` (roughness and metallic clamped into their ranges)."""
    def relative(value: float, bounds: tuple[float, float]) -> float:
        low, high = bounds
        return 0.5 if high <= low else min(max((value - low) / (high - low), 0.0), 1.0)

    values = [init["albedo"]] * 3 + [relative(init["roughness"], material.roughness),
                                     relative(init["metallic"], material.metallic)]
    return _logit(torch.tensor(values))


def uv_to_grid(uv: torch.Tensor) -> torch.Tensor:
    """UV (origin bottom-left) -> grid_sample coordinates (row 0 of the image = v 1)."""
    return torch.stack([uv[..., 0] * 2 - 1, 1 - uv[..., 1] * 2], dim=-1)


def mip_pyramid(image: torch.Tensor, min_size: int = MIN_MIP_SIZE) -> list[torch.Tensor]:
    """(1, C, H, W) -> [image, image/2, ...] by 2x2 averaging (differentiable), down to min_size."""
    levels = [image]
    while min(levels[-1].shape[-2:]) // 2 >= min_size:
        levels.append(F.avg_pool2d(levels[-1], 2))
    return levels


def mip_sample(levels: list[torch.Tensor], uv: torch.Tensor, footprint: torch.Tensor | None) -> torch.Tensor:
    """Trilinear mip-mapped lookup, as GPUs (and nvdiffrast's 'linear-mipmap-linear') filter.

    levels: mip pyramid of (1, C, H, W); uv: (B, h, w, 2); footprint: (B, h, w, 1) UV units per
    pixel (None: finest level only, e.g. for baking). Level = log2(footprint * W), clamped.
    Hand-written: torch has no mipmapped grid_sample on CPU and kornia none with per-pixel levels.
    Returns (B, h, w, C).
    """
    grid = uv_to_grid(uv).to(levels[0].dtype)

    def sample(level: torch.Tensor) -> torch.Tensor:
        return F.grid_sample(level.expand(grid.shape[0], -1, -1, -1), grid, mode="bilinear",
                             padding_mode="border", align_corners=False).permute(0, 2, 3, 1)

    if footprint is None or len(levels) == 1:
        return sample(levels[0])
    lod = torch.log2((footprint * levels[0].shape[-1]).clamp(min=1e-8)).clamp(0, len(levels) - 1)
    out = 0.0
    for index, level in enumerate(levels):
        weight = (1.0 - (lod - index).abs()).clamp(min=0.0)
        if bool((weight > 0).any()):
            out = out + weight * sample(level)
    return out


class UVPyramidTexture(torch.nn.Module):
    """A UV texture stored as a multi-resolution pyramid whose levels are sampled and summed
    (the old recipe, `texture="image"`; kept for editing and comparison).

    Coarse levels let a few gradients move large areas early; the finest level holds detail.
    Sampling each level at the query points costs O(points * levels), not O(texture size).
    """

    def __init__(self, size: int, min_size: int = 8, material: MaterialRange = MaterialRange()) -> None:
        super().__init__()
        sizes = [size]
        while sizes[-1] // 2 >= min_size:
            sizes.append(sizes[-1] // 2)
        self.size = size
        self.material = material
        self.levels = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.zeros(1, CHANNELS, s, s)) for s in sizes]
        )
        self.register_buffer("bias", _init_bias(material))

    def forward(self, uv: torch.Tensor, position: torch.Tensor | None = None,
                footprint: torch.Tensor | None = None) -> SurfaceSample:
        """uv: (B, H, W, 2) in [0, 1]; position and footprint are unused (shared interface)."""
        grid = uv_to_grid(uv).to(self.levels[0].dtype)
        raw = sum(
            F.grid_sample(level.expand(grid.shape[0], -1, -1, -1), grid, mode="bilinear",
                          padding_mode="border", align_corners=False)
            for level in self.levels
        )
        return _to_sample(raw.permute(0, 2, 3, 1) + self.bias, self.material)

    @torch.no_grad()
    def decay_materials(self, factor: float) -> None:
        """Scale the raw roughness/metallic parameters by `factor` (towards DEFAULT_INIT)."""
        for level in self.levels:
            level[:, 3:].mul_(factor)

    @torch.no_grad()
    def initialise_albedo(self, albedo_linear: torch.Tensor) -> None:
        """Start from an existing (H, W, 3) linear albedo image (row 0 = v 1), e.g. for editing."""
        image = _resized(albedo_linear, self.size).to(self.levels[0])
        for level in self.levels:
            level.zero_()
        self.levels[0][:, :3] = _logit(image) - self.bias[:3, None, None]


def fourier_features(position: torch.Tensor, bands: torch.Tensor) -> torch.Tensor:
    """position (..., 3), bands (F,) angular frequencies -> (..., 3 + 6F): position, sin, cos."""
    angles = position[..., None] * bands  # (..., 3, F)
    return torch.cat([position, angles.sin().flatten(-2), angles.cos().flatten(-2)], dim=-1)


def _mlp(dims: list[int], generator: torch.Generator) -> torch.nn.ModuleList:
    """Linear layers (He-normal weights, zero biases, zero last layer: the MLP starts at 0)."""
    linears = []
    for fan_in, fan_out in zip(dims[:-1], dims[1:]):
        linear = torch.nn.Linear(fan_in, fan_out)
        torch.nn.init.normal_(linear.weight, std=math.sqrt(2.0 / fan_in), generator=generator)
        torch.nn.init.zeros_(linear.bias)
        linears.append(linear)
    torch.nn.init.zeros_(linears[-1].weight)
    return torch.nn.ModuleList(linears)


def _run_mlp(mlp: torch.nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    """x (..., dims[0]) through the layers with SiLU between them -> (..., dims[-1])."""
    for i, linear in enumerate(mlp):
        x = linear(x)
        if i < len(mlp) - 1:
            x = F.silu(x)
    return x


class AlbedoField(torch.nn.Module):
    """A low-frequency field of albedo logits over normalised position, bounded to +-`bound`:
    Fourier features (`octaves`) and an MLP that starts at zero. (..., 3) -> (..., 3)."""

    def __init__(self, octaves: int = FIELD_OCTAVES, bound: float = FIELD_BOUND, hidden: int = 64,
                 seed: int = 0) -> None:
        super().__init__()
        self.bound = bound
        self.register_buffer("bands", (2.0 ** torch.arange(octaves, dtype=torch.float32)) * math.pi)
        self.mlp = _mlp([3 + 6 * octaves, hidden, hidden, 3], torch.Generator().manual_seed(seed))

    def forward(self, position: torch.Tensor) -> torch.Tensor:
        out = _run_mlp(self.mlp, fourier_features(position, self.bands))
        return self.bound * torch.tanh(out / self.bound)


class HybridTexture(torch.nn.Module):
    """Coarse and mid frequencies in dense 3D grids over position, finest albedo in a UV image.

    grids: one (1, 5, s, s, s) parameter per size in `grid_sizes`, covering [-1, 1]^3 (the
    normalised mesh box), sampled trilinearly and summed: the cell of the finest grid (2/64 of
    the box) is about 1% of the bounding diagonal, so everything coarser is seamless by
    construction. detail: (1, 3, size, size) UV image of albedo only, high-passed (`high_pass`)
    and mip-sampled by the pixel's footprint; roughness and metallic come from the grids alone (smooth materials,
    as DreamMat/Fantasia3D regularise them). Materials start at HYBRID_INIT; the grids' roughness and
    metallic channels are scaled by ROUGHNESS_GAIN and METALLIC_GAIN. `field`: an `AlbedoField`
    added to the albedo logits with a share that fades as the rest's logit grows (FIELD_FADE), the
    sum softly bounded (ALBEDO_BOUND), the grids' and detail's albedo scaled by
    FIELD_GRID_ALBEDO_GAIN (texture="hybrid-field"); None for the plain hybrid.
    """

    def __init__(self, size: int, grid_sizes: tuple[int, ...] = GRID_SIZES,
                 material: MaterialRange = MaterialRange(), field: AlbedoField | None = None) -> None:
        super().__init__()
        self.size = size
        self.material = material
        self.grid_sizes = tuple(grid_sizes)
        self.grids = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.zeros(1, CHANNELS, s, s, s)) for s in grid_sizes]
        )
        self.detail = torch.nn.Parameter(torch.zeros(1, 3, size, size))
        self.register_buffer("bias", _init_bias(material, HYBRID_INIT))
        self.albedo_gain = 1.0 if field is None else FIELD_GRID_ALBEDO_GAIN
        self.register_buffer("gain", torch.tensor([self.albedo_gain] * 3 + [ROUGHNESS_GAIN, METALLIC_GAIN]))
        self.field = field

    def forward(self, uv: torch.Tensor, position: torch.Tensor,
                footprint: torch.Tensor | None = None) -> SurfaceSample:
        """uv (B, H, W, 2), position (B, H, W, 3) normalised, footprint (B, H, W, 1) or None."""
        batch, height, width = position.shape[:3]
        grid = position.to(self.detail.dtype).reshape(batch, 1, height, width, 3)
        raw = sum(
            F.grid_sample(level.expand(batch, -1, -1, -1, -1), grid, mode="bilinear",
                          padding_mode="border", align_corners=True)
            for level in self.grids
        )[:, :, 0].permute(0, 2, 3, 1) * self.gain
        detail = mip_sample(mip_pyramid(self.high_pass(self.detail)), uv, footprint) * self.albedo_gain
        raw = raw + F.pad(detail, (0, CHANNELS - 3)) + self.bias
        if self.field is not None:
            albedo = raw[..., :3]
            room = 1 - torch.tanh(albedo.detach() / FIELD_FADE) ** 2  # the fade steers the field, not the grids
            albedo = albedo + self.field(position.to(self.detail.dtype)) * room
            raw = torch.cat([ALBEDO_BOUND * torch.tanh(albedo / ALBEDO_BOUND), raw[..., 3:]], -1)
        return _to_sample(raw, self.material)

    @torch.no_grad()
    def decay_materials(self, factor: float) -> None:
        """Scale the raw roughness/metallic parameters by `factor` (towards HYBRID_INIT)."""
        for level in self.grids:
            level[:, 3:].mul_(factor)

    def high_pass(self, detail: torch.Tensor) -> torch.Tensor:
        """(1, 3, S, S) minus its box blur over S / finest-grid-size texels: the UV image keeps only
        what the finest grid cannot hold, so no low frequency lives in UV space (where it would be
        cut at chart borders). Textures no larger than the finest grid have no detail."""
        window = max(self.size // self.grid_sizes[-1], 1)
        if window == 1:
            return detail * 0.0
        blurred = F.interpolate(F.avg_pool2d(detail, window), size=detail.shape[-2:], mode="bilinear",
                                align_corners=False)
        return detail - blurred


class FourierFieldTexture(torch.nn.Module):
    """A neural field over normalised surface positions: Fourier features and a small MLP.

    It does not depend on the UV layout; it is baked into UV maps at the end.
    """

    def __init__(self, frequencies: int = 8, hidden: int = 64, layers: int = 3, seed: int = 0,
                 material: MaterialRange = MaterialRange()) -> None:
        super().__init__()
        self.material = material
        self.register_buffer("bands", (2.0 ** torch.arange(frequencies, dtype=torch.float32)) * math.pi)
        self.mlp = _mlp([3 + 6 * frequencies] + [hidden] * layers + [CHANNELS], torch.Generator().manual_seed(seed))
        self.register_buffer("bias", _init_bias(material))

    def forward(self, uv: torch.Tensor, position: torch.Tensor,
                footprint: torch.Tensor | None = None) -> SurfaceSample:
        """position: (..., 3) normalised world positions; uv and footprint are unused."""
        x = _run_mlp(self.mlp, fourier_features(position, self.bands))
        return _to_sample(x + self.bias, self.material)

    @torch.no_grad()
    def decay_materials(self, factor: float) -> None:
        """Scale the output layer's roughness/metallic weights and biases by `factor` (towards DEFAULT_INIT)."""
        self.mlp[-1].weight[3:].mul_(factor)
        self.mlp[-1].bias[3:].mul_(factor)


class ImageTexture(torch.nn.Module):
    """A fixed texture from images (e.g. baked maps or a source material), mip-sampled by the
    footprint when one is given (bilinear at the finest level otherwise).

    albedo: (H, W, 3) linear; roughness, metallic: (H, W, 1); all in [0, 1], row 0 = v 1;
    normal: (H, W, 3) tangent-space normal map encoded n * 0.5 + 0.5 (as PBRMaps.normal), or None.
    """

    def __init__(self, albedo: torch.Tensor, roughness: torch.Tensor, metallic: torch.Tensor,
                 normal: torch.Tensor | None = None) -> None:
        super().__init__()
        layers = [albedo, roughness, metallic] + ([normal] if normal is not None else [])
        self.register_buffer("image", torch.cat(layers, dim=-1).permute(2, 0, 1)[None].float())
        self.has_normal = normal is not None

    @classmethod
    def from_maps(cls, maps: PBRMaps) -> "ImageTexture":
        arrays = (maps.albedo, maps.roughness, maps.metallic, maps.normal)
        return cls(*(None if a is None else torch.from_numpy(np.ascontiguousarray(a, np.float32)) for a in arrays))

    @classmethod
    def from_srgb(cls, image: np.ndarray, roughness: float = 0.6, metallic: float = 0.0) -> "ImageTexture":
        """A texture from an (H, W, 3) sRGB base colour image and constant roughness/metallic."""
        albedo = srgb_image_to_linear(image)
        ones = torch.ones(*albedo.shape[:2], 1)
        return cls(albedo, ones * roughness, ones * metallic)

    def forward(self, uv: torch.Tensor, position: torch.Tensor | None = None,
                footprint: torch.Tensor | None = None) -> SurfaceSample | NormalMappedSample:
        levels = [self.image] if footprint is None else mip_pyramid(self.image)
        values = mip_sample(levels, uv, footprint)
        sample = SurfaceSample(values[..., :3], values[..., 3:4], values[..., 4:5])
        if not self.has_normal:
            return sample
        return NormalMappedSample(*sample, F.normalize(values[..., 5:8] * 2 - 1, dim=-1, eps=1e-8))


class BumpMap(torch.nn.Module):
    """A learnable height image in UV space, (1, 1, S, S) (row 0 = v 1), read as tangent-space normals.

    Height is in texel widths: the normal at texel (i, j) is normalise(-dh/du, -dh/dv, 1) with central
    differences per texel (edges replicated), so it is a true bump map (integrable normals, no texel
    can point anywhere on its own). Zero height (the start) is the flat map (0, 0, 1).
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.height = torch.nn.Parameter(torch.zeros(1, 1, size, size))

    def normal_image(self) -> torch.Tensor:
        """(1, 3, S, S) tangent-space normals (x along +u, y along +v, z out of the surface), not unit:
        (-dh/du, -dh/dv, 1), normalised after filtering. Plain slicing: on a CPU, kornia's
        spatial_gradient and a per-texel normalise each cost 7x these differences at 1024^2."""
        h = F.pad(self.height, (1, 1, 1, 1), mode="replicate")
        d_du = (h[..., 1:-1, 2:] - h[..., 1:-1, :-2]) * 0.5
        d_dv = (h[..., :-2, 1:-1] - h[..., 2:, 1:-1]) * 0.5  # v runs up, rows run down
        return torch.cat([-d_du, -d_dv, torch.ones_like(d_du)], 1)

    def forward(self, uv: torch.Tensor, footprint: torch.Tensor | None = None) -> torch.Tensor:
        """uv (B, H, W, 2), footprint (B, H, W, 1) or None -> (B, H, W, 3) unit tangent-space normals."""
        return F.normalize(mip_sample(mip_pyramid(self.normal_image()), uv, footprint), dim=-1, eps=1e-8)


class NormalMappedTexture(torch.nn.Module):
    """Any texture plus a learnable `BumpMap` (`Config.normal_map`): the base texture's PBR values
    and the bump map's tangent-space normal, optimised together."""

    def __init__(self, base: torch.nn.Module, size: int) -> None:
        super().__init__()
        self.base = base
        self.bump = BumpMap(size)

    def forward(self, uv: torch.Tensor, position: torch.Tensor | None = None,
                footprint: torch.Tensor | None = None) -> NormalMappedSample:
        return NormalMappedSample(*self.base(uv, position, footprint), self.bump(uv, footprint))

    def decay_materials(self, factor: float) -> None:
        """The base texture's material prior (the bump map has none)."""
        if hasattr(self.base, "decay_materials"):
            self.base.decay_materials(factor)


def make_texture(kind: str, size: int, seed: int = 0, material: MaterialRange = MaterialRange(),
                 normal_map: bool = False) -> torch.nn.Module:
    """The learnable texture for `Config.texture` (one of TEXTURES), with a
    size x size bump map when `normal_map` (`Config.normal_map`)."""
    if kind == "field":
        texture: torch.nn.Module = FourierFieldTexture(seed=seed, material=material)
    elif kind == "image":
        texture = UVPyramidTexture(size, material=material)
    elif kind == "hybrid":
        texture = HybridTexture(size, material=material)
    elif kind == "hybrid-field":
        texture = HybridTexture(size, material=material, field=AlbedoField(seed=seed))
    else:
        raise ValueError(f"unknown texture kind {kind!r}; choose one of {', '.join(TEXTURES)}")
    return NormalMappedTexture(texture, size) if normal_map else texture


def _resized(image: torch.Tensor, size: int) -> torch.Tensor:
    """(H, W, C) -> (1, C, size, size), antialiased."""
    return F.interpolate(image.permute(2, 0, 1)[None].float(), size=(size, size), mode="bilinear",
                         antialias=True, align_corners=False)


def srgb_image_to_linear(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) sRGB float image in [0, 1] -> linear torch tensor."""
    from .render.shading import srgb_to_linear

    return srgb_to_linear(torch.as_tensor(image, dtype=torch.float32))
