"""Image and mask io: every reader in the repo goes through these so that EXIF rotation, odd modes
(16-bit, palette, alpha) and mask conventions are handled once, the same way everywhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})

# Transparent pixels become white: PODS-style cut-outs are product shots, and white is the background
# such photos are taken on (black would draw a dark halo around every object).
ALPHA_BACKGROUND = (255, 255, 255)


def is_image_file(path: Path) -> bool:
    """True for a visible file with one of IMAGE_EXTENSIONS (case-insensitive). macOS `._x.jpg`
    resource forks and other hidden files are not images."""
    path = Path(path)
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()


def _high_depth_to_uint8(img: Image.Image) -> np.ndarray:
    """Scale a single-channel 16/32-bit integer or float image to 8 bits (Pillow's convert('L') clips
    instead, turning any 16-bit photo into a white sheet)."""
    a = np.asarray(img)
    if img.mode.startswith("I;16"):  # known depth: 65535 -> 255, exactly v / 257
        return np.rint(a.astype(np.float64) / 257.0).astype(np.uint8)
    a = a.astype(np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if img.mode == "I" and lo >= 0 and hi <= 65535:  # 'I' is how Pillow hands out 16-bit PNG/PGM data
        return np.rint(a / 257.0).astype(np.uint8)
    if img.mode == "F" and lo >= 0 and hi <= 1.0:  # float images in [0, 1]
        return np.rint(a * 255.0).astype(np.uint8)
    # No known white point (negative ints, >16-bit, floats beyond [0, 1]): stretch min..max to 0..255.
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.rint((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB. Alpha is composited onto ALPHA_BACKGROUND (white)."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return Image.fromarray(_high_depth_to_uint8(img)).convert("RGB")
    # Palettes and PNG tRNS chunks carry transparency in img.info; going through RGBA composites it
    # instead of silently dropping it.
    if img.mode in ("P", "PA", "LA", "La", "RGBa") or "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGBA", img.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, img).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Read an image as 8-bit RGB, upright (EXIF orientation applied), file closed on return."""
    with Image.open(path) as img:
        img.load()
        upright = ImageOps.exif_transpose(img)
    return to_rgb(upright)


def load_mask(path: str | Path) -> np.ndarray:
    """Read a mask as a bool array (H, W): foreground is channel 0 > 0.

    Raw values, no rescaling, so a 16-bit mask holding 1s is foreground (1 / 257 would round to 0).
    Palette masks use the palette index (0 = background), which is what a palette mask means.
    EXIF orientation is applied, as in `load_image`, so a mask stays aligned with its photo.
    """
    with Image.open(path) as img:
        img.load()
        upright = ImageOps.exif_transpose(img)
    if upright.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        upright = upright.convert("RGB")
    a = np.asarray(upright)
    if a.ndim == 3:
        a = a[..., 0]
    return a > 0


def mask_to_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight box (x0, y0, x1, y1) of the True pixels, x1/y1 exclusive; None for an empty mask."""
    mask = np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
