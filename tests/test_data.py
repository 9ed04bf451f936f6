"""The shapes set and COCO-format loading, including the ways a data set can be broken."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from maskrt.errors import MaskrtError
from maskrt.model import photos, shapes
from maskrt.model.coco import open_dataset


def test_shapes_are_deterministic_by_seed_and_index():
    a, b, c = shapes.generate(7, 3), shapes.generate(7, 3), shapes.generate(8, 3)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.masks, b.masks)
    assert not np.array_equal(a.image, c.image)


def test_instance_masks_are_disjoint_visible_pixels():
    counts = []
    for i in range(30):
        sample = shapes.generate(0, i)
        assert len(sample.masks) == len(sample.labels) <= shapes.MAX_INSTANCES
        assert sample.masks.sum(0).max(initial=0) <= 1  # occluded pixels belong to the top shape
        assert (sample.masks.sum((1, 2)) >= shapes.MIN_VISIBLE_PIXELS).all()  # no sliver labelled
        assert set(np.unique(sample.labels)) <= {1, 2, 3}
        counts.append(len(sample.labels))
    assert max(counts) >= 3  # crowded images, where shapes overlap: the checks above bite


def test_cli_writes_coco_that_loads_back_exactly(tmp_path):
    out = tmp_path / "shapes"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "maskrt",
            "datasets",
            "shapes",
            "--out",
            str(out),
            "--count",
            "6",
            "--seed",
            "4",
        ],
        check=True,
        capture_output=True,
    )
    data = open_dataset(str(out))
    assert len(data) == 6 and data.classes == ("__background__", "square", "circle", "triangle")
    for index in range(6):
        sample, expected = data[index], shapes.generate(4, index)
        assert np.array_equal(sample.image, expected.image)  # PNG is lossless
        assert np.array_equal(sample.masks, expected.masks)
        assert np.array_equal(sample.labels, expected.labels)


def _write(tmp_path, annotations, categories=None, images=None):
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "a.png")
    data = {
        "images": images
        or [
            {"id": 1, "file_name": "a.png", "width": 30, "height": 20},
            {"id": 2, "file_name": "a.png", "width": 30, "height": 20},
        ],
        "annotations": annotations,
        "categories": categories or [{"id": 5, "name": "cat"}, {"id": 9, "name": "dog"}],
    }
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(data))
    return path


def test_polygons_rle_crowds_and_empty_images(tmp_path):
    rle = mask_utils.encode(
        np.asfortranarray(np.pad(np.ones((5, 5), np.uint8), ((2, 13), (3, 22))))
    )
    anns = [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 9,
            "bbox": [10, 2, 10, 8],
            "iscrowd": 0,
            "area": 80,
            "segmentation": [[10, 2, 20, 2, 20, 10, 10, 10]],
        },
        {
            "id": 2,
            "image_id": 1,
            "category_id": 5,
            "bbox": [3, 2, 5, 5],
            "iscrowd": 0,
            "area": 25,
            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
        },
        {
            "id": 3,
            "image_id": 1,
            "category_id": 5,
            "bbox": [0, 0, 30, 20],
            "iscrowd": 1,
            "area": 600,
            "segmentation": {"size": [20, 30], "counts": [0, 600]},
        },
    ]
    data = open_dataset(str(_write(tmp_path, anns)))
    first, empty = data[0], data[1]
    assert list(first.labels) == [
        2,
        1,
    ]  # dog -> 2, cat -> 1 (ascending category id); crowd left out
    assert first.masks[1].sum() == 25 and first.masks[0][5, 15] == 1
    assert first.boxes.tolist()[1] == [3, 2, 8, 7]
    assert empty.masks.shape == (0, 20, 30) and empty.boxes.shape == (0, 4)


def test_unknown_category_id_is_named(tmp_path):
    anns = [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 77,
            "bbox": [0, 0, 2, 2],
            "iscrowd": 0,
            "area": 4,
            "segmentation": [[0, 0, 2, 0, 2, 2]],
        }
    ]
    with pytest.raises(
        MaskrtError, match=r"annotations\.json: annotations use category ids \[77\]"
    ):
        open_dataset(str(_write(tmp_path, anns)))


def test_missing_and_unreadable_images_are_named(tmp_path):
    images = [
        {"id": 1, "file_name": "gone.png", "width": 30, "height": 20},
        {"id": 2, "file_name": "broken.png", "width": 30, "height": 20},
    ]
    data = open_dataset(str(_write(tmp_path, [], images=images)))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(MaskrtError, match=r"gone\.png: image file missing"):
        data[0]
    with pytest.raises(MaskrtError, match=r"broken\.png: unreadable image"):
        data[1]


def test_not_coco_json(tmp_path):
    (tmp_path / "x.json").write_text('{"images": []}')
    with pytest.raises(MaskrtError, match=r"x\.json: not a COCO instances file"):
        open_dataset(str(tmp_path / "x.json"))
    with pytest.raises(MaskrtError, match="expected shapes:COUNT:SEED"):
        open_dataset("shapes:ten")


def test_photomix_thirds_over_more_photos_never_the_held_out_ones():
    data = open_dataset("photomix:9:3")
    assert data.classes == ("__background__", "square", "circle", "triangle")
    again = open_dataset("photomix:9:3")
    for index in range(9):
        sample = data[index]
        assert np.array_equal(sample.image, again[index].image)  # a pure function of (seed, i)
        assert (len(sample.labels) == 0) == (index % 3 == 2)  # every third is a bare photo
    plain = data[0]
    assert np.array_equal(plain.image, shapes.generate(3, 0).image)
    seen = {photos.photo_path(n).name for n in photos.TRAIN_PHOTOS + photos.MORE_TRAIN_PHOTOS}
    assert all(photos.photo_path(n).is_file() for n in photos.MORE_TRAIN_PHOTOS)
    assert not seen & {*photos.HELD_OUT_PHOTOS, "motorcycle_right.png"}


def test_jitter_keeps_pixels_in_range_and_changes_them():
    rng = np.random.default_rng(0)
    image = photos.photo("chelsea.png")[:64, :64].astype(np.float32)
    out = photos.jitter(rng, image)
    assert out.shape == image.shape and out.min() >= 0 and out.max() <= 255
    assert not np.allclose(out, image)


@pytest.mark.parametrize("kind", ["photoneg", "photohard"])
def test_half_negatives_and_unlabelled_blobs(kind):
    data = open_dataset(f"{kind}:8:3")
    again = open_dataset(f"{kind}:8:3")
    for index in range(8):
        sample = data[index]
        assert np.array_equal(sample.image, again[index].image)  # a pure function of (seed, i)
        assert (len(sample.labels) == 0) == (index % 4 >= 2)  # half are bare photos


def test_shaded_blobs_are_never_flat():
    """A shaded square, circle or triangle must not pass for a labelled (flat) one."""
    rng = np.random.default_rng(0)
    grey = np.full((128, 128, 3), 128.0)
    for _ in range(20):
        image = photos.shaded_blobs(rng, grey)
        changed = (image != grey).any(-1)
        if changed.sum() >= 50:
            assert image[changed].std(0).mean() >= 10
    assert not np.array_equal(photos.blobs(np.random.default_rng(1), grey), grey)
