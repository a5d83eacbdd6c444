"""Drawing primitives for sprites: a supersampled canvas, surface patterns, decal glyphs, shading."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from prpg.toybox.objects import RGB, Decal, Pattern


class Canvas:
    """A supersampled RGB + boolean alpha canvas addressed in normalised [0, 1] coordinates."""

    def __init__(self, side: int):
        self.n = side
        self.rgb = np.zeros((side, side, 3), np.float32)
        self.alpha = np.zeros((side, side), bool)
        grid = (np.arange(side, dtype=np.float32) + 0.5) / side
        self.x, self.y = np.meshgrid(grid, grid)

    def mask(self, draw: Callable[[ImageDraw.ImageDraw, int], None]) -> np.ndarray:
        im = Image.new("L", (self.n, self.n), 0)
        draw(ImageDraw.Draw(im), self.n)
        return np.asarray(im) > 0

    def poly(self, pts) -> np.ndarray:
        return self.mask(lambda d, n: d.polygon([(x * n, y * n) for x, y in pts], fill=255))

    def ellipse(self, cx, cy, rx, ry) -> np.ndarray:
        return self.mask(
            lambda d, n: d.ellipse([(cx - rx) * n, (cy - ry) * n, (cx + rx) * n, (cy + ry) * n], fill=255)
        )

    def rrect(self, x0, y0, x1, y1, r) -> np.ndarray:
        return self.mask(
            lambda d, n: d.rounded_rectangle([x0 * n, y0 * n, x1 * n, y1 * n], radius=r * n, fill=255)
        )

    def arc(self, x0, y0, x1, y1, start, end, width) -> np.ndarray:
        return self.mask(
            lambda d, n: d.arc(
                [x0 * n, y0 * n, x1 * n, y1 * n], start, end, fill=255, width=max(1, round(width * n))
            )
        )

    def lines(self, pts, width) -> np.ndarray:
        return self.mask(
            lambda d, n: d.line([(x * n, y * n) for x, y in pts], fill=255, width=max(1, round(width * n)))
        )

    def paint(self, m: np.ndarray, color) -> None:
        self.rgb[m] = np.asarray(color, np.float32) if np.ndim(color) == 1 else color[m]
        self.alpha |= m

    def region_box(self, m: np.ndarray) -> tuple[float, float, float, float]:
        ys, xs = np.nonzero(m)
        return xs.min() / self.n, ys.min() / self.n, (xs.max() + 1) / self.n, (ys.max() + 1) / self.n


def arc_points(cx, cy, r, a0, a1, k=8):
    return [
        (cx + r * math.cos(math.radians(a)), cy + r * math.sin(math.radians(a)))
        for a in np.linspace(a0, a1, k)
    ]


def scaled(rgb: RGB, f: float) -> RGB:
    return tuple(int(min(255, c * f)) for c in rgb)  # type: ignore


def pattern_layer(cv: Canvas, base: RGB, p: Pattern, box, long_axis: str = "y") -> np.ndarray:
    """The full canvas painted with `base` and pattern `p`; bands/two_tone are relative to `box`."""
    x, y, per = cv.x, cv.y, p.period
    if p.kind == "solid":
        on = np.zeros_like(x, bool)
    elif p.kind == "hstripes":
        on = ((y / per + p.phase) % 1) < p.duty
    elif p.kind == "vstripes":
        on = ((x / per + p.phase) % 1) < p.duty
    elif p.kind == "diagonal":
        on = (((x + y) / (per * 1.4) + p.phase) % 1) < p.duty
    elif p.kind == "dots":
        row = np.floor(y / per)
        fx = (x / per + p.phase + 0.5 * (row % 2)) % 1 - 0.5
        fy = (y / per) % 1 - 0.5
        on = fx**2 + fy**2 < (0.25 + 0.35 * p.duty) ** 2
    elif p.kind == "checker":
        on = (np.floor(x / per + p.phase) + np.floor(y / per)) % 2 == 0
    else:  # bands / two_tone: along the object's long axis, relative to its region
        x0, y0, x1, y1 = box
        t = (y - y0) / max(y1 - y0, 1e-6) if long_axis == "y" else (x - x0) / max(x1 - x0, 1e-6)
        if p.kind == "bands":
            a, w = 0.12 + 0.2 * p.phase, 0.07 + 0.12 * p.duty
            on = ((t > a) & (t < a + w)) | ((t > 1 - a - w) & (t < 1 - a))
        else:
            on = t > 0.35 + 0.3 * p.phase
    layer = np.empty(x.shape + (3,), np.float32)
    layer[:] = base
    layer[on] = p.color
    return layer


def shade(cv: Canvas, m: np.ndarray, axis: int = 1, strength: float = 0.32, shine: float = 0.3) -> None:
    """Cylinder shading: darker toward the local silhouette edges of `m`, a highlight near one side.

    axis=1 shades across each row (upright objects), axis=0 across each column (lying objects).
    """
    mm = m if axis == 1 else m.T
    width = mm.shape[1]
    has = mm.any(1)
    lo = np.where(has, mm.argmax(1), 0)
    hi = np.where(has, width - 1 - mm[:, ::-1].argmax(1), 1)
    t = np.clip((np.arange(width)[None, :] - lo[:, None]) / np.maximum(hi - lo, 1)[:, None], 0, 1)
    f = 1 - strength + strength * np.sin(np.pi * t) ** 0.5
    h = shine * np.exp(-(((t - 0.28) / 0.08) ** 2))
    if axis == 0:
        f, h = f.T, h.T
    lit = cv.rgb * f[..., None]
    lit = lit + (255 - lit) * h[..., None]
    cv.rgb[m] = lit[m]


def gradient(cv: Canvas, m: np.ndarray, top: float = 1.06, bottom: float = 0.84) -> None:
    """Soft light from above for flat-ish objects (shoe, tote)."""
    box = cv.region_box(m)
    t = np.clip((cv.y - box[1]) / max(box[3] - box[1], 1e-6), 0, 1)
    f = top + (bottom - top) * t
    cv.rgb[m] = np.clip(cv.rgb * f[..., None], 0, 255)[m]


@functools.lru_cache(maxsize=16)
def _font(px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=px)


def _rot(pts, cx, cy, r, angle):
    a = math.radians(angle)
    c, s = math.cos(a), math.sin(a)
    return [(cx + r * (px * c - py * s), cy + r * (px * s + py * c)) for px, py in pts]


def _glyph_mask(cv: Canvas, d: Decal, cx: float, cy: float, r: float) -> np.ndarray:
    g = d.glyph
    if g == "circle":
        return cv.ellipse(cx, cy, r, r)
    if g == "ring":
        return cv.ellipse(cx, cy, r, r) & ~cv.ellipse(cx, cy, 0.55 * r, 0.55 * r)
    if g == "crescent":
        off = 0.45 * r
        return cv.ellipse(cx, cy, r, r) & ~cv.ellipse(
            cx + off * math.cos(math.radians(d.angle)),
            cy + off * math.sin(math.radians(d.angle)),
            0.85 * r,
            0.85 * r,
        )
    if g == "letter":
        px = max(6, round(2.2 * r * cv.n))
        return cv.mask(
            lambda dr, n: dr.text((cx * n, cy * n), d.letter, fill=255, font=_font(px), anchor="mm")
        )
    if g == "star":
        unit = [
            (
                math.cos(math.radians(-90 + 36 * i)) * (1 if i % 2 == 0 else 0.45),
                math.sin(math.radians(-90 + 36 * i)) * (1 if i % 2 == 0 else 0.45),
            )
            for i in range(10)
        ]
    elif g == "heart":
        ts = np.linspace(0, 2 * math.pi, 28, endpoint=False)
        unit = [
            (
                16 * math.sin(t) ** 3 / 17,
                -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)) / 17,
            )
            for t in ts
        ]
    elif g == "triangle":
        unit = [(0, -1), (0.9, 0.7), (-0.9, 0.7)]
    elif g == "diamond":
        unit = [(0, -1), (0.65, 0), (0, 1), (-0.65, 0)]
    elif g == "square":
        unit = [(-0.75, -0.75), (0.75, -0.75), (0.75, 0.75), (-0.75, 0.75)]
    elif g == "cross":
        w = 0.32
        unit = [
            (-w, -1),
            (w, -1),
            (w, -w),
            (1, -w),
            (1, w),
            (w, w),
            (w, 1),
            (-w, 1),
            (-w, w),
            (-1, w),
            (-1, -w),
            (-w, -w),
        ]
    elif g == "bolt":
        unit = [(-0.15, -1), (0.55, -1), (0.12, -0.15), (0.6, -0.15), (-0.35, 1), (-0.05, 0.2), (-0.5, 0.2)]
    else:
        raise ValueError(f"unknown glyph {g!r}")
    return cv.poly(_rot(unit, cx, cy, r, d.angle))


def paint_decal(cv: Canvas, d: Decal, box, clip: np.ndarray) -> None:
    x0, y0, x1, y1 = box
    r = d.size * min(x1 - x0, y1 - y0) / 2
    cv.paint(_glyph_mask(cv, d, x0 + d.x * (x1 - x0), y0 + d.y * (y1 - y0), r) & clip, d.color)
