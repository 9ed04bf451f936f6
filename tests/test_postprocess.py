"""Post-processing (maskrt.runtime.postprocess) against torchvision + pycocotools, exactly.

The reference for every mask is what torchvision's eager Mask R-CNN and its detection references
produce: ``paste_masks_in_image(masks[:, None], boxes_orig, (H, W))[:, 0] > 0.5`` then
``pycocotools.mask.encode`` of the full mask in Fortran order.
"""

from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import expand_boxes, paste_masks_in_image

from maskrt.model.letterbox import Letterbox, boxes_to_original
from maskrt.runtime import postprocess as pp
from maskrt.runtime.backends.base import DeployOutputs
from maskrt.runtime.postprocess import geometry, recipes, transitions

STRATEGIES = ("interpolate", "vectorized")


# ----------------------------------------------------------------------------------- helpers


def reference_binary(masks: torch.Tensor, boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return (paste_masks_in_image(masks.float()[:, None], boxes, (h, w))[:, 0] > 0.5).cpu()


def coco(mask: torch.Tensor | np.ndarray) -> dict:
    m = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask, dtype=np.uint8)
    rle = mask_util.encode(np.asfortranarray(m))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def paste_masks_binary(
    masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int], *, strategy: str
) -> torch.Tensor:
    """Whole ``[N, H, W]`` bool masks (host) from our transitions, to compare with
    ``paste_masks_in_image(masks[:, None], boxes, image_size)[:, 0] > 0.5``."""
    h, w = image_size
    geom = geometry.paste_geometry(
        boxes.detach().cpu().numpy(), np.int64(h), np.int64(w), masks.shape[-1]
    )
    lin, ids = transitions.paste_transitions(masks, geom, strategy=strategy)
    out = np.zeros((len(geom), h * w), dtype=np.int8)
    order = np.lexsort((lin, ids))
    lin, ids = lin[order], ids[order]
    # Alternate +1/-1 at each mask's transitions, then a running sum gives the mask.
    sign = np.ones(len(lin), dtype=np.int8)
    first = np.r_[True, ids[1:] != ids[:-1]]
    rank = np.arange(len(lin)) - np.maximum.accumulate(np.where(first, np.arange(len(lin)), 0))
    sign[rank % 2 == 1] = -1
    inside = lin < h * w
    np.add.at(out, (ids[inside], lin[inside]), sign[inside])
    full = np.cumsum(out, axis=1, dtype=np.int32) > 0
    return torch.from_numpy(full.reshape(len(geom), w, h).transpose(0, 2, 1).copy())


def random_boxes(rng: np.random.Generator, n: int, h: int, w: int) -> torch.Tensor:
    """Boxes of every awkward kind; each still overlaps the image (torchvision's own paste
    misbehaves for boxes wholly outside, which boxes_to_original never produces)."""
    out = np.empty((n, 4), np.float64)
    for i in range(n):
        kind = i % 7
        if kind == 0:  # inside, log-uniform size
            bw, bh = (
                np.exp(rng.uniform(np.log(0.5), np.log(max(w, 1.0)))),
                np.exp(rng.uniform(np.log(0.5), np.log(max(h, 1.0)))),
            )
            x0, y0 = rng.uniform(0, max(w - bw, 0)), rng.uniform(0, max(h - bh, 0))
            box = [x0, y0, x0 + bw, y0 + bh]
        elif kind == 1:  # crossing the border
            x0, y0 = rng.uniform(-w / 2, w - 1), rng.uniform(-h / 2, h - 1)
            box = [
                x0,
                y0,
                rng.uniform(max(x0, 0) + 0.1, 1.5 * w),
                rng.uniform(max(y0, 0) + 0.1, 1.5 * h),
            ]
        elif kind == 2:  # tiny, under a pixel
            x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
            box = [x0, y0, x0 + rng.uniform(0, 1), y0 + rng.uniform(0, 1)]
        elif kind == 3:  # the full image
            box = [0, 0, w, h]
        elif kind == 4:  # touching the borders
            x0, y1 = rng.uniform(0, w), rng.uniform(0, h)
            box = [x0, 0, w, y1] if rng.random() < 0.5 else [0, y1 * 0.5, x0, h]
        elif kind == 5:  # larger than the image on all sides
            box = [
                -rng.uniform(0, w),
                -rng.uniform(0, h),
                w + rng.uniform(0, w),
                h + rng.uniform(0, h),
            ]
        else:  # small boxes around the h + w <= 128 kernel switch
            s = rng.uniform(20, 70)
            x0, y0 = rng.uniform(-10, w), rng.uniform(-10, h)
            box = [x0, y0, x0 + s * rng.uniform(0.5, 1.5), y0 + s * rng.uniform(0.5, 1.5)]
        out[i] = box
    return torch.from_numpy(out.astype(np.float32))


def whole_box_tables(h: int, w: int, src_fma: bool) -> tuple[tuple, tuple]:
    """Column and row tables of one whole ``h x w`` output (no clipping) from a 30x30 input."""
    one = np.zeros(1, np.int64)
    cols = geometry.axis_tables(30, one + w, one, one + w, w, src_fma)
    rows = geometry.axis_tables(30, one + h, one, one + h, h, src_fma)
    return (tuple(torch.from_numpy(t) for t in cols), tuple(torch.from_numpy(t) for t in rows))


def random_masks(gen: torch.Generator, n: int, m: int = 28) -> torch.Tensor:
    """Uniform noise, smooth mask-like maps, binary maps, constant 0.5, maps sprinkled with
    exact 0.5: everything that sits on or near the threshold."""
    masks = torch.rand(n, m, m, generator=gen)
    smooth = torch.sigmoid(
        F.interpolate(
            torch.randn(n, 1, 5, 5, generator=gen) * 4,
            size=(m, m),
            mode="bilinear",
            align_corners=False,
        )[:, 0]
    )
    masks[1::5] = smooth[1::5]
    masks[2::5] = (masks[2::5] > 0.5).float()
    masks[3::5] = 0.5
    half = torch.rand(n, m, m, generator=gen) < 0.3
    masks[4::5] = torch.where(half[4::5], torch.full_like(masks[4::5], 0.5), masks[4::5])
    return masks


# -------------------------------------------------------------------------------- geometry


def test_expand_boxes_int_matches_torchvision() -> None:
    rng = np.random.default_rng(0)
    boxes = (rng.standard_normal((20000, 4)) * 800).astype(np.float32)
    boxes[:, 2:] = boxes[:, :2] + np.abs(boxes[:, 2:])
    boxes[:100] = rng.uniform(0, 1, (100, 4)).astype(np.float32)
    for m in (14, 28, 56):
        ref = expand_boxes(torch.from_numpy(boxes), (m + 2) / m).to(torch.int64).numpy()
        assert np.array_equal(geometry.expand_boxes_int(boxes, m), ref)


# ------------------------------------------------------------------------------ the paste


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_paste_matches_torchvision(strategy: str) -> None:
    rng = np.random.default_rng(1)
    gen = torch.Generator().manual_seed(1)
    sizes = [(1, 1), (1, 40), (40, 1), (3, 7)] + [
        (int(a), int(b)) for a, b in rng.integers(2, 260, (26, 2))
    ]
    for h, w in sizes:
        boxes = random_boxes(rng, 21, h, w)
        masks = random_masks(gen, len(boxes))
        ours = paste_masks_binary(masks, boxes, (h, w), strategy=strategy)
        ref = reference_binary(masks, boxes, h, w)
        assert torch.equal(ours, ref), (h, w, (ours != ref).sum().item())


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_paste_full_hd(strategy: str) -> None:
    rng = np.random.default_rng(2)
    gen = torch.Generator().manual_seed(2)
    boxes = random_boxes(rng, 14, 1080, 1920)
    masks = random_masks(gen, len(boxes))
    ours = paste_masks_binary(masks, boxes, (1080, 1920), strategy=strategy)
    assert torch.equal(ours, reference_binary(masks, boxes, 1080, 1920))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_paste_fp16_masks(strategy: str) -> None:
    rng = np.random.default_rng(3)
    gen = torch.Generator().manual_seed(3)
    boxes = random_boxes(rng, 28, 97, 131)
    masks = random_masks(gen, len(boxes)).half()
    ours = paste_masks_binary(masks, boxes, (97, 131), strategy=strategy)
    assert torch.equal(ours, reference_binary(masks, boxes, 97, 131))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_paste_other_mask_sizes(strategy: str) -> None:
    rng = np.random.default_rng(4)
    gen = torch.Generator().manual_seed(4)
    for m in (14, 56):
        boxes = random_boxes(rng, 14, 120, 90)
        masks = random_masks(gen, len(boxes), m)
        ours = paste_masks_binary(masks, boxes, (120, 90), strategy=strategy)
        assert torch.equal(ours, reference_binary(masks, boxes, 120, 90)), m


def test_vectorized_falls_back_per_box_without_a_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(recipes._CALIBRATED, "cpu/28", {"small": None, "large": None})
    rng = np.random.default_rng(5)
    gen = torch.Generator().manual_seed(5)
    boxes = random_boxes(rng, 21, 150, 170)
    masks = random_masks(gen, len(boxes))
    ours = paste_masks_binary(masks, boxes, (150, 170), strategy="vectorized")
    assert torch.equal(ours, reference_binary(masks, boxes, 150, 170))


def test_calibrated_recipes_reproduce_interpolate_bit_for_bit() -> None:
    """Beyond the probe sizes the calibration used: the float values themselves, not only
    their side of 0.5."""
    found = recipes.recipes_for("cpu")
    rng = np.random.default_rng(6)
    gen = torch.Generator().manual_seed(6)
    for regime, recipe in found.items():
        if recipe is None:  # this CPU build has no recipe: the per-box fallback covers it
            continue
        for _ in range(25):
            if regime == "small":
                h = int(rng.integers(1, recipes.SMALL_SUM))
                w = int(rng.integers(1, recipes.SMALL_SUM - h + 1))
            else:
                h = int(rng.integers(1, 500))
                w = int(rng.integers(max(recipes.SMALL_SUM + 1 - h, 1), 500))
            padded = F.pad(random_masks(gen, 5), (1, 1, 1, 1))
            cols, rows = whole_box_tables(h, w, recipe.src_fma)
            for j in range(5):
                ref = F.interpolate(
                    padded[j][None, None], size=(h, w), mode="bilinear", align_corners=False
                )[0, 0]
                got = recipes.bilinear_windows(padded[j : j + 1], cols, rows, recipe)[0].t()
                assert torch.equal(got, ref), (regime, recipe, h, w)


@pytest.mark.parametrize("recipe", recipes.CANDIDATES, ids=str)
def test_every_candidate_recipe_is_bilinear(recipe: recipes.Recipe) -> None:
    """Candidates this CPU never picks (CUDA's) still compute the same bilinear values to
    within float32 rounding."""
    gen = torch.Generator().manual_seed(7)
    padded = F.pad(random_masks(gen, 4), (1, 1, 1, 1))
    for h, w in ((17, 45), (301, 77)):
        cols, rows = whole_box_tables(h, w, recipe.src_fma)
        ref = F.interpolate(padded[:1, None], size=(h, w), mode="bilinear", align_corners=False)[
            0, 0
        ]
        got = recipes.bilinear_windows(padded[:1], cols, rows, recipe)[0].t()
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)


def test_bucket_plan_covers_every_window_once() -> None:
    rng = np.random.default_rng(8)
    ww, hr = rng.integers(1, 900, 300), rng.integers(2, 900, 300)
    for overhead in (0, 1 << 15, 1 << 22):
        buckets = transitions.plan_buckets(ww, hr, overhead)
        assert sorted(np.concatenate(buckets).tolist()) == list(range(300))
        for b in buckets:
            assert (
                len(b) == 1 or len(b) * ww[b].max() * hr[b].max() <= transitions.MAX_BUCKET_VOLUME
            )


# ------------------------------------------------------------------- the postprocess API


def fake_outputs(
    gen: torch.Generator,
    rng: np.random.Generator,
    letterboxes: list[Letterbox],
    k: int = 24,
    m: int = 28,
    valid: list[int] | None = None,
    dtype: torch.dtype = torch.float32,
) -> DeployOutputs:
    """Deploy-graph-shaped outputs: boxes in canvas pixels inside each image's resized area,
    descending scores, garbage in the padded rows."""
    bsz = len(letterboxes)
    boxes = torch.empty(bsz, k, 4)
    for b, lb in enumerate(letterboxes):
        boxes[b] = random_boxes(rng, k, lb.resized_height, lb.resized_width)
        boxes[b, :, 0::2] = boxes[b, :, 0::2].clamp(0, lb.resized_width)
        boxes[b, :, 1::2] = boxes[b, :, 1::2].clamp(0, lb.resized_height)
    scores = torch.sort(torch.rand(bsz, k, generator=gen), dim=1, descending=True).values
    classes = torch.randint(1, 5, (bsz, k), generator=gen, dtype=torch.int32)
    masks = random_masks(gen, bsz * k, m).view(bsz, k, m, m).to(dtype)
    num = torch.tensor(valid if valid is not None else [k] * bsz, dtype=torch.int32)
    for b, n in enumerate(num.tolist()):  # padded rows: must never show up
        boxes[b, n:] = 1e6
        scores[b, n:] = 2.0
        classes[b, n:] = -7
    return DeployOutputs(num, boxes, scores, classes, masks)


def reference_records(
    out: DeployOutputs, b: int, lb: Letterbox, threshold: float, limit: int | None
) -> list[dict]:
    n = int(out.num_detections[b])
    scores = out.scores[b, :n]
    keep = torch.nonzero(scores.double() >= threshold).view(-1)
    if limit is not None:
        keep = keep[:limit]
    boxes = boxes_to_original(out.boxes[b, keep], lb)
    full = reference_binary(out.masks[b, keep], boxes, lb.height, lb.width)
    return [
        {"box": box, "score": s, "class_id": c, "mask": coco(mk)}
        for box, s, c, mk in zip(
            boxes.tolist(), out.scores[b, keep].tolist(), out.classes[b, keep].tolist(), full
        )
    ]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_postprocess_image_matches_torchvision_and_pycocotools(strategy: str) -> None:
    rng = np.random.default_rng(10)
    gen = torch.Generator().manual_seed(10)
    for width, height in ((640, 480), (200, 300), (7, 5), (333, 1), (1920, 1080)):
        lb = Letterbox.fit(width, height, 320)
        k = 24 if width < 1000 else 10
        out = fake_outputs(gen, rng, [lb], k=k, valid=[k - 5])
        got = pp.postprocess_image(
            out.boxes[0],
            out.scores[0],
            out.classes[0],
            out.masks[0],
            int(out.num_detections[0]),
            lb,
            strategy=strategy,
        )
        assert got == reference_records(out, 0, lb, 0.0, None), (width, height)


def test_score_threshold_and_max_detections() -> None:
    rng = np.random.default_rng(11)
    gen = torch.Generator().manual_seed(11)
    lb = Letterbox.fit(300, 200, 256)
    out = fake_outputs(gen, rng, [lb], k=20, valid=[15])
    out.scores[0, :15] = torch.linspace(0.95, 0.25, 15)
    t = float(out.scores[0, 6])  # a score exactly at the threshold is kept
    got = pp.postprocess_image(
        out.boxes[0],
        out.scores[0],
        out.classes[0],
        out.masks[0],
        out.num_detections[0],
        lb,
        score_threshold=t,
    )
    assert [d["score"] for d in got] == out.scores[0, :7].tolist()
    assert got == reference_records(out, 0, lb, t, None)
    got = pp.postprocess_image(
        out.boxes[0],
        out.scores[0],
        out.classes[0],
        out.masks[0],
        15,
        lb,
        score_threshold=0.3,
        max_detections=4,
    )
    assert got == reference_records(out, 0, lb, 0.3, 4) and len(got) == 4
    assert (
        pp.postprocess_image(
            out.boxes[0], out.scores[0], out.classes[0], out.masks[0], 15, lb, max_detections=0
        )
        == []
    )
    assert (
        pp.postprocess_image(
            out.boxes[0], out.scores[0], out.classes[0], out.masks[0], 15, lb, score_threshold=0.99
        )
        == []
    )
    assert (
        pp.postprocess_image(out.boxes[0], out.scores[0], out.classes[0], out.masks[0], 0, lb) == []
    )


def test_without_masks_and_with_labels() -> None:
    rng = np.random.default_rng(12)
    gen = torch.Generator().manual_seed(12)
    lb = Letterbox.fit(64, 48, 128)
    out = fake_outputs(gen, rng, [lb], k=6)
    names = ["__background__", "square", "circle", "triangle"]
    got = pp.postprocess_image(
        out.boxes[0],
        out.scores[0],
        out.classes[0],
        out.masks[0],
        6,
        lb,
        want_masks=False,
        labels=names,
    )
    ref = reference_records(out, 0, lb, 0.0, None)
    assert [set(d) for d in got] == [{"box", "score", "class_id", "label"}] * 6
    for d, r in zip(got, ref):
        assert (d["box"], d["score"], d["class_id"]) == (r["box"], r["score"], r["class_id"])
        assert d["label"] == (names[r["class_id"]] if r["class_id"] < 4 else str(r["class_id"]))
    no_masks = pp.postprocess_image(out.boxes[0], out.scores[0], out.classes[0], None, 6, lb)
    assert all("mask" not in d for d in no_masks) and len(no_masks) == 6


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_batch_equals_per_image_with_per_image_parameters(strategy: str) -> None:
    rng = np.random.default_rng(13)
    gen = torch.Generator().manual_seed(13)
    lbs = [Letterbox.fit(640, 480, 320), Letterbox.fit(100, 300, 320), Letterbox.fit(50, 50, 320)]
    out = fake_outputs(gen, rng, lbs, k=16, valid=[16, 9, 0], dtype=torch.float16)
    got = pp.postprocess_batch(
        out,
        lbs,
        score_threshold=[0.0, 0.4, 0.0],
        max_detections=[None, 3, 5],
        want_masks=[True, True, False],
        strategy=strategy,
    )
    assert got[0] == reference_records(out, 0, lbs[0], 0.0, None)
    assert got[1] == reference_records(out, 1, lbs[1], 0.4, 3)
    assert got[2] == []
    with pytest.raises(ValueError):
        pp.postprocess_batch(out, lbs, score_threshold=[0.1, 0.2])


def test_degenerate_boxes_give_valid_empty_masks() -> None:
    lb = Letterbox.fit(40, 30, 40)
    # Zero width at the right edge, zero height at the bottom, a sliver in the corner, a point.
    boxes = torch.tensor(
        [[40.0, 0, 40, 30], [0, 30, 40, 30], [39.9, 29.9, 40, 30], [10, 10, 10, 10]]
    )
    k = len(boxes)
    masks = torch.ones(k, 28, 28)
    got = pp.postprocess_image(
        boxes, torch.full((k,), 0.9), torch.ones(k, dtype=torch.int32), masks, k, lb
    )
    orig = boxes_to_original(boxes, lb)
    ref = reference_binary(masks, orig, 30, 40)
    assert [d["mask"] for d in got] == [coco(m) for m in ref]


# ------------------------------------------------------------------------------------ GPU


@pytest.mark.gpu
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_paste_matches_torchvision_on_cuda(strategy: str) -> None:
    rng = np.random.default_rng(20)
    gen = torch.Generator().manual_seed(20)
    for h, w in [(1, 1), (1, 40), (97, 131), (480, 640), (1080, 1920)] + [
        (int(a), int(b)) for a, b in rng.integers(2, 400, (10, 2))
    ]:
        boxes = random_boxes(rng, 21, h, w).cuda()
        masks = random_masks(gen, len(boxes)).cuda()
        assert torch.equal(
            paste_masks_binary(masks, boxes, (h, w), strategy=strategy),
            reference_binary(masks, boxes, h, w),
        ), (h, w)
        half = masks.half()
        assert torch.equal(
            paste_masks_binary(half, boxes, (h, w), strategy=strategy),
            reference_binary(half, boxes, h, w),
        ), (h, w, "float16")


@pytest.mark.gpu
def test_cuda_has_a_recipe() -> None:
    """Without one the GPU path is still exact (per-box F.interpolate) but slow: add the CUDA
    kernel's evaluation order to CANDIDATES."""
    found = recipes.recipes_for("cuda")
    assert found["small"] is not None and found["large"] is not None, found


@pytest.mark.gpu
def test_postprocess_batch_on_cuda() -> None:
    rng = np.random.default_rng(21)
    gen = torch.Generator().manual_seed(21)
    lbs = [Letterbox.fit(1920, 1080, 800), Letterbox.fit(480, 640, 800)]
    out = fake_outputs(gen, rng, lbs, k=50, valid=[50, 31])
    cuda_out = DeployOutputs(*(t.cuda() for t in out))
    got = pp.postprocess_batch(cuda_out, lbs, score_threshold=0.1)
    for b, lb in enumerate(lbs):
        assert got[b] == reference_records(cuda_out, b, lb, 0.1, None)
