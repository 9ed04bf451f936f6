"""The plugin kernel's arithmetic on the CPU, against torchvision.

tests/plugins/roi_align_host.cpp is compiled for the host (nvcc, else g++) into a small shared
library in pytest's tmp dir and driven through ctypes. It runs the kernel's own
``__host__ __device__`` code in two ways: plain reference loops over RoIs / channels / bins calling
the per-sample math, and an emulation of the CUDA launch (the kernel's block code run block by
block, thread by thread, with its channel chunking and sample tables). Both must match
torchvision's ``MultiScaleRoIAlign`` / ``roi_align`` to 1e-5, including RoIs on level boundaries,
degenerate, out-of-image and huge RoIs, ``aligned`` False and True, sampling ratios 0 to 3.
"""

from __future__ import annotations

import ctypes
import math
import subprocess
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from roi_align_reference import multilevel_roi_align_reference
from tools import CUDA_HOME, cxx, find_nvcc, missing, nvcc
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import LevelMapper

SRC = Path(__file__).resolve().parents[1] / "plugins" / "roi_align"
HOST_SOURCE = Path(__file__).resolve().parent / "plugins" / "roi_align_host.cpp"
CUDA_INCLUDE = CUDA_HOME / "include"
CANVAS_H, CANVAS_W = 192, 256  # not square, so that rows and columns cannot be confused
SIZES = [(48, 64), (24, 32), (12, 16), (6, 8)]  # P2..P5
FIRST_LEVEL = 2


def _compile(compiler: str, out: Path) -> Path:
    source = HOST_SOURCE
    if compiler == "nvcc":
        cmd = [
            nvcc(),
            "-std=c++17",
            "-O2",
            "-Xcompiler",
            "-fPIC",
            "-shared",
            f"-I{SRC}",
            str(source),
            "-o",
            str(out),
        ]
    else:
        cmd = [
            cxx(),
            "-std=c++17",
            "-O2",
            "-fPIC",
            "-shared",
            f"-I{SRC}",
            str(source),
            "-o",
            str(out),
        ]
        if CUDA_INCLUDE.is_dir():
            cmd.insert(-3, f"-I{CUDA_INCLUDE}")  # float16 via cuda_fp16.h when the headers exist
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout}\n{done.stderr}"
    return out


class HostLib:
    """ctypes face of roi_align_host.cpp."""

    def __init__(self, path: Path):
        self.path = path
        lib = ctypes.CDLL(str(path))
        lib.maskrt_roi_align_host.restype = ctypes.c_int
        lib.maskrt_roi_align_host.argtypes = (
            [
                ctypes.c_void_p,
                ctypes.c_int,
                ctypes.c_int,
                ctypes.POINTER(ctypes.c_void_p),
                ctypes.POINTER(ctypes.c_int),
                ctypes.POINTER(ctypes.c_int),
            ]
            + [ctypes.c_int] * 9
            + [ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int]
        )
        lib.maskrt_level_index.restype = ctypes.c_int
        lib.maskrt_level_index.argtypes = [ctypes.c_float] * 4 + [ctypes.c_int] * 4
        lib.maskrt_channels_per_block.restype = ctypes.c_int
        lib.maskrt_channels_per_block.argtypes = [
            ctypes.c_int,
            ctypes.c_int64,
            ctypes.c_int,
            ctypes.c_int64,
        ]
        self.lib = lib
        self.has_fp16 = bool(lib.maskrt_host_has_fp16())

    def roi_align(
        self,
        rois,
        features,
        output_size,
        sampling_ratio,
        aligned,
        *,
        canonical_scale=224,
        canonical_level=4,
        first_level=FIRST_LEVEL,
        emulate=False,
        target_blocks=1,
        nthreads=256,
    ):
        rois = rois.contiguous().float()
        features = [f.contiguous() for f in features]
        dtype = {torch.float32: 0, torch.float16: 1}[features[0].dtype]
        batch, num_rois = rois.shape[:2]
        channels = features[0].shape[1]
        out = torch.full(
            (batch, num_rois, channels, output_size, output_size),
            float("nan"),
            dtype=features[0].dtype,
        )
        n = len(features)
        ptrs = (ctypes.c_void_p * n)(*[f.data_ptr() for f in features])
        heights = (ctypes.c_int * n)(*[f.shape[2] for f in features])
        widths = (ctypes.c_int * n)(*[f.shape[3] for f in features])
        rc = self.lib.maskrt_roi_align_host(
            rois.data_ptr(),
            batch,
            num_rois,
            ptrs,
            heights,
            widths,
            n,
            channels,
            dtype,
            output_size,
            sampling_ratio,
            int(aligned),
            canonical_scale,
            canonical_level,
            first_level,
            out.data_ptr(),
            int(emulate),
            target_blocks,
            nthreads,
        )
        if rc != 0:
            raise ValueError(f"maskrt_roi_align_host rejected the call (code {rc})")
        return out


@pytest.fixture(scope="session")
def host_lib(tmp_path_factory) -> HostLib:
    compiler = "nvcc" if find_nvcc() else "g++"
    return HostLib(
        _compile(compiler, tmp_path_factory.mktemp("roi_align_host") / "libroi_align_host.so")
    )


def _features(batch=2, channels=8, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, channels, h, w, generator=gen).to(dtype) for h, w in SIZES]


def _special_boxes() -> torch.Tensor:
    """Boxes that probe the boundary rules: level thresholds, degenerate, outside, huge, inverted."""
    boxes = [
        # sqrt(area) exactly on the level thresholds 112 / 224 / 448 (and 56, 896), squares and not
        [10, 20, 122, 132],
        [0, 0, 224, 224],
        [-100, -50, 348, 398],
        [5, 5, 61, 61],
        [0, 0, 896, 896],
        [30, 40, 86, 264],
        [0, 0, 28, 448],
        [17.5, 3.25, 129.5, 115.25],
        # just under / over a threshold
        [10, 20, 121.999, 132],
        [10, 20, 122.001, 132],
        [0, 0, 223.99, 224],
        [0, 0, 224.01, 224],
        # a hair under a threshold, where torchvision's +1e-6 decides the level
        [0, 0, 111.99995, 112],
        [0, 0, 111.99986, 112],
        [0, 0, 223.99991, 224],
        [0, 0, 223.99965, 224],
        [0, 0, 447.99963, 448],
        [0, 0, 447.99930, 448],
        # degenerate: zero width, zero height, a point, on the canvas edge
        [50, 60, 50, 90],
        [50, 60, 80, 60],
        [100, 100, 100, 100],
        [0, 0, 0, 0],
        [256, 192, 256, 192],
        [255.9, 10, 256, 12],
        # whole canvas, on and across its edges
        [0, 0, 256, 192],
        [-1, -1, 257, 193],
        [0, 0, 192, 256],
        [200, 200, 300, 300],
        [-40, 100, 20, 140],
        # outside the canvas (near and far)
        [260, 10, 300, 50],
        [-80, -80, -10, -10],
        [1000, 1000, 1100, 1120],
        [-5000, 20, -4000, 60],
        # huge (clamped to the last level; adaptive grids past the kernel's shared tables)
        [-5000, -5000, 5000, 5000],
        [-300, -200, 2000, 1800],
        [0, 0, 12000, 40],
        # tiny (clamped to the first level)
        [100.2, 100.3, 100.7, 101.1],
        [3, 3, 4, 4],
        # inverted: one side (NaN area -> zero output, as torchvision) and both sides
        [80, 80, 40, 120],
        [80, 80, 40, 40],
    ]
    return torch.tensor(boxes, dtype=torch.float32)


def _random_boxes(n, seed) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, 2, generator=gen) * torch.tensor([CANVAS_W + 80.0, CANVAS_H + 80.0]) - 40
    size = torch.exp(torch.rand(n, 2, generator=gen) * (torch.log(torch.tensor(600.0)) - 0)) * 0.8
    return torch.cat([centre - size / 2, centre + size / 2], dim=1)


def _rois(batch=2, seed=0) -> torch.Tensor:
    special = _special_boxes()
    per_image = [torch.cat([special, _random_boxes(40, seed + b)]) for b in range(batch)]
    return torch.stack(per_image)


def _ieee_level(
    box, num_levels, canonical_scale=224, canonical_level=4, first_level=FIRST_LEVEL
) -> int:
    """LevelMapper's formula in float32 with correctly rounded operations (sqrt / log2 evaluated in
    float64 and rounded once, which is correctly rounded for sqrt and for these arguments log2)."""
    f = np.float32
    if num_levels == 1:
        return 0
    x1, y1, x2, y2 = (f(v) for v in box)
    area = f(f(x2 - x1) * f(y2 - y1))
    if np.isnan(area) or area < 0:
        return -1
    s = f(math.sqrt(area))
    r = f(s / f(canonical_scale))
    log = f(math.log2(r)) if r > 0 else f(-np.inf)
    k = np.floor(f(f(f(canonical_level) + log) + f(1e-6)))
    return int(np.clip(k, first_level, first_level + num_levels - 1)) - first_level


def test_level_index_matches_torchvision_level_mapper(host_lib):
    rois = _rois(batch=1)[0]
    extra = []
    for side in (28.0, 56.0, 112.0, 224.0, 448.0, 896.0):
        t = torch.tensor(side)
        for v in (torch.nextafter(t, torch.tensor(0.0)), t, torch.nextafter(t, torch.tensor(1e9))):
            extra.append([3.0, 7.0, 3.0 + float(v), 7.0 + side])
        for k in range(1, 20):  # sqrt(area) a few ulps under the threshold: the +1e-6 decides
            extra.append([0.0, 0.0, float(torch.tensor(side * (1 - k * 1e-7))), side])
    boxes = torch.cat([rois, torch.tensor(extra), _random_boxes(2000, seed=7)])
    for num_levels in (1, 2, 4, 5):
        mapper = LevelMapper(FIRST_LEVEL, FIRST_LEVEL + num_levels - 1)
        torchvision = mapper([boxes]).tolist() if num_levels > 1 else [0] * len(boxes)
        # torchvision's NaN level (an inverted box) is a garbage int64 that matches no level: ours is -1
        torchvision = [e if 0 <= e < num_levels else -1 for e in torchvision]
        got = [
            host_lib.lib.maskrt_level_index(*map(float, b), 224, 4, FIRST_LEVEL, num_levels)
            for b in boxes.tolist()
        ]
        assert got == [_ieee_level(b, num_levels) for b in boxes.tolist()], f"{num_levels} levels"
        # torch's CPU float32 sqrt / log2 are not always correctly rounded; where that moves a box a
        # hair under a threshold across it, torchvision (CPU) and IEEE float32 (CUDA, ours) differ
        for box, ours, theirs in zip(boxes.tolist(), got, torchvision):
            if ours != theirs:
                area = torch.tensor(box[2] - box[0]) * torch.tensor(box[3] - box[1])
                s = torch.sqrt(area)
                explained = float(s) != float(np.float32(math.sqrt(float(area)))) or float(
                    torch.log2(s / 224)
                ) != float(np.float32(math.log2(float(s / 224))))
                assert explained, f"box {box}: ours {ours}, torchvision {theirs}"
        assert sum(a != b for a, b in zip(got, torchvision)) <= 2
    # the thresholds themselves: sqrt(area) = 112 -> P3, 224 -> P4, 448 -> P5
    idx = [
        host_lib.lib.maskrt_level_index(0.0, 0.0, s, s, 224, 4, 2, 4)
        for s in (111.9, 112.0, 223.9, 224.0, 447.9, 448.0)
    ]
    assert idx == [0, 1, 1, 2, 2, 3]


@pytest.mark.parametrize("sampling_ratio", [2, 0])
@pytest.mark.parametrize("output_size", [7, 14])
@pytest.mark.parametrize("emulate", [False, True], ids=["reference", "kernel-emulation"])
def test_matches_torchvision_multiscale_roi_align(host_lib, sampling_ratio, output_size, emulate):
    """aligned=False is torchvision's MultiScaleRoIAlign (what torchvision's Mask R-CNN runs)."""
    feats = _features()
    rois = _rois()
    pooler = MultiScaleRoIAlign(
        ["p2", "p3", "p4", "p5"], output_size=output_size, sampling_ratio=sampling_ratio
    )
    expected = pooler(
        OrderedDict(zip(["p2", "p3", "p4", "p5"], feats)), list(rois), [(CANVAS_H, CANVAS_W)] * 2
    )
    got = host_lib.roi_align(
        rois,
        feats,
        output_size,
        sampling_ratio,
        aligned=False,
        emulate=emulate,
        target_blocks=10**6,
    )
    torch.testing.assert_close(got.flatten(0, 1), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [0, 1, 2, 3])
@pytest.mark.parametrize("output_size", [7, 14])
@pytest.mark.parametrize("emulate", [False, True], ids=["reference", "kernel-emulation"])
def test_matches_torchvision_roi_align_per_level(
    host_lib, aligned, sampling_ratio, output_size, emulate
):
    feats = _features(seed=1)
    rois = _rois(seed=3)
    expected = multilevel_roi_align_reference(rois, feats, output_size, sampling_ratio, aligned)
    got = host_lib.roi_align(
        rois, feats, output_size, sampling_ratio, aligned, emulate=emulate, target_blocks=1
    )
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_reference_equals_multiscale_roi_align():
    """The torchvision-built reference used above is MultiScaleRoIAlign when aligned=False."""
    feats = _features(seed=4)
    rois = _rois(seed=5)
    pooler = MultiScaleRoIAlign(["a", "b", "c", "d"], output_size=7, sampling_ratio=2)
    expected = pooler(OrderedDict(zip("abcd", feats)), list(rois), [(CANVAS_H, CANVAS_W)] * 2)
    got = multilevel_roi_align_reference(rois, feats, 7, 2, aligned=False)
    torch.testing.assert_close(got.flatten(0, 1), expected, rtol=0, atol=0)


@pytest.mark.parametrize("nthreads,target_blocks", [(256, 1), (256, 10**6), (32, 10**6), (97, 50)])
@pytest.mark.parametrize("output_size", [7, 14])
def test_kernel_emulation_is_independent_of_block_shape(
    host_lib, nthreads, target_blocks, output_size
):
    """Channel chunks and thread counts change the work split, never the result."""
    feats = _features(channels=24, seed=6)
    rois = _rois(seed=8)
    reference = host_lib.roi_align(rois, feats, output_size, 2, True)
    got = host_lib.roi_align(
        rois,
        feats,
        output_size,
        2,
        True,
        emulate=True,
        target_blocks=target_blocks,
        nthreads=nthreads,
    )
    assert torch.equal(got, reference)


@pytest.mark.parametrize("emulate", [False, True], ids=["reference", "kernel-emulation"])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [2, 0])
def test_float16_features_accumulate_in_float32(host_lib, emulate, aligned, sampling_ratio):
    if not host_lib.has_fp16:
        missing(f"this host build has no float16: no cuda_fp16.h in {CUDA_INCLUDE} (CUDA toolkit)")
    feats16 = _features(seed=9, dtype=torch.float16)
    rois = _rois(seed=10)
    # the exact result on the same (float16-representable) values, rounded once to float16
    expected = multilevel_roi_align_reference(
        rois, [f.float() for f in feats16], 7, sampling_ratio, aligned
    )
    got = host_lib.roi_align(
        rois, feats16, 7, sampling_ratio, aligned, emulate=emulate, target_blocks=10**6
    )
    assert got.dtype == torch.float16
    torch.testing.assert_close(got.float(), expected, rtol=2.0**-11, atol=1e-5)


def test_single_level_and_other_level_parameters(host_lib):
    feats = _features(seed=11)
    rois = _rois(seed=12)
    # one map: no level mapping at all (torchvision's MultiScaleRoIAlign with one feature map)
    expected = multilevel_roi_align_reference(rois, feats[1:2], 7, 2, False, first_level=3)
    got = host_lib.roi_align(rois, feats[1:2], 7, 2, False, first_level=3, emulate=True)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    # three maps starting at level 3, another canonical scale / level
    expected = multilevel_roi_align_reference(
        rois, feats[1:], 7, 0, True, canonical_scale=160, canonical_level=3, first_level=3
    )
    got = host_lib.roi_align(
        rois,
        feats[1:],
        7,
        0,
        True,
        canonical_scale=160,
        canonical_level=3,
        first_level=3,
        emulate=True,
    )
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_invalid_parameters_are_rejected(host_lib):
    feats = _features()
    rois = _rois()
    with pytest.raises(ValueError):
        host_lib.roi_align(rois, feats, 0, 2, False)
    with pytest.raises(ValueError):
        host_lib.roi_align(rois, feats, 7, -1, False)
    with pytest.raises(ValueError):
        host_lib.roi_align(rois, feats * 3, 7, 2, False)  # 12 maps > 8


def test_channels_per_block(host_lib):
    cpb = host_lib.lib.maskrt_channels_per_block
    assert cpb(256, 1000, 7, 1056) == 64  # many RoIs: the largest chunk
    assert cpb(256, 100, 14, 1056) == 24  # few RoIs: smaller chunks, more blocks
    assert cpb(256, 1, 7, 10**6) == 6  # never fewer outputs than threads (256 / 49 -> 6)
    assert cpb(3, 1000, 7, 1056) == 3  # never more than the channels


def test_gpp_build_agrees_with_the_default_build(host_lib, tmp_path):
    """The math also builds with a plain C++ compiler (the CUDA qualifiers compile away)."""
    other = HostLib(_compile("g++", tmp_path / "libroi_align_host_gpp.so"))
    feats = _features(seed=13)
    rois = _rois(seed=14)
    a = host_lib.roi_align(rois, feats, 7, 0, True, emulate=True)
    b = other.roi_align(rois, feats, 7, 0, True, emulate=True)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
