"""COCO-format instance data for training and evaluation.

Any COCO instances JSON plus an image folder (polygon or RLE segmentations, crowd flags, images
without annotations), or a data set generated in memory: the synthetic shapes set
(``shapes:COUNT:SEED``) and the photo sets of :mod:`maskrt.model.photos` (``photoshapes:…``,
``photomix:…``, ``photoneg:…``, ``photohard:…``, ``photos:…``). Category ids are mapped to
contiguous 1-based class ids in ascending id order, as torchvision's references do.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from maskrt.errors import MaskrtError
from maskrt.model import shapes


@dataclass
class Sample:
    image: np.ndarray  # uint8 [H, W, 3] RGB
    boxes: np.ndarray  # float32 [N, 4] x1 y1 x2 y2
    labels: np.ndarray  # int64 [N], contiguous class ids
    masks: np.ndarray  # uint8 [N, H, W]
    image_id: int


class CocoInstances(torch.utils.data.Dataset):
    """A COCO instances data set: ``__getitem__`` gives a :class:`Sample` (crowds left out)."""

    def __init__(self, coco: COCO, image_dir: Path | None, source: str):
        self.coco = coco
        self.image_dir = image_dir
        self.source = source
        self.image_ids = sorted(coco.imgs)
        cat_ids = sorted(coco.cats)
        self.cat_to_class = {cat: i + 1 for i, cat in enumerate(cat_ids)}
        self.class_to_cat = {v: k for k, v in self.cat_to_class.items()}
        self.classes = ("__background__", *(coco.cats[c]["name"] for c in cat_ids))
        unknown = sorted({a["category_id"] for a in coco.anns.values()} - set(cat_ids))
        if unknown:
            raise MaskrtError(
                f"{source}: annotations use category ids {unknown} that are not in 'categories'"
            )

    def __len__(self) -> int:
        return len(self.image_ids)

    def load_image(self, image_id: int) -> np.ndarray:
        info = self.coco.imgs[image_id]
        path = self.image_dir / info["file_name"]
        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"))
        except FileNotFoundError:
            raise MaskrtError(f"{path}: image file missing (listed in {self.source})") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise MaskrtError(f"{path}: unreadable image ({exc})") from None

    def __getitem__(self, index: int) -> Sample:
        image_id = self.image_ids[index]
        image = self.load_image(image_id)
        height, width = image.shape[:2]
        anns = [
            a
            for a in self.coco.imgToAnns.get(image_id, [])
            if not a.get("iscrowd", 0) and a["bbox"][2] >= 1 and a["bbox"][3] >= 1
        ]
        masks = np.zeros((len(anns), height, width), np.uint8)
        boxes = np.zeros((len(anns), 4), np.float32)
        for k, ann in enumerate(anns):
            masks[k] = _ann_to_mask(ann, height, width)
            x, y, w, h = ann["bbox"]
            boxes[k] = (x, y, x + w, y + h)
        labels = np.asarray([self.cat_to_class[a["category_id"]] for a in anns], np.int64)
        return Sample(image, boxes, labels, masks, image_id)


class ShapesInstances(CocoInstances):
    """A set generated in memory (``KIND:COUNT:SEED``): same interface, no files."""

    def __init__(self, count: int, seed: int, kind: str = "shapes"):
        data, self._pixels = shapes.coco_dataset(count, seed, _generators()[kind])
        super().__init__(_coco_from_dict(data), None, f"{kind}:{count}:{seed}")

    def load_image(self, image_id: int) -> np.ndarray:
        return self._pixels[image_id - 1]


def _ann_to_mask(ann: dict, height: int, width: int) -> np.ndarray:
    segm = ann["segmentation"]
    if isinstance(segm, list):  # polygons
        rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    elif isinstance(segm["counts"], list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segm, height, width)
    else:
        rle = segm
    return mask_utils.decode(rle)


def _coco_from_dict(data: dict) -> COCO:
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


def _generators() -> dict[str, Callable[[int, int], shapes.ShapesSample]]:
    from maskrt.model import photos

    return {
        "shapes": shapes.generate,
        "photoshapes": photos.photoshapes_sample,
        "photomix": photos.photomix_sample,
        "photoneg": photos.photoneg_sample,
        "photohard": photos.photohard_sample,
        "photos": photos.held_out_sample,
    }


def _split_files(root: Path) -> list[Path]:
    return sorted((root / "annotations").glob("instances_*.json"))


def coco_files(spec: str, images: Path | None = None, split: str = "train") -> tuple[Path, Path]:
    """The annotations JSON and image folder that ``spec`` names.

    ``spec`` is a COCO folder in the standard layout (``annotations/instances_<split>.json`` beside
    ``<split>/``; with several splits, the one whose name starts with ``split``), a folder with
    ``annotations.json`` beside the images, or an annotations JSON: its images are ``images`` when
    given, else ``<root>/<split>/`` for ``<root>/annotations/instances_<split>.json``, else the
    JSON's own folder.
    """
    path = Path(spec)
    if path.is_dir():
        if (path / "annotations.json").is_file():
            path = path / "annotations.json"
        else:
            found = _split_files(path)
            chosen = [f for f in found if f.stem.removeprefix("instances_").startswith(split)]
            if len(found) == 1:
                path = found[0]
            elif len(chosen) == 1:
                path = chosen[0]
            else:
                names = ", ".join(f.name for f in found) or "none"
                raise MaskrtError(
                    f"{spec}: expected annotations.json or one annotations/instances_{split}*.json "
                    f"(found: {names}); name the file: --data FILE.json --images DIR"
                )
    if not path.is_file():
        raise MaskrtError(f"{path}: no such COCO annotations file")
    if images is None:
        split_dir = path.parent.parent / path.stem.removeprefix("instances_")
        standard = path.parent.name == "annotations" and path.stem.startswith("instances_")
        images = split_dir if standard and split_dir.is_dir() else path.parent
    if not images.is_dir():
        raise MaskrtError(f"{images}: no such image folder")
    return path, images


def open_dataset(spec: str, images: Path | None = None, split: str = "train") -> CocoInstances:
    """A generated set (``KIND:COUNT:SEED``, KIND one of shapes, photoshapes, photomix, photoneg,
    photohard, photos) or COCO files (:func:`coco_files`)."""
    kind, _, rest = spec.partition(":")
    if kind in _generators():
        try:
            count, seed = (int(v) for v in rest.split(":"))
        except ValueError:
            raise MaskrtError(f"bad data spec {spec!r}: expected {kind}:COUNT:SEED") from None
        return ShapesInstances(count, seed, kind)
    json_path, image_dir = coco_files(spec, images, split)
    try:
        data = json.loads(json_path.read_text())
        for key in ("images", "annotations", "categories"):
            if not isinstance(data.get(key), list):
                raise MaskrtError(f"{json_path}: not a COCO instances file (no '{key}' list)")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MaskrtError(f"{json_path}: not valid JSON ({exc})") from None
    return CocoInstances(_coco_from_dict(data), image_dir, str(json_path))
