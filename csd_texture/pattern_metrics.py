"""Simple measurable image classifiers for the pattern prior's tests and training checks:
which pattern an image shows (FFT periodicity and gradient orientation for stripes, blob
statistics for dots, colour clusters for plain), which named colours, and how sharp its
highlight is. Deliberately hand-written and small: each number can be read and thresholded.

Images are sRGB in [0, 1], (B, H, W, 3) or (H, W, 3); numpy arrays or tensors.
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
    the two-colour field share one orientation (stripes ~1, checks/dots/noise low); orientation:
    the dominant gradient direction in degrees [0, 180); periodicity: share of the windowed
    spectrum's power (without DC) in its strongest frequency pair; islands: connected minority
    regions of at least ISLAND_MIN_AREA pixels; inner_islands: those of them that do not touch the
    crop's border; island_area: their mean area in pixels; sea: the
    share of the majority colour in its largest connected region (dots on a ground: ~1; stripes
    and checks cut the majority into pieces)."""

    separation: torch.Tensor
    minority: torch.Tensor
    highpass: torch.Tensor
    coherence: torch.Tensor
    orientation: torch.Tensor
    periodicity: torch.Tensor
    islands: torch.Tensor
    inner_islands: torch.Tensor
    island_area: torch.Tensor
    sea: torch.Tensor
    split: TwoColours


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


def pattern_features(images, fraction: float = 0.44) -> PatternFeatures:
    """Measure the central crop of each image (see PatternFeatures)."""
    crop = central_crop(images, fraction)
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
    return PatternFeatures(split.separation, split.minority, highpass, coherence, orientation, periodicity.clamp(max=1.0),
                           as_tensor(islands), as_tensor(inner_islands), as_tensor(island_area), as_tensor(sea), split)


def classify_patterns(images, fraction: float = 0.44) -> list[str]:
    """One of PATTERN_CLASSES per image, by thresholds on `pattern_features`:
    plain: one colour (clusters close, or no sharp detail); dots: two or more islands of the
    minority colour, under 40% of the crop, in one connected ground of the other, one of them
    wholly inside the crop unless the gradients are incoherent (two stripes at the crop's edges
    are islands too); stripes: coherent gradient orientation; checkerboard: minority near half,
    incoherent; other: anything else (marble, wood, noise). The thresholds were set on the
    training renders of tools/train_pattern_prior.py (`pattern_prior_eval.py --confusion` prints
    how often each true pattern gets each class)."""
    feats = pattern_features(images, fraction)
    out = []
    for i in range(len(feats.separation)):
        sep, minority, hp, coh = (float(t[i]) for t in (feats.separation, feats.minority, feats.highpass, feats.coherence))
        islands, inner, sea = int(feats.islands[i]), int(feats.inner_islands[i]), float(feats.sea[i])
        if sep < PLAIN_SEPARATION or hp < PLAIN_HIGHPASS or minority < 0.03:
            out.append("plain")
        elif minority < 0.4 and islands >= 2 and sea >= DOTS_GROUND and (inner >= 1 or coh < STRIPES_COHERENCE):
            out.append("dots")
        elif coh >= STRIPES_COHERENCE:
            out.append("stripes")
        elif minority >= 0.3:
            out.append("checkerboard")
        else:
            out.append("other")
    return out


PLAIN_SEPARATION = 0.2
PLAIN_HIGHPASS = 0.01
STRIPES_COHERENCE = 0.6
DOTS_GROUND = 0.97
ISLAND_MIN_AREA = 3  # pixels; smaller regions are noise or anti-aliasing


def highlight_peak(images, fraction: float = 0.6) -> torch.Tensor:
    """(B,) how far the brightest pixels stand out: the 99.5th minus the 70th percentile of
    luminance in the central crop. A glossy or metal surface has a small bright highlight (high),
    a matte one a broad, soft one (low)."""
    crop = central_crop(images, fraction)
    lum = crop.mean(-1).flatten(1)
    return torch.quantile(lum, 0.995, dim=1) - torch.quantile(lum, 0.7, dim=1)
