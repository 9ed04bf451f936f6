"""Draw ``examples/shapes.png``: the sample image of the README, a scene of the shapes the bundled
model knows (square, circle, triangle), drawn as ``maskrt.model.shapes`` draws its data set.

    python examples/draw_sample.py            # writes examples/shapes.png
    maskrt predict examples/shapes.png --out examples/   # the overlay of the README
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

WIDTH, HEIGHT = 256, 192


def shape_polygon(name: str, cx: float, cy: float, size: float, turn: float) -> list:
    """Corners of a square or triangle of circumradius ``size`` turned by ``turn`` radians."""
    sides = 4 if name == "square" else 3
    return [
        (
            cx + size * math.cos(turn + 2 * math.pi * k / sides),
            cy + size * math.sin(turn + 2 * math.pi * k / sides),
        )
        for k in range(sides)
    ]


# (shape, centre x, centre y, size, turn, RGB)
SCENE = (
    ("circle", 58, 60, 34, 0.0, (222, 60, 50)),
    ("square", 182, 58, 38, math.pi / 4, (40, 90, 200)),
    ("triangle", 70, 142, 36, -math.pi / 2, (250, 200, 40)),
    ("circle", 150, 140, 24, 0.0, (60, 170, 80)),
    ("triangle", 214, 150, 28, 0.3, (150, 60, 190)),
)


def scene() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The image (uint8 ``[H, W, 3]``), the mask of each shape (bool ``[N, H, W]``; the shapes do
    not overlap) and their class names."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    t = (xx / WIDTH * 0.7 + yy / HEIGHT * 0.3)[..., None]
    image = np.array([235, 228, 210]) * (1 - t) + np.array([170, 185, 200]) * t
    masks = []
    for name, cx, cy, size, turn, rgb in SCENE:
        canvas = Image.new("L", (WIDTH, HEIGHT), 0)
        pen = ImageDraw.Draw(canvas)
        if name == "circle":
            pen.ellipse([cx - size, cy - size, cx + size, cy + size], fill=1)
        else:
            pen.polygon(shape_polygon(name, cx, cy, size, turn), fill=1)
        mask = np.asarray(canvas, dtype=bool)
        image[mask] = rgb
        masks.append(mask)
    return image.astype(np.uint8), np.stack(masks), [shape[0] for shape in SCENE]


if __name__ == "__main__":
    out = Path(__file__).with_name("shapes.png")
    Image.fromarray(scene()[0]).save(out, optimize=True)
    print(out)
