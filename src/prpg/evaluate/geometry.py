"""Geometry of the dense path (docs/protocol.md §2.3): the SAM-style canvas and the maps between original
pixels and the patch grid.

The image's long side is resized to S = grid x patch px (aspect kept, SAM's rounding), the image sits
in the top-left corner of an S x S canvas and the rest is padding. The reference resizes to 1024 and
then squashes the padded canvas to 896 for /14 models; resizing straight to S gives the same grid
without the second resampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

BoxGeometry = Literal["fixed", "reference"]
Box = tuple[int, int, int, int]  # (x0, y0, x1, y1) original px, x1/y1 exclusive (prpg.data.mask_to_box)
_EPS = 1e-6  # grid coordinates within this of an integer count as on the cell border


@dataclass(frozen=True)
class PadGeometry:
    """Where an (height x width) image lies in the padded S x S canvas of a grid x grid patch grid."""

    height: int
    width: int
    grid: int
    patch: int

    @property
    def side(self) -> int:
        return self.grid * self.patch

    @property
    def resized(self) -> tuple[int, int]:
        """(h, w) of the resized image inside the canvas (SAM's get_preprocess_shape rounding)."""
        scale = self.side / max(self.height, self.width)
        return max(1, int(self.height * scale + 0.5)), max(1, int(self.width * scale + 0.5))


def canvas_tensor(image: Image.Image, geom: PadGeometry, mean, std) -> torch.Tensor:
    """(3, S, S): bilinear resize, normalize with the backbone's mean/std, then zero-pad bottom/right
    (after normalizing, as SAM's processor: the padding is the mean colour)."""
    h, w = geom.resized
    a = np.asarray(image.convert("RGB").resize((w, h), Image.BILINEAR), dtype=np.float32) / 255.0
    x = torch.from_numpy(a).permute(2, 0, 1)
    x = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    return F.pad(x, (0, geom.side - w, 0, geom.side - h))


def canvas_mask(mask: np.ndarray, geom: PadGeometry) -> np.ndarray:
    """(S, S) float mask in [0, 1]: the original mask through the same resize and padding."""
    h, w = geom.resized
    m = Image.fromarray(np.asarray(mask, dtype=np.float32), mode="F").resize((w, h), Image.BILINEAR)
    out = np.zeros((geom.side, geom.side), np.float32)
    out[:h, :w] = np.clip(np.asarray(m), 0.0, 1.0)
    return out


def grid_to_image(sim: torch.Tensor, geom: PadGeometry) -> np.ndarray:
    """A (grid, grid) map back to the original (H, W): bilinear x4 (the reference's step), to the
    S x S canvas, drop the padding, resize to the original size (SAM post_process_masks)."""
    x = sim.float()[None, None]
    x = F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)
    x = F.interpolate(x, size=(geom.side, geom.side), mode="bilinear", align_corners=False)
    h, w = geom.resized
    x = F.interpolate(x[..., :h, :w], size=(geom.height, geom.width), mode="bilinear", align_corners=False)
    return x[0, 0].numpy()


def box_on_grid(box: Box, geom: PadGeometry, mode: BoxGeometry = "fixed") -> tuple[float, ...]:
    """The box in patch-grid units. "fixed": through the resize + pad of the features. "reference":
    stretched from the original resolution over the whole grid, padding ignored (docs/protocol.md §5.16),
    which is right only for square images."""
    x0, y0, x1, y1 = box
    if mode == "fixed":
        h, w = geom.resized
        sx, sy = w / geom.width / geom.patch, h / geom.height / geom.patch
    elif mode == "reference":
        sx, sy = geom.grid / geom.width, geom.grid / geom.height
    else:
        raise ValueError(f"box_geometry must be 'fixed' or 'reference', got {mode!r}")
    return x0 * sx, y0 * sy, x1 * sx, y1 * sy


def _span(a: float, b: float, n: int, full: bool) -> tuple[int, int]:
    """Cell index range [lo, hi) of the interval [a, b] in cell units: fully inside, or touched."""
    if full:
        return min(max(math.ceil(a - _EPS), 0), n), min(max(math.floor(b + _EPS), 0), n)
    lo = min(max(math.floor(a + _EPS), 0), n - 1)
    return lo, min(max(math.ceil(b - _EPS), lo + 1), n)  # a sliver still touches the cell it lies in


def _scale(geom: PadGeometry, mode: BoxGeometry) -> tuple[float, float]:
    """Grid cells per original pixel (x, y): box_on_grid's mapping."""
    x0, y0, x1, y1 = box_on_grid((0, 0, 1, 1), geom, mode)
    return x1, y1


def _sampled(lo: int, hi: int, n: int, size: int, scale: float, rule: str) -> np.ndarray:
    """(n,) bool along one axis: a box spanning pixels lo..hi-1 (of `size`) on a grid of n cells, seen
    by bilinear resampling (align_corners=False, no antialias) of its 0/1 pixel mask. Cell i samples
    at pixel-centre coordinate c = (i + 0.5) / scale - 0.5, clamped to [0, size - 1], between pixels
    floor(c) and floor(c) + 1: the value is 1 when both are in the box (or c is on a pixel), > 0 when
    either is."""
    raw = (np.arange(n) + 0.5) / scale - 0.5
    c = np.clip(raw, 0.0, size - 1)
    left = np.floor(c)
    right = np.minimum(left + 1, size - 1)
    on_pixel = c == left
    in_image = raw <= size - 0.5  # "fixed" geometry: cells over the padding see no box
    inside = lambda v: (v >= lo) & (v <= hi - 1)  # noqa: E731
    if rule == "centre":
        return in_image & inside(left) & (inside(right) | on_pixel)
    if rule == "touch":
        return in_image & (inside(left) | (inside(right) & ~on_pixel))
    raise ValueError(f"rule must be 'centre' or 'touch', got {rule!r}")


def box_cells_sampled(box: Box, geom: PadGeometry, mode: BoxGeometry = "fixed", rule: str = "centre") -> torch.Tensor:
    """(grid, grid) bool: the reference's cells of a box (EvalConfig.protocol "reference",
    docs/protocol.md §2.3). It draws the box as a 0/1 mask, resizes it bilinearly to the grid and keeps the
    cells == 1 for a predicted box ("centre": the cell's sampling point, its centre, lies in the box, up to
    half a pixel) and > 0 for a train GT box ("touch"). On a 1024 x 768 image a box from x = 7 to 200 has 11
    cells fully inside it (ours, box_cells) and 13 centres in it. mode "reference" also ignores the
    padding as the reference does (docs/protocol.md §5.16) and resizes the box mask literally, float32
    rounding included (a few cells whose centre is in the box come out 0.99999994); "fixed" samples through
    the canvas mapping analytically. An empty result (the reference's NaN score) falls back to the touched
    cells."""
    x0, y0, x1, y1 = box
    g = geom.grid
    if mode == "reference":  # exactly the reference's float32 resize: its == 1 has rounding misses
        m = torch.zeros(1, 1, geom.height, geom.width)
        m[..., y0:y1, x0:x1] = 1
        r = F.interpolate(m, size=(g, g), mode="bilinear", align_corners=False)[0, 0]
        cells = r == 1 if rule == "centre" else r > 0
        if rule not in ("centre", "touch"):
            raise ValueError(f"rule must be 'centre' or 'touch', got {rule!r}")
    else:  # through the canvas mapping: the same sampling, analytically (no rounding misses)
        sx, sy = _scale(geom, mode)
        cols = _sampled(x0, x1, g, geom.width, sx, rule)
        rows = _sampled(y0, y1, g, geom.height, sy, rule)
        cells = torch.from_numpy(rows[:, None] & cols[None, :])
    if not cells.any() and rule == "centre":
        return box_cells_sampled(box, geom, mode, "touch")
    if not cells.any():
        return box_cells(box, geom, mode)
    return cells


def box_cells(box: Box, geom: PadGeometry, mode: BoxGeometry = "fixed") -> torch.Tensor:
    """(grid, grid) bool: the cells fully inside the box; a box that covers no full cell uses the
    cells it touches, so the mean feature of a box is never empty (the reference's NaN,
    docs/protocol.md §5.16)."""
    gx0, gy0, gx1, gy1 = box_on_grid(box, geom, mode)
    g = geom.grid
    cells = torch.zeros(g, g, dtype=torch.bool)
    for full in (True, False):
        (c0, c1), (r0, r1) = _span(gx0, gx1, g, full), _span(gy0, gy1, g, full)
        if c1 > c0 and r1 > r0:
            cells[r0:r1, c0:c1] = True
            return cells
    raise ValueError(f"box {box} lies outside the {g}x{g} grid of a {geom.width}x{geom.height} image")
