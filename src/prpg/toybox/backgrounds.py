"""Backgrounds: procedural surfaces and photos that ship inside scikit-image (nothing is downloaded).

Each background has a short name (scene facts) and a caption phrase ("on a wooden table").
`canonical` backgrounds are plain table-tops: train images and the in-distribution test split use
them; the other test splits draw from every background, photos included.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

Render = Callable[[np.random.Generator, int], np.ndarray]  # (rng, side) -> float32 (side, side, 3) in 0..255


@dataclass(frozen=True)
class Background:
    name: str  # short name, recorded in the scene facts
    phrase: str  # caption fragment
    canonical: bool
    render: Render


def _noise(rng: np.random.Generator, side: int, cells: int, cells_x: int | None = None) -> np.ndarray:
    """Smooth value noise in [0, 1]: a coarse random grid upsampled bicubically."""
    coarse = rng.random((cells, cells_x or cells), dtype=np.float32)
    return np.asarray(Image.fromarray(coarse, "F").resize((side, side), Image.Resampling.BICUBIC))


@functools.cache
def _grid(side: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float32) / side
    xs.flags.writeable = ys.flags.writeable = False  # shared by every call
    return xs, ys


def _color(rng: np.random.Generator, choices, jitter: float = 12) -> np.ndarray:
    base = np.asarray(choices[int(rng.integers(len(choices)))], np.float32)
    return np.clip(base + rng.uniform(-jitter, jitter, 3), 0, 255).astype(np.float32)


def _wood(rng, n):
    base = _color(rng, [(196, 150, 100), (150, 98, 58), (214, 180, 130), (120, 70, 45), (170, 120, 80)])
    _, y = _grid(n)
    grain = np.sin(
        2 * np.pi * (y * rng.uniform(10, 22) + 1.5 * _noise(rng, n, 3) + 0.15 * _noise(rng, n, 24, 4))
    )
    streaks = _noise(rng, n, 48, 3)
    plank = 1 / rng.uniform(2.5, 4.5)
    offset = rng.uniform(0, plank)
    plank_id = np.floor((y + offset) / plank)
    shade = 0.9 + 0.2 * ((plank_id * 0.618 + rng.uniform()) % 1)
    img = base * (shade * (0.82 + 0.1 * grain + 0.12 * streaks))[..., None]
    seam = ((y + offset) % plank) < 1.5 / n
    img[seam] *= 0.55
    return img.transpose(1, 0, 2) if rng.random() < 0.5 else img


def _desk(rng, n):
    base = _color(
        rng, [(236, 234, 228), (210, 212, 214), (228, 218, 196), (206, 222, 232), (214, 230, 214)], 8
    )
    x, y = _grid(n)
    a = rng.uniform(0, 2 * np.pi)
    light = 1.02 - 0.14 * (np.cos(a) * x + np.sin(a) * y)
    grain = 0.97 + 0.05 * rng.random((n, n), dtype=np.float32)
    return base * (light * grain)[..., None]


def _tablecloth(rng, n):
    color = _color(rng, [(200, 40, 40), (40, 80, 170), (40, 130, 70), (230, 170, 40), (200, 110, 160)])
    white = np.array([240, 238, 232], np.float32)
    period = rng.uniform(0.09, 0.2)
    x, y = _grid(n)
    h = ((y / period) % 1) < 0.5
    v = ((x / period) % 1) < 0.5
    k = (h.astype(np.float32) + v) / 2  # both stripes: full colour, one: half, none: white
    img = white + (color - white) * k[..., None]
    weave = 0.94 + 0.06 * (((np.arange(n)[:, None] + np.arange(n)[None, :]) % 2).astype(np.float32))
    return img * weave[..., None]


def _tiles(rng, n):
    colors = [
        (236, 236, 232),
        (196, 110, 70),
        (70, 110, 170),
        (150, 150, 150),
        (110, 160, 130),
        (225, 215, 190),
    ]
    a, b = _color(rng, colors), _color(rng, colors)
    tile = 1 / rng.uniform(3, 7)
    x, y = _grid(n)
    ix, iy = np.floor(x / tile), np.floor(y / tile)
    checker = ((ix + iy) % 2 == 0) | (rng.random() < 0.5)
    img = np.where(checker[..., None], a, b)
    img = img * (0.92 + 0.16 * ((ix * 0.37 + iy * 0.61) % 1))[..., None]
    grout = (((x / tile) % 1) < 1.5 / (tile * n)) | (((y / tile) % 1) < 1.5 / (tile * n))
    img[grout] = _color(rng, [(90, 90, 90), (200, 200, 196), (60, 50, 45)], 6)
    return img


def _marble(rng, n):
    base = _color(rng, [(238, 236, 232), (205, 205, 208), (232, 222, 205), (60, 64, 66), (40, 80, 70)], 6)
    x, y = _grid(n)
    turbulence = sum(_noise(rng, n, c) / k for c, k in ((3, 1), (7, 2), (17, 4), (41, 8)))
    v = np.abs(np.sin((x * rng.uniform(1, 3) + y * rng.uniform(1, 3)) * np.pi + 4 * turbulence))
    vein = np.exp(-v / 0.08)
    light = base.mean() > 128
    tone = (1 - 0.35 * vein) if light else (1 + 1.2 * vein)
    return base * (tone * (0.95 + 0.06 * _noise(rng, n, 12)))[..., None]


def _fabric(rng, n):
    palette = [
        (200, 40, 40),
        (40, 80, 170),
        (40, 130, 70),
        (230, 170, 40),
        (240, 238, 232),
        (30, 30, 40),
        (120, 60, 160),
        (236, 130, 170),
    ]
    colors = np.stack([_color(rng, palette) for _ in range(int(rng.integers(2, 5)))])
    x, y = _grid(n)
    along = x + y * rng.choice([0.0, 0.6, -0.6])
    stripe = np.floor(along / rng.uniform(0.05, 0.14)).astype(int) % len(colors)
    weave = 0.9 + 0.1 * ((np.arange(n)[:, None] % 2) ^ (np.arange(n)[None, :] % 2)).astype(np.float32)
    return colors[stripe] * weave[..., None]


def _carpet(rng, n):
    palette = [(150, 40, 40), (60, 60, 120), (120, 110, 90), (70, 100, 70), (90, 90, 95), (170, 140, 100)]
    a, b = _color(rng, palette), _color(rng, palette)
    k = 0.6 * _noise(rng, n, 6) + 0.4 * rng.random((n, n), dtype=np.float32)
    return a + (b - a) * k[..., None]


def _studio(rng, n):
    palette = [
        (240, 240, 240),
        (200, 210, 225),
        (60, 62, 70),
        (230, 215, 190),
        (180, 200, 180),
        (210, 190, 210),
    ]
    top, bottom = _color(rng, palette), _color(rng, palette)
    x, y = _grid(n)
    img = top + (bottom - top) * y[..., None]
    vignette = 1 - 0.25 * ((x - 0.5) ** 2 + (y - 0.5) ** 2)
    return img * vignette[..., None]


def _load_photo(name: str) -> np.ndarray:
    import skimage.data  # imported lazily: only workers that draw a photo pay for it

    img = skimage.data.stereo_motorcycle()[0] if name == "motorcycle_left" else getattr(skimage.data, name)()
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return img[..., :3].astype(np.uint8)


@functools.cache
def _photo(name: str, side: int) -> Image.Image:
    """The photo shrunk once so its short side is 2 x `side`: crops then resample few pixels."""
    img = Image.fromarray(_load_photo(name))
    k = min(1.0, 2 * side / min(img.size))
    return (
        img.resize((round(img.width * k), round(img.height * k)), Image.Resampling.LANCZOS) if k < 1 else img
    )


def _photo_render(
    name: str, tint: tuple[float, float, float] | None = None, min_crop: float = 0.45
) -> Render:
    """A random square crop of a packaged photo, optionally tinted (the grey textures get colour)."""

    def render(rng: np.random.Generator, n: int) -> np.ndarray:
        photo = _photo(name, n)
        w, h = photo.size
        side = rng.uniform(min_crop, 1.0) * min(w, h)
        x0, y0 = rng.uniform(0, w - side), rng.uniform(0, h - side)
        crop = photo.resize((n, n), Image.Resampling.BILINEAR, box=(x0, y0, x0 + side, y0 + side))
        img = np.asarray(crop, np.float32)
        if tint is not None:
            img = img * np.asarray(tint, np.float32) * rng.uniform(0.9, 1.1)
        return img[:, ::-1] if rng.random() < 0.5 else img

    return render


BACKGROUNDS: dict[str, Background] = {
    b.name: b
    for b in [
        Background("wooden table", "on a wooden table", True, _wood),
        Background("desk", "on a plain desk", True, _desk),
        Background("tablecloth", "on a checkered tablecloth", True, _tablecloth),
        Background("tiled floor", "on a tiled floor", True, _tiles),
        Background("marble counter", "on a marble counter", True, _marble),
        Background("striped fabric", "on striped fabric", False, _fabric),
        Background("carpet", "on a carpet", False, _carpet),
        Background("studio", "in a photo studio", False, _studio),
        Background(
            "brick wall", "in front of a brick wall", False, _photo_render("brick", (1.15, 0.62, 0.48))
        ),
        Background("grass", "on the grass", False, _photo_render("grass", (0.55, 0.95, 0.4))),
        Background("gravel", "on gravel", False, _photo_render("gravel", (1.0, 0.95, 0.85))),
        Background("rock", "on grey rock", False, _photo_render("moon", (1.0, 0.97, 0.92))),
        Background("cat", "next to a cat", False, _photo_render("chelsea", min_crop=0.7)),
        Background(
            "astronaut photo",
            "in front of an astronaut photo",
            False,
            _photo_render("astronaut", min_crop=0.6),
        ),
        Background("rocket", "near a rocket", False, _photo_render("rocket", min_crop=0.7)),
        Background("starry sky", "in front of a starry sky", False, _photo_render("hubble_deep_field")),
        Background("garage", "in a garage", False, _photo_render("motorcycle_left", min_crop=0.6)),
    ]
}
CANONICAL = tuple(name for name, b in BACKGROUNDS.items() if b.canonical)
ALL = tuple(BACKGROUNDS)


def render_background(name: str, rng: np.random.Generator, side: int) -> np.ndarray:
    """float32 (side, side, 3) RGB in 0..255."""
    return np.clip(BACKGROUNDS[name].render(rng, side), 0, 255).astype(np.float32)
