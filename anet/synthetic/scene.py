"""A camera's scene and the finished image: background, crop, occluder, light, noise, blur, JPEG.

:mod:`anet.synthetic.draw` draws the vehicle; this module places it in a camera's fixed scene at a
camera-typical yaw and applies the camera's nuisances (the nuisance is per camera, so
a model must learn to ignore it across cameras).
"""

from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from anet.synthetic.draw import JPEG_QUALITY, RGB, SUPERSAMPLE, Details, draw_vehicle, projected_aspect, shade

__all__ = ["CameraSpec", "draw_background", "draw_occluder", "render_vehicle_image"]


@dataclass(frozen=True)
class CameraSpec:
    """What a camera does to every image: viewpoint mix, background, lighting, blur, scale."""

    camid: int
    yaw_center: float  # radians; most vehicles pass this camera at about this yaw
    yaw_spread: float
    p_opposite: float  # share of traffic going the other way (yaw + pi)
    gain: float
    cast: tuple[float, float, float]  # per-channel multipliers: a small colour cast
    blur: float  # Gaussian radius in output pixels
    fill: float  # fraction of the crop the vehicle fills
    noise: float
    sky: RGB
    ground: RGB
    horizon: float
    lane: RGB
    lane_slope: float


def draw_background(cam: CameraSpec, size: int, seed: int) -> Image.Image:
    """The camera's fixed scene (drawn once, cropped with a jitter per image)."""
    rng = np.random.default_rng([seed, 21, cam.camid])
    img = Image.new("RGB", (size, size), cam.ground)
    draw = ImageDraw.Draw(img)
    h = int(cam.horizon * size)
    draw.rectangle((0, 0, size, h), fill=cam.sky)
    for _ in range(int(rng.integers(3, 9))):  # buildings / trees / walls above the horizon
        x = float(rng.uniform(0, size))
        w, top = float(rng.uniform(0.08, 0.3)) * size, float(rng.uniform(0.0, 0.9)) * h
        tone = shade(cam.sky, float(rng.uniform(0.5, 1.3)))
        draw.rectangle((x, top, x + w, h), fill=tone)
    for _ in range(int(rng.integers(6, 16))):  # asphalt patches
        x, y = float(rng.uniform(0, size)), float(rng.uniform(h, size))
        r = float(rng.uniform(0.03, 0.12)) * size
        tone = shade(cam.ground, float(rng.uniform(0.85, 1.15)))
        draw.ellipse((x - r, y - r * 0.5, x + r, y + r * 0.5), fill=tone)
    draw.rectangle((0, h, size, h + size * 0.02), fill=shade(cam.ground, 1.4))  # curb
    for k in range(int(rng.integers(1, 4))):
        x = size * (0.15 + 0.35 * k + float(rng.uniform(-0.05, 0.05)))
        draw.line((x, size, x + cam.lane_slope * (size - h), h), fill=cam.lane, width=max(2, size // 60))
    return img


def draw_occluder(img: Image.Image, rng: np.random.Generator, size: int) -> None:
    """A pole, the edge of another vehicle or a round object in front of the vehicle."""
    draw = ImageDraw.Draw(img)
    kind = int(rng.integers(0, 3))
    tone = tuple(int(c) for c in rng.integers(20, 230, size=3))
    if kind == 0:
        x, w = float(rng.uniform(0.1, 0.9)) * size, float(rng.uniform(0.03, 0.08)) * size
        draw.rectangle((x, 0, x + w, size), fill=(90, 90, 95) if rng.random() < 0.5 else (40, 40, 40))
    elif kind == 1:
        w = float(rng.uniform(0.1, 0.3)) * size
        x = 0.0 if rng.random() < 0.5 else size - w
        top = float(rng.uniform(0.4, 0.8)) * size
        draw.rounded_rectangle((x, top, x + w, size), radius=size // 20, fill=tone)
    else:
        r = float(rng.uniform(0.08, 0.16)) * size
        x, y = float(rng.uniform(0.1, 0.9)) * size, float(rng.uniform(0.55, 0.95)) * size
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tone)


@functools.lru_cache(maxsize=64)
def _background(cam: CameraSpec, size: int, seed: int) -> np.ndarray:
    return np.asarray(draw_background(cam, size, seed))  # size x size x 3 uint8, read-only


def render_vehicle_image(det: Details, cam: CameraSpec, size: int, difficulty: float, seed: int,
                         rng: np.random.Generator) -> bytes:
    """Render one JPEG: scene crop, vehicle at a camera-typical yaw, occluder, light, noise, blur."""
    big = size * SUPERSAMPLE
    margin = big // 8
    bg = _background(cam, big + 2 * margin, seed)
    ox, oy = (int(v) for v in rng.integers(0, 2 * margin + 1, size=2))
    canvas = Image.fromarray(bg[oy:oy + big, ox:ox + big])
    yaw = cam.yaw_center + float(rng.normal(0.0, cam.yaw_spread))
    if rng.random() < cam.p_opposite:
        yaw += math.pi
    # Crops are resized to a square, so long side views get squeezed; keep part of the true aspect.
    aspect = projected_aspect(det, yaw) ** 0.4
    w = min(1.0, cam.fill * float(rng.uniform(0.9, 1.08)) * min(1.0, aspect)) * big
    h = min(1.0, cam.fill * float(rng.uniform(0.9, 1.08)) * min(1.0, 1.0 / aspect)) * big
    jitter = (0.04 + 0.06 * difficulty) * big  # crop jitter: the box may leave the frame a little
    cx = big / 2 + float(rng.uniform(-1, 1)) * ((big - w) / 2 + jitter)
    cy = big / 2 + float(rng.uniform(-1, 1)) * ((big - h) / 2 + jitter)
    draw_vehicle(canvas, det, yaw, (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
    if rng.random() < 0.15 + 0.45 * difficulty:
        draw_occluder(canvas, rng, big)
    canvas = canvas.reduce(SUPERSAMPLE)
    gain = cam.gain * float(rng.uniform(0.92, 1.08))
    pixels = np.asarray(canvas, dtype=np.float32) * (gain * np.asarray(cam.cast, dtype=np.float32))
    pixels += rng.normal(0.0, cam.noise, size=pixels.shape).astype(np.float32)
    canvas = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    radius = cam.blur * float(rng.uniform(0.7, 1.3))
    if radius > 0.25:
        canvas = canvas.filter(ImageFilter.GaussianBlur(radius))
    buf = io.BytesIO()
    canvas.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()
