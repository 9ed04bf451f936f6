"""Real photos for the shapes model: backgrounds and negatives in training, and the measure of
false detections on photos it never saw.

The photos are sample images that ship inside scikit-image's wheel, and for ``photomix`` also
scikit-learn's and matplotlib's (read from the packages' folders, never downloaded); they are needed
only to train or to measure (``pip install 'maskrt[train]'``). Photos of drawn shapes (coins, the
chessboard, logos, the colour wheel, the phantom's ellipses, the horse silhouette) are left out, and
so is ``motorcycle_right`` (the other eye of a held-out photo). The rest are split once:
:data:`TRAIN_PHOTOS` and :data:`MORE_TRAIN_PHOTOS` are seen in training, :data:`HELD_OUT_PHOTOS`
never are.

Three data sets (``open_dataset`` specs), each a pure function of ``(seed, index)``:

- ``photoshapes:COUNT:SEED``: a third each of the plain shapes images, shapes drawn over a crop of
  a training photo, and a crop of a training photo with no shapes at all.
- ``photomix:COUNT:SEED``: the same thirds over more photos (:data:`MORE_TRAIN_PHOTOS` too:
  a portrait and colour scenes like the held-out ones), each crop colour-jittered (:func:`jitter`).
- ``photoneg:COUNT:SEED``: ``photomix`` weighted towards negatives (a quarter plain shapes images,
  a quarter shapes over a photo crop, half bare photo crops), the photo crops' channels shuffled
  half the time, and on half of every kind one to three unlabelled blobs (:func:`blobs`): flat
  shapes that are not squares, circles or triangles, drawn under the labelled shapes. The held-out
  photos' false detections are mostly flat, sharp-edged regions; the blobs teach that flatness and
  a sharp edge are not enough.
- ``photohard:COUNT:SEED``: ``photoneg`` where a third of the blobs are shaded ones
  (:func:`shaded_blobs`): squares, circles, triangles and blobs filled with a gradient or a photo
  crop. The false detections left after ``photoneg`` are mostly shaded round regions (a cup's
  coffee seen from above); the labelled shapes are always flat, so the outline is not enough either.
- ``photos:COUNT:SEED``: held-out photos and no annotations: the whole photos first, then crops.
  Every detection on it is a false one.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from maskrt.errors import MaskrtError
from maskrt.model import shapes
from maskrt.model.config import SHAPES_CLASSES

TRAIN_PHOTOS = (
    "chelsea.png",
    "rocket.jpg",
    "brick.png",
    "grass.png",
    "gravel.png",
    "moon.png",
    "page.png",
    "text.png",
    "ihc.png",
    "cell.png",
    "retina.jpg",
    "hubble_deep_field.jpg",
)
# "PACKAGE:FILE" names a sample image of another package (see :func:`photo_path`)
MORE_TRAIN_PHOTOS = (
    "clock_motion.png",
    "microaneurysms.png",
    "sklearn:china.jpg",
    "sklearn:flower.jpg",
    "matplotlib:grace_hopper.jpg",
)
HELD_OUT_PHOTOS = ("astronaut.png", "camera.png", "coffee.png", "motorcycle_left.png")
MIN_CROP = 0.25  # smallest crop side, as a fraction of the photo's side


def photo_path(name: str) -> Path:
    """The file of sample photo ``name``: ``FILE`` in scikit-image's data folder, or
    ``sklearn:FILE`` / ``matplotlib:FILE`` in scikit-learn's sample images / matplotlib's sample
    data."""
    package, _, file = name.rpartition(":")
    try:
        if package == "sklearn":
            from sklearn import datasets

            return Path(datasets.__file__).parent / "images" / file
        if package == "matplotlib":
            import matplotlib

            return Path(matplotlib.get_data_path()) / "sample_data" / file
        from skimage import data
    except ImportError:
        raise MaskrtError(
            f"the photo data sets need {package or 'scikit-image'}'s sample photos: "
            "pip install 'maskrt[train]'"
        ) from None
    return Path(data.__file__).parent / file


@functools.cache
def photo(name: str) -> np.ndarray:
    """A sample photo as uint8 RGB ``[H, W, 3]`` (grey ones repeated over the channels)."""
    path = photo_path(name)
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as exc:
        raise MaskrtError(f"{path}: cannot read this sample photo ({exc})") from None


def crop(rng: np.random.Generator, image: np.ndarray, height: int, width: int) -> np.ndarray:
    """A random crop of ``image`` (each side ``MIN_CROP`` to all of the photo's), flipped half
    the time, resized to ``height`` x ``width``."""
    rows, cols = image.shape[:2]
    h = int(rows * rng.uniform(MIN_CROP, 1.0))
    w = int(cols * rng.uniform(MIN_CROP, 1.0))
    top, left = int(rng.integers(0, rows - h + 1)), int(rng.integers(0, cols - w + 1))
    window = image[top : top + h, left : left + w]
    if rng.random() < 0.5:
        window = window[:, ::-1]
    return np.asarray(Image.fromarray(window).resize((width, height), Image.Resampling.BILINEAR))


def jitter(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """``image`` (float RGB) with random brightness, contrast and saturation (grey a fifth of the
    time), so that a few photos stand for many lightings and colourings."""
    grey = image.mean(-1, keepdims=True)
    saturation = 0.0 if rng.random() < 0.2 else rng.uniform(0.5, 1.5)
    image = grey + (image - grey) * saturation
    image = image.mean() + (image - image.mean()) * rng.uniform(0.6, 1.4)
    return np.clip(image * rng.uniform(0.7, 1.3), 0, 255)


def _photo_background(names: tuple[str, ...], jittered: bool = False) -> shapes.Background:
    def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        name = names[int(rng.integers(0, len(names)))]
        image = crop(rng, photo(name), height, width).astype(np.float32)
        return jitter(rng, image) if jittered else image

    return background


def blob(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A binary mask of one shape that is none of the three: an ellipse no rounder than 5:3 or
    an irregular polygon of five to nine corners, any rotation, centre anywhere in the image."""
    size = rng.uniform(8, min(height, width) / 3)
    cx, cy, rotation = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0, 2 * math.pi)
    if rng.random() < 0.5:
        corners = 48
        angles = np.linspace(0, 2 * math.pi, corners, endpoint=False)
        x, y = size * np.cos(angles), size * rng.uniform(0.2, 0.6) * np.sin(angles)
    else:
        corners = int(rng.integers(5, 10))
        angles = np.sort(rng.uniform(0, 2 * math.pi, corners))
        radii = size * rng.uniform(0.35, 1.0, corners)
        x, y = radii * np.cos(angles), radii * np.sin(angles)
    cos, sin = math.cos(rotation), math.sin(rotation)
    points = [(cx + a * cos - b * sin, cy + a * sin + b * cos) for a, b in zip(x, y)]
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).polygon(points, fill=1)
    return np.asarray(canvas, dtype=bool)


def blobs(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """``image`` (float RGB) with one to three :func:`blob` s painted as the shapes are
    (:func:`shapes.flat_fill`)."""
    height, width = image.shape[:2]
    for _ in range(int(rng.integers(1, 4))):
        mask = blob(rng, height, width)
        image = np.where(mask[..., None], shapes.flat_fill(rng, height, width), image)
    return image


MIN_SHADING = 24.0  # a shaded fill's least spread (std of its pixels), so it never looks flat


def _shade(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``image`` with ``mask`` filled by a jittered training-photo crop, or (when the crop is
    too flat there, and half the time anyway) a linear or radial gradient spanning the mask
    between two distant colours."""
    height, width = mask.shape
    if rng.random() < 0.5:
        fill = _photo_background(TRAIN_PHOTOS + MORE_TRAIN_PHOTOS, jittered=True)(
            rng, height, width
        )
        if float(fill[mask].std(0).mean()) >= MIN_SHADING:
            return np.where(mask[..., None], fill, image)
    inner = rng.integers(0, 256, size=3).astype(np.float32)
    u = rng.random(3).astype(np.float32)  # each channel at least 100 levels away from inner's
    outer = np.where(inner < 128, inner + 100 + u * (155 - inner), (inner - 100) * u)
    yy, xx = np.nonzero(mask)
    if rng.random() < 0.5:
        angle = rng.uniform(0, 2 * math.pi)
        t = xx * math.cos(angle) + yy * math.sin(angle)
    else:
        pick = int(rng.integers(0, len(yy)))
        t = np.hypot(xx - xx[pick], yy - yy[pick])
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    image = image.copy()
    image[yy, xx] = inner + (outer - inner) * t[:, None].astype(np.float32)
    return image


def shaded_blobs(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """``image`` (float RGB) with one to three shapes that are not flat: a square, circle or
    triangle drawn as the shapes set draws them, or a :func:`blob`, shaded by :func:`_shade`."""
    height, width = image.shape[:2]
    for _ in range(int(rng.integers(1, 4))):
        if rng.random() < 0.5:
            kind = int(rng.integers(1, len(SHAPES_CLASSES)))
            mask = shapes.draw(kind, rng, height, width).astype(bool)
        else:
            mask = blob(rng, height, width)
        if mask.any():
            image = _shade(rng, image, mask)
    return image


def _with_blobs(background: shapes.Background, shaded: bool = False) -> shapes.Background:
    """``background`` with :func:`blobs` half the time, or with ``shaded`` a third of the
    time each :func:`blobs` and :func:`shaded_blobs`."""

    def with_blobs(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        image = background(rng, height, width)
        if not shaded:
            return blobs(rng, image) if rng.random() < 0.5 else image
        pick = rng.random()
        if pick < 1 / 3:
            return image
        return blobs(rng, image) if pick < 2 / 3 else shaded_blobs(rng, image)

    return with_blobs


def _shuffled(background: shapes.Background) -> shapes.Background:
    def shuffled(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        image = background(rng, height, width)
        return image[..., rng.permutation(3)] if rng.random() < 0.5 else image

    return shuffled


def _without_shapes(image: np.ndarray) -> shapes.ShapesSample:
    height, width = image.shape[:2]
    return shapes.ShapesSample(image, np.zeros((0, height, width), np.uint8), np.zeros(0, np.int64))


def photoshapes_sample(seed: int, index: int, mix: bool = False) -> shapes.ShapesSample:
    """Image ``index`` of ``photoshapes:COUNT:SEED``, or of ``photomix:COUNT:SEED`` with ``mix``
    (see the module docstring)."""
    kind = index % 3
    if kind == 0:
        return shapes.generate(seed, index)
    background = (
        _photo_background(TRAIN_PHOTOS + MORE_TRAIN_PHOTOS, jittered=True)
        if mix
        else _photo_background(TRAIN_PHOTOS)
    )
    if kind == 1:
        return shapes.generate(seed, index, background)
    rng = np.random.default_rng([seed, index, 1])
    height, width = (int(v) for v in rng.integers(shapes.MIN_SIDE, shapes.MAX_SIDE + 1, size=2))
    return _without_shapes(background(rng, height, width).astype(np.uint8))


def photomix_sample(seed: int, index: int) -> shapes.ShapesSample:
    """Image ``index`` of ``photomix:COUNT:SEED`` (see the module docstring)."""
    return photoshapes_sample(seed, index, mix=True)


def photoneg_sample(seed: int, index: int, shaded: bool = False) -> shapes.ShapesSample:
    """Image ``index`` of ``photoneg:COUNT:SEED``, or of ``photohard:COUNT:SEED`` with
    ``shaded`` (see the module docstring)."""
    kind = index % 4
    if kind == 0:
        return shapes.generate(seed, index, _with_blobs(shapes.drawn_background, shaded))
    photo_crop = _shuffled(_photo_background(TRAIN_PHOTOS + MORE_TRAIN_PHOTOS, jittered=True))
    if kind == 1:
        return shapes.generate(seed, index, _with_blobs(photo_crop, shaded))
    rng = np.random.default_rng([seed, index, 1])
    height, width = (int(v) for v in rng.integers(shapes.MIN_SIDE, shapes.MAX_SIDE + 1, size=2))
    image = _with_blobs(photo_crop, shaded)(rng, height, width)
    return _without_shapes(np.clip(image, 0, 255).round().astype(np.uint8))


def photohard_sample(seed: int, index: int) -> shapes.ShapesSample:
    """Image ``index`` of ``photohard:COUNT:SEED`` (see the module docstring)."""
    return photoneg_sample(seed, index, shaded=True)


def held_out_sample(seed: int, index: int) -> shapes.ShapesSample:
    """Image ``index`` of ``photos:COUNT:SEED``: held-out photo ``index`` whole while there are,
    then random crops of them."""
    if index < len(HELD_OUT_PHOTOS):
        return _without_shapes(photo(HELD_OUT_PHOTOS[index]))
    rng = np.random.default_rng([seed, index])
    height, width = (int(v) for v in rng.integers(shapes.MIN_SIDE, shapes.MAX_SIDE + 1, size=2))
    return _without_shapes(_photo_background(HELD_OUT_PHOTOS)(rng, height, width).astype(np.uint8))
