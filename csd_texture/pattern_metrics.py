"""Simple measurable image classifiers for the pattern prior's tests and training checks:
which pattern an image shows (FFT periodicity and gradient orientation for stripes, blob
statistics for dots, colour clusters for plain), which named colours, and how sharp its
highlight is. Deliberately hand-written and small: each number can be read and thresholded.

Images are sRGB in [0, 1], (B, H, W, 3) or (H, W, 3); numpy arrays or tensors. The pattern is
measured in a centred square that lies on the object: the largest of CROP_FRACTIONS whose pixels
are not the flat grey background (see `object_crop_fractions`), so a close-up is judged on most of
the image and a small object on its middle.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

# hue centre (degrees) of the hued colour names; white, black, grey and brown by rules below
HUE_NAMES: dict[str, float] = {"red": 0.0, "orange": 28.0, "yellow": 55.0, "green": 120.0, "blue": 225.0,
                               "purple": 280.0, "pink": 335.0}
PATTERN_CLASSES = ("plain", "stripes", "checkerboard", "dots", "other")


def _as_batch(images) -> torch.Tensor:
    x = images if torch.is_tensor(images) else torch.from_numpy(np.asarray(images))
    x = x.double() / 255.0 if x.dtype == torch.uint8 else x.double()
    x = x[None] if x.ndim == 3 else x
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected images of shape (H, W, 3) or (B, H, W, 3), got {tuple(x.shape)}")
    return x


def central_crop(images, fraction: float = 0.44) -> torch.Tensor:
    """The central `fraction` x `fraction` of each image, (B, h, w, 3) float64: on the prior's
    renders it lies on the object for every shape and framing."""
    x = _as_batch(images)
    h, w = x.shape[1:3]
    ch, cw = max(4, round(h * fraction)), max(4, round(w * fraction))
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[:, top:top + ch, left:left + cw]


def rgb_to_hsv(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(..., 3) sRGB -> hue in degrees, saturation, value."""
    r, g, b = rgb.unbind(-1)
    v = rgb.max(-1).values
    c = v - rgb.min(-1).values
    safe = torch.where(c > 0, c, torch.ones_like(c))
    h = torch.where(v == r, ((g - b) / safe) % 6, torch.where(v == g, (b - r) / safe + 2, (r - g) / safe + 4))
    h = torch.where(c > 0, h * 60.0, torch.zeros_like(h)) % 360.0
    s = torch.where(v > 0, c / torch.where(v > 0, v, torch.ones_like(v)), torch.zeros_like(v))
    return h, s, v


def colour_matches(rgb, name: str) -> torch.Tensor:
    """Whether sRGB colours (..., 3) look like the colour `name` (tolerant of shading)."""
    rgb = torch.as_tensor(rgb, dtype=torch.float64)
    h, s, v = rgb_to_hsv(rgb)
    if name == "white":
        return (s <= 0.3) & (v >= 0.6)
    if name == "black":
        return v <= 0.3
    if name == "grey":
        return (s <= 0.25) & (v >= 0.2) & (v <= 0.8)
    if name == "brown":
        return (h <= 50.0) & (v <= 0.7) & (s >= 0.3)
    if name not in HUE_NAMES:
        raise ValueError(f"unknown colour name {name!r}")
    d = (h - HUE_NAMES[name]) % 360.0
    d = torch.minimum(d, 360.0 - d)
    return (d <= 30.0) & (s >= (0.15 if name == "pink" else 0.3)) & (v >= 0.2)


CROP_FRACTIONS = (0.7, 0.62, 0.56, 0.5, 0.44)  # the crop's side over the image's, largest tried first
BACKGROUND_TOLERANCE = 0.05  # per channel, from the image border's median colour
BACKGROUND_MAX_SATURATION = 0.12  # the renders' (and samples') backgrounds are grey
BACKGROUND_ALLOWED = 0.005  # share of background pixels a crop may hold


def background_mask(image: torch.Tensor) -> torch.Tensor:
    """(H, W) bool for one (H, W, 3) image: the pixels connected to the image border whose colour is
    within BACKGROUND_TOLERANCE of the border's median colour, when that colour is grey (a
    coloured border is the object itself, seen close up: no background)."""
    ring = torch.cat([image[:2].reshape(-1, 3), image[-2:].reshape(-1, 3),
                      image[:, :2].reshape(-1, 3), image[:, -2:].reshape(-1, 3)])
    reference = ring.median(0).values
    _, saturation, _ = rgb_to_hsv(reference)
    if saturation > BACKGROUND_MAX_SATURATION:
        return torch.zeros(image.shape[:2], dtype=torch.bool)
    near = ((image - reference).abs().max(-1).values < BACKGROUND_TOLERANCE).numpy()
    labels, _ = ndimage.label(near)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return torch.from_numpy(np.isin(labels, border[border > 0]))


def object_crop_fractions(images) -> list[float]:
    """Per image, the largest of CROP_FRACTIONS whose centred crop holds at most BACKGROUND_ALLOWED
    background pixels (`background_mask`); the smallest when none does."""
    x = _as_batch(images)
    h = x.shape[1]
    out = []
    for image in x:
        background = background_mask(image)
        for fraction in CROP_FRACTIONS:
            side = max(4, round(h * fraction))
            top = (h - side) // 2
            if background[top:top + side, top:top + side].double().mean() <= BACKGROUND_ALLOWED:
                break
        out.append(fraction)
    return out


@dataclass(frozen=True)
class TwoColours:
    """The 2-means split of each image's pixels: centres (B, 2, 3) sRGB (0: the larger cluster),
    labels (B, h, w) bool (True: centre 1), minority (B,) share of centre 1, separation (B,)
    distance between the centres."""

    centres: torch.Tensor
    labels: torch.Tensor
    minority: torch.Tensor
    separation: torch.Tensor


def two_colours(crop: torch.Tensor, iterations: int = 8) -> TwoColours:
    """2-means of the pixels of (B, h, w, 3) images, started at their darkest and brightest quarters."""
    b, h, w, _ = crop.shape
    px = crop.reshape(b, -1, 3)
    lum = px.mean(-1)
    order = lum.argsort(-1)
    q = max(1, px.shape[1] // 4)
    centres = torch.stack([
        torch.gather(px, 1, order[:, :q, None].expand(-1, -1, 3)).mean(1),
        torch.gather(px, 1, order[:, -q:, None].expand(-1, -1, 3)).mean(1),
    ], 1)
    for _ in range(iterations):
        labels = (px[:, :, None] - centres[:, None]).norm(dim=-1).argmin(-1)
        for k in (0, 1):
            sel = (labels == k)[..., None].double()
            count = sel.sum(1)
            centres[:, k] = torch.where(count > 0, (px * sel).sum(1) / count.clamp(min=1), centres[:, k])
    labels = (px[:, :, None] - centres[:, None]).norm(dim=-1).argmin(-1).bool()
    share = labels.double().mean(1)
    swap = share > 0.5  # centre 1 is the smaller cluster
    centres = torch.where(swap[:, None, None], centres.flip(1), centres)
    labels = labels ^ swap[:, None]
    minority = torch.minimum(share, 1 - share)
    return TwoColours(centres, labels.reshape(b, h, w), minority, (centres[:, 0] - centres[:, 1]).norm(dim=-1))


@dataclass(frozen=True)
class PatternFeatures:
    """Per image (B,): separation and minority of the two colour clusters; highpass: median
    |image - blur| (patterns are sharp, shading is smooth); coherence: how much the gradients of
    the two-colour field share one orientation (stripes ~1, checks/dots/noise low); cross: the
    gradient energy across the dominant direction (within 22.5 degrees of its perpendicular) over
    that along it (stripes ~0, even when bent; checks ~0.5-1: their edges run both ways, which a
    large check's locally coherent edges hide from `coherence`); axes: the share of that energy
    along either of the two directions (edges in any direction alike, as blotches: 0.5; squares:
    0.7-0.9); orientation:
    the dominant gradient direction in degrees [0, 180); periodicity: share of the windowed
    spectrum's power (without DC) in its strongest frequency pair; islands: connected minority
    regions of at least ISLAND_MIN_AREA pixels; inner_islands: those of them that do not touch the
    crop's border; island_area: their mean area in pixels; sea: the
    share of the majority colour in its largest connected region (dots on a ground: ~1; stripes
    and checks cut the majority into pieces); centres: the two colours (B, 2, 3) as `TwoColours`;
    fraction: the crop's side over the image's."""

    separation: torch.Tensor
    minority: torch.Tensor
    highpass: torch.Tensor
    coherence: torch.Tensor
    cross: torch.Tensor
    axes: torch.Tensor
    orientation: torch.Tensor
    periodicity: torch.Tensor
    islands: torch.Tensor
    inner_islands: torch.Tensor
    island_area: torch.Tensor
    sea: torch.Tensor
    centres: torch.Tensor
    fraction: torch.Tensor


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of (B, C, H, W), reflect-padded."""
    radius = math.ceil(3 * sigma)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _regions(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Areas (k,) of the 4-connected True regions of a 2-D mask (scipy.ndimage.label) and whether
    each touches the mask's border (k,) bool."""
    labels, count = ndimage.label(mask)
    border = np.zeros(count + 1, dtype=bool)
    border[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = True
    return np.bincount(labels.ravel(), minlength=count + 1)[1:], border[1:]


def _edge_directions(gx: torch.Tensor, gy: torch.Tensor, bins: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """From the gradients gx, gy (B, h, w) of the two-colour field, per image (B,): cross, the
    energy within 22.5 degrees of the perpendicular of the strongest direction over the energy
    within 22.5 degrees of that direction; axes, the energy within 22.5 degrees of either over
    all of it (any direction alike: 0.5)."""
    energy = (gx * gx + gy * gy).flatten(1)
    angle = torch.atan2(gy, gx).flatten(1) % math.pi
    index = (angle / math.pi * bins).long().clamp(max=bins - 1)
    hist = torch.zeros(energy.shape[0], bins, dtype=energy.dtype).scatter_add_(1, index, energy)
    around = lambda k: torch.stack([hist.gather(1, ((k + d) % bins)[:, None])[:, 0] for d in (-1, 0, 1)]).sum(0)
    peak = hist.argmax(1)
    along, across = around(peak), around(peak + bins // 2)
    return across / along.clamp(min=1e-12), (along + across) / hist.sum(1).clamp(min=1e-12)


def _crop_features(crop: torch.Tensor) -> dict[str, torch.Tensor]:
    """The PatternFeatures fields (but fraction) of (B, h, w, 3) crops, as a dict."""
    split = two_colours(crop)
    axis = split.centres[:, 1] - split.centres[:, 0]
    field = ((crop - split.centres[:, 0, None, None]) * axis[:, None, None]).sum(-1) / (axis * axis).sum(-1).clamp(min=1e-6)[:, None, None]
    chw = crop.permute(0, 3, 1, 2)
    highpass = (chw - _blur(chw, 3.0)).abs().mean(1).flatten(1).median(1).values

    f = field[:, None]
    gx = F.conv2d(F.pad(f, (1, 1, 0, 0), mode="replicate"), torch.tensor([[[[-0.5, 0.0, 0.5]]]], dtype=f.dtype))[:, 0]
    gy = F.conv2d(F.pad(f, (0, 0, 1, 1), mode="replicate"), torch.tensor([[[[-0.5], [0.0], [0.5]]]], dtype=f.dtype))[:, 0]
    # structure tensor, smoothed over about a stripe width: stripes bent by a curved surface
    # stay locally coherent; checks and dots are not (their edges cross within the window)
    jxx, jyy, jxy = (_blur(t[:, None], 3.0)[:, 0] for t in (gx * gx, gy * gy, gx * gy))
    energy = jxx + jyy
    local = ((jxx - jyy) ** 2 + 4 * jxy**2).sqrt() / energy.clamp(min=1e-12)
    coherence = (local * energy).sum((1, 2)) / energy.sum((1, 2)).clamp(min=1e-12)
    jxx, jyy, jxy = jxx.sum((1, 2)), jyy.sum((1, 2)), jxy.sum((1, 2))
    orientation = (0.5 * torch.atan2(2 * jxy, jxx - jyy)).rad2deg() % 180.0

    h, w = field.shape[1:]
    window = torch.outer(torch.hann_window(h, periodic=False, dtype=f.dtype), torch.hann_window(w, periodic=False, dtype=f.dtype))
    centred = field - field.mean((1, 2), keepdim=True)
    power = torch.fft.fft2(centred * window).abs() ** 2
    power[:, 0, 0] = 0.0
    periodicity = 2 * power.flatten(1).max(1).values / power.flatten(1).sum(1).clamp(min=1e-12)
    cross, axes = _edge_directions(gx, gy)

    islands, inner_islands, island_area, sea = [], [], [], []
    for labels in split.labels.numpy():
        areas, border = _regions(labels)
        big = areas >= ISLAND_MIN_AREA
        ground, _ = _regions(~labels)
        islands.append(int(big.sum()))
        inner_islands.append(int((big & ~border).sum()))
        island_area.append(float(areas[big].mean()) if big.any() else 0.0)
        sea.append(float(ground.max() / ground.sum()) if len(ground) else 0.0)
    as_tensor = lambda values: torch.tensor(values, dtype=torch.float64)
    return dict(separation=split.separation, minority=split.minority, highpass=highpass, coherence=coherence,
                cross=cross, axes=axes, orientation=orientation, periodicity=periodicity.clamp(max=1.0),
                islands=as_tensor(islands), inner_islands=as_tensor(inner_islands), island_area=as_tensor(island_area),
                sea=as_tensor(sea), centres=split.centres)


def pattern_features(images, fraction: float | None = None) -> PatternFeatures:
    """Measure a centred crop of each image (see PatternFeatures): of side `fraction` of the
    image's, or, with None, the largest that lies on the object (`object_crop_fractions`)."""
    x = _as_batch(images)
    fractions = [fraction] * len(x) if fraction is not None else object_crop_fractions(x)
    fields: dict[str, torch.Tensor] = {}
    for value in sorted(set(fractions)):  # one batch per crop size
        index = torch.tensor([i for i, f in enumerate(fractions) if f == value])
        for name, t in _crop_features(central_crop(x[index], value)).items():
            fields.setdefault(name, torch.zeros((len(x),) + t.shape[1:], dtype=t.dtype))[index] = t
    return PatternFeatures(**fields, fraction=torch.tensor(fractions, dtype=torch.float64))


def classify_patterns(images, fraction: float | None = None) -> list[str]:
    """One of PATTERN_CLASSES per image, by thresholds on `pattern_features` (crop as there):
    plain: one colour (clusters close, or no sharp detail); dots: two or more islands of the
    minority colour, under 40% of the crop, in one connected ground of the other, one of them
    wholly inside the crop unless the gradients are incoherent (two stripes at the crop's edges
    are islands too); stripes: coherent gradient orientation with little energy across it (or
    very coherent); checkerboard: minority near half, edges along two perpendicular directions
    (`axes`); other: anything else (marble, wood, noise, blotches). The thresholds were set on the
    training renders of tools/train_pattern_prior.py (`pattern_prior_eval.py --confusion` prints
    how often each true pattern gets each class)."""
    feats = pattern_features(images, fraction)
    out = []
    for i in range(len(feats.separation)):
        sep, minority, hp, coh, cross, axes = (float(t[i]) for t in (feats.separation, feats.minority, feats.highpass,
                                                                      feats.coherence, feats.cross, feats.axes))
        islands, inner, sea = int(feats.islands[i]), int(feats.inner_islands[i]), float(feats.sea[i])
        if sep < PLAIN_SEPARATION or hp < PLAIN_HIGHPASS or minority < 0.03:
            out.append("plain")
        elif minority < 0.4 and islands >= 2 and sea >= DOTS_GROUND and (inner >= 1 or coh < STRIPES_COHERENCE):
            out.append("dots")
        elif coh >= STRIPES_COHERENCE and (cross < STRIPES_CROSS or coh >= STRIPES_SURE_COHERENCE):
            out.append("stripes")
        elif minority >= 0.3 and axes >= CHECKS_AXES:
            out.append("checkerboard")
        else:
            out.append("other")
    return out


PLAIN_SEPARATION = 0.2
PLAIN_HIGHPASS = 0.01
STRIPES_COHERENCE = 0.6
STRIPES_CROSS = 0.3  # cross energy above which coherent edges are checks' (stripes: median 0.03, checks 0.6-0.8)
CHECKS_AXES = 0.6  # edge energy along two perpendicular directions: squares (median 0.72-0.84), not blotches (0.5)
STRIPES_SURE_COHERENCE = 0.75  # stripes even with cross energy (a crop that holds a silhouette or a cube's edge)
DOTS_GROUND = 0.97
ISLAND_MIN_AREA = 3  # pixels; smaller regions are noise or anti-aliasing


def highlight_peak(images, fraction: float = 0.6) -> torch.Tensor:
    """(B,) how far the brightest pixels stand out: the 99.5th minus the 70th percentile of
    luminance in the central crop. A glossy or metal surface has a small bright highlight (high),
    a matte one a broad, soft one (low)."""
    crop = central_crop(images, fraction)
    lum = crop.mean(-1).flatten(1)
    return torch.quantile(lum, 0.995, dim=1) - torch.quantile(lum, 0.7, dim=1)
