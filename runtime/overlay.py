"""Overlay pictures of an answer, as ``maskrt predict`` writes them.

Each detection ``i`` (in answer order) gets ``colour(i)``: its mask is blended into the image at
:data:`ALPHA` and outlined in the solid colour, its box is drawn in that colour, and ``label
score`` is written on a patch of it above the box. The page at ``GET /`` uses the same palette
and alpha (``server/static/app.js``), so a picture and the page look alike.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pycocotools import mask as mask_utils

# Distinct, saturated colours (Tableau 10, reordered so neighbours differ most).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (23, 190, 207),
    (227, 119, 194),
    (188, 189, 34),
    (140, 86, 75),
    (127, 127, 127),
)
ALPHA = 0.5  # weight of the instance colour inside its mask


def colour(index: int) -> tuple[int, int, int]:
    """The colour of detection ``index`` of an answer."""
    return PALETTE[index % len(PALETTE)]


def decode_mask(mask: dict) -> np.ndarray:
    """A COCO RLE of the answer (``counts`` as text) as a bool ``[H, W]`` array."""
    rle = {"size": list(mask["size"]), "counts": mask["counts"].encode("ascii")}
    return mask_utils.decode(rle).astype(bool)


def erode(mask: np.ndarray, width: int) -> np.ndarray:
    """``mask`` less a ``width``-pixel rim (4-neighbour erosion, ``width`` times)."""
    inner = mask.copy()
    for _ in range(width):
        shrunk = inner.copy()
        shrunk[1:] &= inner[:-1]
        shrunk[:-1] &= inner[1:]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        inner = shrunk
    return inner


def line_width(width: int, height: int) -> int:
    """Outline and box width in pixels: 1 for small images, thicker for large ones."""
    return max(1, round(max(width, height) / 400))


def font_size(width: int, height: int) -> int:
    """Pixel size of the ``label score`` text."""
    return max(10, round(max(width, height) / 45))


def draw_overlay(image: np.ndarray, detections: list[dict]) -> Image.Image:
    """The overlay of ``detections`` (an answer's list) on ``image`` (uint8 ``[H, W, 3]``)."""
    height, width = image.shape[:2]
    lw = line_width(width, height)
    out = image.astype(np.float32)
    for i, det in enumerate(detections):
        if det.get("mask") is None:
            continue
        mask = decode_mask(det["mask"])
        rgb = np.asarray(colour(i), dtype=np.float32)
        out[mask] = out[mask] * (1 - ALPHA) + rgb * ALPHA
        out[mask & ~erode(mask, lw)] = rgb
    picture = Image.fromarray(np.clip(out.round(), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=font_size(width, height))
    for i, det in enumerate(detections):
        c = colour(i)
        x1, y1, x2, y2 = det["box"]
        draw.rectangle([x1, y1, x2, y2], outline=c, width=lw)
        text = f"{det['label']} {det['score']:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 4, bottom - top + 4
        ty = y1 - th if y1 - th >= 0 else y1  # above the box, or inside it at the top edge
        draw.rectangle([x1, ty, x1 + tw, ty + th], fill=c)
        ink = (0, 0, 0) if sum(w * v for w, v in zip((0.299, 0.587, 0.114), c)) > 150 else "white"
        draw.text((x1 + 2 - left, ty + 2 - top), text, fill=ink, font=font)
    return picture
