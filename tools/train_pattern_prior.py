"""Train the pattern-and-material prior shipped at tests/data/pattern-prior.

The colour prior (tools/train_tiny_prior.py) only knows the mean colour of an image, so no test
can tell a striped texture from a plain one, or a metal from clay. This script renders a
captioned image set procedurally and trains a small Stable Diffusion on it, on CPU, in the
diffusers folder format of a real model (`StableDiffusionPipeline.from_pretrained(folder)`):

* images: 64x64 renders of a sphere, cube or cylinder, seen through perspective cameras framed as
  the texturing loop frames a mesh (`cameras.make_cameras` with the default field of view 35-50
  degrees and distance scale 0.75-1.2, so close-ups crop the object; elevation -20..50 degrees,
  any azimuth) over a grey background, with a solid (object-space) procedural texture: plain,
  stripes (periods of about 9-30 pixels, horizontal bands, vertical or any angle), checkerboard (a
  rotated 3-D one, or squares laid on the shape with `--checker-kind surface`),
  dots (7-12 pixels, 2-3 across the classifiers' central crop), marble
  (turbulent veins) or wood rings; colours named (red, orange, yellow, green, blue, purple, pink,
  brown, white, black, grey; gold and silver for metals) or arbitrary; a material class (matte:
  roughness 0.65-1; glossy: roughness 0.05-0.3; metal: roughness 0.05-0.35, metallic 0.85-1, not for marble and wood;
  or unlabelled: anything). Shading: the texturing loop's own split-sum image-based light
  (`render.shading.shade_environment`, the bundled HDR environments, random environment, rotation
  and intensity), 10% unlit views (plain albedo) as the texturing loop renders them; the prior
  thus sees metal and clay under the light the guidance renders with. The geometry is ray cast
  here, in vectorised torch, on purpose: analytic ray casting of three shapes draws about 100
  images per second on one busy core.
* captions name what the image shows, each part left out at random: material adjective
  (matte / glossy, shiny / shiny, polished), colour(s) ("red", "red and white"), pattern
  ("striped", "with white dots", "checkered", "marble", "wooden", "plain"), material noun (clay,
  rubber / plastic, ceramic / metal), object (ball, sphere, cube, box, cylinder, can, soda can,
  object) and a view suffix (", front view", as the texturing loop appends). For example
  "a red and white striped soda can", "a shiny gold metal ball", "a matte blue clay cube with
  dots", "red and white stripes". Colour-free captions for arbitrary colours; 12% empty captions
  so the unconditional eps(x_t; "") that CSD subtracts is trained.
* models: `AutoencoderKL` (latent 8x8 = 1/8 of the image, `--latent-channels` deep, started as an exact mean-colour
  autoencoder by `prior_common.init_colour_path`, then trained on the renders; `scaling_factor`
  1/std of the training latents), a `CLIPTextModel` (width 64, 3 layers) with the tokenizer from
  `csd_texture.testing.build_tokenizer` (every caption word one token), a `UNet2DConditionModel`
  (channels `--unet-channels`, 32 and 64 by default; cross-attention at both levels and the middle), Stable Diffusion's DDPM
  schedule, epsilon prediction. Training stops on a wall-clock budget (`--minutes`): the VAE gets
  `--vae-share` of it, then the UNet and text encoder train together on encoded latents; their
  exponential moving average is saved, and written to --out every `--save-every` minutes.

Usage (one CPU thread, see tests/data/pattern-prior/README.md for the figures):

    python tools/train_pattern_prior.py --out tests/data/pattern-prior --seed 0 --minutes 60

`--eval-only` measures an existing folder (samples per caption judged by the classifiers in
`csd_texture.pattern_metrics`, VAE reconstruction error per pattern) and adds the figures to its
train_report.json.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from prior_common import (
    TokenCache,
    build_text_encoder,
    cosine_lr,
    hsv_to_rgb,
    init_colour_path,
    n_params,
    save_pipeline,
    uniform,
)

from csd_texture.cameras import fitting_distance
from csd_texture.config import Config
from csd_texture.lighting import INTENSITY_RANGE, EnvironmentLighting, bundled_environments, environment_rotation
from csd_texture.render.shading import linear_to_srgb, shade_environment, srgb_to_linear
from csd_texture.testing import build_tokenizer, sd_ddpm_scheduler

IMAGE_SIZE = 64
SUPERSAMPLE = 1  # 2 looks smoother but costs 4x; the texturing renders are not antialiased either
SHAPES = ("sphere", "cube", "cylinder")
ENVIRONMENTS = bundled_environments()
PATTERNS = ("plain", "stripes", "checkerboard", "dots", "marble", "wood")


@dataclass(frozen=True)
class DataMix:
    """How often each pattern and each stripe direction is drawn. The defaults made the shipped
    folder; `pattern_weights` None draws the patterns uniformly. `stripe_kinds`: the shares of
    horizontal bands (about the up axis) and of vertical ones; the rest run at any angle.
    `dot_spacing`: the range of the dot lattice's spacing in object units (the dots' radius is
    0.3-0.38 of it). `checker_cell`: the range of the checkerboard's cell size in object units.
    `checker_kind`: "solid" (the shipped folder's: a 3-D checkerboard at a random rotation, whose
    cut by a face or curved side shows triangles and diamonds as often as squares) or "surface"
    (squares laid on the shape: the cube's faces, the sphere's longitude and latitude, the
    cylinder's angle and height and its caps).
    `material_weights`: the shares of unlabelled (any roughness and metallic),
    matte, glossy and metal renders. `stripe_period`: the range of the stripes' period in object
    units (0.3-0.75: about 9-30 px with the framing)."""

    pattern_weights: tuple[float, ...] | None = None
    stripe_kinds: tuple[float, float] = (0.4, 0.2)
    dot_spacing: tuple[float, float] = (0.38, 0.55)
    checker_cell: tuple[float, float] = (0.25, 0.42)
    checker_kind: str = "solid"
    material_weights: tuple[float, float, float, float] = (0.25, 0.3, 0.25, 0.2)
    stripe_period: tuple[float, float] = (0.3, 0.75)


MATERIALS = ("matte", "glossy", "metal")  # index -1: unlabelled (any roughness / metallic)
# name: (hue centre, hue jitter, saturation range, value range) in sRGB HSV
COLOURS: dict[str, tuple[float, float, tuple[float, float], tuple[float, float]]] = {
    "red": (0.0, 8.0, (0.75, 1.0), (0.6, 1.0)),
    "orange": (28.0, 5.0, (0.8, 1.0), (0.8, 1.0)),
    "yellow": (55.0, 5.0, (0.75, 1.0), (0.8, 1.0)),
    "green": (120.0, 15.0, (0.55, 1.0), (0.45, 0.95)),
    "blue": (225.0, 12.0, (0.65, 1.0), (0.5, 1.0)),
    "purple": (280.0, 12.0, (0.5, 0.9), (0.45, 0.9)),
    "pink": (335.0, 10.0, (0.3, 0.55), (0.9, 1.0)),
    "brown": (25.0, 8.0, (0.55, 0.85), (0.28, 0.5)),
    "white": (0.0, 180.0, (0.0, 0.06), (0.88, 1.0)),
    "black": (0.0, 180.0, (0.0, 0.2), (0.03, 0.12)),
    "grey": (0.0, 180.0, (0.0, 0.06), (0.4, 0.65)),
    "gold": (45.0, 4.0, (0.55, 0.8), (0.8, 1.0)),  # metals only
    "silver": (0.0, 180.0, (0.0, 0.05), (0.75, 0.95)),  # metals only
}
PAINT = tuple(c for c in COLOURS if c not in ("gold", "silver"))
OBJECT_WORDS = {"sphere": ("ball", "sphere"), "cube": ("cube", "box"), "cylinder": ("cylinder", "can")}
PATTERN_ADJ = {"stripes": "striped", "checkerboard": "checkered", "dots": "dotted", "marble": "marble", "wood": "wooden"}
PATTERN_NOUN = {"stripes": ("stripes",), "checkerboard": ("checkerboard", "checks"), "dots": ("dots", "polka dots"),
                "marble": ("marble",), "wood": ("wood grain",)}
MATERIAL_ADJ = {"matte": ("matte",), "glossy": ("glossy", "shiny"), "metal": ("shiny", "polished")}
MATERIAL_NOUN = {"matte": ("clay", "rubber"), "glossy": ("plastic", "ceramic"), "metal": ("metal", "metallic")}
VIEWS = ("front", "side", "back", "overhead")
WORDS = tuple(dict.fromkeys(
    ("a", "an", "and", "with", "on", "object", "soda", "plain", "view", "grain", "polka", "metal", "metallic")
    + tuple(COLOURS) + tuple(w for ws in OBJECT_WORDS.values() for w in ws) + tuple(PATTERN_ADJ.values())
    + tuple(w for ws in PATTERN_NOUN.values() for p in ws for w in p.split())
    + tuple(w for ws in MATERIAL_ADJ.values() for w in ws) + tuple(w for ws in MATERIAL_NOUN.values() for w in ws)
    + VIEWS
))
TEXT_WIDTH = 64
MAX_TOKENS = 24


# ----------------------------------------------------------------------------------------------
# scenes: shapes, solid textures, materials, shading


def _rotation(n: int, g: torch.Generator) -> torch.Tensor:
    """(n, 3, 3) random rotations (QR of a Gaussian matrix, sign-fixed)."""
    q, r = torch.linalg.qr(torch.randn(n, 3, 3, generator=g))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    return q * torch.sign(torch.det(q))[:, None, None]


def _rays(n: int, res: int, g: torch.Generator):
    """Perspective camera rays in object space, framed as the texturing loop frames a mesh
    (`cameras.fitting_distance` and the default `Config` field of view 35-50 degrees and distance
    scale 0.75-1.2, so close-ups crop the object; elevation up to 50 degrees, past the loop's 40,
    for the "overhead view" captions). Returns origins, directions (n, res, res, 3), elevation and
    azimuth in degrees (n,), and the unit vector towards the camera (n, 3)."""
    loop = Config()
    elev = uniform(n, loop.elevation_range[0], 50.0, g)
    azim = uniform(n, -180.0, 180.0, g)
    fov = uniform(n, *loop.fov_range, g)
    half_fov = torch.deg2rad(fov) / 2
    distance = fitting_distance(1.0, fov) * uniform(n, *loop.distance_range, g)
    e, a = torch.deg2rad(elev), torch.deg2rad(azim)
    to_cam = torch.stack([torch.cos(e) * torch.sin(a), torch.sin(e), torch.cos(e) * torch.cos(a)], -1)
    right = torch.stack([torch.cos(a), torch.zeros(n), -torch.sin(a)], -1)
    up = torch.linalg.cross(to_cam, right)
    c = (torch.arange(res, dtype=torch.float32) + 0.5) / res * 2 - 1
    yy, xx = torch.meshgrid(-c, c, indexing="ij")
    t = torch.tan(half_fov)[:, None, None, None]
    direction = F.normalize(-to_cam[:, None, None] + t * (xx[None, ..., None] * right[:, None, None]
                                                         + yy[None, ..., None] * up[:, None, None]), dim=-1)
    origin = (distance[:, None] * to_cam)[:, None, None].expand_as(direction)
    return origin, direction, elev, azim, to_cam


def _intersect(shape: int, o: torch.Tensor, d: torch.Tensor):
    """Ray hits of a shape with bounding radius 1. o, d (..., 3). Returns hit mask (...),
    point and normal (..., 3)."""
    big = torch.full(o.shape[:-1], 1e9)
    if shape == 0:  # unit sphere
        b = (o * d).sum(-1)
        disc = b * b - ((o * o).sum(-1) - 1.0)
        t = -b - disc.clamp(min=0).sqrt()
        hit = disc > 0
        p = o + t[..., None] * d
        return hit, p, F.normalize(p, dim=-1)
    if shape == 1:  # cube, half side 0.6 (corners just outside the unit sphere)
        h = 0.6
        dd = torch.where(d.abs() < 1e-6, torch.full_like(d, 1e-6), d)
        t1, t2 = (-h - o) / dd, (h - o) / dd
        tnear = torch.minimum(t1, t2)
        tmin, axis = tnear.max(-1)
        tmax = torch.maximum(t1, t2).min(-1).values
        hit = tmax >= tmin
        p = o + tmin[..., None] * d
        normal = F.one_hot(axis, 3).float() * -torch.sign(torch.gather(dd, -1, axis[..., None]))
        return hit, p, normal
    r, hh = 0.6, 0.8  # cylinder along y
    a = d[..., 0] ** 2 + d[..., 2] ** 2 + 1e-9
    b = o[..., 0] * d[..., 0] + o[..., 2] * d[..., 2]
    cc = o[..., 0] ** 2 + o[..., 2] ** 2 - r * r
    disc = b * b - a * cc
    ts = (-b - disc.clamp(min=0).sqrt()) / a
    ys = o[..., 1] + ts * d[..., 1]
    side_ok = (disc > 0) & (ys.abs() <= hh)
    dy = torch.where(d[..., 1].abs() < 1e-6, torch.full_like(d[..., 1], 1e-6), d[..., 1])
    tc = torch.minimum((hh - o[..., 1]) / dy, (-hh - o[..., 1]) / dy)
    pc = o + tc[..., None] * d
    cap_ok = (pc[..., 0] ** 2 + pc[..., 2] ** 2) <= r * r
    t = torch.minimum(torch.where(side_ok, ts, big), torch.where(cap_ok, tc, big))
    hit = side_ok | cap_ok
    p = o + t[..., None] * d
    side = side_ok & (ts <= torch.where(cap_ok, tc, big))
    n_side = F.normalize(p * torch.tensor([1.0, 0.0, 1.0]), dim=-1, eps=1e-6)
    n_cap = torch.zeros_like(p)
    n_cap[..., 1] = torch.sign(p[..., 1])
    return hit, p, torch.where(side[..., None], n_side, n_cap)


def _turbulence(q: torch.Tensor, g: torch.Generator, octaves: int = 4) -> torch.Tensor:
    """Sum of random sine waves (n, ..., 3) -> (n, ...), roughly in [-1, 1]: a cheap noise."""
    n = q.shape[0]
    out = torch.zeros(q.shape[:-1])
    extra = (1,) * (q.ndim - 2)
    for i in range(octaves):
        k = F.normalize(torch.randn(n, 3, generator=g), dim=-1) * (3.0 * 2**i)
        phase = uniform(n, 0, 2 * math.pi, g)
        out = out + 0.5**i * torch.sin((q * k.view(n, *extra, 3)).sum(-1) + phase.view(n, *extra))
    return out


def _surface_checks(shape: torch.Tensor, p: torch.Tensor, cell: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Checkerboard laid on each shape's surface, (n, H, W) in [0, 1]: shape (n,) index into
    SHAPES, p (n, H, W, 3) object-space points, cell (n, 1, 1) the cell size. Around the sphere's
    and cylinder's axis an even number of cells, so the squares meet where the angle wraps."""
    n = p.shape[0]
    col = lambda t: t.view(n, 1, 1)
    edge = lambda s: torch.clamp(s * 4.0, -1.0, 1.0)  # anti-aliased sign, as the solid checks
    phase = torch.rand(n, 1, 1, 3, generator=g) * cell[..., None]  # where the grid starts
    q = p + phase
    cube = edge(torch.sin(math.pi * q[..., 0] / cell)) * edge(torch.sin(math.pi * q[..., 1] / cell)) \
        * edge(torch.sin(math.pi * q[..., 2] / cell))
    angle = torch.atan2(p[..., 2], p[..., 0]) + col(uniform(n, 0.0, 2 * math.pi, g))
    around = lambda radius: 2 * torch.clamp(torch.round(math.pi * radius / cell), min=2)  # even cell count
    latitude = torch.asin(p[..., 1].clamp(-1.0, 1.0))
    sphere = edge(torch.sin(angle * around(1.0) / 2)) * edge(torch.sin(math.pi * (latitude + phase[..., 1]) / cell))
    cylinder_side = edge(torch.sin(angle * around(0.6) / 2)) * edge(torch.sin(math.pi * q[..., 1] / cell))
    cap = edge(torch.sin(math.pi * q[..., 0] / cell)) * edge(torch.sin(math.pi * q[..., 2] / cell))
    cylinder = torch.where(p[..., 1].abs() >= 0.8 - 1e-3, cap, cylinder_side)
    checks = torch.where(col(shape == 0), sphere, torch.where(col(shape == 1), cube, cylinder))
    return 0.5 + 0.5 * checks


def _pattern_mask(pattern: torch.Tensor, p: torch.Tensor, g: torch.Generator, mix: DataMix = DataMix(),
                  shape: torch.Tensor | None = None) -> torch.Tensor:
    """Soft mask (n, H, W) in [0, 1] of the second colour for object-space points p (n, H, W, 3)
    of shapes `shape` (n,) (needed for `mix.checker_kind` "surface")."""
    n = p.shape[0]
    col = lambda t: t.view(n, 1, 1)
    q = torch.einsum("nhwi,nij->nhwj", p, _rotation(n, g))
    # stripes: horizontal bands, vertical or any angle (mix.stripe_kinds; by default 40%, 20%,
    # 40%); period mix.stripe_period
    horizontal, vertical = mix.stripe_kinds
    kind = torch.rand(n, generator=g)
    k = torch.where((kind < horizontal)[:, None], torch.tensor([0.0, 1.0, 0.0]),
                    torch.where((kind < horizontal + vertical)[:, None], F.normalize(torch.randn(n, 3, generator=g) * torch.tensor([1.0, 0.0, 1.0]), dim=-1),
                                F.normalize(torch.randn(n, 3, generator=g), dim=-1)))
    period = col(uniform(n, *mix.stripe_period, g))
    s = torch.sin(2 * math.pi * (p * k[:, None, None]).sum(-1) / period + col(uniform(n, 0, 2 * math.pi, g)))
    stripes = (0.5 + 4.0 * (s + col(uniform(n, -0.2, 0.2, g)))).clamp(0, 1)

    cell = col(uniform(n, *mix.checker_cell, g))
    soft = lambda a: torch.clamp(torch.sin(math.pi * a / cell) * 4.0, -1.0, 1.0)
    checker = 0.5 + 0.5 * soft(q[..., 0]) * soft(q[..., 1]) * soft(q[..., 2])
    if mix.checker_kind == "surface":
        checker = _surface_checks(shape, p, cell, g)

    spacing = uniform(n, *mix.dot_spacing, g)  # by default dots of about 7-12 px, 2-3 per 28 px (the classifiers' crop)
    radius = col(spacing * uniform(n, 0.3, 0.38, g))
    f = (q / spacing.view(n, 1, 1, 1) + torch.rand(n, 1, 1, 3, generator=g)) % 1.0 - 0.5
    dots = ((radius - f.norm(dim=-1) * col(spacing)) / 0.03 + 0.5).clamp(0, 1)

    turb = _turbulence(q, g)
    veins = 1.0 - torch.sin(2 * math.pi * q[..., 0] / col(uniform(n, 0.8, 1.6, g)) + col(uniform(n, 1.5, 3.0, g)) * turb).abs()
    marble = veins.pow(col(uniform(n, 4.0, 10.0, g)))

    axis_dist = (q[..., [0, 2]] - torch.randn(n, 1, 1, 2, generator=g) * 0.3).norm(dim=-1)
    rings = torch.sin(2 * math.pi * (axis_dist / col(uniform(n, 0.12, 0.25, g)) + 0.12 * turb))
    wood = (0.5 + 1.5 * rings).clamp(0, 1) * 0.85 + 0.15 * (0.5 + 0.5 * torch.sin(40.0 * q[..., 1] + 3 * turb))

    mask = torch.zeros(p.shape[:-1])
    for index, m in ((1, stripes), (2, checker), (3, dots), (4, marble), (5, wood)):
        mask = torch.where(col(pattern == index), m, mask)
    return mask


def _named_colour(names: list[str], g: torch.Generator) -> torch.Tensor:
    """sRGB (n, 3) drawn from the ranges of the given colour names."""
    out = []
    for name in names:
        hue, jitter, (s0, s1), (v0, v1) = COLOURS[name]
        h = torch.tensor([(hue + float(uniform(1, -jitter, jitter, g))) % 360.0])
        out.append(hsv_to_rgb(h, uniform(1, s0, s1, g), uniform(1, v0, v1, g))[0])
    return torch.stack(out)


def _arbitrary_colour(n: int, g: torch.Generator) -> torch.Tensor:
    grey = torch.rand(n, generator=g) < 0.2
    s = torch.where(grey, torch.zeros(n), uniform(n, 0.0, 1.0, g))
    return hsv_to_rgb(uniform(n, 0.0, 360.0, g), s, uniform(n, 0.03, 1.0, g))


def _pick(seq, g: torch.Generator):
    return seq[int(torch.randint(0, len(seq), (1,), generator=g))]


def draw_scenes(n: int, g: torch.Generator, size: int = IMAGE_SIZE, named_fraction: float = 0.65,
                mix: DataMix = DataMix()) -> tuple[torch.Tensor, list[dict]]:
    """Render `n` random scenes. Returns sRGB images (n, 3, size, size) in [0, 1] and one label
    dict per image: shape, pattern, colours (names or None), material (name or None),
    roughness, metallic, view (bucket name) and unlit."""
    res = size * SUPERSAMPLE
    shape = torch.randint(0, len(SHAPES), (n,), generator=g)
    pattern = (torch.randint(0, len(PATTERNS), (n,), generator=g) if mix.pattern_weights is None
               else torch.multinomial(torch.tensor(mix.pattern_weights), n, replacement=True, generator=g))
    material = torch.multinomial(torch.tensor(mix.material_weights), n, replacement=True, generator=g) - 1  # -1: unlabelled
    stone_or_wood = pattern >= PATTERNS.index("marble")
    material = torch.where(stone_or_wood & (material == 2), torch.ones_like(material), material)  # no wooden metal
    rough = torch.where(material == 0, uniform(n, 0.65, 1.0, g),
                        torch.where(material == 1, uniform(n, 0.05, 0.3, g),
                                    torch.where(material == 2, uniform(n, 0.05, 0.35, g), uniform(n, 0.0, 1.0, g))))
    any_metal = torch.rand(n, generator=g)
    metal = torch.where(material == 2, uniform(n, 0.85, 1.0, g),
                        torch.where(material == -1, torch.where(any_metal < 0.7, torch.zeros(n), torch.where(any_metal < 0.9, torch.ones(n), uniform(n, 0, 1, g))),
                                    torch.zeros(n)))
    named = torch.rand(n, generator=g) < named_fraction

    labels, first, second = [], [], []
    for i in range(n):
        pat = PATTERNS[int(pattern[i])]
        mat = MATERIALS[int(material[i])] if material[i] >= 0 else None
        names: tuple[str, ...] | None = None
        if pat == "wood":  # wood colours: a tan and a darker brown; named "brown" when named
            h = float(uniform(1, 18, 38, g))
            c1 = hsv_to_rgb(torch.tensor([h]), uniform(1, 0.45, 0.7, g), uniform(1, 0.5, 0.8, g))[0]
            c2 = c1 * float(uniform(1, 0.45, 0.65, g))
            names = ("brown",) if named[i] else None
        elif named[i]:
            pool = PAINT + ("gold", "silver") * 4 if mat == "metal" else PAINT
            a = _pick(pool, g)
            if pat in ("plain", "marble"):
                names = (a,)
            else:
                b = _pick([c for c in PAINT if c != a and {a, c} != {"red", "pink"}], g)
                names = (a, b)
            c1 = _named_colour([a], g)[0]
            c2 = _named_colour([names[1]], g)[0] if len(names) > 1 else c1
        else:
            c1 = _arbitrary_colour(1, g)[0]
            c2 = _arbitrary_colour(1, g)[0]
        if pat == "marble":  # veins: a much darker (or, on dark stone, lighter) shade
            v = float(c1.max())
            c2 = c1 * 0.3 if v > 0.45 else torch.full((3,), float(uniform(1, 0.6, 0.9, g)))
        first.append(c1)
        second.append(c2)
        labels.append({"shape": SHAPES[int(shape[i])], "pattern": pat, "colours": names, "material": mat,
                       "roughness": float(rough[i]), "metallic": float(metal[i])})

    origin, direction, elev, azim, to_cam = _rays(n, res, g)
    hit = torch.zeros(n, res, res, dtype=torch.bool)
    point = torch.zeros(n, res, res, 3)
    normal = torch.zeros(n, res, res, 3)
    for k in range(len(SHAPES)):
        idx = (shape == k).nonzero().flatten()
        if len(idx):
            h, p, nn = _intersect(k, origin[idx], direction[idx])
            hit[idx], point[idx], normal[idx] = h, p, nn

    m = _pattern_mask(pattern, point, g, mix, shape)[..., None]
    c1, c2 = torch.stack(first), torch.stack(second)
    albedo = srgb_to_linear(c1[:, None, None] * (1 - m) + c2[:, None, None] * m)  # (n, res, res, 3) linear

    # lighting: as the texturing loop lights a view (render/shading.shade_environment: split-sum
    # image-based light from the bundled HDR environments, random environment, rotation about +Y
    # and intensity, some unlit views), so the prior knows what metal and clay look like under
    # exactly the light the guidance sees.
    view = -direction  # per-pixel direction towards the camera (perspective)
    unlit = torch.rand(n, generator=g) < 0.1
    lighting = EnvironmentLighting(
        ENVIRONMENTS, torch.randint(0, len(ENVIRONMENTS.names), (n,), generator=g),
        environment_rotation(uniform(n, 0.0, 2 * math.pi, g), (0.0, 1.0, 0.0)),
        INTENSITY_RANGE[0] * (INTENSITY_RANGE[1] / INTENSITY_RANGE[0]) ** torch.rand(n, 1, generator=g), unlit)
    shape4 = (n, res, res, 1)
    linear = shade_environment(albedo, rough.clamp(min=0.05).view(n, 1, 1, 1).expand(shape4),
                               metal.view(n, 1, 1, 1).expand(shape4), normal, view, lighting)
    unlit = unlit.view(n, 1, 1, 1)

    colour = linear_to_srgb(linear)
    background = uniform(n, 0.35, 1.0, g).view(n, 1, 1, 1)
    image = torch.where(hit[..., None], colour, background).permute(0, 3, 1, 2)
    image = F.avg_pool2d(image, SUPERSAMPLE)
    image = (image + 0.006 * torch.randn(image.shape, generator=g)).clamp(0, 1)

    azim_w = (azim + 180.0) % 360.0 - 180.0
    for i, lab in enumerate(labels):
        a = abs(float(azim_w[i]))
        lab["view"] = "overhead" if elev[i] > 40 else ("front" if a <= 45 else "back" if a >= 135 else "side")
        lab["unlit"] = bool(unlit[i])
    return image, labels


def make_caption(label: dict, g: torch.Generator) -> str:
    """A caption naming what `label` shows, each part left out at random (see the module doc)."""
    r = lambda: float(torch.rand(1, generator=g))
    pat, mat, names, shape = label["pattern"], label["material"], label["colours"], label["shape"]
    use_colour = names is not None and r() < 0.85
    use_pattern = r() < (0.5 if pat == "plain" else 0.85)
    use_material = mat is not None and not label["unlit"] and r() < 0.75
    obj = _pick(OBJECT_WORDS[shape], g) if r() < 0.7 else "object"
    if obj == "can" and r() < 0.3:
        obj = "soda can"

    if use_pattern and pat != "plain" and use_colour and len(names) == 2 and r() < 0.25:
        words = [names[0], "and", names[1], _pick(PATTERN_NOUN[pat], g)]  # "red and white stripes"
    elif r() < 0.08 and (use_pattern or use_colour or use_material):  # single words: "stripes", "red", "metal"
        options = ([_pick(PATTERN_NOUN[pat], g) if pat != "plain" else "plain"] if use_pattern else []) \
            + ([names[0]] if use_colour else []) + ([_pick(MATERIAL_NOUN[mat], g)] if use_material else [])
        words = [_pick(options, g)]
    else:
        words = []
        if use_material and r() < 0.8:
            words.append(_pick(MATERIAL_ADJ[mat], g))
        if use_pattern and pat == "plain":
            words.append("plain")
        with_phrase: list[str] = []
        if use_colour:
            if len(names) == 2 and use_pattern and r() < 0.4:  # "a blue cube with white dots"
                words.append(names[0])
                with_phrase = ["with", names[1], _pick(PATTERN_NOUN[pat], g)]
            else:
                words += [names[0], "and", names[1]] if len(names) == 2 else [names[0]]
        if use_pattern and pat != "plain" and not with_phrase:
            if r() < 0.6:
                words.append(PATTERN_ADJ[pat])
            else:
                with_phrase = ["with", _pick(PATTERN_NOUN[pat], g)]
        if use_material and (mat == "metal" or r() < 0.5):
            noun = _pick(MATERIAL_NOUN[mat], g)
            if mat != "metal" or "shiny" in words or "polished" in words or r() < 0.8:
                words.append(noun)
        words.append(obj)
        words = (["an"] if words[0][0] in "aeiou" else ["a"]) + words + with_phrase
    caption = " ".join(words)
    if r() < 0.5:
        caption += f", {label['view']} view"
    return caption


# ----------------------------------------------------------------------------------------------
# models and training


def build_models(tokenizer, latent_channels: int = 4, unet_channels: tuple[int, int] = (32, 64)):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 32, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=latent_channels,
        layers_per_block=1,
        norm_num_groups=1,  # see init_colour_path
        sample_size=IMAGE_SIZE,
    )
    init_colour_path(vae)
    text_encoder = build_text_encoder(tokenizer, TEXT_WIDTH, layers=3)
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 8,
        in_channels=latent_channels,
        out_channels=latent_channels,
        block_out_channels=tuple(unet_channels),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    return vae, text_encoder, unet, sd_ddpm_scheduler()


def train_vae(vae, args, g, log, seconds: float) -> dict:
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    vae.train()
    t0 = time.time()
    step = 0
    while time.time() - t0 < seconds:
        for group in opt.param_groups:
            group["lr"] = cosine_lr(time.time() - t0, seconds, args.vae_lr, warmup=0.03 * seconds)
        x = draw_scenes(args.vae_batch, g, mix=data_mix(args))[0] * 2 - 1
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g)
        recon = vae.decode(z).sample
        rec = F.mse_loss(recon, x)
        kl = 0.5 * (posterior.mean**2 + posterior.var - 1.0 - posterior.logvar).mean()
        loss = rec + args.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 50 == 0:
            log(f"vae step {step:5d}  rec {rec.item():.5f}  kl {kl.item():.3f}  {time.time() - t0:6.1f}s")
        step += 1
    vae.eval()
    log(f"vae: {step} steps in {time.time() - t0:.0f}s")
    return {"vae_steps": step, "vae_seconds": time.time() - t0}


@torch.no_grad()
def encode_pool(vae, args, g, log):
    """Draw the UNet's image pool once and store the encoder's posterior mean and std and labels."""
    means, stds, labels = [], [], []
    t0 = time.time()
    for start in range(0, args.pool, 256):
        x, lab = draw_scenes(min(256, args.pool - start), g, mix=data_mix(args))
        posterior = vae.encode(x * 2 - 1).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
        labels += lab
    means, stds = torch.cat(means), torch.cat(stds)
    samples = means + stds * torch.randn(means.shape, generator=g)
    scaling = 1.0 / samples.std().item()
    log(f"encoded pool of {args.pool} in {time.time() - t0:.1f}s; latent std {samples.std().item():.4f} "
        f"-> scaling_factor {scaling:.4f}; posterior std mean {stds.mean().item():.4f}")
    return means, stds, labels, scaling


def snr_weight(alpha_bar: torch.Tensor, gamma: float) -> torch.Tensor:
    """(B,) loss weights of the epsilon objective: min(SNR, gamma) / SNR ("Min-SNR", Hang et al.
    2023), which takes weight off the nearly clean timesteps, where the epsilon loss is large and
    says little, and leaves the noisy ones that decide an image's layout (stripes or blotches) at
    1; gamma <= 0: all 1 (the plain objective)."""
    if gamma <= 0:
        return torch.ones_like(alpha_bar)
    snr = alpha_bar / (1 - alpha_bar)
    return snr.clamp(max=gamma) / snr


def train_unet(parts, pool, tokens, args, g, log, seconds: float, save) -> dict:
    _, text_encoder, unet, scheduler = parts
    means, stds, labels, scaling = pool
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.unet_lr, weight_decay=0.01)
    ema = [p.detach().clone() for p in params]
    alphas = scheduler.alphas_cumprod
    unet.train()
    text_encoder.train()
    t0 = last_save = time.time()
    running, step = 0.0, 0

    def save_ema():
        backup = [p.detach().clone() for p in params]
        with torch.no_grad():
            for e, p in zip(ema, params):
                p.copy_(e)
        save()
        with torch.no_grad():
            for b, p in zip(backup, params):
                p.copy_(b)

    while time.time() - t0 < seconds:
        for group in opt.param_groups:
            group["lr"] = cosine_lr(time.time() - t0, seconds, args.unet_lr, warmup=0.03 * seconds)
        idx = torch.randint(0, means.shape[0], (args.unet_batch,), generator=g)
        z0 = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=g)) * scaling
        captions = ["" if torch.rand(1, generator=g).item() < args.uncond_prob else make_caption(labels[i], g)
                    for i in idx.tolist()]
        cond = text_encoder(tokens(captions))[0]
        t = torch.randint(0, scheduler.config.num_train_timesteps, (args.unet_batch,), generator=g)
        noise = torch.randn(z0.shape, generator=g)
        a = alphas[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        per_sample = (unet(zt, t, cond).sample - noise).pow(2).mean((1, 2, 3))
        loss = (per_sample * snr_weight(a.flatten(), args.min_snr)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.lerp_(p.detach(), 1 - decay)
        running = loss.item() if step == 0 else 0.98 * running + 0.02 * loss.item()
        if step % 100 == 0:
            log(f"unet step {step:5d}  loss {running:.4f}  {time.time() - t0:6.1f}s")
        if time.time() - last_save > args.save_every * 60:
            save_ema()
            last_save = time.time()
            log(f"saved a checkpoint at step {step}")
        step += 1
    with torch.no_grad():
        for e, p in zip(ema, params):
            p.copy_(e)
    unet.eval()
    text_encoder.eval()
    log(f"unet: {step} steps in {time.time() - t0:.0f}s, loss {running:.4f}")
    return {"unet_steps": step, "unet_loss_last": running, "unet_seconds": time.time() - t0}


def resume(args, log) -> None:
    """Continue the UNet and text encoder of the folder --out on a freshly drawn pool (seed + 1)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(args.out, safety_checker=None, requires_safety_checker=False)
    torch.manual_seed(args.seed + 1)
    g = torch.Generator().manual_seed(args.seed + 1)
    t_start = time.time()
    means, stds, labels, _ = encode_pool(pipe.vae, args, g, log)
    pool = (means, stds, labels, pipe.vae.config.scaling_factor)  # keep the trained scaling
    parts = (pipe.vae, pipe.text_encoder, pipe.unet, pipe.scheduler)
    save = lambda: save_pipeline(args.out, *parts[:2], pipe.tokenizer, *parts[2:], unet_dtype=unet_dtype(args))
    remaining = args.minutes * 60 - (time.time() - t_start)
    info = train_unet(parts, pool, TokenCache(pipe.tokenizer), args, g, log, remaining, save)
    save()
    report_path = args.out / "train_report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    report.setdefault("resumed", []).append(dict(args=args_record(args), **info,
                                                 seconds=time.time() - t_start))
    report_path.write_text(json.dumps(report, indent=1) + "\n")
    log(f"resumed for {(time.time() - t_start) / 60:.1f} min, saved {args.out}")


def args_record(args: argparse.Namespace) -> dict:
    """The command's options for train_report.json (paths as strings)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


def data_mix(args: argparse.Namespace) -> DataMix:
    return DataMix(pattern_weights=tuple(args.pattern_weights) if args.pattern_weights else None,
                   stripe_kinds=tuple(args.stripe_kinds), dot_spacing=tuple(args.dot_spacing),
                   checker_cell=tuple(args.checker_cell), checker_kind=args.checker_kind,
                   material_weights=tuple(args.material_weights), stripe_period=tuple(args.stripe_period))


def unet_dtype(args: argparse.Namespace) -> torch.dtype:
    return torch.float16 if args.unet_float16 else torch.float32


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("tests/data/pattern-prior"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the shipped folder: 1)")
    parser.add_argument("--minutes", type=float, default=60.0, help="wall-clock training budget")
    parser.add_argument("--vae-share", type=float, default=0.4, help="share of --minutes for the autoencoder")
    parser.add_argument("--vae-batch", type=int, default=12)
    parser.add_argument("--vae-lr", type=float, default=1.5e-3)
    parser.add_argument("--kl-weight", type=float, default=1e-4)
    parser.add_argument("--pool", type=int, default=10000)
    parser.add_argument("--unet-batch", type=int, default=48)
    parser.add_argument("--unet-lr", type=float, default=1e-3)
    parser.add_argument("--uncond-prob", type=float, default=0.12)
    parser.add_argument("--ema", type=float, default=0.998)
    parser.add_argument("--min-snr", type=float, default=0.0, metavar="GAMMA",
                        help="weight the UNet's loss by min(SNR, GAMMA) / SNR (e.g. 5); 0: unweighted (the shipped folder's)")
    parser.add_argument("--vae-from", type=Path, metavar="FOLDER",
                        help="take the autoencoder of a trained FOLDER and spend all of --minutes on a new UNet")
    parser.add_argument("--pattern-weights", type=float, nargs=len(PATTERNS), metavar="W",
                        help=f"relative shares of the patterns {', '.join(PATTERNS)} (default: equal)")
    parser.add_argument("--stripe-kinds", type=float, nargs=2, metavar=("HORIZONTAL", "VERTICAL"), default=DataMix().stripe_kinds,
                        help="shares of horizontal and vertical stripes; the rest at any angle (default 0.4 0.2)")
    parser.add_argument("--stripe-period", type=float, nargs=2, metavar=("MIN", "MAX"), default=DataMix().stripe_period,
                        help="range of the stripes' period in object units (default 0.3 0.75)")
    parser.add_argument("--dot-spacing", type=float, nargs=2, metavar=("MIN", "MAX"), default=DataMix().dot_spacing,
                        help="range of the dot lattice's spacing in object units (default 0.38 0.55)")
    parser.add_argument("--checker-cell", type=float, nargs=2, metavar=("MIN", "MAX"), default=DataMix().checker_cell,
                        help="range of the checkerboard's cell size in object units (default 0.25 0.42)")
    parser.add_argument("--checker-kind", choices=("solid", "surface"), default=DataMix().checker_kind,
                        help="solid: a 3-D checkerboard at a random rotation (the shipped folder's); surface: squares "
                             "laid on each shape's faces, longitude and latitude (default solid)")
    parser.add_argument("--material-weights", type=float, nargs=4, metavar=("UNLABELLED", "MATTE", "GLOSSY", "METAL"),
                        default=DataMix().material_weights,
                        help="relative shares of unlabelled, matte, glossy and metal renders (default 0.25 0.3 0.25 0.2)")
    parser.add_argument("--latent-channels", type=int, default=4,
                        help="channels of the autoencoder's latent (spatially 1/8 of the image; default 4 as Stable Diffusion)")
    parser.add_argument("--unet-channels", type=int, nargs=2, metavar=("LEVEL1", "LEVEL2"), default=(32, 64),
                        help="the UNet's channels at 8x8 and 4x4 (default 32 64)")
    parser.add_argument("--unet-float16", action="store_true",
                        help="store the UNet's weights as float16 (half the bytes; it trains and loads as float32)")
    parser.add_argument("--save-every", type=float, default=5.0, help="minutes between checkpoints")
    parser.add_argument("--eval-only", action="store_true", help="only measure --out and add to its train_report.json")
    parser.add_argument("--no-eval", action="store_true", help="skip the measurements after training")
    parser.add_argument("--resume", action="store_true",
                        help="continue training the UNet and text encoder of --out for --minutes (the autoencoder stays)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    log = lambda msg: print(msg, flush=True)
    if args.eval_only:
        from pattern_prior_eval import evaluate

        report_path = args.out / "train_report.json"
        info = json.loads(report_path.read_text()) if report_path.exists() else {}
        info.update(evaluate(args.out, log, seed=args.seed, mix=data_mix(args)))
        report_path.write_text(json.dumps(info, indent=1) + "\n")
        return

    if args.resume:
        resume(args, log)
        return
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    tokenizer = build_tokenizer(WORDS, model_max_length=MAX_TOKENS)
    vae, text_encoder, unet, scheduler = build_models(tokenizer, args.latent_channels, args.unet_channels)
    sizes = {"vae_params": n_params(vae), "text_encoder_params": n_params(text_encoder), "unet_params": n_params(unet)}
    log(f"params {sizes}")
    t_start = time.time()
    budget = args.minutes * 60
    info = dict(args=args_record(args), **sizes)
    if args.vae_from:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(args.vae_from / "vae").eval()
        if vae.config.latent_channels != args.latent_channels:
            raise SystemExit(f"error: --vae-from {args.vae_from}: its latent has {vae.config.latent_channels} "
                             f"channels, --latent-channels is {args.latent_channels}")
        info["vae_from"] = str(args.vae_from)
    else:
        info.update(train_vae(vae, args, g, log, budget * args.vae_share))
    pool = encode_pool(vae, args, g, log)
    vae.register_to_config(scaling_factor=round(pool[-1], 5))
    info["scaling_factor"] = vae.config.scaling_factor
    save = lambda: save_pipeline(args.out, vae, text_encoder, tokenizer, unet, scheduler, unet_dtype=unet_dtype(args))
    remaining = budget - (time.time() - t_start)
    info.update(train_unet((vae, text_encoder, unet, scheduler), pool, TokenCache(tokenizer), args, g, log, remaining, save))
    info["train_seconds"] = time.time() - t_start
    log(f"trained in {info['train_seconds'] / 60:.1f} min")
    save()
    (args.out / "train_report.json").write_text(json.dumps(info, indent=1) + "\n")
    log(f"saved {args.out}")
    if not args.no_eval:
        from pattern_prior_eval import evaluate

        info.update(evaluate(args.out, log, seed=args.seed, mix=data_mix(args)))
        (args.out / "train_report.json").write_text(json.dumps(info, indent=1) + "\n")


if __name__ == "__main__":
    main()
