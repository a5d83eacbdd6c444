"""Sprites: each category's silhouette family drawn from an instance's parameters."""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image

from prpg.toybox.canvas import (
    Canvas,
    arc_points,
    gradient,
    paint_decal,
    pattern_layer,
    scaled,
    shade,
)
from prpg.toybox.objects import COLORS, RGB, STEEL, Instance


def _part_color(which: str, inst: Instance) -> RGB:
    return {"body": inst.body, "accent": inst.accent, "trim": inst.trim}.get(which) or COLORS[which]


def _draw_mug(cv: Canvas, inst: Instance) -> None:
    s = inst.shape_dict()
    bw, bh, taper = float(s["width"]), float(s["height"]), float(s["taper"])
    cx, top = 0.42, 0.5 - bh / 2 + 0.04
    bot = top + bh
    half_top, half_bot = bw / 2 * (1 + taper), bw / 2 * (1 - taper)
    # handle first: the body covers its inner end
    edge = cx + (half_top + half_bot) / 2 - 0.03
    hy0, hy1 = top + float(s["handle_top"]) * bh, top + float(s["handle_bottom"]) * bh
    reach = float(s["handle_reach"])
    style = s["handle"]
    thick = {"round": 0.055, "square": 0.05, "ear": 0.075, "thin": 0.032}[str(style)]
    if style == "square":
        handle = cv.mask(
            lambda d, n: d.rounded_rectangle(
                [edge * n, hy0 * n, (edge + reach) * n, hy1 * n],
                radius=0.05 * n,
                outline=255,
                width=round(thick * n),
            )
        )
    else:
        r = reach * (0.8 if style == "ear" else 1.0)
        handle = cv.mask(
            lambda d, n: d.ellipse(
                [(edge - r) * n, hy0 * n, (edge + r) * n, hy1 * n], outline=255, width=round(thick * n)
            )
        )
    handle &= cv.x > edge - 0.01
    cv.paint(handle, _part_color(str(s["handle_color"]), inst))
    shade(cv, handle, axis=0, strength=0.3, shine=0.15)
    rc = 0.06
    body_pts = (
        [(cx - half_top, top), (cx + half_top, top)]
        + arc_points(cx + half_bot - rc, bot - rc, rc, 0, 90)
        + arc_points(cx - half_bot + rc, bot - rc, rc, 90, 180)
    )
    body = cv.poly(body_pts)
    box = cv.region_box(body)
    cv.paint(body, pattern_layer(cv, inst.body, inst.pattern, box))
    paint_decal(cv, inst.decal, box, body)
    shade(cv, body)
    rim_h = float(s["rim"])
    lip = cv.ellipse(cx, top, half_top, rim_h)
    cv.paint(lip, scaled(inst.body, 0.92))
    inner = cv.ellipse(cx, top + 0.004, half_top - 0.022, rim_h - 0.012)
    cv.paint(inner, scaled(_part_color(str(s["inside"]), inst), 0.62))


def _draw_bottle(cv: Canvas, inst: Instance) -> None:
    s = inst.shape_dict()
    w, body_h, sh = float(s["width"]), float(s["body_height"]), float(s["shoulder"])
    nw, nh, ch = float(s["neck_width"]), float(s["neck_height"]), float(s["cap_height"])
    cx, bot = 0.5, 0.95
    y_sh = bot - body_h
    y_neck = y_sh - sh - nh
    rc = 0.035
    left = (
        [(cx - w / 2, bot - rc)]
        + [
            (cx - nw / 2 - (w / 2 - nw / 2) * math.cos(t), y_sh - sh * math.sin(t))
            for t in np.linspace(0, math.pi / 2, 12)
        ]
        + [(cx - nw / 2, y_neck)]
    )
    right = [(2 * cx - x, y) for x, y in reversed(left)]
    bottom = arc_points(cx + w / 2 - rc, bot - rc, rc, 0, 90) + arc_points(
        cx - w / 2 + rc, bot - rc, rc, 90, 180
    )
    bottle = cv.poly(left + right + bottom)
    body_box = (cx - w / 2, y_sh, cx + w / 2, bot)
    if s["label"] == "yes":
        cv.paint(bottle, inst.body)
        l0 = y_sh + float(s["label_top"]) * body_h * 0.8
        l1 = min(bot - 0.03, l0 + float(s["label_height"]) * body_h)
        label = bottle & (cv.y > l0) & (cv.y < l1)
        box = (cx - w / 2, l0, cx + w / 2, l1)
        cv.paint(label, pattern_layer(cv, inst.accent, inst.pattern, box))
        paint_decal(cv, inst.decal, box, label)
    else:
        cv.paint(bottle, pattern_layer(cv, inst.body, inst.pattern, body_box))
        paint_decal(cv, inst.decal, body_box, bottle)
    glass = inst.color_name in ("clear", "green glass", "brown glass")
    shade(cv, bottle, strength=0.35, shine=0.55 if glass else 0.3)
    # cap: wider than the neck, optionally ridged; sport bottles get a nozzle
    cw = nw * (1.3 if s["style"] == "sport" else 1.15)
    cap = cv.rrect(cx - cw / 2, y_neck - ch, cx + cw / 2, y_neck + 0.01, 0.01)
    if s["style"] == "sport":
        cap |= cv.rrect(cx - nw * 0.22, y_neck - ch - 0.035, cx + nw * 0.22, y_neck - ch + 0.005, 0.008)
    cv.paint(cap, inst.trim)
    if s["cap_ridges"] == "yes":
        ridges = cap & ((cv.x * 60) % 1 < 0.35) & (cv.y > y_neck - ch + 0.01)
        cv.paint(ridges, scaled(inst.trim, 0.7))
    shade(cv, cap, strength=0.3, shine=0.2)


def _draw_screwdriver(cv: Canvas, inst: Instance) -> None:
    s = inst.shape_dict()
    hl, ht = float(s["handle_length"]), float(s["handle_thickness"])
    x0, cy = 0.05, 0.5
    x1 = x0 + hl
    front = ht / 2 * float(s["front_taper"])
    handle_pts = arc_points(x0 + ht / 2, cy, ht / 2, 90, 270, 12) + [
        (x1 - 0.02, cy - front),
        (x1, cy - front + 0.01),
        (x1, cy + front - 0.01),
        (x1 - 0.02, cy + front),
    ]
    handle = cv.poly(handle_pts)
    box = (x0, cy - ht / 2, x1, cy + ht / 2)
    cv.paint(handle, pattern_layer(cv, inst.body, inst.pattern, box, long_axis="x"))
    grip = s["grip"]
    if grip == "rubber":
        cv.paint(
            handle & cv.rrect(x0 + 0.2 * hl, cy - ht * 0.2, x0 + 0.85 * hl, cy + ht * 0.2, ht * 0.15),
            inst.accent,
        )
    elif grip == "ridged":
        cv.paint(
            handle & (np.abs(((cv.y - cy) / (ht / 6)) % 1 - 0.5) < 0.12) & (cv.x > x0 + 0.15 * hl),
            scaled(inst.body, 0.55),
        )
    elif grip == "rings":
        for c in (x0 + 0.25 * hl, x0 + 0.75 * hl):
            cv.paint(handle & (np.abs(cv.x - c) < 0.018), inst.accent)
    paint_decal(cv, inst.decal, (x0, cy - ht / 2, x0 + hl, cy + ht / 2), handle)
    shade(cv, handle, axis=0)
    fl = float(s["ferrule"])
    ferrule = cv.rrect(x1 - 0.005, cy - front * 0.75, x1 + fl, cy + front * 0.75, 0.008)
    cv.paint(ferrule, scaled(STEEL, 0.85) if grip != "rings" else inst.trim)
    xe, st = float(s["shaft_end"]), float(s["shaft_thickness"])
    shaft = cv.poly(
        [(x1 + fl, cy - st / 2), (xe - 0.05, cy - st / 2), (xe - 0.05, cy + st / 2), (x1 + fl, cy + st / 2)]
    )
    if s["tip"] == "flat":
        tip = cv.poly(
            [
                (xe - 0.05, cy - st / 2),
                (xe - 0.012, cy - st * 0.8),
                (xe, cy - st * 0.75),
                (xe, cy + st * 0.75),
                (xe - 0.012, cy + st * 0.8),
                (xe - 0.05, cy + st / 2),
            ]
        )
    else:
        tip = cv.poly(
            [
                (xe - 0.05, cy - st / 2),
                (xe - 0.004, cy - st * 0.12),
                (xe - 0.004, cy + st * 0.12),
                (xe - 0.05, cy + st / 2),
            ]
        )
    metal = ferrule | shaft | tip
    cv.paint(shaft | tip, STEEL)
    shade(cv, metal, axis=0, strength=0.4, shine=0.6)


_SOLE_COLORS = {
    "white": (235, 233, 226),
    "black": (30, 30, 32),
    "gum": (188, 140, 88),
    "grey": (120, 122, 126),
}


def _draw_shoe(cv: Canvas, inst: Instance) -> None:
    s = inst.shape_dict()
    c, toe, sole_h = float(s["collar"]), float(s["toe_height"]), float(s["sole"])
    kx = float(s["length"]) / 0.9
    dy = -0.07  # the shoe is designed on a frame with the sole at y ~0.8; lift it to the sprite centre

    def f(pts):  # design frame -> sprite coordinates (length stretches about the centre)
        return [(0.5 + (x - 0.5) * kx, y + dy) for x, y in pts]

    def fx(x):
        return 0.5 + (x - 0.5) * kx

    tongue = c - 0.02 if s["style"] == "low" else c + 0.01
    base = 0.74  # bottom of the upper; the sole goes below it
    upper = cv.poly(
        f(
            [
                (0.07, base),
                (0.05, 0.56),
                (0.07, c + 0.05),
                (0.10, c),
                (0.22, c + 0.02),
                (0.31, c + 0.07),
                (0.39, tongue),
                (0.47, tongue + 0.01),
                (0.60, max(tongue + 0.1, 0.42)),
                (0.74, toe - 0.04),
                (0.86, toe),
                (0.93, toe + 0.05),
                (0.96, 0.67),
                (0.95, base),
            ]
        )
    )
    box = cv.region_box(upper)
    cv.paint(upper, pattern_layer(cv, inst.body, inst.pattern, box))
    if s["toe_cap"] == "yes":
        cap_color = scaled(inst.body, 0.8) if inst.pattern.kind == "solid" else inst.body
        cv.paint(upper & cv.ellipse(fx(0.97), 0.72 + dy, 0.17 * kx, 0.14), cap_color)
    side = s["side"]
    if side == "swoosh":
        swoosh = f(
            [(0.26, 0.64), (0.45, 0.62), (0.62, 0.56), (0.78, 0.47), (0.60, 0.60), (0.42, 0.68), (0.28, 0.68)]
        )
        cv.paint(upper & cv.poly(swoosh), inst.accent)
    elif side == "stripes":
        for k in range(3):
            x = 0.40 + 0.07 * k
            bar = f([(x, 0.70), (x + 0.035, 0.70), (x + 0.10, 0.47), (x + 0.065, 0.47)])
            cv.paint(upper & cv.poly(bar), inst.accent)
    elif side == "panel":
        cv.paint(upper & cv.ellipse(fx(0.45), base - 0.12 + dy, 0.16 * kx, 0.07), inst.accent)
    paint_decal(cv, inst.decal, box, upper)
    if s["heel_tab"] == "yes":
        cv.paint(upper & (cv.x < fx(0.14)) & (cv.y < 0.62 + dy), inst.trim)
    lace_color = _part_color(str(s["laces"]), inst)
    (ax, ay), (bx, by) = f([(0.47, tongue + 0.04), (0.68, toe - 0.02)])
    length = math.hypot(bx - ax, by - ay)
    nx, ny = -(by - ay) / length, (bx - ax) / length  # normal of the vamp edge, pointing into the shoe
    for k in range(4):  # short separate lace bars hanging from the vamp edge
        t = (k + 0.5) / 4
        px, py = ax + (bx - ax) * t, ay + (by - ay) * t
        bar = [(px - 0.01 * nx, py - 0.01 * ny), (px + 0.05 * nx, py + 0.05 * ny)]
        cv.paint(cv.lines(bar, 0.016) & upper, lace_color)
    gradient(cv, upper)
    sole = cv.poly(
        f(
            [
                (0.04, base - 0.02),
                (0.96, base - 0.04),
                (0.985, base - 0.01),
                (0.975, base + sole_h * 0.8),
                (0.94, base + sole_h),
                (0.07, base + sole_h),
                (0.04, base + sole_h * 0.6),
            ]
        )
    )
    sole_color = _SOLE_COLORS[str(s["sole_color"])]
    cv.paint(sole, sole_color)
    cv.paint(sole & (np.abs(cv.y - (base + dy + sole_h * 0.35)) < 0.006), scaled(sole_color, 0.75))


def _draw_tote(cv: Canvas, inst: Instance) -> None:
    s = inst.shape_dict()
    w, h, taper = float(s["width"]), float(s["height"]), float(s["taper"])
    cx, bot = 0.5, 0.94
    top = bot - h
    sh, sw, spread = float(s["strap_height"]), float(s["strap_width"]), float(s["strap_spread"])
    strap = _part_color(str(s["strap_color"]), inst)
    back = cv.arc(cx - spread + 0.03, top - sh + 0.02, cx + spread + 0.03, top + sh + 0.02, 180, 360, sw)
    cv.paint(back & (cv.y < top + 0.01), scaled(strap, 0.7))
    half_top = w / 2 * (1 - taper)
    rc = 0.03
    body = cv.poly(
        [(cx - half_top, top), (cx + half_top, top)]
        + arc_points(cx + w / 2 - rc, bot - rc, rc, 0, 90)
        + arc_points(cx - w / 2 + rc, bot - rc, rc, 90, 180)
    )
    box = cv.region_box(body)
    cv.paint(body, pattern_layer(cv, inst.body, inst.pattern, box))
    if s["pocket"] == "yes":
        ph = float(s["pocket_height"]) * h
        pocket = body & cv.rrect(cx - w * 0.3, bot - ph - 0.04, cx + w * 0.3, bot - 0.04, 0.015)
        cv.paint(pocket, inst.accent)
        cv.paint(pocket & (np.abs(cv.y - (bot - ph - 0.04 + 0.012)) < 0.004), scaled(inst.accent, 0.7))
    paint_decal(
        cv, inst.decal, (box[0], box[1], box[2], box[3] - (0.2 * h if s["pocket"] == "yes" else 0)), body
    )
    if s["hem"] == "yes":
        cv.paint(body & (cv.y < top + 0.035), inst.trim)
    gradient(cv, body)
    front = cv.arc(cx - spread, top - sh, cx + spread, top + sh, 180, 360, sw) & (cv.y < top + 0.01)
    legs = (np.abs(cv.x - (cx - spread + sw / 2)) < sw / 2) | (np.abs(cv.x - (cx + spread - sw / 2)) < sw / 2)
    legs &= (cv.y >= top) & (cv.y < top + 0.09)
    cv.paint(front | legs, strap)
    shade(cv, front | legs, axis=0, strength=0.25, shine=0.1)


_DRAW = {
    "mug": _draw_mug,
    "bottle": _draw_bottle,
    "screwdriver": _draw_screwdriver,
    "shoe": _draw_shoe,
    "tote": _draw_tote,
}
SUPERSAMPLE = 2


@functools.lru_cache(maxsize=512)
def render_sprite(inst: Instance, side: int) -> Image.Image:
    """The instance drawn upright in a `side` x `side` RGBA sprite with hard (0/255) alpha.

    Drawn at 2x and box-filtered: interior edges (stripes, decal) are antialiased, while the
    silhouette keeps a hard alpha (a pixel is object iff >= half of it was covered) so masks are exact.
    """
    cv = Canvas(side * SUPERSAMPLE)
    _DRAW[inst.category](cv, inst)
    a = cv.alpha.astype(np.float32)
    pre = np.clip(cv.rgb, 0, 255) * a[..., None]
    k = SUPERSAMPLE
    a_small = a.reshape(side, k, side, k).mean((1, 3))
    pre_small = pre.reshape(side, k, side, k, 3).mean((1, 3))
    solid = a_small >= 0.5
    rgba = np.zeros((side, side, 4), np.uint8)
    rgba[..., :3] = np.clip(np.round(pre_small / np.maximum(a_small, 1e-6)[..., None]), 0, 255).astype(
        np.uint8
    )
    rgba[..., 3] = np.where(solid, 255, 0)
    return Image.fromarray(rgba, "RGBA")
