"""``torch.ops.maskrt.multilevel_roi_align`` equals torchvision's ``MultiScaleRoIAlign`` (the pooler of
torchvision's Mask R-CNN), including RoIs on the level boundaries, degenerate and out-of-image RoIs."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import LevelMapper

import maskrt.model.roi_align  # noqa: F401  (registers the op)
from maskrt.model.roi_align import pooler_params, roi_levels

CANVAS = 256
LEVELS = 4


def _features(
    batch: int, channels: int = 8, dtype=torch.float32, device="cpu"
) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [
        torch.randn(batch, channels, CANVAS >> (2 + i), CANVAS >> (2 + i), generator=g).to(
            device, dtype
        )
        for i in range(LEVELS)
    ]


def _boxes(batch: int, per_image: int) -> torch.Tensor:
    """[B, R, 4]: random boxes plus boxes whose sqrt(area) sits exactly on, just under and just over
    the level thresholds (112, 224, 448), degenerate (zero width and/or height) and partly or wholly
    outside the canvas."""
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(batch, per_image, 2, generator=g) * CANVAS
    wh = torch.rand(batch, per_image, 2, generator=g) ** 2 * CANVAS
    boxes = torch.cat([xy, xy + wh], -1)
    special = []
    for side in (56.0, 112.0, 224.0, 448.0):
        for eps in (0.0, -1e-3, 1e-3, -1e-5, 1e-5):
            x0 = float(torch.rand(1, generator=g)) * 100
            special.append([x0, 10.0, x0 + side + eps, 10.0 + side])  # sqrt(area) ~ side
        special.append([5.0, 7.0, 5.0 + side / 2, 7.0 + side * 2])  # same area, not square
    special += [
        [30.0, 40.0, 30.0, 90.0],  # zero width
        [30.0, 40.0, 80.0, 40.0],  # zero height
        [50.0, 50.0, 50.0, 50.0],  # a point
        [-60.0, -40.0, -5.0, -2.0],  # wholly outside, top left
        [-20.0, 100.0, 40.0, 180.0],  # partly outside
        [CANVAS - 10.0, CANVAS - 30.0, CANVAS + 70.0, CANVAS + 5.0],  # over the bottom right
        [CANVAS + 5.0, 10.0, CANVAS + 90.0, 60.0],  # wholly outside, right
        [0.0, 0.0, float(CANVAS), float(CANVAS)],  # the whole canvas
        [-500.0, -500.0, 900.0, 900.0],  # huge
        [3.3, 4.4, 3.31, 4.41],  # tiny
    ]
    special = torch.tensor(special).expand(batch, -1, -1)
    return torch.cat([boxes, special], 1).contiguous()


def _torchvision(features, boxes, output_size, sampling_ratio):
    pool = MultiScaleRoIAlign([str(i) for i in range(LEVELS)], output_size, sampling_ratio)
    fmap = {str(i): f for i, f in enumerate(features)}
    out = pool(fmap, list(boxes.unbind(0)), [(CANVAS, CANVAS)] * boxes.shape[0])
    return out.reshape(boxes.shape[0], boxes.shape[1], *out.shape[1:]), pool


@pytest.mark.parametrize("output_size, sampling_ratio", [(7, 2), (14, 2), (7, 0), (5, 1)])
def test_equals_multiscale_roi_align(output_size, sampling_ratio):
    features = _features(batch=3)
    boxes = _boxes(batch=3, per_image=40)
    expected, pool = _torchvision(features, boxes, output_size, sampling_ratio)
    params = pooler_params(pool)
    assert params == {
        "output_size": output_size,
        "sampling_ratio": sampling_ratio,
        "aligned": False,
        "canonical_scale": 224,
        "canonical_level": 4,
        "first_level": 2,
    }
    actual = torch.ops.maskrt.multilevel_roi_align(boxes, features, **params)
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max().item() <= 1e-5
    # the boundary boxes really spread over the levels
    levels = roi_levels(boxes.reshape(-1, 4), LEVELS)
    assert set(levels.tolist()) == {0, 1, 2, 3}


def test_levels_equal_torchvision_level_mapper():
    boxes = _boxes(batch=1, per_image=200).reshape(-1, 4)
    expected = LevelMapper(2, 5)([boxes])
    assert torch.equal(roi_levels(boxes, LEVELS), expected)
    # on the thresholds: sqrt(area) = 112 is level 3 (index 1), a hair below is level 2 (index 0)
    on = torch.tensor(
        [
            [0.0, 0.0, 112.0, 112.0],
            [0.0, 0.0, 111.99, 112.0],
            [0.0, 0.0, 224.0, 224.0],
            [0.0, 0.0, 448.0, 448.0],
            [0.0, 0.0, 2000.0, 2000.0],
            [0.0, 0.0, 1.0, 1.0],
        ]
    )
    assert roi_levels(on, LEVELS).tolist() == [1, 0, 2, 3, 3, 0]


@pytest.mark.parametrize("sampling_ratio", [2, 0])
def test_aligned_true(sampling_ratio):
    features = _features(batch=2)
    boxes = _boxes(batch=2, per_image=30)
    actual = torch.ops.maskrt.multilevel_roi_align(boxes, features, 7, sampling_ratio, True)
    flat = boxes.reshape(-1, 4)
    levels = LevelMapper(2, 5)([flat])
    rois = torch.cat([torch.arange(2.0).repeat_interleave(boxes.shape[1])[:, None], flat], 1)
    expected = torch.zeros(len(flat), 8, 7, 7)
    for i, f in enumerate(features):
        idx = torch.where(levels == i)[0]
        expected[idx] = roi_align(f, rois[idx], 7, 2.0 ** -(2 + i), sampling_ratio, aligned=True)
    assert (actual.reshape(-1, 8, 7, 7) - expected).abs().max().item() <= 1e-5
    # aligned really changes the result
    unaligned = torch.ops.maskrt.multilevel_roi_align(boxes, features, 7, sampling_ratio, False)
    assert (unaligned - actual).abs().max().item() > 1e-3


def test_nan_area_pools_to_zero_and_one_level():
    features = _features(batch=1)
    boxes = torch.tensor(
        [[[10.0, 10.0, 5.0, 40.0], [10.0, 10.0, 40.0, 40.0], [float("nan"), 0, 4, 4]]]
    )
    out = torch.ops.maskrt.multilevel_roi_align(boxes, features, 7, 2, False)
    assert out[0, 0].abs().max() == 0 and out[0, 2].abs().max() == 0 and out[0, 1].abs().max() > 0
    # one map: no level mapping, every RoI pools from it (as MultiScaleRoIAlign)
    one = torch.ops.maskrt.multilevel_roi_align(boxes[:, 1:2], features[:1], 7, 2, False)
    ref = roi_align(features[0], torch.tensor([[0.0, 10, 10, 40, 40]]), 7, 0.25, 2, False)
    assert (one[0] - ref).abs().max() <= 1e-6


def test_float16_features_accumulate_in_float32():
    features = _features(batch=2)
    boxes = _boxes(batch=2, per_image=20)
    full = torch.ops.maskrt.multilevel_roi_align(boxes, features, 7, 2, False)
    half = torch.ops.maskrt.multilevel_roi_align(boxes, [f.half() for f in features], 7, 2, False)
    assert half.dtype == torch.float16
    assert (half.float() - full).abs().max().item() < 1e-2


def test_fake_impl_gives_the_shape():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        out = torch.ops.maskrt.multilevel_roi_align(
            torch.empty(2, 5, 4), _features_meta(), 14, 2, False
        )
    assert tuple(out.shape) == (2, 5, 8, 14, 14)
    torch.library.opcheck(
        torch.ops.maskrt.multilevel_roi_align.default,
        (_boxes(2, 5), _features(2), 7, 2, False, 224, 4, 2),
    )


def _features_meta():
    return [torch.empty(2, 8, CANVAS >> (2 + i), CANVAS >> (2 + i)) for i in range(LEVELS)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_equals_cpu(dtype):
    features = _features(batch=2)
    boxes = _boxes(batch=2, per_image=50)
    cpu = torch.ops.maskrt.multilevel_roi_align(boxes, features, 7, 2, False)
    gpu = torch.ops.maskrt.multilevel_roi_align(
        boxes.cuda(), [f.cuda().to(dtype) for f in features], 7, 2, False
    )
    assert gpu.dtype == dtype and gpu.is_cuda
    # float32: the GPU fuses multiply-adds (an H200 gave 1.6e-5 on values of magnitude ~4)
    assert (gpu.float().cpu() - cpu).abs().max().item() <= (
        5e-5 if dtype == torch.float32 else 1e-2
    )
