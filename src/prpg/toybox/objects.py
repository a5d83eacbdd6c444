"""Object instances: one silhouette family per category, fine detail per instance.

Like real personal objects, the category is carried by the silhouette (every mug has a body, a rim
and a handle) while an instance is told apart only by details: palette, surface pattern, a small
decal and proportions. Body colours come from a short category palette, so several instances of a
category share a base colour and differ in the details only (hard negatives, as in PODS).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

CATEGORIES = ("mug", "bottle", "screwdriver", "shoe", "tote")

RGB = tuple[int, int, int]

COLORS: dict[str, RGB] = {
    "white": (238, 236, 230),
    "black": (34, 34, 38),
    "grey": (128, 130, 134),
    "red": (200, 38, 38),
    "navy": (30, 45, 100),
    "blue": (45, 105, 200),
    "sky blue": (120, 180, 230),
    "teal": (20, 140, 140),
    "green": (45, 140, 60),
    "olive": (110, 120, 50),
    "yellow": (238, 200, 40),
    "orange": (236, 120, 30),
    "pink": (236, 130, 170),
    "purple": (120, 60, 160),
    "brown": (110, 68, 40),
    "tan": (200, 165, 115),
    "beige": (226, 210, 178),
    "maroon": (120, 30, 45),
    "mint": (160, 222, 190),
    "lime": (150, 210, 60),
    "steel": (176, 181, 188),
    "clear": (188, 214, 226),
    "green glass": (40, 112, 62),
    "brown glass": (106, 60, 26),
}
BODY_COLORS: dict[str, tuple[str, ...]] = {
    "mug": ("white", "black", "red", "navy", "teal", "yellow", "pink", "grey", "green", "orange"),
    "bottle": (
        "clear",
        "green glass",
        "brown glass",
        "steel",
        "white",
        "red",
        "black",
        "purple",
        "sky blue",
        "orange",
    ),
    "screwdriver": ("red", "yellow", "blue", "black", "orange", "green", "clear", "purple"),
    "shoe": ("white", "black", "grey", "navy", "red", "tan", "pink", "blue", "green", "beige"),
    "tote": ("beige", "black", "navy", "olive", "red", "pink", "yellow", "white", "brown", "teal"),
}
ACCENT_COLORS = (
    "white",
    "black",
    "red",
    "navy",
    "blue",
    "teal",
    "green",
    "yellow",
    "orange",
    "pink",
    "purple",
    "grey",
    "mint",
    "lime",
    "maroon",
    "sky blue",
)
PATTERNS: dict[str, tuple[str, ...]] = {  # solid is listed twice: plain objects are common
    "mug": ("solid", "solid", "hstripes", "vstripes", "diagonal", "dots", "checker", "bands", "two_tone"),
    "bottle": ("solid", "solid", "hstripes", "vstripes", "diagonal", "dots", "checker", "bands"),
    "screwdriver": ("solid", "solid", "vstripes", "diagonal", "bands", "two_tone"),
    "shoe": ("solid", "solid", "hstripes", "diagonal", "dots", "checker", "two_tone"),
    "tote": ("solid", "solid", "hstripes", "vstripes", "diagonal", "dots", "checker", "bands", "two_tone"),
}
GLYPHS = (
    "circle",
    "ring",
    "star",
    "heart",
    "triangle",
    "diamond",
    "cross",
    "square",
    "crescent",
    "bolt",
    "letter",
)
LETTERS = "ABEFHKMNRSTXZ"
STEEL: RGB = (178, 183, 190)


@dataclass(frozen=True)
class Pattern:
    kind: str
    color: RGB
    period: float  # fraction of the sprite side
    phase: float  # 0..1
    duty: float  # fraction of a period painted in `color`


@dataclass(frozen=True)
class Decal:
    glyph: str
    letter: str  # only for glyph == "letter"
    color: RGB
    x: float  # centre, 0..1 inside the decal region of the category
    y: float
    size: float  # diameter as a fraction of the region's short side
    angle: float  # degrees


@dataclass(frozen=True)
class Instance:
    """Everything that makes one object instance look the way it does (no name: equal params = same object)."""

    category: str
    color_name: str
    body: RGB
    accent: RGB
    trim: RGB
    pattern: Pattern
    decal: Decal
    shape: tuple[tuple[str, float | str], ...]  # category-specific proportions and part styles

    def shape_dict(self) -> dict[str, float | str]:
        return dict(self.shape)


# ----------------------------------------------------------------------------- sampling


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return round(float(rng.uniform(lo, hi)), 4)


def _jitter(rgb: RGB, rng: np.random.Generator, amount: int = 14) -> RGB:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)  # type: ignore


def _dist(a: RGB, b: RGB) -> float:
    return float(np.linalg.norm(np.subtract(a, b, dtype=float)))


def _contrasting(rng: np.random.Generator, avoid: list[RGB], min_dist: float = 110) -> RGB:
    """A named accent colour far from every colour in `avoid` (decals and patterns must be visible).

    White and black are the most common accents, as on real products: many instances share a
    colour scheme and differ in pattern, decal and proportions only.
    """
    weights = np.array([4.0 if c in ("white", "black") else 1.0 for c in ACCENT_COLORS])
    for i in rng.choice(
        len(ACCENT_COLORS), size=len(ACCENT_COLORS), replace=False, p=weights / weights.sum()
    ):
        rgb = COLORS[ACCENT_COLORS[int(i)]]
        if all(_dist(rgb, a) >= min_dist for a in avoid):
            return _jitter(rgb, rng, 5)
    return max((COLORS["white"], COLORS["black"]), key=lambda c: min(_dist(c, a) for a in avoid))


def _shape_mug(rng):
    return {
        "width": _u(rng, 0.40, 0.54),
        "height": _u(rng, 0.44, 0.60),
        "taper": _u(rng, -0.08, 0.12),
        "handle": _pick(rng, ("round", "square", "ear", "thin")),
        "handle_reach": _u(rng, 0.13, 0.20),
        "handle_top": _u(rng, 0.10, 0.22),
        "handle_bottom": _u(rng, 0.62, 0.82),
        "handle_color": _pick(rng, ("body", "body", "accent", "trim")),
        "inside": _pick(rng, ("body", "accent", "white", "trim")),
        "rim": _u(rng, 0.03, 0.055),
    }


def _shape_bottle(rng):
    style = _pick(rng, ("classic", "wine", "sport", "flask"))
    neck = {
        "classic": (0.10, 0.13, 0.06, 0.10),
        "wine": (0.08, 0.10, 0.14, 0.20),
        "sport": (0.15, 0.19, 0.03, 0.05),
        "flask": (0.10, 0.14, 0.04, 0.07),
    }[style]
    return {
        "style": style,
        "width": _u(rng, 0.24, 0.34) if style != "sport" else _u(rng, 0.27, 0.33),
        "body_height": _u(rng, 0.40, 0.52),
        "shoulder": _u(rng, 0.06, 0.16) if style != "flask" else 0.04,
        "neck_width": _u(rng, neck[0], neck[1]),
        "neck_height": _u(rng, neck[2], neck[3]),
        "cap_height": _u(rng, 0.05, 0.09),
        "label": _pick(rng, ("yes", "yes", "no")),
        "label_top": _u(rng, 0.15, 0.35),
        "label_height": _u(rng, 0.35, 0.55),
        "cap_ridges": _pick(rng, ("yes", "no")),
    }


def _shape_screwdriver(rng):
    return {
        "handle_length": _u(rng, 0.34, 0.46),
        "handle_thickness": _u(rng, 0.15, 0.21),
        "grip": _pick(rng, ("smooth", "ridged", "rubber", "rings")),
        "ferrule": _u(rng, 0.02, 0.045),
        "shaft_end": _u(rng, 0.86, 0.96),
        "shaft_thickness": _u(rng, 0.03, 0.045),
        "tip": _pick(rng, ("flat", "phillips")),
        "front_taper": _u(rng, 0.65, 0.95),
    }


def _shape_shoe(rng):
    high = _pick(rng, ("low", "low", "high"))
    return {
        "style": high,
        "length": _u(rng, 0.82, 0.94),
        "collar": _u(rng, 0.34, 0.42) if high == "low" else _u(rng, 0.16, 0.24),
        "toe_height": _u(rng, 0.50, 0.58),
        "sole": _u(rng, 0.06, 0.10),
        "sole_color": _pick(rng, ("white", "white", "black", "gum", "grey")),
        "toe_cap": _pick(rng, ("yes", "no")),
        "heel_tab": _pick(rng, ("yes", "no")),
        "laces": _pick(rng, ("white", "black", "accent", "body")),
        "side": _pick(rng, ("swoosh", "stripes", "panel", "none")),
    }


def _shape_tote(rng):
    return {
        "width": _u(rng, 0.56, 0.72),
        "height": _u(rng, 0.40, 0.52),
        "taper": _u(rng, 0.0, 0.08),
        "strap_height": _u(rng, 0.17, 0.30),
        "strap_width": _u(rng, 0.025, 0.05),
        "strap_spread": _u(rng, 0.12, 0.22),
        "strap_color": _pick(rng, ("body", "accent", "trim", "black")),
        "hem": _pick(rng, ("yes", "no")),
        "pocket": _pick(rng, ("yes", "no")),
        "pocket_height": _u(rng, 0.25, 0.45),
    }


_SHAPES: dict[str, Callable] = {
    "mug": _shape_mug,
    "bottle": _shape_bottle,
    "screwdriver": _shape_screwdriver,
    "shoe": _shape_shoe,
    "tote": _shape_tote,
}
# (x range, y range, size range) of the decal inside each category's decal region
_DECAL_RANGES = {
    "mug": ((0.3, 0.6), (0.35, 0.65), (0.28, 0.5)),
    "bottle": ((0.35, 0.65), (0.3, 0.7), (0.4, 0.7)),
    "screwdriver": ((0.25, 0.7), (0.5, 0.5), (0.45, 0.7)),
    "shoe": ((0.15, 0.45), (0.55, 0.75), (0.09, 0.14)),
    "tote": ((0.35, 0.65), (0.35, 0.6), (0.28, 0.5)),
}


def sample_instance(category: str, rng: np.random.Generator) -> Instance:
    """Draw one instance of `category` from the world's distribution."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; expected one of {CATEGORIES}")
    names = BODY_COLORS[category]
    weights = np.array([2.0] * 3 + [1.0] * (len(names) - 3))  # the first colours are the common ones
    color_name = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    body = _jitter(COLORS[color_name], rng, 5)  # products come in a few exact colours: same name, same look
    accent = _contrasting(rng, [body])
    trim = _contrasting(rng, [body, accent], 80)
    kind = _pick(rng, PATTERNS[category])
    pattern = Pattern(
        kind, _contrasting(rng, [body], 90), _u(rng, 0.05, 0.12), _u(rng, 0, 1), _u(rng, 0.3, 0.6)
    )
    glyph = _pick(rng, GLYPHS)
    (x0, x1), (y0, y1), (s0, s1) = _DECAL_RANGES[category]
    decal_color = _contrasting(rng, [body, pattern.color] if kind != "solid" else [body])
    decal = Decal(
        glyph,
        _pick(rng, LETTERS) if glyph == "letter" else "",
        decal_color,
        _u(rng, x0, x1),
        _u(rng, y0, y1),
        _u(rng, s0, s1),
        _u(rng, -25, 25),
    )
    shape = tuple(sorted(_SHAPES[category](rng).items()))
    return Instance(category, color_name, body, accent, trim, pattern, decal, shape)
