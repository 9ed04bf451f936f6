"""The synthetic shapes data set, after the "shapes" sample of matterport's Mask R-CNN.

Squares, circles and triangles of random colour, size and rotation on plain, gradient, striped or
noisy backgrounds; later shapes occlude earlier ones and instances may touch. Instance masks are
exact (the visible pixels of each shape). Image ``i`` of a data set depends only on ``(seed, i)``,
so any slice of any data set can be regenerated anywhere.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from maskrt.model.config import SHAPES_CLASSES

MIN_SIDE, MAX_SIDE = 128, 256
MAX_INSTANCES = 6
MIN_VISIBLE_FRACTION = 0.4
MIN_VISIBLE_PIXELS = 24


@dataclass
class ShapesSample:
    image: np.ndarray  # uint8 [H, W, 3]
    masks: np.ndarray  # uint8 [N, H, W], visible pixels of each instance
    labels: np.ndarray  # int64 [N], 1-based index into SHAPES_CLASSES


def drawn_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A plain, gradient, striped or noisy background (float RGB ``[H, W, 3]``)."""
    base = rng.integers(0, 256, size=3).astype(np.float32)
    kind = rng.integers(0, 4)
    image: np.ndarray = np.broadcast_to(base, (height, width, 3)).copy()
    if kind == 1:  # linear gradient towards a second colour
        other = rng.integers(0, 256, size=3).astype(np.float32)
        angle = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        t = (xx * math.cos(angle) + yy * math.sin(angle)) / max(height, width)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        image = base + (other - base) * t[..., None]
    elif kind == 2:  # stripes
        other = rng.integers(0, 256, size=3).astype(np.float32)
        period = int(rng.integers(6, 24))
        xx = np.arange(width)[None, :] + np.arange(height)[:, None] * rng.integers(-1, 2)
        image[((xx // period) % 2).astype(bool)] = other
    if kind == 3 or rng.random() < 0.3:  # sensor-like noise
        image = image + rng.normal(0, rng.uniform(4, 20), size=image.shape)
    return image


def draw(kind: int, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A binary mask of one shape: centre anywhere in the image, may cross its border."""
    size = rng.uniform(8, min(height, width) / 3.5)
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    name = SHAPES_CLASSES[kind]
    if name == "circle":
        draw.ellipse([cx - size, cy - size, cx + size, cy + size], fill=1)
    else:
        sides = 4 if name == "square" else 3
        rotation = (
            rng.uniform(0, 2 * math.pi)
            if rng.random() < 0.5
            else -math.pi / 2 + (math.pi / 4 if sides == 4 else 0.0)
        )
        points = [
            (
                cx + size * math.cos(rotation + 2 * math.pi * k / sides),
                cy + size * math.sin(rotation + 2 * math.pi * k / sides),
            )
            for k in range(sides)
        ]
        draw.polygon(points, fill=1)
    return np.asarray(canvas, dtype=np.uint8)


def flat_fill(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A shape's paint: one random colour, with sensor-like noise a third of the time."""
    colour = rng.integers(0, 256, size=3).astype(np.float32)
    if rng.random() < 0.3:
        return colour + rng.normal(0, rng.uniform(0, 12), size=(height, width, 1))
    return colour


# A background maker: (rng, height, width) -> float [H, W, 3] pixels.
Background = Callable[[np.random.Generator, int, int], np.ndarray]


def generate(seed: int, index: int, background: Background | None = None) -> ShapesSample:
    """Image ``index`` of the data set with this ``seed``; ``background`` replaces the drawn
    plain, gradient, striped or noisy backgrounds (:mod:`maskrt.model.photos` passes photos)."""
    rng = np.random.default_rng([seed, index])
    height, width = (int(v) for v in rng.integers(MIN_SIDE, MAX_SIDE + 1, size=2))
    image = (background or drawn_background)(rng, height, width)
    count = int(rng.integers(1, MAX_INSTANCES + 1))
    full_masks: list[np.ndarray] = []
    visible: list[np.ndarray] = []
    labels: list[int] = []
    for _ in range(count):
        kind = int(rng.integers(1, len(SHAPES_CLASSES)))
        shape = draw(kind, rng, height, width)
        if shape.sum() < MIN_VISIBLE_PIXELS:
            continue
        image = np.where(shape[..., None].astype(bool), flat_fill(rng, height, width), image)
        for m in visible:
            m &= ~shape.astype(bool)
        full_masks.append(shape.astype(bool))
        visible.append(shape.astype(bool).copy())
        labels.append(kind)
    keep = [
        i
        for i, (full, vis) in enumerate(zip(full_masks, visible))
        if vis.sum() >= max(MIN_VISIBLE_PIXELS, MIN_VISIBLE_FRACTION * full.sum())
    ]
    masks = (
        np.stack([visible[i] for i in keep]).astype(np.uint8)
        if keep
        else np.zeros((0, height, width), np.uint8)
    )
    return ShapesSample(
        image=np.clip(image, 0, 255).round().astype(np.uint8),
        masks=masks,
        labels=np.asarray([labels[i] for i in keep], dtype=np.int64),
    )


def coco_categories() -> list[dict]:
    return [
        {"id": i, "name": n, "supercategory": "shape"} for i, n in enumerate(SHAPES_CLASSES) if i
    ]


def coco_annotations(sample: ShapesSample, image_id: int, first_ann_id: int) -> list[dict]:
    """COCO instance annotations (compressed RLE segmentations) of one sample."""
    anns = []
    for k, (mask, label) in enumerate(zip(sample.masks, sample.labels)):
        rle = mask_utils.encode(np.asfortranarray(mask))
        x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
        anns.append(
            {
                "id": first_ann_id + k,
                "image_id": image_id,
                "category_id": int(label),
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                "area": float(mask_utils.area(rle)),
                "bbox": [x, y, w, h],
                "iscrowd": 0,
            }
        )
    return anns


def coco_dataset(
    count: int, seed: int, sample_of: Callable[[int, int], ShapesSample] = generate
) -> tuple[dict, list[np.ndarray]]:
    """A COCO instances dict and the images of ``count`` samples (ids 1..count);
    ``sample_of(seed, index)`` makes each one."""
    images: list[dict] = []
    annotations: list[dict] = []
    pixels: list[np.ndarray] = []
    for i in range(count):
        sample = sample_of(seed, i)
        h, w = sample.image.shape[:2]
        images.append({"id": i + 1, "file_name": f"{i:06d}.png", "width": w, "height": h})
        annotations += coco_annotations(sample, i + 1, len(annotations) + 1)
        pixels.append(sample.image)
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": coco_categories(),
        "info": {"description": f"maskrt shapes, seed {seed}, {count} images"},
    }
    return coco, pixels


def write_coco(out: Path, count: int, seed: int) -> Path:
    """Write ``count`` images and ``annotations.json`` to ``out``; returns the JSON path."""
    out.mkdir(parents=True, exist_ok=True)
    coco, pixels = coco_dataset(count, seed)
    for info, image in zip(coco["images"], pixels):
        Image.fromarray(image).save(out / info["file_name"])
    path = out / "annotations.json"
    path.write_text(json.dumps(coco))
    return path
