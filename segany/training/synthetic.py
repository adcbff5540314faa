"""Procedurally generated scenes with instance masks, for training and evaluating the shipped model.

A scene is a background (flat, gradient, stripes, checker or smooth noise) with objects painted back to front:
ellipses, rotated rectangles, convex and concave (star) polygons, smooth blobs, thin strokes and arcs, rings and shapes
with holes; some objects are nested inside earlier ones, others touch or occlude them. Each object is filled with a
flat colour, a gradient or a texture, and the whole image then gets shading, blur, noise, colour jitter and JPEG
artefacts. An instance mask is what stays visible of an object after everything painted later.

Everything is drawn with OpenCV from one ``numpy.random.Generator`` seeded by ``(settings.seed_offset, seed, index)``,
so ``generate_scene(settings, seed, index)`` is deterministic. ``TRAIN_SETTINGS`` and ``EVAL_SETTINGS`` differ
(shape mix, sizes, object counts, degradations, aspect ratios) so evaluation is held out by more than the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

SHAPES = ("ellipse", "rect", "convex", "star", "blob", "stroke", "arc", "ring", "holed")


@dataclass(frozen=True)
class GeneratorSettings:
    """Knobs of the scene generator.

    Attributes:
        long_side: (min, max) of the image's longest side in pixels.
        aspect: (min, max) of short side / long side.
        n_objects: (min, max) number of objects painted per scene.
        size_frac: (min, max) of an object's size as a fraction of the long side (sampled log-uniformly).
        shape_weights: relative frequency of each entry of ``SHAPES``.
        p_nested: probability that an object is placed inside an earlier one.
        p_texture: probability that an object is filled with a texture instead of a flat colour or gradient.
        blur_sigma: (min, max) of the Gaussian blur sigma in pixels (0 = sometimes no blur).
        noise_std: (min, max) of additive Gaussian noise on the 0-255 scale.
        jpeg_quality: (min, max) JPEG quality; 0 as min disables JPEG.
        min_area_frac: instances smaller than this fraction of the image (or 48 px) are not returned.
        seed_offset: mixed into every seed so two settings never share a random stream.
    """

    long_side: tuple[int, int] = (512, 512)
    aspect: tuple[float, float] = (0.65, 1.0)
    n_objects: tuple[int, int] = (3, 10)
    size_frac: tuple[float, float] = (0.06, 0.6)
    shape_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.2, 0.6, 0.5, 0.7, 0.7)
    p_nested: float = 0.15
    p_texture: float = 0.35
    blur_sigma: tuple[float, float] = (0.0, 1.5)
    noise_std: tuple[float, float] = (0.0, 8.0)
    jpeg_quality: tuple[int, int] = (40, 95)
    min_area_frac: float = 0.0015
    seed_offset: int = 0


#: Training draws at 512 input while the model runs at 1024: objects are drawn relatively larger so that their size in
#: pixels is closer to what the encoder sees in use.
TRAIN_SETTINGS = GeneratorSettings(size_frac=(0.08, 0.8))
#: Held-out settings: other sizes and aspect ratios, more objects, another shape mix, stronger degradations.
EVAL_SETTINGS = GeneratorSettings(
    long_side=(480, 900),
    aspect=(0.55, 1.0),
    n_objects=(4, 12),
    size_frac=(0.07, 0.55),
    shape_weights=(0.8, 1.2, 1.0, 1.3, 1.0, 0.7, 0.6, 0.8, 0.8),
    p_nested=0.2,
    p_texture=0.45,
    blur_sigma=(0.3, 2.0),
    noise_std=(2.0, 10.0),
    jpeg_quality=(30, 90),
    min_area_frac=0.002,
    seed_offset=7919,
)


@dataclass
class Scene:
    """One generated scene.

    Attributes:
        image: uint8 (H, W, 3) RGB.
        masks: bool (N, H, W) visible instance masks, N >= 1, each non-empty, mutually disjoint.
    """

    image: np.ndarray
    masks: np.ndarray


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=3).astype(np.float32)


def _distinct_colour(rng: np.random.Generator, avoid: np.ndarray) -> np.ndarray:
    # Keep objects distinguishable from what lies under them most of the time; a real scene has low-contrast edges
    # too, so a few close colours are allowed through.
    best = _colour(rng)
    for _ in range(6):
        if np.abs(best - avoid).sum() > 90:
            break
        best = _colour(rng)
    return best


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth noise in [0, 1], (h, w) float32, with about ``cells`` blobs along the long side."""
    gh = max(2, int(round(cells * h / max(h, w))))
    gw = max(2, int(round(cells * w / max(h, w))))
    small = rng.random((gh, gw)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).clip(0.0, 1.0)


def _fill(rng: np.random.Generator, h: int, w: int, p_texture: float, base: np.ndarray) -> np.ndarray:
    """A (h, w, 3) float32 paint: flat colour, linear gradient, or a texture (stripes, checker, noise)."""
    c1 = base
    c2 = np.clip(c1 + rng.normal(0, 60, 3), 0, 255).astype(np.float32)
    r = rng.random()
    if r < p_texture:
        kind = rng.integers(0, 3)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        if kind == 0:  # stripes
            ang = rng.uniform(0, np.pi)
            period = rng.uniform(4, 24)
            t = (np.sin((xx * np.cos(ang) + yy * np.sin(ang)) * 2 * np.pi / period) > 0).astype(np.float32)
        elif kind == 1:  # checker
            period = rng.uniform(4, 20)
            t = (((xx // period) + (yy // period)) % 2).astype(np.float32)
        else:  # smooth noise
            t = _smooth_noise(rng, h, w, int(rng.integers(4, 40)))
        return c1[None, None] * (1 - t[..., None]) + c2[None, None] * t[..., None]
    if r < p_texture + (1 - p_texture) * 0.4:  # gradient
        ang = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = xx * np.cos(ang) + yy * np.sin(ang)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
        return c1[None, None] * (1 - t[..., None]) + c2[None, None] * t[..., None]
    return np.broadcast_to(c1[None, None], (h, w, 3)).astype(np.float32)


def _polygon(rng: np.random.Generator, cx: float, cy: float, r: float, n: int, jitter: float, star: bool) -> np.ndarray:
    angles = np.sort(rng.uniform(0, 2 * np.pi, n)) if not star else np.linspace(0, 2 * np.pi, n, endpoint=False)
    angles = angles + rng.uniform(0, 2 * np.pi)
    radii = r * (1 + rng.uniform(-jitter, jitter, n))
    if star:
        radii[1::2] *= rng.uniform(0.3, 0.65)
    pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
    return np.round(pts).astype(np.int32)


def _shape_mask(rng: np.random.Generator, shape: str, h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    """uint8 (h, w) mask (0/1) of one shape centred near (cx, cy) with radius about r pixels."""
    m = np.zeros((h, w), np.uint8)
    if shape == "ellipse":
        axes = (max(2, int(r)), max(2, int(r * rng.uniform(0.3, 1.0))))
        cv2.ellipse(m, (int(cx), int(cy)), axes, rng.uniform(0, 180), 0, 360, 1, -1)
    elif shape == "rect":
        box = ((cx, cy), (2 * r, 2 * r * rng.uniform(0.2, 1.0)), rng.uniform(0, 180))
        cv2.fillPoly(m, [np.round(cv2.boxPoints(box)).astype(np.int32)], 1)
    elif shape == "convex":
        pts = _polygon(rng, cx, cy, r, int(rng.integers(3, 9)), 0.3, star=False)
        cv2.fillPoly(m, [cv2.convexHull(pts)], 1)
    elif shape == "star":
        pts = _polygon(rng, cx, cy, r, 2 * int(rng.integers(3, 8)), 0.15, star=True)
        cv2.fillPoly(m, [pts], 1)
    elif shape == "blob":
        n = 64
        ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
        k = int(rng.integers(2, 6))
        rad = np.ones(n)
        for f in range(1, k + 1):
            rad += rng.uniform(0, 0.45 / f) * np.cos(f * ang + rng.uniform(0, 2 * np.pi))
        rad = r * rad / rad.max()
        pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1)
        cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1)
    elif shape == "stroke":
        n = int(rng.integers(2, 5))
        pts = [(cx, cy)]
        ang = rng.uniform(0, 2 * np.pi)
        for _ in range(n):
            ang += rng.uniform(-1.2, 1.2)
            step = r * rng.uniform(0.5, 1.2)
            pts.append((pts[-1][0] + step * np.cos(ang), pts[-1][1] + step * np.sin(ang)))
        thick = max(2, int(r * rng.uniform(0.06, 0.25)))
        cv2.polylines(m, [np.round(np.array(pts)).astype(np.int32)], False, 1, thick, cv2.LINE_8)
    elif shape == "arc":
        thick = max(3, int(r * rng.uniform(0.12, 0.4)))
        start = rng.uniform(0, 360)
        cv2.ellipse(m, (int(cx), int(cy)), (max(2, int(r)), max(2, int(r * rng.uniform(0.5, 1)))),
                    rng.uniform(0, 180), start, start + rng.uniform(120, 300), 1, thick)
    elif shape == "ring":
        axes = (max(3, int(r)), max(3, int(r * rng.uniform(0.5, 1.0))))
        ang = rng.uniform(0, 180)
        cv2.ellipse(m, (int(cx), int(cy)), axes, ang, 0, 360, 1, -1)
        inner = rng.uniform(0.35, 0.75)
        cv2.ellipse(m, (int(cx), int(cy)), (max(1, int(axes[0] * inner)), max(1, int(axes[1] * inner))), ang, 0,
                    360, 0, -1)
    else:  # "holed": a polygon or rectangle with one to three holes cut out
        if rng.random() < 0.5:
            box = ((cx, cy), (2 * r, 2 * r * rng.uniform(0.5, 1.0)), rng.uniform(0, 180))
            cv2.fillPoly(m, [np.round(cv2.boxPoints(box)).astype(np.int32)], 1)
        else:
            cv2.fillPoly(m, [cv2.convexHull(_polygon(rng, cx, cy, r, 7, 0.2, star=False))], 1)
        for _ in range(int(rng.integers(1, 4))):
            hr = r * rng.uniform(0.12, 0.3)
            hx = cx + rng.uniform(-0.45, 0.45) * r
            hy = cy + rng.uniform(-0.45, 0.45) * r
            cv2.circle(m, (int(hx), int(hy)), max(1, int(hr)), 0, -1)
    return m


def _degrade(rng: np.random.Generator, img: np.ndarray, s: GeneratorSettings) -> np.ndarray:
    """Shading, blur, colour jitter, noise and JPEG on a float32 (H, W, 3) image; returns uint8."""
    h, w = img.shape[:2]
    if rng.random() < 0.5:  # smooth illumination change
        shade = 0.75 + 0.5 * _smooth_noise(rng, h, w, int(rng.integers(2, 5)))
        img = img * shade[..., None]
    sigma = rng.uniform(*s.blur_sigma)
    if sigma > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    gain = rng.uniform(0.8, 1.2, 3).astype(np.float32)
    img = img * gain[None, None] * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20)
    std = rng.uniform(*s.noise_std)
    if std > 0:
        img = img + rng.normal(0, std, img.shape).astype(np.float32)
    out = np.clip(img, 0, 255).astype(np.uint8)
    if s.jpeg_quality[0] > 0 and rng.random() < 0.7:
        q = int(rng.integers(s.jpeg_quality[0], s.jpeg_quality[1] + 1))
        ok, buf = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])
        if ok:
            out = np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
    return out


def generate_scene(settings: GeneratorSettings, seed: int, index: int) -> Scene:
    """Draw scene number ``index`` of the stream ``seed`` under ``settings`` (deterministic).

    Returns a :class:`Scene` with an RGB uint8 image of long side in ``settings.long_side`` and its visible instance
    masks (at least one; if a draw leaves none large enough it is redrawn with the next sub-seed).
    """
    for attempt in range(100):
        rng = np.random.default_rng([settings.seed_offset, seed, index, attempt])
        scene = _draw(rng, settings)
        if scene is not None:
            return scene
    raise RuntimeError("scene generator produced no visible instance in 100 attempts")


def _draw(rng: np.random.Generator, s: GeneratorSettings) -> Scene | None:
    long_side = int(rng.integers(s.long_side[0], s.long_side[1] + 1))
    short = int(round(long_side * rng.uniform(*s.aspect)))
    h, w = (long_side, short) if rng.random() < 0.35 else (short, long_side)
    bg = _fill(rng, h, w, 0.5, _colour(rng))
    img = bg.copy()
    owner = np.full((h, w), -1, np.int32)  # index of the object visible at each pixel
    n_obj = int(rng.integers(s.n_objects[0], s.n_objects[1] + 1))
    weights = np.asarray(s.shape_weights, np.float64)
    weights = weights / weights.sum()
    placed: list[tuple[float, float, float]] = []
    painted = 0
    for _ in range(n_obj):
        shape = SHAPES[int(rng.choice(len(SHAPES), p=weights))]
        if placed and rng.random() < s.p_nested:
            px, py, pr = placed[int(rng.integers(len(placed)))]
            r = pr * rng.uniform(0.2, 0.5)
            cx, cy = px + rng.uniform(-0.3, 0.3) * pr, py + rng.uniform(-0.3, 0.3) * pr
        else:
            lo, hi = np.log(s.size_frac[0]), np.log(s.size_frac[1])
            r = 0.5 * long_side * float(np.exp(rng.uniform(lo, hi)))
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        m = _shape_mask(rng, shape, h, w, cx, cy, r).astype(bool)
        if m.sum() < 16:
            continue
        under = img[int(np.clip(cy, 0, h - 1)), int(np.clip(cx, 0, w - 1))]
        ys, xs = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
        y0, y1, x0, x1 = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1  # paint only the object's bounding box
        bh, bw = int(y1 - y0), int(x1 - x0)
        paint = _fill(rng, bh, bw, s.p_texture, _distinct_colour(rng, under))
        if rng.random() < 0.3:  # shading inside the object, so it is not one flat tone
            paint = paint * (0.7 + 0.6 * _smooth_noise(rng, bh, bw, int(rng.integers(2, 6))))[..., None]
        mb = m[y0:y1, x0:x1]
        img[y0:y1, x0:x1][mb] = paint[mb]
        owner[m] = painted
        placed.append((cx, cy, r))
        painted += 1
    min_area = max(48, int(s.min_area_frac * h * w))
    masks = [owner == k for k in range(painted)]
    masks = [m for m in masks if m.sum() >= min_area]
    if not masks:
        return None
    return Scene(image=_degrade(rng, img, s), masks=np.stack(masks))
