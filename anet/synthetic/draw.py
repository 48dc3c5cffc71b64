"""Pillow drawing of one synthetic vehicle (placed in a camera scene by :mod:`anet.synthetic.scene`).

A vehicle is a box seen from a yaw angle: its side face is drawn foreshortened by ``|sin(yaw)|`` and its
front or rear face by ``|cos(yaw)|``, each in face-local coordinates (u or s across, v up, both in [0, 1]).
Marks live on one face only, so an identity's side decal is invisible from the front and its plate
pattern only shows from behind; colour, type (silhouette) and the roof are visible from every view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image, ImageDraw

RGB = tuple[int, int, int]

JPEG_QUALITY = 90
SUPERSAMPLE = 2  # draw at 2x, box-downscale: cheap anti-aliasing
GLASS: RGB = (40, 52, 64)
TYRE: RGB = (22, 22, 24)
LAMP: RGB = (235, 235, 215)
TAIL: RGB = (200, 25, 30)


@dataclass(frozen=True)
class TypeShape:
    """Silhouette of a vehicle type: side length / front width relative to height, belt line, cabin."""

    length: float
    width: float
    belt: float
    cabin: tuple[float, float, float, float]  # (rear bottom, rear top, front top, front bottom) as u
    wheels: tuple[float, float]
    roof_v: float = 1.0
    special: str = ""  # "bed" (pickup) | "box" (truck) | "bus"


# Index order = VeRi type order: sedan, suv, van, hatchback, mpv, pickup, bus, truck, estate.
TYPE_SHAPES: tuple[TypeShape, ...] = (
    TypeShape(3.0, 1.30, 0.48, (0.18, 0.32, 0.62, 0.76), (0.20, 0.80), 0.95),
    TypeShape(2.6, 1.15, 0.52, (0.04, 0.07, 0.70, 0.80), (0.18, 0.80)),
    TypeShape(2.4, 0.95, 0.45, (0.02, 0.02, 0.84, 0.96), (0.17, 0.82)),
    TypeShape(2.3, 1.25, 0.50, (0.04, 0.12, 0.62, 0.76), (0.19, 0.80), 0.95),
    TypeShape(2.6, 1.05, 0.50, (0.03, 0.05, 0.68, 0.90), (0.18, 0.80)),
    TypeShape(2.9, 1.10, 0.52, (0.42, 0.45, 0.70, 0.80), (0.20, 0.80), 0.95, "bed"),
    TypeShape(3.6, 0.80, 0.42, (0.01, 0.01, 0.97, 0.99), (0.18, 0.85), 1.0, "bus"),
    TypeShape(2.8, 0.85, 0.50, (0.72, 0.74, 0.93, 0.98), (0.15, 0.83), 0.80, "box"),
    TypeShape(3.1, 1.30, 0.48, (0.04, 0.07, 0.62, 0.76), (0.20, 0.80), 0.95),
)


@dataclass(frozen=True)
class Details:
    """Everything fixed per identity that the renderer needs (drawn in ``synthetic.plan_identities``)."""

    type_index: int
    body: RGB
    length_scale: float  # model proportions x identity jitter
    belt_shift: float
    wheel_r: float
    roof: int  # 0 none, 1 bars, 2 box, 3 light bar   (all views)
    roof_rgb: RGB
    tint: float  # 0 clear .. 1 dark glass                (all views)
    bumper: RGB
    stripe: int  # 0 none, 1 single, 2 double, 3 diagonal  (side only)
    stripe_rgb: RGB
    stripe_v: float
    decal: int  # 0 none, 1 circle, 2 square, 3 triangle  (side only)
    decal_rgb: RGB
    decal_u: float
    rim_spokes: int  # 0 = hubcap                          (side only)
    rim_rgb: RGB
    grille: int  # 0 bars, 1 mesh, 2 vertical, 3 solid    (front only)
    headlight: int  # 0 rectangle, 1 round, 2 slim       (front only)
    stickers: tuple[float, ...]  # windshield stickers (s)  (front only)
    hood_stripe: bool  # (front only)
    plate_rgb: RGB  # (rear only)
    plate_blocks: tuple[float, ...]
    rear_sticker: int  # 0 none, 1 circle, 2 square      (rear only)
    rear_sticker_rgb: RGB
    rear_sticker_s: float
    taillight: int  # 0 blocks, 1 full bar                (rear only)
    spoiler: bool  # (rear + side)


class Face:
    """Maps face-local (u, v) in [0, 1] to canvas pixels; ``flip`` mirrors u."""

    def __init__(self, draw: ImageDraw.ImageDraw, box: tuple[float, float, float, float], flip: bool):
        self.draw, self.flip = draw, flip
        self.x0, self.y0, self.x1, self.y1 = box

    def pt(self, u: float, v: float) -> tuple[float, float]:
        u = 1.0 - u if self.flip else u
        return (self.x0 + u * (self.x1 - self.x0), self.y1 - v * (self.y1 - self.y0))

    def rect(self, u0: float, v0: float, u1: float, v1: float, fill: RGB) -> None:
        (xa, ya), (xb, yb) = self.pt(u0, v0), self.pt(u1, v1)
        self.draw.rectangle((min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb)), fill=fill)

    def poly(self, points: list[tuple[float, float]], fill: RGB) -> None:
        self.draw.polygon([self.pt(u, v) for u, v in points], fill=fill)

    def ellipse(self, u: float, v: float, ru: float, rv: float, fill: RGB) -> None:
        (xa, ya), (xb, yb) = self.pt(u - ru, v + rv), self.pt(u + ru, v - rv)
        self.draw.ellipse((min(xa, xb), ya, max(xa, xb), yb), fill=fill)


def shade(rgb: RGB, factor: float) -> RGB:
    """Darken (<1) or lighten (>1) a colour."""
    return tuple(int(max(0, min(255, c * factor))) for c in rgb)  # type: ignore[return-value]


def glass(det: Details) -> RGB:
    return shade(GLASS, 1.9 - 1.3 * det.tint)


def projected_aspect(det: Details, yaw: float) -> float:
    """Width / height of the vehicle's outline seen at ``yaw`` (height includes the roof-rack room)."""
    shape = TYPE_SHAPES[det.type_index]
    width = shape.length * det.length_scale * abs(math.sin(yaw)) + shape.width * abs(math.cos(yaw))
    return width / 1.12


def draw_vehicle(img: Image.Image, det: Details, yaw: float, box: tuple[float, float, float, float]) -> None:
    """Draw the vehicle seen at ``yaw`` (0 front, pi/2 left side, pi rear) into ``box`` = (x0, y0, x1, y1)."""
    draw = ImageDraw.Draw(img)
    shape = TYPE_SHAPES[det.type_index]
    side_w = shape.length * det.length_scale * abs(math.sin(yaw))
    end_w = shape.width * abs(math.cos(yaw))
    front = math.cos(yaw) > 0
    left = math.sin(yaw) >= 0  # left side: the vehicle's front points to the image right
    x0, y0, x1, y1 = box
    # v in [0, 1.12]: the top 0.12 is room for the roof rack.
    y_top = y0 + (y1 - y0) * 0.12 / 1.12
    draw.ellipse((x0 - 0.02 * (x1 - x0), y1 - 0.05 * (y1 - y0), x1, y1 + 0.03 * (y1 - y0)), fill=(28, 28, 30))
    # The end face sits at the side's front end (front view) or rear end (rear view).
    if front != left:
        cut = x0 + (x1 - x0) * (end_w / (side_w + end_w))
        end_box, side_box = (x0, y_top, cut, y1), (cut, y_top, x1, y1)
    else:
        cut = x0 + (x1 - x0) * (side_w / (side_w + end_w))
        side_box, end_box = (x0, y_top, cut, y1), (cut, y_top, x1, y1)
    if end_w > 0.05:
        face = Face(draw, end_box, flip=False)
        (draw_front if front else draw_rear)(face, det, shape)
        draw_roof(face, det, shape, 0.1, 0.9)
    if side_w > 0.05:
        face = Face(draw, side_box, flip=not left)
        draw_side(face, det, shape)
        draw_roof(face, det, shape, shape.cabin[1], shape.cabin[2])


def draw_roof(face: Face, det: Details, shape: TypeShape, a: float, b: float) -> None:
    """Roof rack / box / light bar, above the roof line (seen from every view)."""
    top = shape.roof_v if shape.special != "box" else 1.0
    if det.roof == 1:
        face.rect(a + 0.05, top, a + 0.07, top + 0.05, (20, 20, 20))
        face.rect(b - 0.07, top, b - 0.05, top + 0.05, (20, 20, 20))
        face.rect(a, top + 0.04, b, top + 0.07, det.roof_rgb)
    elif det.roof == 2:
        face.rect(a + 0.1 * (b - a), top, b - 0.1 * (b - a), top + 0.10, det.roof_rgb)
    elif det.roof == 3:
        face.rect(a + 0.3 * (b - a), top, b - 0.3 * (b - a), top + 0.05, det.roof_rgb)


def draw_side(face: Face, det: Details, shape: TypeShape) -> None:
    """Side face: body, cabin, windows, wheels and the side-only marks (stripe, decal, rims)."""
    body, belt = det.body, shape.belt + det.belt_shift
    rb, rt, ft, fb = shape.cabin
    roof = shape.roof_v
    if shape.special == "box":
        face.poly([(0.0, 0.12), (0.68, 0.12), (0.68, 1.0), (0.0, 1.0)], shade(body, 0.9))
        face.rect(0.02, 0.95, 0.66, 0.97, shade(body, 0.7))
    face.poly([(0.0, 0.12), (1.0, 0.12), (1.0, belt - 0.06), (0.97, belt), (0.02, belt)], body)
    face.poly([(rb, belt), (rt, roof), (ft, roof), (fb, belt)], body)
    inset = 0.03
    win = [(rb + inset * 1.5, belt + 0.03), (rt + inset, roof - 0.05), (ft - inset, roof - 0.05),
           (fb - inset * 1.5, belt + 0.03)]
    face.poly(win, glass(det))
    if shape.special == "bus":
        for k in range(1, 9):
            face.rect(k / 9.2, belt + 0.02, k / 9.2 + 0.012, roof - 0.04, body)
    else:
        mid = (rt + ft) / 2
        face.rect(mid - 0.012, belt, mid + 0.012, roof - 0.04, body)
        face.rect(mid - 0.004, 0.14, mid + 0.004, belt, shade(body, 0.6))
    if shape.special == "bed":
        face.rect(0.02, belt - 0.05, rb - 0.02, belt - 0.035, shade(body, 0.5))
    draw_side_marks(face, det, belt)
    face.rect(0.0, 0.12, 0.06, 0.22, det.bumper)
    face.rect(0.94, 0.12, 1.0, 0.22, det.bumper)
    face.rect(0.95, belt - 0.12, 1.0, belt - 0.06, LAMP)
    face.rect(0.0, belt - 0.12, 0.03, belt - 0.06, TAIL)
    if det.spoiler:
        face.rect(0.0, belt + 0.02, 0.07, belt + 0.05, shade(body, 0.5))
    face.rect(fb - 0.03, belt, fb, belt + 0.05, det.roof_rgb)  # mirror
    for wu in shape.wheels:
        draw_wheel(face, det, wu, shape.length * det.length_scale)


def draw_side_marks(face: Face, det: Details, belt: float) -> None:
    sv = 0.16 + det.stripe_v * (belt - 0.26)
    if det.stripe in (1, 2):
        face.rect(0.03, sv, 0.97, sv + 0.045, det.stripe_rgb)
    if det.stripe == 2:
        face.rect(0.03, sv + 0.07, 0.97, sv + 0.095, det.stripe_rgb)
    if det.stripe == 3:
        face.poly([(0.25, 0.13), (0.35, 0.13), (0.65, belt - 0.01), (0.55, belt - 0.01)], det.stripe_rgb)
    dv, ru, rv = (0.14 + belt) / 2, 0.045, 0.12
    if det.decal == 1:
        face.ellipse(det.decal_u, dv, ru, rv, det.decal_rgb)
    elif det.decal == 2:
        face.rect(det.decal_u - ru, dv - rv, det.decal_u + ru, dv + rv, det.decal_rgb)
    elif det.decal == 3:
        face.poly([(det.decal_u - ru, dv - rv), (det.decal_u + ru, dv - rv), (det.decal_u, dv + rv)],
                  det.decal_rgb)


def draw_wheel(face: Face, det: Details, u: float, length: float) -> None:
    r = det.wheel_r
    ru = r / length  # keep wheels round in model units
    face.ellipse(u, r, ru * 1.15, r * 1.15, (10, 10, 12))
    face.ellipse(u, r, ru, r, TYRE)
    face.ellipse(u, r, ru * 0.6, r * 0.6, det.rim_rgb)
    if det.rim_spokes:
        cx, cy = face.pt(u, r)
        ex, ey = face.pt(u + ru * 0.6, r + r * 0.6)
        rx, ry = abs(ex - cx), abs(ey - cy)
        width = max(1, int(ry * 0.25))
        for k in range(det.rim_spokes):
            ang = 2 * math.pi * k / det.rim_spokes
            face.draw.line((cx, cy, cx + rx * math.cos(ang), cy + ry * math.sin(ang)), fill=TYRE, width=width)
    face.ellipse(u, r, ru * 0.15, r * 0.15, shade(det.rim_rgb, 0.6))


def draw_end_body(face: Face, det: Details, shape: TypeShape, window: RGB) -> float:
    """Common part of the front and rear faces; returns the belt height."""
    body, belt = det.body, shape.belt + det.belt_shift
    roof = shape.roof_v
    narrow = 0.03 if shape.special in ("bus", "box") or shape.cabin[0] < 0.05 else 0.1
    if shape.special == "box":
        face.rect(0.02, 0.75, 0.98, 1.0, shade(body, 0.9))
    face.rect(0.0, 0.1, 1.0, belt, body)
    face.poly([(0.03, belt), (narrow, roof), (1 - narrow, roof), (0.97, belt)], body)
    face.poly([(0.07, belt + 0.02), (narrow + 0.05, roof - 0.05), (0.95 - narrow, roof - 0.05),
               (0.93, belt + 0.02)], window)
    face.rect(0.0, 0.1, 1.0, 0.18, det.bumper)
    face.rect(0.04, 0.0, 0.18, 0.12, TYRE)
    face.rect(0.82, 0.0, 0.96, 0.12, TYRE)
    return belt


def draw_front(face: Face, det: Details, shape: TypeShape) -> None:
    """Front face: grille, headlights, windshield stickers, hood stripe (front-only marks)."""
    belt = draw_end_body(face, det, shape, glass(det))
    gv0, gv1 = 0.2, min(belt - 0.06, 0.4)
    dark = (25, 25, 28)
    face.rect(0.3, gv0, 0.7, gv1, dark if det.grille != 3 else shade(det.body, 0.7))
    if det.grille == 0:
        for k in range(1, 4):
            v = gv0 + k * (gv1 - gv0) / 4
            face.rect(0.31, v - 0.01, 0.69, v + 0.01, (170, 170, 175))
    elif det.grille == 1:
        for k in range(1, 6):
            face.rect(0.3 + k * 0.4 / 6 - 0.006, gv0, 0.3 + k * 0.4 / 6 + 0.006, gv1, (120, 120, 125))
            v = gv0 + k * (gv1 - gv0) / 6
            face.rect(0.3, v - 0.005, 0.7, v + 0.005, (120, 120, 125))
    elif det.grille == 2:
        for k in range(1, 5):
            face.rect(0.3 + k * 0.08 - 0.012, gv0, 0.3 + k * 0.08 + 0.012, gv1, (185, 185, 190))
    else:
        face.ellipse(0.5, (gv0 + gv1) / 2, 0.05, 0.05, (200, 200, 205))
    hv = (gv0 + gv1) / 2 + 0.04
    for s in (0.15, 0.85):
        if det.headlight == 0:
            face.rect(s - 0.09, hv - 0.05, s + 0.09, hv + 0.05, LAMP)
        elif det.headlight == 1:
            face.ellipse(s, hv, 0.07, 0.06, LAMP)
        else:
            face.rect(s - 0.11, hv + 0.01, s + 0.11, hv + 0.04, LAMP)
    face.rect(0.4, 0.11, 0.6, 0.17, (230, 230, 230))
    for s in det.stickers:
        face.rect(s, belt + 0.05, s + 0.08, belt + 0.12, (240, 220, 60) if s < 0.5 else (60, 160, 230))
    if det.hood_stripe:
        face.rect(0.44, gv1 + 0.01, 0.56, belt - 0.005, shade(det.stripe_rgb, 1.0))


def draw_rear(face: Face, det: Details, shape: TypeShape) -> None:
    """Rear face: plate pattern, taillights, rear sticker, spoiler (rear-only marks)."""
    window = glass(det) if shape.special != "box" else shade(det.body, 0.8)
    belt = draw_end_body(face, det, shape, window)
    if shape.special == "box":
        face.rect(0.49, belt + 0.02, 0.51, shape.roof_v - 0.05, shade(det.body, 0.5))
    tv = belt - 0.12
    if det.taillight == 0:
        face.rect(0.03, tv, 0.2, tv + 0.08, TAIL)
        face.rect(0.8, tv, 0.97, tv + 0.08, TAIL)
    else:
        face.rect(0.03, tv + 0.02, 0.97, tv + 0.07, TAIL)
    px0, px1, pv0, pv1 = 0.32, 0.68, 0.2, 0.3
    face.rect(px0, pv0, px1, pv1, det.plate_rgb)
    ink = (20, 20, 20) if sum(det.plate_rgb) > 380 else (235, 235, 235)
    s = px0 + 0.02
    for w in det.plate_blocks:
        face.rect(s, pv0 + 0.02, s + w, pv1 - 0.02, ink)
        s += w + 0.015
    if det.rear_sticker:
        u, v = det.rear_sticker_s, belt + 0.1
        if det.rear_sticker == 1:
            face.ellipse(u, v, 0.06, 0.05, det.rear_sticker_rgb)
        else:
            face.rect(u - 0.06, v - 0.04, u + 0.06, v + 0.04, det.rear_sticker_rgb)
    if det.spoiler:
        face.rect(0.1, belt + 0.01, 0.9, belt + 0.05, shade(det.body, 0.5))
