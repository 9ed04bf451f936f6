"""The plugin's CUDA kernel on a GPU, against torchvision on CUDA, and the TensorRT plugin in real
engines. The kernel runs through its PyTorch binding (maskrt.plugins.torch_ext: the same .cu file
the plugin library builds); the TensorRT tests load the built libmaskrt_plugins.so.

GPU tests skip (with the reason) where torch.cuda.is_available() is false; TensorRT tests also need
the tensorrt package and the built plugin library (cmake, see plugins/README.md; without it they
fail under CI=true)."""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
from roi_align_reference import multilevel_roi_align_reference
from tools import missing
from torchvision.ops import MultiScaleRoIAlign

pytestmark = pytest.mark.gpu

NAMES = ["p2", "p3", "p4", "p5"]


@pytest.fixture(scope="module")
def ext(tmp_path_factory):
    from maskrt.plugins.torch_ext import load_extension

    patch = pytest.MonkeyPatch()
    major, minor = torch.cuda.get_device_capability()
    patch.setenv("TORCH_CUDA_ARCH_LIST", f"{major}.{minor}")  # build for this GPU only
    try:
        yield load_extension(str(tmp_path_factory.mktemp("roi_align_ext")))
    finally:
        patch.undo()


def _features(canvas, channels, batch, dtype, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    return [
        torch.randn(batch, channels, canvas // s, canvas // s, generator=gen, device="cuda").to(
            dtype
        )
        for s in (4, 8, 16, 32)
    ]


def _boxes(canvas, n, batch, seed):
    """Realistic proposals (sizes log-uniform from 8 px to the canvas, spilling over its edges) plus
    boxes on level thresholds, degenerate, outside and huge ones."""
    gen = torch.Generator().manual_seed(seed)
    centre = torch.rand(batch, n, 2, generator=gen) * canvas
    size = torch.exp(
        torch.empty(batch, n, 2).uniform_(math.log(8), math.log(canvas), generator=gen)
    )
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=-1)
    special = torch.tensor(
        [
            [10, 20, 122, 132],
            [0, 0, 224, 224],
            [-100, -50, 348, 398],
            [0, 0, 111.99995, 112],
            [50, 60, 50, 90],
            [100, 100, 100, 100],
            [-5000, -5000, 5000, 5000],
            [canvas + 10, 5, canvas + 60, 40],
            [0, 0, canvas, canvas],
            [80, 80, 40, 120],
        ],
        dtype=torch.float32,
    )
    boxes[:, : len(special)] = special
    return boxes.cuda()


@pytest.mark.parametrize("output_size", [7, 14])
@pytest.mark.parametrize("sampling_ratio", [2, 0])
def test_float32_matches_torchvision_multiscale_roi_align(ext, output_size, sampling_ratio):
    canvas, batch = 512, 2
    feats = _features(canvas, 32, batch, torch.float32, seed=0)
    rois = _boxes(canvas, 300, batch, seed=1)
    pooler = MultiScaleRoIAlign(NAMES, output_size=output_size, sampling_ratio=sampling_ratio)
    expected = pooler(OrderedDict(zip(NAMES, feats)), list(rois), [(canvas, canvas)] * batch)
    got = ext.multilevel_roi_align(rois, feats, output_size, sampling_ratio, False, 224, 4, 2)
    torch.testing.assert_close(got.flatten(0, 1), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("output_size", [7, 14])
@pytest.mark.parametrize("sampling_ratio", [2, 0])
def test_float32_aligned_matches_torchvision_roi_align(ext, output_size, sampling_ratio):
    canvas, batch = 512, 2
    feats = _features(canvas, 16, batch, torch.float32, seed=2)
    rois = _boxes(canvas, 300, batch, seed=3)
    expected = multilevel_roi_align_reference(rois, feats, output_size, sampling_ratio, True)
    got = ext.multilevel_roi_align(rois, feats, output_size, sampling_ratio, True, 224, 4, 2)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("output_size", [7, 14])
def test_float16_features_with_float32_accumulation(ext, aligned, output_size):
    """float16 in and out, float32 inside: the result is the float32 result on the same values,
    rounded once (torchvision's own float16 kernel computes coordinates and sums in float16)."""
    canvas, batch = 1344, 1
    feats16 = _features(canvas, 64, batch, torch.float16, seed=4)
    rois = _boxes(canvas, 500, batch, seed=5)
    exact = multilevel_roi_align_reference(
        rois, [f.float() for f in feats16], output_size, 2, aligned
    )
    got = ext.multilevel_roi_align(rois, feats16, output_size, 2, aligned, 224, 4, 2)
    assert got.dtype == torch.float16
    torch.testing.assert_close(got.float(), exact, rtol=1e-3, atol=1e-5)
    if not aligned:
        pooler = MultiScaleRoIAlign(NAMES, output_size=output_size, sampling_ratio=2)
        theirs = pooler(
            OrderedDict(zip(NAMES, feats16)), [r.half() for r in rois], [(canvas, canvas)] * batch
        )
        ours_error = (got.float().flatten(0, 1) - exact.flatten(0, 1)).abs().max()
        their_error = (theirs.float() - exact.flatten(0, 1)).abs().max()
        assert ours_error <= their_error + 1e-3


def test_one_kernel_launch_for_all_levels_and_images(ext):
    canvas, batch = 512, 3
    feats = _features(canvas, 32, batch, torch.float16, seed=6)
    rois = _boxes(canvas, 200, batch, seed=7)
    ext.multilevel_roi_align(rois, feats, 7, 2, False, 224, 4, 2)  # warm up
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        ext.multilevel_roi_align(rois, feats, 7, 2, False, 224, 4, 2)
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    ours = [e for e in kernels if "multilevel_roi_align_kernel" in e.name]
    assert len(ours) == 1, [e.name for e in kernels]


def test_each_image_uses_its_own_features(ext):
    canvas = 256
    feats = _features(canvas, 8, 3, torch.float32, seed=8)
    one = _boxes(canvas, 50, 1, seed=9)
    rois = one.expand(3, -1, -1).contiguous()
    got = ext.multilevel_roi_align(rois, feats, 7, 2, True, 224, 4, 2)
    for b in range(3):
        alone = ext.multilevel_roi_align(one, [f[b : b + 1] for f in feats], 7, 2, True, 224, 4, 2)
        assert torch.equal(got[b : b + 1], alone)
    assert not torch.equal(got[0], got[1])


def test_non_contiguous_inputs_and_empty_calls(ext):
    canvas = 256
    feats = _features(canvas, 8, 2, torch.float32, seed=10)
    rois = _boxes(canvas, 40, 2, seed=11)
    strided = [
        f.transpose(2, 3).contiguous().transpose(2, 3) for f in feats
    ]  # same values, other strides
    torch.testing.assert_close(
        ext.multilevel_roi_align(rois, strided, 7, 2, False, 224, 4, 2),
        ext.multilevel_roi_align(rois, feats, 7, 2, False, 224, 4, 2),
        rtol=0,
        atol=0,
    )
    empty = ext.multilevel_roi_align(rois[:, :0], feats, 7, 2, False, 224, 4, 2)
    assert empty.shape == (2, 0, 8, 7, 7)
    with pytest.raises(RuntimeError, match="same batch"):
        ext.multilevel_roi_align(rois[:1], feats, 7, 2, False, 224, 4, 2)


# --------------------------------------------------------------------------------------------
# TensorRT: the plugin in real engines (network API and ONNX parser), built and deserialized.

ATTRS = {
    "output_size": 7,
    "sampling_ratio": 2,
    "aligned": 1,
    "canonical_scale": 224,
    "canonical_level": 4,
    "first_level": 2,
}


def _tensorrt_with_plugin():
    trt = pytest.importorskip("tensorrt")
    from maskrt.errors import MaskrtError
    from maskrt.plugins import load

    try:
        load()
    except MaskrtError as exc:
        missing(f"plugin library not available: {exc}")
    return trt


def _run_engine(
    trt, serialized, tensors: dict[str, torch.Tensor], output: str, shape, dtype
) -> torch.Tensor:
    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(
        serialized
    )  # the runtime phase: createPlugin(kRUNTIME)
    assert engine is not None
    context = engine.create_execution_context()
    out = torch.empty(shape, dtype=dtype, device="cuda")
    for name, tensor in tensors.items():
        context.set_tensor_address(name, tensor.data_ptr())
    context.set_tensor_address(output, out.data_ptr())
    stream = torch.cuda.current_stream()
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    return out


@pytest.mark.tensorrt
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_tensorrt_network_with_plugin(dtype):
    trt = _tensorrt_with_plugin()
    canvas, batch, channels = 512, 2, 32
    feats = _features(canvas, channels, batch, dtype, seed=12)
    rois = _boxes(canvas, 100, batch, seed=13)
    logger = trt.Logger(trt.Logger.WARNING)
    creator = trt.get_plugin_registry().get_creator("MaskrtMultiLevelRoIAlign", "1", "")
    assert creator is not None
    fields = trt.PluginFieldCollection(
        [
            trt.PluginField(k, np.array([v], dtype=np.int32), trt.PluginFieldType.INT32)
            for k, v in ATTRS.items()
        ]
    )
    plugin = creator.create_plugin("roi_align", fields, trt.TensorRTPhase.BUILD)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    trt_dtype = trt.float16 if dtype == torch.float16 else trt.float32
    inputs = [network.add_input("rois", trt.float32, tuple(rois.shape))]
    inputs += [network.add_input(n, trt_dtype, tuple(f.shape)) for n, f in zip(NAMES, feats)]
    layer = network.add_plugin_v3(inputs, [], plugin)
    layer.get_output(0).name = "pooled"
    network.mark_output(layer.get_output(0))
    serialized = builder.build_serialized_network(network, builder.create_builder_config())
    assert serialized is not None
    got = _run_engine(
        trt,
        serialized,
        {"rois": rois, **dict(zip(NAMES, feats))},
        "pooled",
        (batch, 100, channels, 7, 7),
        dtype,
    )
    exact = multilevel_roi_align_reference(rois, [f.float() for f in feats], 7, 2, True)
    tol = dict(rtol=1e-3, atol=1e-5) if dtype == torch.float16 else dict(rtol=0, atol=1e-5)
    torch.testing.assert_close(got.float(), exact, **tol)


@pytest.mark.tensorrt
def test_onnx_parser_maps_the_custom_node_to_the_plugin():
    trt = _tensorrt_with_plugin()
    from onnx import TensorProto, helper

    canvas, batch, channels, num_rois = 256, 1, 8, 64
    feats = _features(canvas, channels, batch, torch.float32, seed=14)
    rois = _boxes(canvas, num_rois, batch, seed=15)
    node = helper.make_node(
        "MaskrtMultiLevelRoIAlign",
        ["rois", *NAMES],
        ["pooled"],
        domain="com.maskrt",
        **{**ATTRS, "sampling_ratio": 0},
    )
    graph = helper.make_graph(
        [node],
        "roi_align",
        [helper.make_tensor_value_info("rois", TensorProto.FLOAT, list(rois.shape))]
        + [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, list(f.shape))
            for n, f in zip(NAMES, feats)
        ],
        [
            helper.make_tensor_value_info(
                "pooled", TensorProto.FLOAT, [batch, num_rois, channels, 7, 7]
            )
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.maskrt", 1)]
    )
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(model.SerializeToString()), [
        str(parser.get_error(i)) for i in range(parser.num_errors)
    ]
    serialized = builder.build_serialized_network(network, builder.create_builder_config())
    assert serialized is not None
    got = _run_engine(
        trt,
        serialized,
        {"rois": rois, **dict(zip(NAMES, feats))},
        "pooled",
        (batch, num_rois, channels, 7, 7),
        torch.float32,
    )
    expected = multilevel_roi_align_reference(rois, feats, 7, 0, True)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
