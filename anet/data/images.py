"""The image policy: which image files are valid, how they become RGB arrays, and why others are refused.

Valid and converted to RGB: grayscale (``L``, ``1``), palette (``P``, ``PA``), ``LA``/``RGBA`` and ``CMYK``
(alpha is dropped, the colour channels kept as stored). Quarantined, with the reason in ``quarantine.csv``: a
listed file that does not exist (``missing``), zero bytes, truncated or unreadable data, not an image, other
modes (16-bit / float), a shorter side below ``min_image_size`` pixels (``too small``), and content in another
format than the file name says (``wrong format``: a PNG named ``.jpg``). Each counts against
``quarantine_max_fraction``.

The prepared cache (:mod:`anet.data.cache`) applies it to every listed image and the served model
(:mod:`anet.search.predictor`) to every query image, so training and search see the same pixels.

Example:
    >>> pixels, reason = decode_resize(Path("0001_c001_0000.jpg").read_bytes(), (128, 128), min_side=16,
    ...                                name="0001_c001_0000.jpg")
    >>> pixels.shape if pixels is not None else reason
    (128, 128, 3)
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["FORMATS_BY_SUFFIX", "RGB_MODES", "decode_resize", "refusal"]

RGB_MODES = frozenset({"RGB", "L", "1", "P", "PA", "LA", "RGBA", "CMYK"})  # converted to RGB, not refused
FORMATS_BY_SUFFIX = {".jpg": {"JPEG", "MPO"}, ".jpeg": {"JPEG", "MPO"}, ".png": {"PNG"}, ".bmp": {"BMP"},
                     ".webp": {"WEBP"}, ".tif": {"TIFF"}, ".tiff": {"TIFF"}}  # MPO: camera JPEGs with a preview


def decode_resize(data: bytes, size: tuple[int, int], *, min_side: int = 1,
                  name: str = "") -> tuple[np.ndarray | None, str]:
    """Decode image bytes and resize to (h, w): (uint8 H x W x 3, "") or (None, quarantine reason).

    ``min_side``: the shortest side an image must have; ``name``: the file name, whose suffix the
    content must match (unknown suffixes are not checked). Policy in the module docstring.
    """
    h, w = size
    if not data:
        return None, "zero bytes"
    try:
        with Image.open(io.BytesIO(data)) as img:
            reason = refusal(img, name, min_side)
            if reason:
                return None, reason
            img.draft("RGB", (w, h))  # JPEG DCT scaling when the image is >= 2x the target
            img.load()
            rgb = _to_rgb(img)
            if rgb.size != (w, h):
                rgb = rgb.resize((w, h), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8), ""  # H x W x 3
    except UnidentifiedImageError:
        return None, "not an image"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        text = str(exc)
        return None, "truncated" if "truncated" in text.lower() else f"unreadable: {text}"


def refusal(img: Image.Image, name: str, min_side: int) -> str:
    """Why an opened (not yet decoded) image is refused, or ""; sizes are the file's, before any draft."""
    suffix = Path(name).suffix.lower()
    expected = FORMATS_BY_SUFFIX.get(suffix)
    if expected is not None and img.format not in expected:
        return f"wrong format: {img.format} content, name says {suffix}"
    if img.mode not in RGB_MODES:
        return f"mode {img.mode}"
    if min(img.size) < min_side:
        return f"too small: {img.size[0]}x{img.size[1]}, shorter side below data.min_image_size={min_side}"
    return ""


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # Pillow's advised path for palette transparency; alpha dropped below
    return img.convert("RGB")
