"""Scenes: a target sprite posed on a background, optional distractors, exact visible mask, caption.

Every pixel is owned by exactly one layer (background, a distractor, or the target) with hard
alpha, so the mask is exactly the target pixels visible in the final image.
"""

from __future__ import annotations

import functools
import math
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from prpg.toybox.backgrounds import ALL, BACKGROUNDS, CANONICAL, render_background
from prpg.toybox.objects import CATEGORIES, Instance, sample_instance
from prpg.toybox.sprites import render_sprite

TEST_SPLITS = ("in_distribution", "pose", "distractors", "pose_and_distractors")
SPRITE_FRACTION = 0.75  # sprite side / image side at scale 1
DISTRACTOR_BANK = 8  # distractor instances per category (shared by all images of a world)
MIN_VISIBLE = 0.3  # at most 70 % of the target may be hidden by distractors
PLACEMENT_TRIES = 12


@dataclass(frozen=True)
class Pose:
    rotation: float  # degrees, positive = counter-clockwise on screen (top leans left)
    scale: float  # 1 = canonical size
    flip: bool  # horizontal mirror
    perspective: tuple[float, float]  # (px, py): > 0 shrinks the right / bottom side
    center: tuple[float, float]  # fraction of the image side


@dataclass(frozen=True)
class Shot:
    image: np.ndarray  # uint8 (size, size, 3)
    mask: np.ndarray  # bool (size, size): visible target pixels
    caption: str
    scene: dict[str, Any]


def sprite_side(size: int) -> int:
    return max(16, round(SPRITE_FRACTION * size))


def stable_seed(*parts: int | str) -> np.random.SeedSequence:
    """A SeedSequence from ints and strings (crc32 of strings: stable across processes, unlike hash())."""
    return np.random.SeedSequence([p if isinstance(p, int) else zlib.crc32(p.encode()) for p in parts])


@functools.lru_cache(maxsize=64)
def distractor_bank(seed: int, category: str) -> tuple[Instance, ...]:
    """Fixed distractor instances per category: the same per world, whichever process draws them."""
    return tuple(
        sample_instance(category, np.random.default_rng(stable_seed(seed, "distractor", category, k)))
        for k in range(DISTRACTOR_BANK)
    )


# ----------------------------------------------------------------------------- poses


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


# three vantage points of the train scene: (rotation, scale, centre, horizontal perspective)
_VIEWS = ((0.0, 1.0, (0.5, 0.52), 0.0), (-7.0, 0.92, (0.44, 0.5), 0.08), (7.0, 1.07, (0.56, 0.54), -0.08))


def train_pose(view: int, rng: np.random.Generator) -> Pose:
    rot, scale, (cx, cy), px = _VIEWS[view % len(_VIEWS)]
    return Pose(
        rot + _u(rng, -3, 3),
        scale * _u(rng, 0.97, 1.03),
        False,
        (px + _u(rng, -0.03, 0.03), _u(rng, -0.04, 0.04)),
        (cx + _u(rng, -0.03, 0.03), cy + _u(rng, -0.03, 0.03)),
    )


def mild_pose(rng: np.random.Generator) -> Pose:
    return Pose(
        _u(rng, -12, 12),
        _u(rng, 0.85, 1.12),
        False,
        (_u(rng, -0.08, 0.08), _u(rng, -0.08, 0.08)),
        (_u(rng, 0.4, 0.6), _u(rng, 0.4, 0.6)),
    )


def strong_pose(rng: np.random.Generator) -> Pose:
    """Rotation up to +-60 deg, scale 0.5-1.3, perspective, flips; always visibly off the train pose."""
    while True:
        rot = _u(rng, -60, 60)
        scale = math.exp(_u(rng, math.log(0.5), math.log(1.3)))
        flip = bool(rng.random() < 0.5)
        mag, ang = _u(rng, 0.1, 0.35), _u(rng, 0, 2 * math.pi)
        center = (_u(rng, 0.38, 0.62), _u(rng, 0.38, 0.62))
        if abs(rot) >= 20 or scale < 0.75 or scale > 1.15 or flip:
            return Pose(rot, scale, flip, (mag * math.cos(ang), mag * math.sin(ang)), center)


def pose_words(pose: Pose) -> list[str]:
    """Caption words for the facts of a pose that a viewer would notice."""
    words = []
    if abs(pose.rotation) >= 20:
        words.append("tilted to the left" if pose.rotation > 0 else "tilted to the right")
    if pose.scale < 0.75:
        words.append("seen from far away")
    elif pose.scale > 1.15:
        words.append("close up")
    px, py = pose.perspective
    if py >= 0.15:
        words.append("seen from above")
    elif py <= -0.15:
        words.append("seen from below")
    elif abs(px) >= 0.15:
        words.append("seen at an angle")
    if pose.flip:
        words.append("mirrored")
    return words


# ----------------------------------------------------------------------------- drawing


@dataclass(frozen=True)
class Placed:
    """A warped sprite: colours inside its bounding box, and its hard mask over the whole image."""

    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) in the image
    rgb: np.ndarray  # float32 (y1 - y0, x1 - x0, 3)
    mask: np.ndarray  # bool (size, size)


def place(sprite: Image.Image, pose: Pose, size: int) -> Placed:
    """Warp the sprite into a size x size image; a pixel is object iff the warped alpha is >= 50 %."""
    n = sprite.size[0]
    to_unit = np.array([[2 / n, 0, -1], [0, 2 / n, -1], [0, 0, 1]])  # sprite pixels -> [-1, 1]
    px, py = pose.perspective
    persp = np.array([[1, 0, 0], [0, 1, 0], [px, py, 1]])
    flip = np.diag([-1.0 if pose.flip else 1.0, 1.0, 1.0])
    k = pose.scale * n / 2  # at scale 1 one sprite pixel is one image pixel
    a = math.radians(pose.rotation)
    rot = np.array([[math.cos(a), math.sin(a), 0], [-math.sin(a), math.cos(a), 0], [0, 0, 1]])
    out = np.array([[k, 0, pose.center[0] * size], [0, k, pose.center[1] * size], [0, 0, 1]])
    h = out @ rot @ flip @ persp @ to_unit
    corners = h @ np.array([[0, n, 0, n], [0, 0, n, n], [1, 1, 1, 1]], float)
    xs, ys = corners[0] / corners[2], corners[1] / corners[2]  # |px|, |py| < 0.5 keeps w > 0
    x0, y0 = max(0, math.floor(xs.min()) - 1), max(0, math.floor(ys.min()) - 1)
    x1, y1 = min(size, math.ceil(xs.max()) + 1), min(size, math.ceil(ys.max()) + 1)
    mask = np.zeros((size, size), bool)
    if x1 <= x0 or y1 <= y0:
        return Placed((0, 0, 0, 0), np.zeros((0, 0, 3), np.float32), mask)
    inv = np.linalg.inv(np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]]) @ h)  # warp only the bounding box
    inv = inv / inv[2, 2]
    warped = np.asarray(
        sprite.transform(
            (x1 - x0, y1 - y0),
            Image.Transform.PERSPECTIVE,
            tuple(inv.flatten()[:8]),
            resample=Image.Resampling.BILINEAR,
        )
    )
    mask[y0:y1, x0:x1] = warped[..., 3] >= 128
    return Placed((x0, y0, x1, y1), warped[..., :3].astype(np.float32), mask)


def _drop_shadow(canvas: np.ndarray, placed: Placed, strength: float) -> None:
    """Darken the canvas under a blurred, offset copy of the mask (the object sits on the surface)."""
    size = canvas.shape[0]
    radius = max(1.0, size / 40)
    dx, dy = max(1, size // 50), max(1, size // 32)
    m = math.ceil(radius) + dy + 1
    x0, y0, x1, y1 = placed.box
    x0, y0, x1, y1 = max(0, x0 - m), max(0, y0 - m), min(size, x1 + m), min(size, y1 + m)
    if x1 - x0 <= dx or y1 - y0 <= dy:
        return
    local = Image.fromarray(placed.mask[y0:y1, x0:x1].astype(np.uint8) * 255)
    shadow = np.asarray(local.filter(ImageFilter.BoxBlur(radius)), np.float32) / 255
    shifted = np.zeros_like(shadow)
    shifted[dy:, dx:] = shadow[:-dy, :-dx]
    canvas[y0:y1, x0:x1] *= (1 - strength * shifted)[..., None]


@dataclass(frozen=True)
class _Layer:
    placed: Placed
    is_target: bool


def _compose(background: np.ndarray, layers: list[_Layer], shadow: float) -> tuple[np.ndarray, np.ndarray]:
    """Paint layers back to front; returns the canvas and the visible-target mask."""
    canvas = background.copy()
    target = np.zeros(background.shape[:2], bool)
    for layer in layers:
        p = layer.placed
        _drop_shadow(canvas, p, shadow)
        x0, y0, x1, y1 = p.box
        local = p.mask[y0:y1, x0:x1]
        canvas[y0:y1, x0:x1][local] = p.rgb[local]
        target = p.mask.copy() if layer.is_target else target & ~p.mask
    return canvas, target


# ----------------------------------------------------------------------------- captions


def _count_word(k: int) -> str:
    return {1: "a", 2: "two", 3: "three"}[k]


def distractor_phrase(category: str, others: list[str]) -> str:
    """'with another mug and a bottle' from the categories of the distractors."""
    parts = []
    same = sum(c == category for c in others)
    if same == 1:
        parts.append(f"another {category}")
    elif same > 1:
        parts.append(f"other {category}s")
    for c in sorted(set(others) - {category}):
        k = others.count(c)
        parts.append(f"{_count_word(k)} {c}" + ("s" if k > 1 else ""))
    return "with " + " and ".join(parts) if parts else ""


def make_caption(category: str, background: str, words: list[str]) -> str:
    return ", ".join([f"a photo of a {category} {BACKGROUNDS[background].phrase}"] + [w for w in words if w])


# ----------------------------------------------------------------------------- shots


def _crop(big: np.ndarray, size: int, fx: float, fy: float) -> np.ndarray:
    margin = big.shape[0] - size
    x0, y0 = round(fx * margin), round(fy * margin)
    return big[y0 : y0 + size, x0 : x0 + size]


def _pick_distractors(rng: np.random.Generator, category: str, seed: int) -> list[Instance]:
    chosen: list[Instance] = []
    for _ in range(int(rng.integers(1, 4))):
        others = [c for c in CATEGORIES if c != category]
        cat = category if rng.random() < 0.4 else others[int(rng.integers(len(others)))]
        bank = [i for i in distractor_bank(seed, cat) if i not in chosen]
        chosen.append(bank[int(rng.integers(len(bank)))])
    return chosen


def render_shot(
    target: Instance,
    split: str,
    rng: np.random.Generator,
    size: int,
    *,
    seed: int,
    home: tuple[str, np.random.SeedSequence],
    view: int = 0,
) -> Shot:
    """One image of `target` for `split` ("train" or one of TEST_SPLITS).

    `home` is the instance's train scene: a canonical background and the seed of its texture, so
    the three train views show the same surface from slightly different vantage points.
    """
    home_name, home_seed = home
    if split == "train":  # the same surface, seen from a slightly shifted vantage point
        bg_name = home_name
        background = _crop(
            render_background(bg_name, np.random.default_rng(home_seed), size + size // 4),
            size,
            *((0.5, 0.5), (0.15, 0.35), (0.85, 0.65))[view % 3],
        )
        pose = train_pose(view, rng)
    else:
        if split == "in_distribution":  # same kind of table-top, a new variant of it
            bg_name = home_name if rng.random() < 0.5 else CANONICAL[int(rng.integers(len(CANONICAL)))]
        else:
            bg_name = ALL[int(rng.integers(len(ALL)))]
        background = render_background(bg_name, rng, size)
        pose = strong_pose(rng) if split in ("pose", "pose_and_distractors") else mild_pose(rng)
    side = sprite_side(size)
    target_placed = place(render_sprite(target, side), pose, size)
    layers = [_Layer(target_placed, True)]
    distractors: list[dict[str, Any]] = []
    if split in ("distractors", "pose_and_distractors"):
        layers, distractors = _place_distractors(rng, target, pose, layers[0], size, seed)
    shadow = _u(rng, 0.25, 0.45)
    canvas, visible = _compose(background, layers, shadow)
    strong = split in ("pose", "distractors", "pose_and_distractors")
    gain = _u(rng, 0.78, 1.18) if strong else _u(rng, 0.93, 1.07)
    cast = rng.uniform(-0.06, 0.06, 3) if strong else rng.uniform(-0.02, 0.02, 3)
    image = np.clip(canvas * (gain * (1 + cast)), 0, 255).round().astype(np.uint8)
    hidden = round(float(1 - visible.sum() / max(1, target_placed.mask.sum())), 3)  # as recorded
    words = pose_words(pose)
    if hidden >= 0.1:
        words.append("partly hidden")
    words.append(distractor_phrase(target.category, [d["category"] for d in distractors]))
    scene: dict[str, Any] = {
        "background": bg_name,
        "object_color": target.color_name,
        "rotation": round(pose.rotation, 2),
        "scale": round(pose.scale, 3),
        "flip": pose.flip,
        "perspective": [round(p, 3) for p in pose.perspective],
        "position": [round(c, 3) for c in pose.center],
        "lighting": round(gain, 3),
        "distractors": distractors,
        "occluded_fraction": hidden,
        "pose_words": pose_words(pose),
    }
    if split == "train":
        scene["view"] = view
    return Shot(image, visible, make_caption(target.category, bg_name, words), scene)


def _place_distractors(
    rng: np.random.Generator, target: Instance, pose: Pose, target_layer: _Layer, size: int, seed: int
) -> tuple[list[_Layer], list[dict[str, Any]]]:
    """1-3 other objects around the target; some in front of it, hiding at most 70 % of it."""
    chosen = _pick_distractors(rng, target.category, seed)
    side = sprite_side(size)
    full = target_layer.placed.mask.sum()
    for attempt in range(PLACEMENT_TRIES + 1):
        placed = []
        for inst in chosen:
            in_front = attempt < PLACEMENT_TRIES and bool(rng.random() < 0.35)
            ang = _u(rng, 0, 2 * math.pi)
            dist = _u(rng, 0.16, 0.28) if in_front else _u(rng, 0.3, 0.45)
            center = (
                float(np.clip(pose.center[0] + dist * math.cos(ang), 0.08, 0.92)),
                float(np.clip(pose.center[1] + dist * math.sin(ang), 0.08, 0.92)),
            )
            d_pose = Pose(
                _u(rng, -35, 35),
                _u(rng, 0.55, 0.95),
                bool(rng.random() < 0.5),
                (_u(rng, -0.1, 0.1), _u(rng, -0.1, 0.1)),
                center,
            )
            placed.append((inst, in_front, _Layer(place(render_sprite(inst, side), d_pose, size), False)))
        front = np.zeros_like(target_layer.placed.mask)
        for _, in_front, layer in placed:
            if in_front:
                front |= layer.placed.mask
        visible = (target_layer.placed.mask & ~front).sum()
        if visible >= MIN_VISIBLE * full and visible > 0:
            break
    behind = [layer for _, f, layer in placed if not f]
    ahead = [layer for _, f, layer in placed if f]
    facts = [{"category": inst.category, "in_front": f} for inst, f, _ in placed]
    return behind + [target_layer] + ahead, facts
